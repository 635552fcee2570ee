"""HDF5 bag store: ``/bags/<key>/features`` ``(N, D)`` float32 and ``coords`` ``(N, 4)``.

Root attributes record provenance (encoder spec, tiling, package version). Writing goes to
``<name>.partial`` and is renamed when every photo is in, so a finished store is never
half-written; an interrupted extraction resumes from the photos already complete.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from mil_cyto.data.bags import Bag, load_bag
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError


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


def _prefetch(
    rows: Sequence[ManifestRow], tiling: TilingConfig, workers: int, depth: int = 4
) -> Iterator[Bag]:
    """Decode and tile photos on worker threads, at most ``depth`` ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[Future[Bag]] = deque()
        queue = iter(rows)
        for row in queue:
            pending.append(pool.submit(load_bag, row, tiling))
            if len(pending) >= depth:
                break
        while pending:
            bag = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(load_bag, nxt, tiling))
            yield bag


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


@torch.inference_mode()
def extract_to_store(
    rows: Sequence[ManifestRow],
    encoder: TileEncoder,
    out_path: Path,
    *,
    tiling: TilingConfig,
    provenance: dict[str, Any],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Embed every photo's tiles with a frozen encoder and write a bag store.

    Returns ``out_path`` at once when it already holds these photos with this provenance.
    """
    out_path = Path(out_path)
    provenance = {**provenance, "tiling": vars(tiling)}
    provenance_json = json.dumps(provenance, sort_keys=True)
    if out_path.exists():
        with BagStore(out_path) as store:
            same = json.dumps(store.provenance, sort_keys=True) == provenance_json
            if same and all(r.image_id in store for r in rows):
                return out_path
        raise MilCytoError(
            f"{out_path} holds other features (different encoder, tiling or photos); "
            "delete it or choose another --features path"
        )
    partial = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.to(device).eval()
    handle = _open_partial(partial, provenance_json)
    try:
        done = handle["bags"]
        todo = [r for r in rows if not _is_complete(done, bag_key(r.image_id))]
        bar = tqdm(
            total=len(rows),
            initial=len(rows) - len(todo),
            desc="extracting",
            unit="photo",
            disable=not progress,
        )
        for bag in _prefetch(todo, tiling, workers):
            tiles = torch.from_numpy(bag.tiles)
            feats = torch.cat(
                [encoder(t.to(device)).float().cpu() for t in tiles.split(batch_size)]
            )
            key = bag_key(bag.image_id)
            if key in handle["bags"]:
                del handle["bags"][key]
            group = handle["bags"].create_group(key)
            group.create_dataset("features", data=feats.numpy())
            group.create_dataset("coords", data=bag.coords)
            group.attrs["image_id"] = bag.image_id
            group.attrs["size"] = bag.size
            group.attrs["complete"] = True
            handle.flush()
            bar.update(1)
        bar.close()
    finally:
        handle.close()
    os.replace(partial, out_path)
    return out_path
