"""Recall of the nucleus detector behind ``--instances cells`` against ``cells.csv``.

A cell counts as found when a detected nucleus centre lies inside its box. Prints the share
of all cells and of atypical cells found, and detections per annotated cell.

    python benchmarks/cell_detection.py --data ~/.cache/mil_cyto/synthetic-n300-s0 --photos 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mil_cyto.data.cells import detect_nuclei
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import read_manifest
from mil_cyto.localization import read_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="folder with manifest.csv, cells.csv"
    )
    parser.add_argument("--photos", type=int, default=30, help="first N photos of the manifest")
    args = parser.parse_args()
    rows = read_manifest(args.data / "manifest.csv")[: args.photos]
    cells = read_cells(args.data / "cells.csv")
    found = total = atypical_found = atypical = detections = 0
    for row in rows:
        centres = detect_nuclei(load_rgb(row.image))  # (K, 3): x, y, density
        detections += len(centres)
        x, y = centres[:, 0], centres[:, 1]
        for cell in cells.get(row.image_id, []):
            x0, y0, x1, y1 = cell.box
            hit = bool(((x >= x0) & (x < x1) & (y >= y0) & (y < y1)).any())
            total += 1
            found += hit
            atypical += cell.atypical
            atypical_found += hit and cell.atypical
    print(
        f"{len(rows)} photos: cells found {found}/{total} = {found / max(total, 1):.3f}; "
        f"atypical {atypical_found}/{atypical} = {atypical_found / max(atypical, 1):.3f}; "
        f"detections per cell {detections / max(total, 1):.2f}"
    )


if __name__ == "__main__":
    main()
