"""HDF5 bag store: extraction, provenance, cache hits, and resuming an interrupted run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mil_cyto.features.store as store_module
from mil_cyto.data.bags import load_bag
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.tiling import TilingConfig, tile_photo
from mil_cyto.encoders import EncoderSpec, TileEncoder, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features import BagStore, extract_to_store

TILING = TilingConfig(tile_size=32, stride=32, min_tissue=0.05)
PROVENANCE = {"encoder": {"name": "smallcnn", "kwargs": {"width": 4, "out_dim": 8}}}
_REAL_LOAD = store_module.load_photo
IMAGES = ("p0.png", "p1.png", "sub/p2.png", "p3.png", "p4.png")


@pytest.fixture
def rows(tmp_path: Path, blob_photo: Callable[..., np.ndarray], write_png) -> list[ManifestRow]:
    folder = tmp_path / "data"
    lines = ["image,patient_id,histology"]
    for i, name in enumerate(IMAGES):
        rng = np.random.default_rng(i)
        blobs = [
            (int(x), int(y), int(r)) for x, y, r in rng.integers((8, 8, 5), (88, 88, 12), (3, 3))
        ]
        write_png(folder / name, blob_photo(96, 96 + 32 * (i % 2), blobs=blobs, seed=i))
        lines.append(f"{name},pat{i // 2},{['normal', 'CIN1', 'CIN2'][i % 3]}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(folder / "manifest.csv")


@pytest.fixture
def encoder() -> TileEncoder:
    torch.manual_seed(0)
    return create_encoder(EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8})).eval()


def _extract(rows: list[ManifestRow], encoder: TileEncoder, out: Path, **kw) -> Path:
    kw.setdefault("provenance", PROVENANCE)
    kw.setdefault("tiling", TILING)
    return extract_to_store(rows, encoder, out, progress=False, batch_size=4, **kw)


def _count_loads(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> list[str]:
    """Wrap the store's photo loader: record image ids, optionally crash on one photo."""
    calls: list[str] = []
    lock = threading.Lock()

    def counting(row: ManifestRow, tiling: TilingConfig):
        with lock:
            calls.append(row.image_id)
        if row.image_id == fail_on:
            raise RuntimeError("simulated crash while tiling")
        return _REAL_LOAD(row, tiling)

    monkeypatch.setattr(store_module, "load_photo", counting)
    return calls


