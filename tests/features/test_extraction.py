"""Fast extraction: cross-photo batches, background tiling, compile fallback, same numbers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import mil_cyto.devices as devices
import mil_cyto.features.extraction as extraction
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.tiling import TilingConfig, tile_photo
from mil_cyto.encoders import EncoderSpec, TileEncoder, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features.decoding import DecodingProcesses, run_in_background
from mil_cyto.features.extraction import (
    EncoderRunner,
    PhotoPlan,
    batch_tiles,
    embed_photos,
    load_photo,
)

TILING = TilingConfig(tile_size=32, stride=24, min_tissue=0.05)


@pytest.fixture
def rows(tmp_path: Path, blob_photo: Callable[..., np.ndarray], write_png) -> list[ManifestRow]:
    lines = ["image,patient_id,histology"]
    for i in range(5):
        rng = np.random.default_rng(i)
        blobs = [
            (int(x), int(y), int(r)) for x, y, r in rng.integers((8, 8, 5), (90, 90, 12), (4, 3))
        ]
        write_png(tmp_path / f"p{i}.png", blob_photo(96 + 16 * i, 100, blobs=blobs, seed=i))
        lines.append(f"p{i}.png,pat{i},normal")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return read_manifest(tmp_path / "manifest.csv")


@pytest.fixture
def encoder() -> TileEncoder:
    torch.manual_seed(0)
    return create_encoder(EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8})).eval()


def _plain(row: ManifestRow, encoder: TileEncoder) -> tuple[np.ndarray, np.ndarray]:
    """The plain path: whole bag of tiles, one eager forward."""
    tiles, coords = tile_photo(load_rgb(row.image), TILING)
    with torch.no_grad():
        return encoder(torch.from_numpy(tiles)).numpy(), coords


@pytest.mark.parametrize("pad", [False, True])
def test_batches_span_photos_and_hold_the_same_tiles(rows: list[ManifestRow], pad: bool) -> None:
    plans = [load_photo(r, TILING) for r in rows]
    batches = list(batch_tiles(plans, 7, pad=pad))
    total = sum(len(p.coords) for p in plans)
    assert sum(b.n_real for b in batches) == total
    assert all(b.tiles.shape[0] == (7 if pad else b.n_real) for b in batches)
    assert any(len({s[0] for s in b.segments}) > 1 for b in batches)  # batches span photos
    assert batches[0].tiles.is_contiguous(memory_format=torch.channels_last)
    seen: dict[int, list[tuple[int, int]]] = {}
    for batch in batches:
        offset = 0
        for index, start, stop in batch.segments:
            expected, _ = tile_photo(plans[index].image, TILING)
            got = batch.tiles[offset : offset + stop - start].numpy()
            np.testing.assert_array_equal(got, expected[start:stop])
            seen.setdefault(index, []).append((start, stop))
            offset += stop - start
        if pad:
            assert not batch.tiles[batch.n_real :].any()
    for index, runs in seen.items():  # each photo's tiles exactly once, in order
        assert [a for a, _ in runs] == [0] + [b for _, b in runs[:-1]]
        assert runs[-1][1] == len(plans[index].coords)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_embedding_matches_the_plain_path(
    rows: list[ManifestRow], encoder: TileEncoder, batch_size: int
) -> None:
    runner = EncoderRunner(encoder, "cpu", compile="off")
    photos = list(embed_photos(rows, runner, TILING, batch_size=batch_size, workers=2))
    assert [p.row.image_id for p in photos] == [r.image_id for r in rows]
    for photo in photos:
        expected, coords = _plain(photo.row, encoder)
        np.testing.assert_array_equal(photo.coords, coords)
        assert photo.features.dtype == np.float32
        np.testing.assert_allclose(photo.features, expected, rtol=1e-5, atol=1e-6)
        assert photo.size == load_rgb(photo.row.image).shape[:2]


def test_decoding_processes_give_the_same_bags(
    rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    """Photos decoded on a process pool (the GPU path) embed exactly as with threads, known
    boxes included; one pool serves several extractions; a bad photo's error names it."""
    runner = EncoderRunner(encoder, "cpu", compile="off")
    cells = TilingConfig(tile_size=24, stride=24, min_tissue=0.05, instances="cells")
    known = {rows[1].image_id: np.array([[0, 0, 24, 24], [30, 40, 54, 64]], np.int32)}
    threads = list(embed_photos(rows, runner, cells, batch_size=5, workers=2, known=known))
    with DecodingProcesses(2) as pool:
        for _ in range(2):
            procs = list(embed_photos(rows, runner, cells, batch_size=5, known=known, decoder=pool))
            assert [p.row.image_id for p in procs] == [r.image_id for r in rows]
            for a, b in zip(threads, procs, strict=True):
                np.testing.assert_array_equal(a.coords, b.coords)
                np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(procs[1].coords, known[rows[1].image_id])
        rows[3].image.write_bytes(b"not a png")
        with pytest.raises(MilCytoError, match="p3.png"):
            list(embed_photos(rows, runner, TILING, batch_size=4, decoder=pool))
    with pytest.raises(MilCytoError, match="must be >= 1"):
        DecodingProcesses(0)


