"""The review app's logic without Streamlit: run folders, case list, overlays, uploads, marks."""

from __future__ import annotations

import csv
import io
import json
import struct
import threading
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mil_cyto.checkpoint import build_model, model_recipe
from mil_cyto.encoders import EncoderSpec
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.localization import read_cell_boxes, read_cells
from mil_cyto.review import explain_bridge
from mil_cyto.review.cases import case_list
from mil_cyto.review.marks import (
    Mark,
    marks_as_cells,
    read_marks,
    remove_mark,
    save_mark,
    write_cells_csv,
)
from mil_cyto.review.overlay import Box, blend, crop, draw_boxes, normalise_map, top_k
from mil_cyto.review.runs import Run, find_runs
from mil_cyto.review.upload import check_upload, predict_photo

PRED_ROWS = [
    # image, label, pred, p_normal, p_CIN1, p_CIN2+
    ("a.png", "normal", "normal", 0.9, 0.05, 0.05),
    ("b.png", "CIN2+", "normal", 0.7, 0.1, 0.2),
    ("c.png", "CIN1", "CIN1", 0.2, 0.6, 0.2),
    ("d.png", "normal", "CIN2+", 0.1, 0.1, 0.8),
]


def _fake_run(root: Path, blob_photo, write_png) -> Path:
    """A run folder written by hand (no training): 4 test photos, attention, cells."""
    data, run = root / "data", root / "runs" / "r1"
    run.mkdir(parents=True)
    with (run / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "patient_id", "label", "pred", "p_normal", "p_CIN1", "p_CIN2+"])
        for image, label, pred, *p in PRED_ROWS:
            writer.writerow([image, "P1", label, pred, *p])
    with h5py.File(run / "attention.h5", "w") as handle:
        for i, (image, *_rest) in enumerate(PRED_ROWS):
            write_png(data / image, blob_photo(96, 128, seed=i))
            group = handle.create_group(f"{i:05d}")
            group.attrs["image"] = image
            group.attrs["size_hw"] = (96, 128)
            coords = np.array([[0, 0, 64, 64], [64, 0, 128, 64], [32, 32, 96, 96]])
            group.create_dataset("coords", data=coords.astype(np.int32))
            group.create_dataset("attention", data=np.array([0.2, 0.5, 0.3], np.float32))
            group.create_dataset("scores", data=np.array([-1.0, 1.0, 0.0], np.float32))
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "n_test": 4}))
    (run / "config.json").write_text(json.dumps({"data_resolved": str(data), "cells": None}))
    (data / "cells.csv").write_text(
        "image,x0,y0,x1,y1,grade,kind\nb.png,30,30,50,50,CIN2,atypical\nb.png,0,0,9,9,normal,\n"
    )
    return run


def test_run_folder_is_read_and_found(tmp_path, blob_photo, write_png) -> None:
    run_dir = _fake_run(tmp_path, blob_photo, write_png)
    (tmp_path / "runs" / "not_a_run").mkdir()
    assert find_runs(tmp_path) == [run_dir.resolve()]
    run = Run.open(run_dir)
    rows = run.predictions()
    assert [r["image"] for r in rows] == [r[0] for r in PRED_ROWS]
    assert rows[1]["p_CIN2+"] == pytest.approx(0.2)
    maps = run.tile_maps()
    assert maps["c.png"].coords.shape == (3, 4) and maps["c.png"].size_hw == (96, 128)
    assert run.photo_path("a.png").is_file()
    cells = read_cells(run.cells_path())
    assert [c.atypical for c in cells["b.png"]] == [True, False]
    assert run.comparison_path() is None
    (tmp_path / "runs" / "comparison.csv").write_text("model,acc\nx,0.5\n")
    assert run.comparison_path() == tmp_path / "runs" / "comparison.csv"
    (run_dir / "attention.h5").unlink()
    with pytest.raises(MilCytoError, match="attention.h5"):
        Run.open(run_dir)