def _read_all(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with BagStore(path) as store:
        return {i: store[i] for i in store.image_ids()}


def test_extract_features_coords_and_provenance(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    out = _extract(rows, encoder, tmp_path / "feats" / "bags.h5")
    assert out == tmp_path / "feats" / "bags.h5" and out.is_file()
    assert not out.with_name("bags.h5.partial").exists()
    with BagStore(out) as store:
        assert sorted(store.image_ids()) == sorted(IMAGES)
        assert store.provenance == {
            **PROVENANCE,
            "tiling": vars(TILING),
            "store_format": store_module.STORE_FORMAT,
        }
        for row in rows:
            assert row.image_id in store
            features, coords = store[row.image_id]
            image = load_rgb(row.image)
            tiles, expected_coords = tile_photo(image, TILING)
            assert features.dtype == np.float32 and features.shape == (len(tiles), 8)
            np.testing.assert_array_equal(coords, expected_coords)
            with torch.no_grad():
                direct = encoder(torch.from_numpy(tiles)).numpy()
            np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)
            assert store.size(row.image_id) == image.shape[:2]
        assert "ghost.png" not in store
    # '/' in an image id does not nest groups
    with h5py.File(out, "r") as handle:
        assert "sub__p2.png" in handle["bags"]


def test_cell_instances_are_extracted_as_nucleus_crops(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    """With ``instances="cells"`` the store holds one crop per nucleus, the boxes and features
    of the in-memory bags (``load_bag``), not grid tiles (a bug of store format 1)."""
    cells = TilingConfig(tile_size=32, stride=32, min_tissue=0.05, instances="cells")
    out = _extract(rows, encoder, tmp_path / "cells.h5", tiling=cells)
    with BagStore(out) as store:
        assert store.provenance["tiling"]["instances"] == "cells"
        for row in rows:
            features, coords = store[row.image_id]
            bag = load_bag(row, cells)
            grid = tile_photo(load_rgb(row.image), TILING)[1]
            assert not np.array_equal(coords, grid)
            np.testing.assert_array_equal(coords, bag.coords)
            with torch.no_grad():
                direct = encoder(torch.from_numpy(bag.tiles)).numpy()
            np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)


def test_known_coords_are_used_instead_of_searching_again(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    """``known_coords`` (boxes a caller already found with the same tiling) are what the store
    holds for those photos; the other photos are tiled as usual."""
    known = {rows[0].image_id: np.array([[0, 0, 32, 32], [40, 8, 72, 40]], np.int32)}
    out = _extract(rows, encoder, tmp_path / "bags.h5", known_coords=known)
    with BagStore(out) as store:
        np.testing.assert_array_equal(store[rows[0].image_id][1], known[rows[0].image_id])
        grid = tile_photo(load_rgb(rows[1].image), TILING)[1]
        np.testing.assert_array_equal(store[rows[1].image_id][1], grid)


def test_second_call_is_a_cache_hit(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _extract(rows, encoder, tmp_path / "bags.h5")
    before = out.stat().st_mtime_ns
    calls = _count_loads(monkeypatch)
    assert _extract(rows, encoder, out) == out
    assert _extract(rows[:2], encoder, out) == out  # a subset is a hit too
    assert calls == []
    assert out.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "change",
    [
        {"provenance": {"encoder": {"name": "resnet18", "kwargs": {}}}},
        {"tiling": TilingConfig(tile_size=48, stride=48)},
    ],
)
def test_different_provenance_is_refused(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder, change: dict
) -> None:
    out = _extract(rows, encoder, tmp_path / "bags.h5")
    before = out.stat().st_mtime_ns
    with pytest.raises(MilCytoError, match="bags.h5"):
        _extract(rows, encoder, out, **change)
    assert out.stat().st_mtime_ns == before


def test_new_photos_are_refused(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    out = _extract(rows[:3], encoder, tmp_path / "bags.h5")
    with pytest.raises(MilCytoError, match="other features"):
        _extract(rows, encoder, out)


def test_resume_processes_only_the_remaining_photos(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _read_all(_extract(rows, encoder, tmp_path / "clean" / "bags.h5"))

    out = tmp_path / "resumed" / "bags.h5"
    partial = out.with_name("bags.h5.partial")
    _count_loads(monkeypatch, fail_on=IMAGES[2])
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(rows, encoder, out, workers=1)
    assert partial.is_file() and not out.exists()
    with h5py.File(partial, "r") as handle:
        complete = sorted(
            str(g.attrs["image_id"]) for g in handle["bags"].values() if g.attrs.get("complete")
        )
    assert complete == sorted(IMAGES[:2])

    calls = _count_loads(monkeypatch)
    _extract(rows, encoder, out)
    assert sorted(calls) == sorted(IMAGES[2:])
    assert out.is_file() and not partial.exists()
    resumed = _read_all(out)
    assert set(resumed) == set(clean)
    for image_id, (features, coords) in clean.items():
        np.testing.assert_allclose(resumed[image_id][0], features, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(resumed[image_id][1], coords)


def test_partial_of_other_provenance_is_discarded(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bags.h5"
    _count_loads(monkeypatch, fail_on=IMAGES[3])
    with pytest.raises(RuntimeError):
        _extract(rows, encoder, out, workers=1, provenance={"encoder": "something else"})
    calls = _count_loads(monkeypatch)
    _extract(rows, encoder, out)
    assert sorted(calls) == sorted(IMAGES)
    with BagStore(out) as store:
        assert store.provenance["encoder"] == PROVENANCE["encoder"]


def test_corrupt_partial_is_discarded(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _read_all(_extract(rows, encoder, tmp_path / "clean.h5"))
    out = tmp_path / "bags.h5"
    partial = out.with_name("bags.h5.partial")
    partial.write_bytes(np.random.default_rng(0).bytes(4096))
    calls = _count_loads(monkeypatch)
    _extract(rows, encoder, out)
    assert sorted(calls) == sorted(IMAGES)
    assert not partial.exists()
    resumed = _read_all(out)
    assert set(resumed) == set(clean)
    for image_id, (features, _) in clean.items():
        np.testing.assert_allclose(resumed[image_id][0], features, rtol=1e-5, atol=1e-6)


def test_unreadable_photo_stops_with_milcyto_error(
    tmp_path: Path, rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    rows[1].image.write_bytes(b"not a png at all")
    with pytest.raises(MilCytoError, match="p1.png"):
        _extract(rows, encoder, tmp_path / "bags.h5")
    assert not (tmp_path / "bags.h5").exists()


def test_corrupt_store_is_a_milcyto_error(tmp_path: Path) -> None:
    path = tmp_path / "bags.h5"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(MilCytoError, match="bags.h5"):
        BagStore(path)
