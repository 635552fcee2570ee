"""``mil-cyto synth`` (``python -m mil_cyto.synth``): the built-in synthetic Pap-smear set.

Example::

    mil-cyto synth --out data/synth --n-images 360 --seed 0 --workers 2

Writes ``DIR/images/*.png``, ``DIR/manifest.csv``, ``DIR/cells.csv`` and
``DIR/synth_config.json``; an existing ``DIR`` made with the same settings is reused as is.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mil_cyto.cli.options import (
    Console,
    exit_code,
    from_args,
    option,
    out_option,
    seed_option,
    workers_option,
)
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.data.synthetic import (
    CELLS_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    SynthConfig,
    generate_dataset,
)
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES

PROG = "mil-cyto synth"
DESCRIPTION = (
    "Generate synthetic Pap-smear field photos (normal / CIN1 / CIN2+) with a patient-level "
    "manifest and every cell's box (cells.csv). Deterministic: the same settings give "
    "byte-identical files whatever --workers is."
)


def default_workers() -> int:
    """Worker processes when none are given: up to 4, no more than the CPUs."""
    return min(4, os.cpu_count() or 1)


@dataclass
class SynthOptions:
    """The flags of ``synth``; defaults are those of :class:`SynthConfig`."""

    out: Path = out_option(
        "output folder (created; reused unchanged if it holds the same data set)", required=True
    )
    n_images: int = option(SynthConfig.n_images, help="number of field photos")
    seed: int = seed_option("master seed")
    width: int = option(SynthConfig.width, help="photo width in px")
    height: int = option(SynthConfig.height, help="photo height in px")
    workers: int = workers_option(
        "worker processes", default_factory=default_workers, default_help="min(4, CPU count)"
    )

    def synth_config(self) -> SynthConfig:
        """The data set these options describe."""
        return SynthConfig(
            n_images=self.n_images, seed=self.seed, width=self.width, height=self.height
        )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`SynthOptions` field, plus ``--quiet`` (alias ``--no-progress``)."""
    return generated_parser(prog, DESCRIPTION, SynthOptions)


def summary(out: Path, elapsed: float, cached: bool) -> str:
    """One line: photos per grade, patients, cells, output folder."""
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


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser(prog).parse_args(argv)
    options = from_args(SynthOptions, args)
    quiet = from_args(Console, args).quiet

    def run() -> int:
        if options.workers < 1:
            raise MilCytoError(f"--workers must be at least 1, got {options.workers}")
        config = options.synth_config()
        cached = (options.out / CONFIG_FILE).is_file()
        start = time.perf_counter()
        out = generate_dataset(options.out, config, workers=options.workers, progress=not quiet)
        print(summary(out, time.perf_counter() - start, cached))
        return 0

    return exit_code(run)
