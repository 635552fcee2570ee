"""``mil-cyto mosaic`` (``python -m mil_cyto.mosaic``): fields composed of real cell crops.

Example (the Herlev cells, masks beside them)::

    mil-cyto mosaic --cells $MIL_CYTO_DATA/herlev \\
        --mapping benchmarks/herlev_mapping.csv --out data/herlev-mosaic \\
        --n-images 300 --seed 0 --masks masks --mask-suffix=-d --mask-background 1,4

``--cells`` holds one folder per class of crops (any format PIL reads, any sizes);
``--mapping`` is a CSV ``folder,grade`` with grade ``normal``, ``CIN1``, ``CIN2+`` or
``drop``. Writes ``DIR/images/*.png``, ``DIR/manifest.csv`` (with a ``split`` column that
``mil-cyto train`` honours: no crop is in two splits), ``DIR/cells.csv``,
``DIR/placements.csv`` (which crop each cell is), ``DIR/cell_splits.csv`` and
``DIR/mosaic_config.json``.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mil_cyto.cli.options import Console, exit_code, from_args, option, out_option, seed_option
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.data.mosaic import (
    CELLS_FILE,
    MANIFEST_FILE,
    MaskSpec,
    MosaicConfig,
    generate_mosaics,
    read_mapping,
)
from mil_cyto.labels import GRADES

PROG = "mil-cyto mosaic"
DESCRIPTION = (
    "Compose field photos from folder-per-class single-cell crops; each field is labelled by "
    "the highest grade it holds and every cell's box is written to cells.csv. Deterministic: "
    "the same crops and settings give identical files."
)


def int_pair(text: str) -> tuple[int, int]:
    """``"20,40"`` -> ``(20, 40)``."""
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH integers, got {text!r}") from None
    return lo, hi


def float_pair(text: str) -> tuple[float, float]:
    """``"0.5,1"`` -> ``(0.5, 1.0)``."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH numbers, got {text!r}") from None
    return lo, hi


def int_list(text: str) -> tuple[int, ...]:
    """``"1,4"`` -> ``(1, 4)``."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4, got {text!r}") from None


def _pair(name: str, help: str, parse: Callable[[str], Any] = int_pair) -> Any:
    """A LOW,HIGH field defaulting to :class:`MosaicConfig`'s ``name``."""
    return option(getattr(MosaicConfig, name), help=help, parse=parse, metavar="LOW,HIGH")


@dataclass
class MosaicOptions:
    """The flags of ``mosaic``; defaults are those of :class:`MosaicConfig`."""

    cells: Path = option(help="folder with one sub-folder of crops per class")
    mapping: Path = option(help="CSV folder,grade (normal/CIN1/CIN2+/drop)")
    out: Path = out_option("output folder (reused if it holds the same set)", required=True)
    n_images: int = option(MosaicConfig.n_images, help="number of field photos")
    seed: int = seed_option("master seed")
    cells_per_field: tuple[int, int] = _pair("cells_per_field", "cells in a field")
    atypical_per_field: tuple[int, int] = _pair(
        "atypical_per_field", "cells of the field's grade in an abnormal field"
    )
    cin1_in_cin2_field: tuple[int, int] = _pair(
        "cin1_in_cin2_field", "extra CIN1 cells in a CIN2+ field"
    )
    images_per_patient: tuple[int, int] = _pair("images_per_patient", "fields per virtual patient")
    scale: tuple[float, float] = _pair("scale", "rescale range within 0.5,2", float_pair)
    width: int = option(MosaicConfig.width, help="field width in px (0: 10 crop sides)")
    height: int = option(MosaicConfig.height, help="field height in px (0: 7.5 crop sides)")
    masks: str | None = option(
        None, help="mask folder (relative to --cells or absolute), same class folders"
    )
    mask_suffix: str = option("", help="mask name = crop stem + suffix (e.g. -d)")
    mask_background: tuple[int, ...] = option(
        (0,), help="mask values that are background", parse=int_list, metavar="V,V,..."
    )

    def mosaic_config(self) -> MosaicConfig:
        """The mosaic set these options describe."""
        return MosaicConfig(
            n_images=self.n_images,
            seed=self.seed,
            cells_per_field=self.cells_per_field,
            atypical_per_field=self.atypical_per_field,
            cin1_in_cin2_field=self.cin1_in_cin2_field,
            images_per_patient=self.images_per_patient,
            scale=self.scale,
            width=self.width,
            height=self.height,
        )

    def mask_spec(self) -> MaskSpec | None:
        """Where the crops' masks are (None: ellipses)."""
        if not self.masks:
            return None
        return MaskSpec(self.masks, self.mask_suffix, self.mask_background)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`MosaicOptions` field, plus ``--quiet`` (alias ``--no-progress``)."""
    return generated_parser(prog, DESCRIPTION, MosaicOptions)


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


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser(prog).parse_args(argv)
    options = from_args(MosaicOptions, args)
    quiet = from_args(Console, args).quiet

    def run() -> int:
        config = options.mosaic_config()
        start = time.perf_counter()
        out = generate_mosaics(
            options.cells,
            read_mapping(options.mapping),
            options.out,
            config,
            masks=options.mask_spec(),
            progress=not quiet,
        )
        print(summary(out, time.perf_counter() - start))
        return 0

    return exit_code(run)