def test_case_list_sorts_and_filters() -> None:
    rows = [
        dict(zip(["image", "label", "pred", "p_normal", "p_CIN1", "p_CIN2+"], r, strict=True))
        for r in PRED_ROWS
    ]
    assert [c["image"] for c in case_list(rows, sort="suspicion")] == [
        "d.png", "c.png", "b.png", "a.png"
    ]  # fmt: skip
    # error = 1 - P(truth): d 0.9, b 0.8, c 0.4, a 0.1
    assert [c["image"] for c in case_list(rows, sort="error")][:2] == ["d.png", "b.png"]
    gaps = [(c["image"], c["gap"]) for c in case_list(rows, sort="grade gap")]
    assert gaps == [("d.png", 2), ("b.png", -2), ("c.png", 0), ("a.png", 0)]
    wrong = case_list(rows, outcome="wrong")
    assert {c["image"] for c in wrong} == {"b.png", "d.png"}
    assert all(not c["correct"] for c in wrong)
    assert [c["image"] for c in case_list(rows, truth=["normal"], outcome="right")] == ["a.png"]
    assert [c["image"] for c in case_list(rows, predicted=["CIN2+"])] == ["d.png"]
    with pytest.raises(MilCytoError, match="unknown sort"):
        case_list(rows, sort="best")


def test_overlay_blends_only_where_tiles_lie() -> None:
    photo = np.full((20, 30, 3), 200, np.uint8)
    heat = np.full((20, 30), np.nan)
    heat[:10, :10] = 1.0
    out = blend(photo, heat, cmap="gray", opacity=0.5)
    assert (out[15:, 15:] == 200).all()  # off-tile: untouched
    assert (out[:10, :10] == round(0.5 * 200 + 0.5 * 255)).all()
    assert (blend(photo, heat, opacity=0.0) == photo).all()
    with pytest.raises(MilCytoError, match="does not match"):
        blend(photo, heat[:5])
    boxed = draw_boxes(photo, [Box((2, 2, 12, 8), (255, 0, 0), 1)])
    assert tuple(boxed[2, 5]) == (255, 0, 0) and tuple(boxed[5, 5]) == (200, 200, 200)
    assert list(top_k(np.array([0.1, 0.5, 0.3, 0.5]), 3)) == [1, 3, 2]
    assert crop(photo, (25, 15, 40, 30)).shape == (5, 5, 3)
    signed = normalise_map(np.array([[-2.0, 0.0, 2.0]]), signed=True, clip=100)
    np.testing.assert_allclose(signed, [[0.0, 0.5, 1.0]])


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header that declares ``width x height`` pixels with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


@pytest.mark.parametrize(
    ("payload", "kwargs", "expected"),
    [
        (b"", {}, "is empty"),
        (b"name,grade\nx,CIN1\n", {}, "not an image"),
        ("bomb", {}, "decompression bomb"),
        ("photo", {"max_bytes": 100}, "above the 0.0 MB limit"),
        ("photo", {"max_pixels": 1000}, "MP limit"),
        ("photo", {"tile_size": 256}, "smaller than one 256-px tile"),
        ("truncated", {}, "damaged or truncated"),
    ],
)
def test_upload_checks_give_one_clear_message(blob_photo, payload, kwargs, expected) -> None:
    photo = _png(blob_photo(96, 128))
    data = {"bomb": _bomb_png(30000, 30000), "photo": photo, "truncated": photo[:300]}.get(
        payload, payload
    )
    with pytest.raises(MilCytoError, match=expected) as info:
        check_upload("x.png", data, **{"tile_size": 48, **kwargs})
    assert "x.png" in str(info.value)


def test_upload_converts_grayscale_and_rgba(blob_photo) -> None:
    array = blob_photo(96, 128)
    sixteen = io.BytesIO()
    Image.fromarray(array[..., 0].astype(np.uint16) * 200).save(sixteen, format="PNG")
    for data in (_png(array, "L"), _png(array, "RGBA"), sixteen.getvalue()):
        checked = check_upload("g.png", data, tile_size=48)
        assert checked.rgb.shape == (96, 128, 3) and checked.rgb.dtype == np.uint8
        assert checked.notes and "to RGB" in checked.notes[0]
    assert check_upload("c.png", _png(array), tile_size=48).notes == []


