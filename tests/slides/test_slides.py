"""Whole-slide images: pyramid levels at an exact pixel size, cell-rich regions, a bounded
instance stream, the same bag store as photos, and one clear message per bad slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.tiling import TilingConfig, tissue_coords
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features.extraction import EncoderRunner
from mil_cyto.features.store import BagStore, extract_to_store
from mil_cyto.slides import (
    SlideConfig,
    choose_level,
    is_slide_file,
    open_slide,
    open_stream,
    read_working,
)
from mil_cyto.slides.synthetic import write_synthetic_slide

SIZE, MPP = 2048, 0.5
GRID = TilingConfig(tile_size=64, stride=64, min_tissue=0.05, instances="grid")


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048 x 2048 px, 0.5 um/px, 4-level synthetic slide (JPEG tiles, about 1 s)."""
    path = tmp_path_factory.mktemp("slide") / "specimen.tif"
    return write_synthetic_slide(path, SIZE, um_per_px=MPP, levels=4, block=512, tile=256)


def test_reader_levels_pixel_size_and_lazy_reads(slide: Path) -> None:
    reader = open_slide(slide)
    assert reader.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512), (256, 256))
    assert reader.level_downsamples == (1.0, 2.0, 4.0, 8.0)
    assert reader.mpp == pytest.approx((MPP, MPP))
    region = reader.read(0, 1000, 900, 70, 50)
    assert region.shape == (50, 70, 3) and region.dtype == np.uint8
    outside = reader.read(3, 240, 240, 32, 32)  # past the edge: glass-white, not black
    assert (outside[-10:, -10:] == 255).all()
    reader.close()


@pytest.mark.parametrize(
    ("um", "level", "factor"),
    [
        (0.5, 0, 1.0),
        (0.7, 0, 1.4),
        (1.0, 1, 1.0),
        (1.9, 1, 1.9),
        (2.03, 2, 2.03 / 2),
        (9, 3, 9 / 4),
    ],
)
def test_level_is_the_coarsest_not_coarser_than_asked(
    slide: Path, um: float, level: int, factor: float
) -> None:
    choice = choose_level(open_slide(slide), um, tolerance=0.02)
    assert choice.level == level
    assert choice.fx == pytest.approx(factor) and choice.fy == pytest.approx(factor)
    assert choice.size == (int(SIZE * MPP / um),) * 2
    assert choice.level0_per_px == pytest.approx((um / MPP, um / MPP))


def test_working_read_is_the_level_resampled_to_the_exact_pixel_size(slide: Path) -> None:
    reader = open_slide(slide)
    choice = choose_level(reader, 0.7)
    whole = Image.fromarray(reader.read(0, 0, 0, SIZE, SIZE))
    expected = np.asarray(whole.resize(choice.size, Image.Resampling.BILINEAR)).astype(float)
    got = read_working(reader, choice, 500, 430, 300, 200).astype(float)
    assert got.shape == (200, 300, 3)
    assert np.abs(got - expected[430:630, 500:800]).mean() < 1.5
    # exact levels are passed through unchanged
    exact = choose_level(reader, 1.0)
    assert np.array_equal(
        read_working(reader, exact, 10, 20, 30, 40), reader.read(1, 10, 20, 30, 40)
    )


