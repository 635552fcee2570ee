"""HDF5 bag store: ``/bags/<key>/features`` ``(N, D)`` float32 and ``coords`` ``(N, 4)``.

Root attributes record provenance (encoder spec, tiling, package version). Writing goes to
``<name>.partial`` and is renamed when every photo is in, so a finished store is never
half-written; an interrupted extraction resumes from the photos already complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.devices import precision_name
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features.decoding import DecodingProcesses
from mil_cyto.features.extraction import (
    EncoderRunner,
    PhotoFeatures,
    embed_instances,
    embed_photos,
    load_photo,
)
from mil_cyto.io import atomic_path
from mil_cyto.slides import SlideConfig, is_slide_file, open_stream

STORE_FORMAT = 2
"""Part of every store's provenance; bumped when the instances a tiling yields change, so that
a stale store is not reused (2: frozen extraction honours ``instances="cells"``, which
version 1 cut as grid tiles)."""


def store_provenance(provenance: dict[str, Any], tiling: TilingConfig) -> dict[str, Any]:
    """The provenance a store records: the encoder's ``provenance``, the tiling, the format."""
    return {**provenance, "tiling": vars(tiling), "store_format": STORE_FORMAT}


def bag_key(image_id: str) -> str:
    """HDF5-safe group name for an image id (``/`` would nest groups)."""
    return image_id.replace("/", "__")


class BagStore:
    """Read access to a finished store: ``store[image_id] -> (features, coords)``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise MilCytoError(
                f"cannot open bag store {self.path} ({err}); re-extract it"
            ) from None
        self.provenance: dict[str, Any] = json.loads(self._file.attrs.get("provenance", "{}"))

    def __contains__(self, image_id: str) -> bool:
        return f"bags/{bag_key(image_id)}" in self._file

    def __getitem__(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        group = self._file[f"bags/{bag_key(image_id)}"]
        return group["features"][()], group["coords"][()]

    def size(self, image_id: str) -> tuple[int, int]:
        """The photo's ``(H, W)`` in pixels."""
        h, w = self._file[f"bags/{bag_key(image_id)}"].attrs["size"]
        return int(h), int(w)

    def slide(self, image_id: str) -> dict[str, Any] | None:
        """A whole-slide image's geometry (``um_per_px`` of the coords, ``level0_per_px``:
        level-0 pixels per coords pixel, ``level``, ``level0_size``...), None for a photo."""
        text = self._file[f"bags/{bag_key(image_id)}"].attrs.get("slide")
        return None if text is None else json.loads(text)

    def image_ids(self) -> list[str]:
        return [str(g.attrs["image_id"]) for g in self._file["bags"].values()]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> BagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_complete(bags: h5py.Group, key: str) -> bool:
    return key in bags and bool(bags[key].attrs.get("complete", False))


def _open_partial(partial: Path, provenance_json: str) -> h5py.File:
    """Open (or start) the partial store; a corrupt or foreign partial file starts over."""
    if partial.exists():
        try:
            handle = h5py.File(partial, "a")
            if handle.attrs.get("provenance") == provenance_json:
                return handle
            handle.close()
        except OSError:
            pass
        partial.unlink()
    handle = h5py.File(partial, "w")
    handle.attrs["provenance"] = provenance_json
    handle.create_group("bags")
    return handle


def store_matches(out_path: Path, rows: Sequence[ManifestRow], provenance: dict[str, Any]) -> bool:
    """True when ``out_path`` is a finished store of these photos with this ``provenance``
    (tiling included); False when it does not exist; a MilCytoError when it holds others."""
    out_path = Path(out_path)
    if not out_path.exists():
        return False
    with BagStore(out_path) as store:
        same = _canonical(store.provenance) == _canonical(provenance)
        if same and all(r.image_id in store for r in rows):
            return True
    raise MilCytoError(
        f"{out_path} holds other features (different encoder, tiling or photos); "
        "delete it or choose another --features path"
    )


def _canonical(provenance: dict[str, Any]) -> str:
    return json.dumps(provenance, sort_keys=True)


