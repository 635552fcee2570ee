"""``python -m mil_cyto.mosaic``: field photos composed of real single-cell crops.

Example (the Herlev cells, masks beside them)::

    python -m mil_cyto.mosaic --cells $MIL_CYTO_DATA/herlev \\
        --mapping benchmarks/herlev_mapping.csv --out data/herlev-mosaic \\
        --n-images 300 --seed 0 --masks masks --mask-suffix=-d --mask-background 1,4

``--cells`` holds one folder per class of crops (any format PIL reads, any sizes);
``--mapping`` is a CSV ``folder,grade`` with grade ``normal``, ``CIN1``, ``CIN2+`` or
``drop``. Writes ``DIR/images/*.png``, ``DIR/manifest.csv`` (with a ``split`` column that
``python -m mil_cyto.train`` honours: no crop is in two splits), ``DIR/cells.csv``,
``DIR/placements.csv`` (which crop each cell is), ``DIR/cell_splits.csv`` and
``DIR/mosaic_config.json``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mil_cyto.data.mosaic import (
    CELLS_FILE,
    MANIFEST_FILE,
    MaskSpec,
    MosaicConfig,
    generate_mosaics,
    read_mapping,
)
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES


def _int_pair(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH integers, got {text!r}") from None
    return lo, hi


def _float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}") from None
    return lo, hi


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = MosaicConfig()
    p = argparse.ArgumentParser(
        prog="python -m mil_cyto.mosaic",
        description="Compose field photos from folder-per-class single-cell crops; each field "
        "is labelled by the highest grade it holds and every cell's box is written to "
        "cells.csv. Deterministic: the same crops and settings give identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--cells", type=Path, required=True, help="folder with one sub-folder of crops per class")
    add("--mapping", type=Path, required=True, help="CSV folder,grade (normal/CIN1/CIN2+/drop)")
    add("--out", type=Path, required=True, help="output folder (reused if it holds the same set)")
    add("--n-images", type=int, default=d.n_images, help="number of field photos")
    add("--seed", type=int, default=d.seed, help="master seed")
    add("--cells-per-field", type=_int_pair, default=d.cells_per_field, help="LOW,HIGH")
    add("--atypical-per-field", type=_int_pair, default=d.atypical_per_field, help="LOW,HIGH")
    add("--cin1-in-cin2-field", type=_int_pair, default=d.cin1_in_cin2_field, help="LOW,HIGH")
    add("--images-per-patient", type=_int_pair, default=d.images_per_patient, help="LOW,HIGH")
    add("--scale", type=_float_pair, default=d.scale, help="rescale range within 0.5,2")
    add("--width", type=int, default=d.width, help="field width in px (0: 10 crop sides)")
    add("--height", type=int, default=d.height, help="field height in px (0: 7.5 crop sides)")
    add("--masks", help="mask folder (relative to --cells or absolute), same class folders")
    add("--mask-suffix", default="", help="mask name = crop stem + suffix (e.g. -d)")
    add("--mask-background", type=_int_list, default=(0,), help="mask values that are background")
    add("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def summary(out: Path, seconds: float) -> str:
    """One line: fields per grade and split, cells, output folder."""
    with (out / MANIFEST_FILE).open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with (out / CELLS_FILE).open(encoding="utf-8", newline="") as f:
        n_cells = sum(1 for _ in f) - 1
    grades = Counter(r["histology"] for r in rows)
    splits = Counter(r["split"] for r in rows)
    return (
        f"mosaic: {len(rows)} fields ({', '.join(f'{g} {grades.get(g, 0)}' for g in GRADES)}; "
        f"train {splits['train']}, val {splits['val']}, test {splits['test']}), "
        f"{n_cells} placed cells -> {out} in {seconds:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        config = MosaicConfig(
            n_images=args.n_images,
            seed=args.seed,
            cells_per_field=args.cells_per_field,
            atypical_per_field=args.atypical_per_field,
            cin1_in_cin2_field=args.cin1_in_cin2_field,
            images_per_patient=args.images_per_patient,
            scale=args.scale,
            width=args.width,
            height=args.height,
        )
        masks = MaskSpec(args.masks, args.mask_suffix, args.mask_background) if args.masks else None
        start = time.perf_counter()
        out = generate_mosaics(
            args.cells,
            read_mapping(args.mapping),
            args.out,
            config,
            masks=masks,
            progress=args.progress,
        )
        print(summary(out, time.perf_counter() - start))
    except MilCytoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