def test_grid_stream_finds_the_photo_tiles_and_reads_only_regions(slide: Path) -> None:
    config = SlideConfig(um_per_px=0.7, chunk=512)
    with open_stream(slide, GRID, config) as stream:
        reads: list[int] = []
        read = stream.reader.read
        stream.reader.read = lambda *a: (reads.append(a[3] * a[4]), read(*a))[1]  # type: ignore[method-assign]
        parts = list(stream.chunks())
        during = reads[1:]  # after the overview
        width, height = stream.choice.size
        assert stream.size == (height, width)
        whole = read_working(stream.reader, stream.choice, 0, 0, width, height)
    coords = np.concatenate([p.coords for p in parts])
    tiles = np.concatenate([p.tiles for p in parts])
    assert tiles.shape == (len(coords), 64, 64, 3)
    # the tiles are the working image's pixels at their boxes
    for k in (0, len(coords) // 2, len(coords) - 1):
        x0, y0, x1, y1 = coords[k]
        diff = np.abs(tiles[k].astype(int) - whole[y0:y1, x0:x1])
        assert diff.max() <= 1 and diff.mean() < 0.1  # float rounding of the filter
    # the same tissue tiles as the slide read whole as one photo (region search loses none)
    photo = {tuple(c) for c in tissue_coords(whole, GRID)}
    found = {tuple(c) for c in coords}
    assert len(found) == len(coords)
    assert len(found & photo) >= 0.95 * len(photo)
    assert 0.2 < stream.regions.fraction < 0.6  # the smear, not the glass around it
    # reads are bounded by a chunk (times the oversampling of level 0, plus one pixel)
    assert max(during) <= ((512 + 64) * 1.4 + 6) ** 2
    assert sum(during) < 0.7 * SIZE * SIZE  # glass cells never read at full resolution


def test_cell_stream_has_no_duplicates_across_chunks(slide: Path) -> None:
    cells = TilingConfig(tile_size=64, instances="cells")
    with open_stream(slide, cells, SlideConfig(um_per_px=0.7, chunk=512)) as stream:
        coords = np.concatenate([p.coords for p in stream.chunks()])
        width, height = stream.choice.size
    assert len(coords) > 50
    assert (coords[:, 2] - coords[:, 0] == 64).all() and (coords[:, 3] - coords[:, 1] == 64).all()
    assert (coords[:, :2] >= 0).all() and (coords[:, 2] <= width).all()
    assert (coords[:, 3] <= height).all()
    assert len({tuple(c) for c in coords}) >= 0.98 * len(coords)


def test_threaded_chunks_are_the_serial_chunks_in_order(slide: Path) -> None:
    config = SlideConfig(um_per_px=0.7, chunk=512)
    with open_stream(slide, GRID, config) as stream:
        serial = np.concatenate([p.coords for p in stream.chunks()])
    with open_stream(slide, GRID, config) as stream:
        threaded = np.concatenate([p.coords for p in stream.chunks(workers=3)])
    assert np.array_equal(serial, threaded)


def _manifest(folder: Path, *images: str) -> Path:
    lines = ["image,patient_id,histology"] + [f"{im},P{i},CIN2" for i, im in enumerate(images)]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_slide_and_photo_share_one_bag_store(slide: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(_flat(slide)).save(photo)
    (tmp_path / "s.tif").symlink_to(slide)
    rows = read_manifest(_manifest(tmp_path, "s.tif", "photo.png"))
    assert [r.is_slide for r in rows] == [True, False]
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8})).eval()
    config = SlideConfig(um_per_px=0.7, chunk=1024)
    out = extract_to_store(
        rows,
        encoder,
        tmp_path / "f.h5",
        tiling=GRID,
        provenance={},
        progress=False,
        slides=config,
        batch_size=48,
    )
    with open_stream(slide, GRID, config) as stream:
        parts = list(stream.chunks())
        size = stream.size
    tiles = torch.from_numpy(np.concatenate([p.tiles for p in parts])).permute(0, 3, 1, 2)
    with BagStore(out) as store:
        feats, coords = store["s.tif"]
        assert np.array_equal(coords, np.concatenate([p.coords for p in parts]))
        expected = EncoderRunner(encoder)(tiles).numpy()
        np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
        assert store.size("s.tif") == size
        attrs = store.slide("s.tif")
        assert attrs is not None and store.slide("photo.png") is None
        assert attrs["um_per_px"] == 0.7 and attrs["level"] == 0
        assert attrs["level0_per_px"] == pytest.approx([1.4, 1.4])
        assert store["photo.png"][0].shape[1] == 8
        assert store.provenance["slides"]["um_per_px"] == 0.7


def _flat(slide: Path) -> np.ndarray:
    """A photo-sized crop of the slide's level 1."""
    return open_slide(slide).read(1, 300, 300, 256, 192)


def test_flat_tiff_stays_a_photo_and_a_slide_is_not_decoded_whole(
    slide: Path, tmp_path: Path
) -> None:
    flat = tmp_path / "photo.tif"
    tifffile.imwrite(flat, _flat(slide), photometric="rgb")
    assert not is_slide_file(flat) and load_rgb(flat).shape == (192, 256, 3)
    assert is_slide_file(slide)
    with pytest.raises(MilCytoError, match=r"specimen\.tif is a whole-slide image"):
        load_rgb(slide)


@pytest.mark.parametrize("content", [b"not a slide at all", "png"])
def test_not_a_slide_names_the_file(slide: Path, tmp_path: Path, content: object) -> None:
    bad = tmp_path / "bad.svs"
    if content == "png":
        Image.fromarray(_flat(slide)).save(bad, format="PNG")
    else:
        bad.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(MilCytoError, match=r"bad\.svs is not a readable whole-slide image"):
        open_slide(bad)
    rows = read_manifest(_manifest(tmp_path, "bad.svs"))
    with pytest.raises(MilCytoError, match=r"bad\.svs is not a readable whole-slide image"):
        extract_to_store(
            rows,
            create_encoder("smallcnn"),
            tmp_path / "f.h5",
            tiling=GRID,
            provenance={},
            progress=False,
        )


def test_slide_without_pixel_size_names_the_file_and_fix(tmp_path: Path) -> None:
    path = write_synthetic_slide(
        tmp_path / "nores.tif", 512, um_per_px=None, levels=2, block=256, tile=256, n_fields=1
    )
    with pytest.raises(MilCytoError, match=r"nores\.tif does not record its pixel size.*re-export"):
        open_stream(path, GRID)


def test_unreachable_resolution_names_the_file_and_fix(slide: Path) -> None:
    with pytest.raises(
        MilCytoError,
        match=r"specimen\.tif: its finest level is 0\.5 x 0\.5 um/px.*--um-per-px 0\.5",
    ):
        open_stream(slide, GRID, SlideConfig(um_per_px=0.3))


def test_glass_only_slide_is_an_empty_bag_naming_the_file(tmp_path: Path) -> None:
    path = write_synthetic_slide(
        tmp_path / "glass.tif", 1024, levels=2, block=256, tile=256, n_fields=1, smear=0.0
    )
    with (
        open_stream(path, GRID) as stream,
        pytest.raises(MilCytoError, match=r"glass\.tif: no tissue tile found \(empty bag"),
    ):
        list(stream.chunks())


def test_slide_config_refuses_bad_settings() -> None:
    with pytest.raises(MilCytoError, match="overview"):
        SlideConfig(um_per_px=2.0, overview_um_per_px=1.0)
    with pytest.raises(MilCytoError, match="--chunk"):
        SlideConfig(chunk=64)
