"""``python -m mil_cyto.synth``: write the built-in synthetic Pap-smear data set.

Example::

    python -m mil_cyto.synth --out data/synth --n-images 360 --seed 0 --workers 2

Writes ``DIR/images/*.png``, ``DIR/manifest.csv``, ``DIR/cells.csv`` and
``DIR/synth_config.json``; an existing ``DIR`` made with the same settings is reused as is.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mil_cyto.data.synthetic import (
    CELLS_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    SynthConfig,
    generate_dataset,
)
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (defaults are those of :class:`SynthConfig`)."""
    d = SynthConfig()
    p = argparse.ArgumentParser(
        prog="python -m mil_cyto.synth",
        description="Generate synthetic Pap-smear field photos (normal / CIN1 / CIN2+) with a "
        "patient-level manifest and every cell's box (cells.csv). Deterministic: the same "
        "settings give byte-identical files whatever --workers is.",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (created; reused unchanged if it holds the same data set)",
    )
    p.add_argument(
        "--n-images",
        type=int,
        default=d.n_images,
        help=f"number of field photos (default {d.n_images})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"master seed (default {d.seed})")
    p.add_argument(
        "--width", type=int, default=d.width, help=f"photo width in px (default {d.width})"
    )
    p.add_argument(
        "--height", type=int, default=d.height, help=f"photo height in px (default {d.height})"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (default: min(4, CPU count))",
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )
    return p


def _summary(out: Path, elapsed: float, cached: bool) -> str:
    with (out / MANIFEST_FILE).open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with (out / CELLS_FILE).open(encoding="utf-8", newline="") as f:
        n_cells = sum(1 for _ in f) - 1
    per_grade = Counter(r["histology"] for r in rows)
    patients = len({r["patient_id"] for r in rows})
    grades = ", ".join(f"{g} {per_grade.get(g, 0)}" for g in GRADES)
    what = "reused (same config)" if cached else f"written in {elapsed:.1f} s"
    return (
        f"synth: {len(rows)} images ({grades}) from {patients} patients, "
        f"{n_cells} cells -> {out} {what}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise MilCytoError(f"--workers must be at least 1, got {args.workers}")
        config = SynthConfig(
            n_images=args.n_images, seed=args.seed, width=args.width, height=args.height
        )
        cached = (args.out / CONFIG_FILE).is_file()
        start = time.perf_counter()
        out = generate_dataset(args.out, config, workers=args.workers, progress=args.progress)
        print(_summary(out, time.perf_counter() - start, cached))
    except MilCytoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