def test_compile_failure_falls_back_to_eager(
    rows: list[ManifestRow], encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: EncoderRunner) -> Callable[[torch.Tensor], torch.Tensor]:
        def fail(tiles: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no compiler today")

        return fail

    monkeypatch.setattr(EncoderRunner, "_compile", broken)
    monkeypatch.setattr(extraction, "compiler_available", lambda device: True)
    runner = EncoderRunner(encoder, "cpu", compile="auto")
    assert runner.compiled
    with pytest.warns(RuntimeWarning, match="falling back to eager"):
        photos = list(embed_photos(rows[:2], runner, TILING, batch_size=4))
    assert not runner.compiled
    for photo in photos:
        np.testing.assert_allclose(photo.features, _plain(photo.row, encoder)[0], atol=1e-6)
    strict = EncoderRunner(encoder, "cpu", compile="on")
    with pytest.raises(MilCytoError, match="--compile off"):
        strict.warm_up(32, 2)


def test_auto_without_compiler_is_eager(
    encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extraction, "compiler_available", lambda device: False)
    assert not EncoderRunner(encoder, "cpu", compile="auto").compiled
    with pytest.raises(MilCytoError, match="--compile"):
        EncoderRunner(encoder, "cpu", compile="sometimes")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(MilCytoError, match="native bf16"):
        EncoderRunner(encoder, "cpu", amp=True)


def test_cpu_bf16_features_are_close_and_kept_apart(
    rows: list[ManifestRow],
    encoder: TileEncoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``amp`` on a CPU with native bf16 (faked here: torch runs bf16 autocast on any x86 CPU,
    only slower): bf16 features within bf16 error of float32, not equal to them, and a store
    written in bf16 records it, so float32 features never join or reuse it."""
    from mil_cyto.features.store import BagStore, extract_to_store

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    runner = EncoderRunner(encoder, "cpu", amp=True)
    assert runner.dtype == torch.bfloat16
    photos = list(embed_photos(rows, runner, TILING, batch_size=8))
    for photo in photos:
        plain = _plain(photo.row, encoder)[0]
        assert photo.features.dtype == np.float32
        np.testing.assert_allclose(
            photo.features, plain, rtol=0.05, atol=0.02 * np.abs(plain).max()
        )
    assert any(not np.array_equal(p.features, _plain(p.row, encoder)[0]) for p in photos)

    out = tmp_path / "bf16.h5"
    extract_to_store(rows, encoder, out, tiling=TILING, provenance={"encoder": "t"}, amp=True)
    with BagStore(out) as store:
        assert store.provenance["precision"] == "bfloat16"
    with pytest.raises(MilCytoError, match="holds other features"):
        extract_to_store(rows, encoder, out, tiling=TILING, provenance={"encoder": "t"})


def test_bad_photo_keeps_the_photos_before_it(
    rows: list[ManifestRow], encoder: TileEncoder
) -> None:
    rows[3].image.write_bytes(b"not a png")
    runner = EncoderRunner(encoder, "cpu", compile="off")
    done = []
    with pytest.raises(MilCytoError, match="p3.png"):
        for photo in embed_photos(rows, runner, TILING, batch_size=64, workers=1):
            done.append(photo.row.image_id)
    assert done == ["p0.png", "p1.png", "p2.png"]


def test_background_thread_overlaps_and_stops() -> None:
    def slow() -> object:
        for i in range(4):
            time.sleep(0.05)
            yield i

    clock = time.perf_counter()
    for _ in run_in_background(slow()):  # consumer works as long as the producer
        time.sleep(0.05)
    assert time.perf_counter() - clock < 0.36  # ~0.25 s overlapped vs 0.4 s in series

    def endless() -> object:
        i = 0
        while True:
            i += 1
            yield i

    stream = run_in_background(endless())
    assert next(stream) == 1
    stream.close()  # the producer thread ends instead of blocking on a full queue


def test_a_bag_is_never_cut_whole(rows: list[ManifestRow]) -> None:
    """Tiles are cut batch by batch: a batch never holds more than ``batch_size`` tiles."""
    plan = load_photo(rows[4], TILING)
    big = PhotoPlan(plan.row, plan.image, np.concatenate([plan.coords] * 50))
    sizes = [b.tiles.shape[0] for b in batch_tiles([big], 16)]
    assert max(sizes) == 16 and sum(sizes) == 50 * len(plan.coords)


@pytest.mark.slow
def test_compiled_features_match_eager(rows: list[ManifestRow], encoder: TileEncoder) -> None:
    """torch.compile (Inductor, frozen weights) gives the eager numbers within float error."""
    runner = EncoderRunner(encoder, "cpu", compile="on")
    photos = list(embed_photos(rows, runner, TILING, batch_size=8))
    assert runner.compiled
    for photo in photos:
        np.testing.assert_allclose(
            photo.features, _plain(photo.row, encoder)[0], rtol=1e-4, atol=1e-5
        )