def merge_stores(parts: Sequence[Path], out_path: Path) -> Path:
    """Join finished stores of disjoint photos (one per rank) into ``out_path``, atomically.

    Every part must carry the same provenance; bag groups are copied as they are, so the
    result reads exactly like a store written by one process.
    """
    out_path = Path(out_path)
    provenance_json: str | None = None
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as merged:
        bags = merged.create_group("bags")
        for part in parts:
            with h5py.File(part, "r") as source:
                here = _canonical(json.loads(source.attrs.get("provenance", "{}")))
                if provenance_json is None:
                    provenance_json = here
                    merged.attrs["provenance"] = here
                elif here != provenance_json:
                    raise MilCytoError(f"{part}: other provenance than {parts[0]}; re-extract")
                for key in source["bags"]:
                    if key in bags:
                        raise MilCytoError(f"{part}: photo {key!r} is in two shards")
                    source.copy(source["bags"][key], bags, name=key)
    return out_path


def extract_to_store(
    rows: Sequence[ManifestRow],
    encoder: TileEncoder | EncoderRunner,
    out_path: Path,
    *,
    tiling: TilingConfig,
    provenance: dict[str, Any],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    workers: int = 2,
    progress: bool = True,
    compile: str | bool = "off",
    amp: bool | None = None,
    known_coords: Mapping[str, np.ndarray] | None = None,
    decoder: DecodingProcesses | None = None,
    slides: SlideConfig | None = None,
) -> Path:
    """Embed every photo's tiles with a frozen encoder and write a bag store.

    Tiles are batched across photos and decoded on a background thread (see
    :mod:`mil_cyto.features.extraction`); ``compile`` (``off``/``auto``/``on``) and ``amp``
    (fp16 on CUDA, its default there; bf16 on a CPU with native bf16, opt-in; either recorded
    as ``precision`` in the provenance) are passed to
    :class:`~mil_cyto.features.extraction.EncoderRunner`; a runner given as ``encoder``
    (already compiled and warm) is used as it is.
    ``known_coords``: instance boxes already found for some photos with this ``tiling``
    (image id -> ``(N, 4)``), reused instead of detecting their nuclei again. ``decoder``:
    decode photos on these processes instead of ``workers`` threads (for a GPU, where
    decoding is the bottleneck); the features are the same.
    Rows whose image is a whole-slide image (:func:`~mil_cyto.slides.is_slide_file`) are read
    lazily at ``slides.um_per_px`` (default :class:`~mil_cyto.slides.SlideConfig`), only in
    their cell-rich regions, and streamed into their bag a batch at a time; their coords are
    in pixels of that working resolution, the bag's ``slide`` attribute gives the factor to
    level 0. The slide settings join the provenance when any row is a slide.
    Returns ``out_path`` at once when it already holds these photos with this provenance.
    """
    out_path = Path(out_path)
    slide_ids = {r.image_id for r in rows if is_slide_file(r.image)}
    if slide_ids:
        slides = slides or SlideConfig()
    runner = _as_runner(encoder, device, compile=compile, amp=amp)
    provenance = _full_provenance(provenance, runner, tiling, slides if slide_ids else None)
    if store_matches(out_path, rows, provenance):
        return out_path
    job = _Job(runner, tiling, batch_size, workers, known_coords, decoder, slides)
    with _partial_store(out_path, provenance) as handle:
        _write_missing(handle, rows, slide_ids, job, progress=progress)
    return out_path


@dataclass(frozen=True)
class _Job:
    """What :func:`extract_to_store` embeds with: its runner, tiling and settings."""

    runner: EncoderRunner
    tiling: TilingConfig
    batch_size: int
    workers: int
    known_coords: Mapping[str, np.ndarray] | None
    decoder: DecodingProcesses | None
    slides: SlideConfig | None


def _as_runner(
    encoder: TileEncoder | EncoderRunner,
    device: torch.device | str,
    *,
    compile: str | bool,
    amp: bool | None,
) -> EncoderRunner:
    """``encoder`` itself when it is a runner, else a new runner for it (compiles lazily)."""
    if isinstance(encoder, EncoderRunner):
        return encoder
    return EncoderRunner(encoder, device, compile=compile, amp=amp)


