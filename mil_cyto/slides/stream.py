"""A slide's instances as a stream of small chunks, in bounded memory.

The slide is visited in ``chunk`` x ``chunk`` working-pixel cells, in raster order; a cell
the overview's region map does not touch is never read. Inside a cell the instances are found
as in a photo (:mod:`mil_cyto.data.instances`): grid tiles kept by the photos' tissue test
(one threshold for the slide, from the overview), or one crop per nucleus detected there.
Boxes are in working pixels of the whole slide (the slide at ``um_per_px``), as a photo's
boxes are in its own pixels; the bag store records the factor to level 0.

Memory: one read region (about ``chunk`` squared working pixels, times the level's
oversampling) and at most ``max_tiles`` cut tiles per yielded chunk; never a whole level.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from mil_cyto.data.cells import NucleusConfig, centred_boxes, detect_nuclei
from mil_cyto.data.tiling import TilingConfig, _starts, grey_levels, open_cross, tissue_fraction
from mil_cyto.errors import MilCytoError
from mil_cyto.slides.config import SlideConfig
from mil_cyto.slides.reader import SlideReader, open_slide
from mil_cyto.slides.regions import RegionMap, find_regions
from mil_cyto.slides.resolution import LevelChoice, choose_level, read_working

T = TypeVar("T")
R = TypeVar("R")

PHOTO_AREA_PX = 800 * 600
"""The reference photo's area: ``NucleusConfig.max_cells`` is per this many working pixels."""


@dataclass
class InstanceChunk:
    """``tiles`` ``(n, T, T, 3)`` uint8 (channels last) and their ``coords`` ``(n, 4)``
    int32 ``x0, y0, x1, y1`` in working pixels of the slide."""

    tiles: np.ndarray
    coords: np.ndarray


