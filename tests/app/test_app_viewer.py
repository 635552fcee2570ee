"""The review app driven through Streamlit's own testing API (AppTest), on a tiny real run."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from app_helpers import REPO, make_tiny_run
from PIL import Image
from streamlit.testing.v1 import AppTest

from mil_cyto.localization import read_cell_boxes
from mil_cyto.review.marks import read_marks

VIEWER = str(REPO / "app" / "viewer.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("app"))


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run (tests that write marks or move files use it)."""
    run = tmp_path / "runs" / "copy"
    shutil.copytree(tiny_run, run)
    return run


def _app(monkeypatch: pytest.MonkeyPatch, *args: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", ["app/viewer.py", *args])
    at = AppTest.from_file(VIEWER, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _predictions(run: Path) -> list[dict[str, str]]:
    with (run / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def _captions(at: AppTest) -> list[str]:
    return [c for image in at.get("image") for c in image.captions]


def _photo_names(at: AppTest) -> set[str]:
    """The photos offered (options are shown as "name  (truth ..., predicted ...)")."""
    return {o.split("  ")[0] for o in _photo_box(at).options}


def _photo_box(at: AppTest):
    return next(s for s in at.sidebar.selectbox if s.label == "photo")


def test_first_open_shows_case_list_and_photo_view(monkeypatch, tiny_run: Path) -> None:
    at = _app(monkeypatch, "--run", str(tiny_run))
    rows = _predictions(tiny_run)
    assert not at.error
    assert any(f"Test photos of `tiny`: {len(rows)} of {len(rows)}" in m.value for m in at.markdown)
    assert len(at.dataframe[0].value) == len(rows)
    box = _photo_box(at)
    assert len(box.options) == len(rows)
    # sorted by suspicion: the first photo has the lowest P(normal)
    first = min(rows, key=lambda r: (float(r["p_normal"]), r["image"]))["image"]
    assert box.value == first
    captions = _captions(at)
    assert any("attention (rank) overlay, top-8 tiles" in c for c in captions)
    assert sum(c.startswith("#") for c in captions) == 8  # the top-k gallery


def test_filters_sort_and_photo_choice(monkeypatch, tiny_run: Path) -> None:
    rows = _predictions(tiny_run)
    at = _app(monkeypatch, "--run", str(tiny_run))
    for outcome in ("wrong", "right"):
        at.sidebar.radio(key="outcome").set_value(outcome).run()
        want = {r["image"] for r in rows if (r["label"] == r["pred"]) == (outcome == "right")}
        if want:
            assert _photo_names(at) == want
        else:
            assert any("no test photo matches" in i.value for i in at.info)
    at.sidebar.radio(key="outcome").set_value("all")
    at.sidebar.selectbox(key="sort").set_value("error").run()
    worst = min(rows, key=lambda r: (float(r[f"p_{r['label']}"]), r["image"]))
    # the list leads with the worst error (the current choice may stay selected)
    assert _photo_box(at).options[0].split("  ")[0] == worst["image"]
    grade = rows[-1]["label"]
    at.sidebar.multiselect(key="truth").set_value([grade]).run()
    kept = {r["image"] for r in rows if r["label"] == grade}
    assert _photo_names(at) == kept
    last = sorted(kept)[-1]
    _photo_box(at).set_value(last).run()
    assert any(m.value == f"#### {last}" for m in at.markdown)
    at.sidebar.slider(key="topk").set_value(3)
    at.sidebar.slider(key="opacity").set_value(0.2)
    at.sidebar.selectbox(key="cmap").set_value("viridis").run()
    assert not at.exception
    assert sum(c.startswith("#") for c in _captions(at)) == 3


def test_annotated_atypical_cells_are_drawn(monkeypatch, tiny_run: Path) -> None:
    boxes = read_cell_boxes(
        Path(json.loads((tiny_run / "config.json").read_text())["data_resolved"]) / "cells.csv"
    )
    rows = [r for r in _predictions(tiny_run) if r["image"] in boxes]
    assert rows, "the tiny data set has abnormal test photos with atypical cells"
    at = _app(monkeypatch, "--run", str(tiny_run))
    _photo_box(at).set_value(rows[0]["image"]).run()
    n = len(boxes[rows[0]["image"]])
    assert any(f"{n} annotated atypical cells" in c for c in _captions(at))


def test_run_summary_with_metrics_and_comparison(monkeypatch, run_copy: Path) -> None:
    (run_copy.parent / "comparison.csv").write_text("model,accuracy\nDenseNet121,0.895\n")
    at = _app(monkeypatch, "--run", str(run_copy))
    at.sidebar.radio(key="page").set_value("Run summary").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    metrics = json.loads((run_copy / "metrics.json").read_text())
    table = at.table[0].value
    assert list(table["grade"]) == ["normal", "CIN1", "CIN2+", "mean (macro)"]
    assert table["sensitivity"].iloc[-1] == f"{metrics['macro_sensitivity']:.3f}"
    assert any(m.label == "accuracy" and m.value == f"{metrics['accuracy']:.3f}" for m in at.metric)
    assert any("confusion matrix" in c for c in _captions(at))
    assert at.dataframe[0].value["model"].tolist() == ["DenseNet121"]


def test_review_marks_saved_and_exported(monkeypatch, run_copy: Path) -> None:
    at = _app(monkeypatch, "--run", str(run_copy))
    at.sidebar.text_input(key="reviewer").set_value("ana")
    image = _photo_box(at).value
    at.radio(key="mark_value").set_value("atypical")
    next(b for b in at.button if b.label == "Save mark").click().run()
    assert not at.exception
    assert any("saved: tile #1" in s.value for s in at.success)
    marks = read_marks(run_copy / "review_marks.csv")
    assert [(m.image, m.target, m.mark, m.reviewer) for m in marks] == [
        (image, "tile", "atypical", "ana")
    ]
    assert any("1 review marks" in c for c in _captions(at))  # drawn on the photo
    # survives a reload (a fresh session)
    at = _app(monkeypatch, "--run", str(run_copy))
    at.sidebar.radio(key="page").set_value("Run summary").run()
    assert any("1 in `review_marks.csv`" in m.value for m in at.markdown)
    next(b for b in at.button if b.label.startswith("Write review_cells")).click().run()
    assert image in read_cell_boxes(run_copy / "review_cells.csv")  # the evaluation's reader
    with (run_copy / "review_cells.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    truth = {r["image"]: r["label"] for r in _predictions(run_copy)}[image]
    assert row["grade"] == (truth if truth != "normal" else "CIN1")
    assert row["kind"] == "review-tile"


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("notes.txt", lambda photo: b"this is not a photo", "not an image"),
        ("tiny.png", lambda photo: _png_bytes(photo[:20, :20]), "smaller than one 48-px tile"),
        ("glass.png", lambda photo: _png_bytes(np.full((96, 96, 3), 250, np.uint8)), "empty bag"),
    ],
)
def test_upload_refusals_are_messages(monkeypatch, tiny_run, blob_photo, name, make, message):
    at = _app(monkeypatch, "--run", str(tiny_run))
    at.sidebar.radio(key="page").set_value("New photo").run()
    at.file_uploader[0].upload(name, make(blob_photo(128, 160)), "image/png").run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value and name in at.error[0].value


def test_upload_bomb_and_grayscale(monkeypatch, tiny_run, blob_photo) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
    at = _app(monkeypatch, "--run", str(tiny_run))
    at.sidebar.radio(key="page").set_value("New photo").run()
    at.file_uploader[0].upload("bomb.png", bomb, "image/png").run()
    assert not at.exception and "decompression bomb" in at.error[0].value
    at.file_uploader[0].set_value(
        ("grey.png", _png_bytes(blob_photo(128, 160), "L"), "image/png")
    ).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("converted from L to RGB" in i.value for i in at.info)
    assert any("predicted **" in m.value for m in at.markdown)
    assert any("attention (rank) overlay" in c for c in _captions(at))


def test_attributions_without_explain_say_so(monkeypatch, tiny_run: Path) -> None:
    monkeypatch.setitem(sys.modules, "explain.attributions", None)
    at = _app(monkeypatch, "--run", str(tiny_run))
    assert any("explain package not available" in i.value for i in at.info)
    assert not at.error


def test_attributions_on_demand_are_cached(monkeypatch, tiny_run: Path) -> None:
    """The panel's wiring against the documented explain API (a stand-in module counts calls;
    the real explain package is exercised by its own tests)."""
    calls: list[tuple[str, int]] = []

    def attribute_photo(model, tiles, coords, method, target, *, size_hw):
        calls.append((method, target))
        assert tiles.dtype == np.uint8 and tiles.shape[0] == len(coords)
        pixel = np.full(size_hw, np.nan, np.float32)
        for i, (x0, y0, x1, y1) in enumerate(coords):
            pixel[y0:y1, x0:x1] = i - len(coords) / 2
        return pixel, np.arange(len(coords), dtype=np.float32)

    module = types.ModuleType("explain.attributions")
    module.list_methods = lambda: ["saliency", "occlusion"]
    module.attribute_photo = attribute_photo
    package = types.ModuleType("explain")
    package.attributions = module
    monkeypatch.setitem(sys.modules, "explain", package)
    monkeypatch.setitem(sys.modules, "explain.attributions", module)
    monkeypatch.setitem(sys.modules, "explain.detect", None)
    at = _app(monkeypatch, "--run", str(tiny_run))
    at.selectbox(key="attr_method").set_value("occlusion")
    at.selectbox(key="attr_class").set_value("CIN1")
    at.button(key="attr_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert calls == [("occlusion", 1)]
    assert any("occlusion for class CIN1" in c for c in _captions(at))
    at.run()  # a rerun shows the stored map without recomputing
    at.button(key="attr_go").click().run()  # and so does asking again
    assert calls == [("occlusion", 1)]
    assert any("occlusion for class CIN1" in c for c in _captions(at))


def test_picker_and_missing_things_are_messages(monkeypatch, run_copy: Path, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    at = _app(monkeypatch, "--root", str(empty))
    assert any("No run folder under" in i.value for i in at.info)
    at = _app(monkeypatch, "--root", str(run_copy.parent))
    assert at.sidebar.selectbox(key="run").value == 0  # the one run found is opened
    config = json.loads((run_copy / "config.json").read_text())
    config["data_resolved"] = str(tmp_path / "moved")
    (run_copy / "config.json").write_text(json.dumps(config))
    at = _app(monkeypatch, "--run", str(run_copy))
    assert "not found" in at.error[0].value and "data_resolved" in at.error[0].value


@pytest.mark.skipif(
    __import__("mil_cyto.review.explain_bridge", fromlist=["status"]).status() is not None,
    reason="the explain package is not importable here",
)
def test_real_explain_suspects_and_attribution(monkeypatch, tiny_run: Path) -> None:
    at = _app(monkeypatch, "--run", str(tiny_run))
    assert not at.error
    assert any("suspect cells (magenta)" in c for c in _captions(at))
    at.selectbox(key="attr_method").set_value("saliency")
    at.button(key="attr_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(c.startswith("saliency for class") for c in _captions(at))


@pytest.fixture
def served_on(monkeypatch: pytest.MonkeyPatch):
    """Make the app believe the server binds ``address`` (as ``--server.address`` would)."""
    import streamlit
    from streamlit import config

    real = config.get_option

    def serve(address: str | None) -> None:
        fake = lambda key: address if key == "server.address" else real(key)  # noqa: E731
        monkeypatch.setattr(config, "get_option", fake)
        monkeypatch.setattr(streamlit, "get_option", fake)

    return serve


def _runs_root_with_escapes(run_copy: Path, tmp_path: Path) -> Path:
    """``run_copy``'s parent as the runs root, with a run outside it and a symlink to it."""
    outside = tmp_path / "outside" / "secret"
    shutil.copytree(run_copy, outside)
    (run_copy.parent / "escape").symlink_to(outside, target_is_directory=True)
    return outside


def test_runs_root_refuses_paths_outside(monkeypatch, run_copy: Path, tmp_path: Path) -> None:
    outside = _runs_root_with_escapes(run_copy, tmp_path)
    at = _app(monkeypatch, "--runs-root", str(run_copy.parent))
    run_box = at.sidebar.selectbox(key="run")
    assert list(run_box.options) == ["copy"]  # the symlink out is not offered
    for typed, why in [
        ("../outside/secret", "'..' may not be used"),
        ("escape", "symlink that leads outside"),
        (str(outside), "a path outside the runs root"),
    ]:
        at.sidebar.text_input(key="run_path").set_value(typed).run()
        assert not at.exception
        assert any(why in e.value for e in at.error), (typed, [e.value for e in at.error])
        assert not any("`secret`" in m.value for m in at.markdown)  # nothing of it shown
        assert any("Test photos of `copy`" in m.value for m in at.markdown)
    at.sidebar.text_input(key="run_path").set_value("copy").run()
    assert not at.error and any("Test photos of `copy`" in m.value for m in at.markdown)
    # a crafted ?run= query parameter goes through the same check
    monkeypatch.setattr(sys, "argv", ["app/viewer.py", "--runs-root", str(run_copy.parent)])
    at = AppTest.from_file(VIEWER, default_timeout=180)
    at.query_params["run"] = "../outside/secret"
    at.run()
    assert any("'..' may not be used" in e.value for e in at.error)
    shutil.copytree(run_copy, run_copy.parent / "other")
    at = AppTest.from_file(VIEWER, default_timeout=180)
    at.query_params["run"] = "other"  # a valid link preselects its run
    at.run()
    assert not at.error and any("Test photos of `other`" in m.value for m in at.markdown)
    # --run alone: that run is the whole root
    at = _app(monkeypatch, "--run", str(run_copy))
    at.sidebar.text_input(key="run_path").set_value("../copy").run()
    assert any("'..' may not be used" in e.value for e in at.error)
    at = _app(monkeypatch, "--runs-root", str(run_copy.parent), "--run", str(outside))
    assert any("outside --runs-root" in e.value for e in at.error)


def test_two_reviewers_on_the_same_tile_keep_both(monkeypatch, run_copy: Path) -> None:
    sessions = []
    for name in ("ana", "ben"):  # two browser sessions on the same photo
        at = _app(monkeypatch, "--run", str(run_copy))
        at.sidebar.text_input(key="reviewer").set_value(name)
        at.radio(key="mark_value").set_value("atypical" if name == "ana" else "normal")
        sessions.append(at)
    for at in sessions:
        next(b for b in at.button if b.label == "Save mark").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
    marks = read_marks(run_copy / "review_marks.csv")
    assert sorted((m.reviewer, m.mark) for m in marks) == [("ana", "atypical"), ("ben", "normal")]
    assert len({m.key[1:] for m in marks}) == 1  # the same box of the same photo
    at = _app(monkeypatch, "--run", str(run_copy))  # no name: refused, nothing written
    next(b for b in at.button if b.label == "Save mark").click().run()
    assert any("type your name" in e.value for e in at.error)
    assert len(read_marks(run_copy / "review_marks.csv")) == 2
    at.sidebar.radio(key="page").set_value("Run summary").run()
    assert any("2 in `review_marks.csv`, by 2 reviewers" in m.value for m in at.markdown)
    table = next(d.value for d in at.dataframe if "kappa" in d.value.columns)
    assert table["between"].tolist() == [
        "ana / ben",
        "ana / model (top-8 tiles)",
        "ben / model (top-8 tiles)",
    ]
    assert table["shared boxes"].tolist() == [1, 1, 1] and table["agree"].iloc[0] == "0.00"
    at.selectbox(key="export_reviewer").set_value("ben").run()
    next(b for b in at.button if b.label.startswith("Write review_cells_ben")).click().run()
    with (run_copy / "review_cells_ben.csv").open() as handle:
        assert [r["grade"] for r in csv.DictReader(handle)] == ["normal"]


def test_password_is_asked_before_anything_beyond_localhost(
    monkeypatch, served_on, tmp_path: Path
) -> None:
    served_on("0.0.0.0")
    monkeypatch.setattr(sys, "argv", ["app/viewer.py", "--runs-root", str(tmp_path)])
    at = AppTest.from_file(VIEWER, default_timeout=180)
    at.secrets["review"] = {"password": "open sesame"}
    at.run()
    assert not at.exception
    assert not at.sidebar.children and not at.info  # nothing of the app before the login
    at.text_input(key="auth_password").set_value("guess")
    next(b for b in at.button if b.label == "Log in").click().run()
    assert any("wrong password" in e.value for e in at.error) and not at.info
    at.text_input(key="auth_password").set_value("open sesame")
    next(b for b in at.button if b.label == "Log in").click().run()
    assert not at.exception and not at.error
    assert any("No run folder under" in i.value for i in at.info)  # the app itself
    served_on("127.0.0.1")  # localhost: no login even with a password configured
    at = AppTest.from_file(VIEWER, default_timeout=180)
    at.secrets["review"] = {"password": "open sesame"}
    at.run()
    assert any("No run folder under" in i.value for i in at.info) and not at.warning
    served_on("0.0.0.0")  # beyond localhost with no login configured: a warning
    at = AppTest.from_file(VIEWER, default_timeout=180)
    at.run()
    assert any("without a login" in w.value for w in at.sidebar.warning)
