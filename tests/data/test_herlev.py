"""The real Herlev cells (``$MIL_CYTO_DATA/herlev``): the repository's mapping and masks
give mosaic fields. Skipped, with the reason, when the data are not there."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mil_cyto.data.mosaic import (
    MaskSpec,
    MosaicConfig,
    generate_mosaics,
    load_sprite,
    read_mapping,
    scan_cells,
)

REPO = Path(__file__).resolve().parents[2]
MAPPING = REPO / "benchmarks" / "herlev_mapping.csv"
MASKS = MaskSpec("masks", "-d", (1, 4))  # red (4) and grey (1) are background in Herlev


@pytest.fixture(scope="module")
def herlev() -> Path:
    root = os.environ.get("MIL_CYTO_DATA")
    if not root:
        pytest.skip("MIL_CYTO_DATA is not set (the folder holding herlev/); .ci/run sets it")
    path = Path(root) / "herlev"
    if not path.is_dir():
        pytest.skip(f"no Herlev cells at {path} (MIL_CYTO_DATA={root})")
    return path


def test_mapping_covers_herlev(herlev: Path) -> None:
    crops = scan_cells(herlev, read_mapping(MAPPING))
    assert len(crops) == 917
    assert Counter(c.grade for c in crops) == {"normal": 242, "CIN1": 182, "CIN2+": 493}


def test_masks_cut_the_cells_out(herlev: Path) -> None:
    crops = scan_cells(herlev, read_mapping(MAPPING))[::25]
    inside, outside = [], []
    for crop in crops:
        sprite = load_sprite(herlev, crop, MASKS)
        masked = sprite.alpha > 0.5
        assert 0.05 < masked.mean() < 0.999  # a cell, not the whole crop
        inside.append(sprite.od[masked].mean())
        outside.append(sprite.od[~masked].mean())
    # on the whole the cells are denser than what the masks cut away (a few pale cells
    # next to dense neighbours are not, so this is checked over the sample)
    assert np.mean(inside) > 1.5 * np.mean(outside)
    assert np.mean(np.array(inside) > np.array(outside)) > 0.8


def test_herlev_mosaics(herlev: Path, tmp_path: Path) -> None:
    config = MosaicConfig(n_images=12, seed=0)  # the default field settings
    out = generate_mosaics(
        herlev, read_mapping(MAPPING), tmp_path / "m", config, masks=MASKS, progress=False
    )
    with (out / "manifest.csv").open() as f:
        manifest = list(csv.DictReader(f))
    with (out / "cell_splits.csv").open() as f:
        splits = Counter(r["split"] for r in csv.DictReader(f))
    assert sum(splits.values()) == 917 and splits["train"] > splits["val"] > 0
    with (out / "cells.csv").open() as f:
        cells = list(csv.DictReader(f))
    per_image = Counter(c["image"] for c in cells)
    assert all(20 <= per_image[r["image"]] <= 40 for r in manifest)
    widths = {int(c["x1"]) - int(c["x0"]) for c in cells}
    assert max(widths) <= 40  # native 40 px crops, not rescaled
    assert np.mean([r["histology"] != "normal" for r in manifest]) > 0.3
