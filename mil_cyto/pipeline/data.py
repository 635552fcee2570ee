"""The data stage: the data folder (or the built-in synthetic set), its manifest, cell boxes
and split; the run folder's ``config.json`` and ``splits.json``; photos cut into bags."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil_cyto import __version__
from mil_cyto.config import TrainConfig, default_cache_dir
from mil_cyto.data.bags import Bag, load_bags
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.pixel_size import resolve_pixel_size
from mil_cyto.data.splits import Split, fixed_split, train_val_test_split
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.distributed import main_first
from mil_cyto.features.decoding import DecodingProcesses
from mil_cyto.io import write_json
from mil_cyto.localization import read_cell_boxes
from mil_cyto.pipeline.runtime import Runtime


@dataclass(frozen=True)
class RunData:
    """``folder``: the data folder; ``rows``: its manifest; ``split``: indexes of ``rows``
    per split; ``boxes``: atypical cells' boxes per photo (``cells.csv``; never used to
    train), or None; ``resolved``: the settings as ``config.json`` records them."""

    folder: Path
    rows: list[ManifestRow]
    split: Split
    boxes: dict[str, np.ndarray] | None
    resolved: dict[str, Any]

    def ids(self, rows: Sequence[ManifestRow]) -> list[str]:
        """The image ids of ``rows``, in order."""
        return [r.image_id for r in rows]


def resolve_data(config: TrainConfig, progress: bool) -> Path:
    """The data folder: ``config.data``, or the built-in synthetic set (built once, cached)."""
    if config.data:
        return Path(config.data).expanduser().resolve()
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset

    synth = SynthConfig(n_images=config.synthetic_images, seed=config.synthetic_seed)
    target = default_cache_dir() / f"synthetic-n{synth.n_images}-s{synth.seed}"
    return generate_dataset(target, synth, workers=config.workers, progress=progress)


def load_data(config: TrainConfig, runtime: Runtime) -> RunData:
    """The run's photos: the data folder (built by rank 0 first), its manifest (each row with
    its pixel size, :func:`~mil_cyto.data.pixel_size.resolve_pixel_size`) and cell boxes,
    and the manifest's ``split`` column or else the patient-disjoint split."""
    with main_first(runtime.ctx):
        folder = resolve_data(config, runtime.progress)
    rows = read_manifest(folder / "manifest.csv", label_column=config.label_column)
    rows, pixel_size = resolve_pixel_size(rows, config.um_per_px, folder)
    cells_path = Path(config.cells) if config.cells else folder / "cells.csv"
    boxes = read_cell_boxes(cells_path) if cells_path.is_file() else None
    split = fixed_split([r.split for r in rows], where=str(folder / "manifest.csv"))
    if split is None:  # no 'split' column: the patient-disjoint split
        split = train_val_test_split(
            [r.label for r in rows], [r.patient_id for r in rows], seed=config.split_seed
        )
    resolved = {
        **config.to_dict(),
        "data_resolved": str(folder),
        "pixel_size": pixel_size.to_dict(),
        "mil_cyto_version": __version__,
    }
    return RunData(folder, rows, split, boxes, resolved)


def write_run_start(runtime: Runtime, data: RunData) -> None:
    """``config.json`` (the resolved settings) and ``splits.json`` (photos per split), by
    rank 0."""
    if not runtime.ctx.is_main:
        return
    write_json(runtime.run_dir / "config.json", data.resolved)
    splits = {
        name: [data.rows[i].image_id for i in getattr(data.split, name)]
        for name in ("train", "val", "test")
    }
    write_json(runtime.run_dir / "splits.json", splits)


def decoding(config: TrainConfig) -> contextlib.AbstractContextManager[Any]:
    """A pool of ``--decode-processes`` decoding processes for one stage, or None (threads)."""
    if config.decode_processes > 0:
        return DecodingProcesses(config.decode_processes)
    return contextlib.nullcontext()


def tile_photos(
    config: TrainConfig, tiling: TilingConfig, progress: bool, *row_lists: Sequence[ManifestRow]
) -> list[list[Bag]]:
    """Each list of photos cut into bags of instances, on one decoding pool."""
    with decoding(config) as pool:
        return [
            load_bags(rows, tiling, workers=config.workers, progress=progress, pool=pool)
            for rows in row_lists
        ]
