"""Photos listed in a manifest -> in-memory bags of uint8 tiles with their coordinates."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mil_cyto.data.instances import load_instances
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import TilingConfig


@dataclass
class Bag:
    """One photo as a bag: ``tiles`` ``(N, 3, T, T)`` uint8, ``coords`` ``(N, 4)`` int32
    ``x0, y0, x1, y1`` pixels, ``label`` the grade index, ``size`` ``(H, W)`` of the photo."""

    image_id: str
    patient_id: str
    label: int
    tiles: np.ndarray
    coords: np.ndarray
    size: tuple[int, int]


def load_bag(row: ManifestRow, tiling: TilingConfig) -> Bag:
    """Read, convert and tile one photo at the working pixel size; boxes and size in the
    photo's own pixels (raises MilCytoError naming the file on bad input)."""
    tiles, coords, size = load_instances(row, tiling)
    return Bag(row.image_id, row.patient_id, row.label, tiles, coords, size)


def load_bags(
    rows: Sequence[ManifestRow],
    tiling: TilingConfig,
    *,
    workers: int = 2,
    progress: bool = True,
    desc: str = "tiling photos",
    pool: Executor | None = None,
) -> list[Bag]:
    """Tile every photo on ``workers`` threads (PNG/JPEG decoding releases the GIL, so
    threads overlap it), or on ``pool`` (e.g. decoding processes; the caller owns it)."""
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers)))
        jobs = pool.map(load_bag, rows, itertools.repeat(tiling))
        return list(tqdm(jobs, total=len(rows), desc=desc, disable=not progress, unit="photo"))