@dataclass
class SlideStream:
    """One slide, opened and planned: its level choice, region map and instance chunks.

    Iterate :meth:`chunks` once; ``n_instances`` counts what was yielded so far.
    """

    reader: SlideReader
    tiling: TilingConfig
    config: SlideConfig
    choice: LevelChoice = field(init=False)
    regions: RegionMap = field(init=False)
    n_instances: int = field(init=False, default=0)
    max_tiles: int = 1024

    def __post_init__(self) -> None:
        self.choice = choose_level(self.reader, self.config.um_per_px, self.config.tolerance)
        width, height = self.choice.size
        if width < self.tiling.tile_size or height < self.tiling.tile_size:
            raise MilCytoError(
                f"slide {self.reader.path} is {width}x{height} px at "
                f"{self.config.um_per_px} um/px, smaller than one {self.tiling.tile_size}-px "
                "tile; use a smaller --tile-size or --um-per-px"
            )
        self.regions = find_regions(self.reader, self.config)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> SlideStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> tuple[int, int]:
        """The slide at the working resolution, ``(H, W)`` px (a photo's ``size`` order)."""
        return self.choice.size[1], self.choice.size[0]

    def attrs(self) -> dict[str, object]:
        """What the bag store records about the slide's geometry."""
        mpp = self.reader.mpp or (0.0, 0.0)
        return {
            "um_per_px": self.config.um_per_px,
            "level": self.choice.level,
            "level0_mpp": list(mpp),
            "level0_per_px": list(self.choice.level0_per_px),
            "level0_size": list(self.reader.level_dimensions[0]),
            "region_fraction": round(self.regions.fraction, 6),
        }

    def chunks(self, workers: int = 1) -> Iterator[InstanceChunk]:
        """The slide's instances, chunk by chunk, raster order (empty cells skipped).

        ``workers`` > 1 reads and searches that many cells at once on threads (decoding,
        resampling and the nucleus search release the GIL in part), at most ``workers + 1``
        cells ahead of the consumer; the order stays the same.

        Raises:
            MilCytoError: naming the slide, when no instance is found anywhere (empty bag).
        """
        find = self._cells if self.tiling.instances == "cells" else self._grid

        def visit(cell: tuple[int, int]) -> list[InstanceChunk]:
            return list(find(*cell))

        for parts in _ordered_map(visit, self._cells_to_visit(), workers):
            for part in parts:
                self.n_instances += len(part.coords)
                yield part
        if self.n_instances == 0:
            what = "nucleus" if self.tiling.instances == "cells" else "tissue tile"
            raise MilCytoError(
                f"slide {self.reader.path}: no {what} found (empty bag, "
                f"{self.regions.fraction:.1%} of the slide looked stained at low resolution); "
                "check the slide or use --instances grid / a lower --min-tissue"
            )

    def _cells_to_visit(self) -> Iterator[tuple[int, int]]:
        width, height = self.choice.size
        c = self.config.chunk
        for cy in range(0, height, c):
            for cx in range(0, width, c):
                box = np.array([[cx, cy, min(cx + c, width), min(cy + c, height)]])
                if self.regions.overlaps(box)[0]:
                    yield cx, cy

    def _split(
        self, region: np.ndarray, local: np.ndarray, offset: np.ndarray
    ) -> Iterator[InstanceChunk]:
        """Cut ``local`` boxes from ``region`` at most ``max_tiles`` at a time."""
        size = self.tiling.tile_size
        for start in range(0, len(local), self.max_tiles):
            part = local[start : start + self.max_tiles]
            tiles = np.empty((len(part), size, size, 3), dtype=np.uint8)
            for k, (x0, y0, x1, y1) in enumerate(part):
                tiles[k] = region[y0:y1, x0:x1]
            yield InstanceChunk(tiles, (part + offset).astype(np.int32))

    def _grid(self, cx: int, cy: int) -> Iterator[InstanceChunk]:
        """Grid tiles whose start lies in the cell, kept by the photos' tissue test (with
        the slide's one threshold, so every cell is judged alike)."""
        width, height = self.choice.size
        size, stride, c = self.tiling.tile_size, self.tiling.stride, self.config.chunk
        xs, ys = _starts(width, size, stride), _starts(height, size, stride)
        xs = xs[(xs >= cx) & (xs < cx + c)]
        ys = ys[(ys >= cy) & (ys < cy + c)]
        if len(xs) == 0 or len(ys) == 0:
            return
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        x0, y0 = xx.ravel(), yy.ravel()
        coords = np.stack([x0, y0, x0 + size, y0 + size], axis=1).astype(np.int64)
        coords = coords[self.regions.overlaps(coords)]
        if len(coords) == 0:
            return
        rx0, ry0 = int(coords[:, 0].min()), int(coords[:, 1].min())
        rx1, ry1 = int(coords[:, 2].max()), int(coords[:, 3].max())
        region = read_working(self.reader, self.choice, rx0, ry0, rx1 - rx0, ry1 - ry0)
        local = coords - np.array([rx0, ry0, rx0, ry0])
        tissue = open_cross(grey_levels(region) <= self.regions.threshold)
        keep = tissue_fraction(tissue, local) >= self.tiling.min_tissue
        yield from self._split(region, local[keep], np.array([rx0, ry0, rx0, ry0]))

    def _cells(self, cx: int, cy: int) -> Iterator[InstanceChunk]:
        """One crop per nucleus whose centre lies in the cell and on the region map; only
        the cell's part under the map is searched, read with a halo of half a crop and the
        nuclei's least distance, so crops at its edge are whole."""
        width, height = self.choice.size
        size, c = self.tiling.tile_size, self.config.chunk
        core = self.regions.clip((cx, cy, min(cx + c, width), min(cy + c, height)))
        if core is None:
            return
        halo = size // 2 + NucleusConfig().min_distance  # a whole crop, and peaks' context
        rx0, ry0 = max(0, core[0] - halo), max(0, core[1] - halo)
        rx1, ry1 = min(width, core[2] + halo), min(height, core[3] + halo)
        if rx1 - rx0 < size or ry1 - ry0 < size:
            return
        region = read_working(self.reader, self.choice, rx0, ry0, rx1 - rx0, ry1 - ry0)
        base = NucleusConfig()
        scale = (rx1 - rx0) * (ry1 - ry0) / PHOTO_AREA_PX
        nuclei = NucleusConfig(
            base.min_area, base.sigma, base.min_distance, max(1, int(base.max_cells * scale))
        )
        found = detect_nuclei(region, nuclei)
        if len(found) == 0:
            return
        centres = found[:, :2] + np.array([rx0, ry0])
        inside = (
            (centres[:, 0] >= cx)
            & (centres[:, 0] < cx + c)
            & (centres[:, 1] >= cy)
            & (centres[:, 1] < cy + c)
        )
        inside &= self.regions.contains(centres)
        if not inside.any():
            return
        local = centred_boxes(found[inside, :2], size, ry1 - ry0, rx1 - rx0).astype(np.int64)
        yield from self._split(region, local, np.array([rx0, ry0, rx0, ry0]))


def _ordered_map(fn: Callable[[T], R], items: Iterator[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, at most ``workers + 1`` ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mil-cyto-slide") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def open_stream(path: Path, tiling: TilingConfig, config: SlideConfig | None = None) -> SlideStream:
    """Open the slide at ``path`` and plan its instances (raises MilCytoError naming it)."""
    config = config or SlideConfig()
    reader = open_slide(path, config.reader)
    try:
        return SlideStream(reader, tiling, config)
    except BaseException:
        reader.close()
        raise