def test_predict_photo_runs_the_model(blob_photo) -> None:
    spec = EncoderSpec("smallcnn")
    from mil_cyto.encoders import create_encoder

    out_dim = create_encoder(spec).out_dim
    recipe = model_recipe(
        spec, "abmil", {}, out_dim, {"tile_size": 48, "stride": 48, "min_tissue": 0.05}
    )
    model = build_model(recipe).eval()
    pred = predict_photo(model, recipe, blob_photo(96, 144, blobs=((30, 30, 12), (100, 60, 14))))
    assert pred.probs.shape == (len(GRADES),) and pred.probs.sum() == pytest.approx(1, abs=1e-5)
    assert len(pred.coords) == len(pred.attention) >= 1
    assert pred.attention.sum() == pytest.approx(1, abs=1e-5)
    with pytest.raises(MilCytoError, match="empty bag"):
        predict_photo(model, recipe, np.full((96, 96, 3), 250, np.uint8))


def test_marks_are_saved_atomically_and_read_back_as_cells(tmp_path) -> None:
    path = tmp_path / "run" / "review_marks.csv"
    save_mark(path, Mark("b.png", 0, 0, 48, 48, "tile", "atypical", "ana"))
    save_mark(path, Mark("b.png", 48, 0, 96, 48, "tile", "unsure", "ana"))
    save_mark(path, Mark("a.png", 5, 5, 20, 20, "cell", "atypical", "ana"))
    marks = save_mark(path, Mark("b.png", 0, 0, 48, 48, "tile", "normal", "ana"))  # replaces
    assert len(marks) == 3 and read_marks(path) == marks
    assert [m.mark for m in marks if m.image == "b.png"] == ["unsure", "normal"]
    assert all(m.time for m in marks)
    assert not list(path.parent.glob(".*.tmp"))
    assert len(remove_mark(path, ("ben", "b.png", 48, 0, 96, 48))) == 3  # not ben's mark
    assert len(remove_mark(path, ("ana", "b.png", 48, 0, 96, 48))) == 2
    cells = marks_as_cells(read_marks(path), {"a.png": "CIN2+", "b.png": "normal"})
    assert {(c["image"], c["grade"]) for c in cells} == {("a.png", "CIN2+"), ("b.png", "normal")}
    out = tmp_path / "review_cells.csv"
    write_cells_csv(out, cells)
    boxes = read_cell_boxes(out)  # the evaluation's own reader
    assert list(boxes) == ["a.png"] and boxes["a.png"].tolist() == [[5, 5, 20, 20]]
    cells_unsure = marks_as_cells(
        [Mark("c.png", 0, 0, 9, 9, "tile", "unsure")], include_unsure=True
    )
    assert cells_unsure[0]["kind"] == "review-tile-unsure"
    with pytest.raises(MilCytoError, match="mark 'bad'"):
        save_mark(path, Mark("a.png", 0, 0, 9, 9, "tile", "bad"))
    path.write_text("image,x0\n")
    with pytest.raises(MilCytoError, match="missing columns"):
        read_marks(path)


def test_concurrent_saves_lose_no_mark(tmp_path) -> None:
    path = tmp_path / "review_marks.csv"

    def save(i: int) -> None:
        save_mark(path, Mark(f"p{i}.png", 0, 0, 10, 10, "tile", "normal"))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_marks(path)) == 12


def test_explain_bridge_reports_a_missing_package(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "explain.attributions", None)  # import fails
    assert explain_bridge.UNAVAILABLE in (explain_bridge.status() or "")
    with pytest.raises(MilCytoError, match="explain package not available"):
        explain_bridge.methods()
    monkeypatch.setitem(sys.modules, "explain.detect", None)
    with pytest.raises(MilCytoError, match="explain package not available"):
        explain_bridge.suspect_cells(np.zeros((8, 8, 3), np.uint8), np.zeros((1, 4)), [0.0], 8)


def test_suspect_cells_of_nucleus_crops_are_the_best_crops() -> None:
    """For a nucleus-crop run the suspects are the crops themselves, best first; grid runs
    keep map peaks moved to nuclei."""
    coords = np.array([[0, 0, 16, 16], [20, 4, 36, 20], [8, 24, 24, 40]])
    scores = np.array([0.1, 2.0, 0.7])
    photo = np.full((48, 48, 3), 230, np.uint8)
    boxes, got = explain_bridge.suspect_cells(photo, coords, scores, 16, instances="cells")
    np.testing.assert_array_equal(boxes, coords[[1, 2, 0]])
    np.testing.assert_allclose(got, [2.0, 0.7, 0.1])
    boxes, _ = explain_bridge.suspect_cells(
        photo, coords, scores, 16, max_detections=1, instances="cells"
    )
    np.testing.assert_array_equal(boxes, coords[[1]])