def _full_provenance(
    provenance: dict[str, Any],
    runner: EncoderRunner,
    tiling: TilingConfig,
    slides: SlideConfig | None,
) -> dict[str, Any]:
    """The store's provenance: ``provenance`` plus the slide settings (``slides``, None when
    no row is a slide), the runner's precision when not float32, the tiling and the format."""
    if slides is not None:
        provenance = {**provenance, "slides": vars(slides)}
    if runner.dtype is not None:  # fp16/bf16 features are not float32's: never in one store
        provenance = {**provenance, "precision": precision_name(runner.dtype)}
    return store_provenance(provenance, tiling)


@contextmanager
def _partial_store(out_path: Path, provenance: dict[str, Any]) -> Iterator[h5py.File]:
    """The open ``<out_path>.partial`` store (resumed or started); closed on exit, and
    renamed to ``out_path`` when the block finished without an error."""
    partial = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle = _open_partial(partial, json.dumps(provenance, sort_keys=True))
    try:
        yield handle
    finally:
        handle.close()
    os.replace(partial, out_path)


def _write_missing(
    handle: h5py.File,
    rows: Sequence[ManifestRow],
    slide_ids: set[str],
    job: _Job,
    *,
    progress: bool,
) -> None:
    """Embed and write every row whose bag is not complete in ``handle``: the photos first
    (batched across photos), then the whole-slide images (``slide_ids``), one at a time."""
    done = handle["bags"]
    todo = [r for r in rows if not _is_complete(done, bag_key(r.image_id))]
    if not todo:
        return
    bar = tqdm(
        total=len(rows),
        initial=len(rows) - len(todo),
        desc="extracting",
        unit="photo",
        disable=not progress,
    )
    photos = embed_photos(
        [r for r in todo if r.image_id not in slide_ids],
        job.runner,
        job.tiling,
        batch_size=job.batch_size,
        workers=job.workers,
        loader=load_photo,
        known=job.known_coords,
        decoder=job.decoder,
    )
    for photo in photos:
        _write_bag(handle, photo)
        bar.update(1)
    for row in todo:
        if row.image_id in slide_ids:
            assert job.slides is not None
            _write_slide_bag(
                handle, row, job.runner, job.tiling, job.slides, job.batch_size, job.workers
            )
            bar.update(1)
    bar.close()


def _write_bag(handle: h5py.File, photo: PhotoFeatures) -> None:
    """Write one photo's group; ``complete`` is set last, then the file is flushed."""
    key = bag_key(photo.row.image_id)
    if key in handle["bags"]:
        del handle["bags"][key]
    group = handle["bags"].create_group(key)
    group.create_dataset("features", data=photo.features)
    group.create_dataset("coords", data=photo.coords)
    group.attrs["image_id"] = photo.row.image_id
    group.attrs["size"] = photo.size
    group.attrs["complete"] = True
    handle.flush()


def _write_slide_bag(
    handle: h5py.File,
    row: ManifestRow,
    runner: EncoderRunner,
    tiling: TilingConfig,
    slides: SlideConfig,
    batch_size: int,
    workers: int,
) -> None:
    """Stream one whole-slide image's instances into its group, a batch at a time
    (resizable datasets), so the bag is never held in memory; ``complete`` is set last.
    ``workers``: threads reading and searching the slide's chunks."""
    key = bag_key(row.image_id)
    if key in handle["bags"]:
        del handle["bags"][key]
    group = handle["bags"].create_group(key)
    dim = runner.out_dim
    feats = group.create_dataset(
        "features", shape=(0, dim), maxshape=(None, dim), dtype=np.float32, chunks=(1024, dim)
    )
    boxes = group.create_dataset(
        "coords", shape=(0, 4), maxshape=(None, 4), dtype=np.int32, chunks=(4096, 4)
    )
    with open_stream(row.image, tiling, slides) as stream:
        parts = ((c.tiles, c.coords) for c in stream.chunks(workers))
        for out, coords in embed_instances(parts, runner, batch_size=batch_size):
            n = feats.shape[0]
            feats.resize(n + len(out), axis=0)
            boxes.resize(n + len(out), axis=0)
            feats[n:] = out
            boxes[n:] = coords
        group.attrs["image_id"] = row.image_id
        group.attrs["size"] = stream.size
        group.attrs["slide"] = json.dumps(stream.attrs(), sort_keys=True)
    group.attrs["complete"] = True
    handle.flush()
