"""HDF5 bag store: ``/bags/<key>/features`` ``(N, D)`` float32 and ``coords`` ``(N, 4)``.

Root attributes record provenance (encoder spec, tiling, package version). Writing goes to
``<name>.partial`` and is renamed when every photo is in, so a finished store is never
half-written; an interrupted extraction resumes from the photos already complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
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
from mil_cyto.features.extraction import (
    DecodingProcesses,
    EncoderRunner,
    PhotoFeatures,
    embed_photos,
    load_photo,
)
from mil_cyto.io import atomic_path

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
    Returns ``out_path`` at once when it already holds these photos with this provenance.
    """
    out_path = Path(out_path)
    runner = (
        encoder
        if isinstance(encoder, EncoderRunner)
        else EncoderRunner(encoder, device, compile=compile, amp=amp)  # compiles lazily
    )
    if runner.dtype is not None:  # fp16/bf16 features are not float32's: never in one store
        provenance = {**provenance, "precision": precision_name(runner.dtype)}
    provenance = store_provenance(provenance, tiling)
    provenance_json = json.dumps(provenance, sort_keys=True)
    if store_matches(out_path, rows, provenance):
        return out_path
    partial = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle = _open_partial(partial, provenance_json)
    try:
        done = handle["bags"]
        todo = [r for r in rows if not _is_complete(done, bag_key(r.image_id))]
        if todo:
            bar = tqdm(
                total=len(rows),
                initial=len(rows) - len(todo),
                desc="extracting",
                unit="photo",
                disable=not progress,
            )
            photos = embed_photos(
                todo,
                runner,
                tiling,
                batch_size=batch_size,
                workers=workers,
                loader=load_photo,
                known=known_coords,
                decoder=decoder,
            )
            for photo in photos:
                _write_bag(handle, photo)
                bar.update(1)
            bar.close()
    finally:
        handle.close()
    os.replace(partial, out_path)
    return out_path


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
