"""``python -m explain``: a run folder in, maps, overlays and localization.json out."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from explain.__main__ import main
from explain.attributions import list_methods
from explain.froc import FP_RATES
from mil_cyto.checkpoint import build_model, model_recipe, save_model
from mil_cyto.encoders import EncoderSpec
from mil_cyto.io import write_json

BLOBS = {
    "p0": ((40, 40, 10), (90, 80, 12)),
    "p1": ((30, 90, 9), (100, 30, 11), (70, 64, 8)),
    "p2": ((64, 64, 12),),
}
GRADE = {"p0": "CIN2+", "p1": "CIN1", "p2": "normal"}


@pytest.fixture
def run_dir(tmp_path: Path, blob_photo, write_png) -> Path:
    """A finished run folder built by hand: 3 test photos, cell boxes, an untrained model."""
    data = tmp_path / "data"
    manifest = [["image", "patient_id", "histology"]]
    cells = [["image", "x0", "y0", "x1", "y1", "grade", "kind"]]
    for i, (name, blobs) in enumerate(BLOBS.items()):
        image = f"images/{name}.png"
        write_png(data / image, blob_photo(128, 128, blobs, seed=i))
        manifest.append([image, f"P{i}", GRADE[name]])
        for k, (cx, cy, r) in enumerate(blobs):
            grade = GRADE[name] if k == 0 else "normal"
            cells.append([image, cx - r, cy - r, cx + r, cy + r, grade, "x"])
    for fname, rows in (("manifest.csv", manifest), ("cells.csv", cells)):
        with (data / fname).open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    run = tmp_path / "run"
    torch.manual_seed(0)
    spec = EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8, "stem_pool": 1})
    tiling = {"tile_size": 32, "stride": 32, "min_tissue": 0.05}
    recipe = model_recipe(spec, "gated_abmil", {"bag_norm": True}, 8, tiling)
    save_model(run, build_model(recipe), recipe)
    write_json(
        run / "config.json",
        {"data_resolved": str(data), "label_column": None, "cells": None, **tiling},
    )
    write_json(run / "splits.json", {"train": [], "val": [], "test": [r[0] for r in manifest[1:]]})
    return run


FAST = ["--quiet", "--ig-steps", "4", "--shap-samples", "2", "--occlusion-window", "16"]


def test_command_writes_maps_overlays_and_localization(run_dir: Path) -> None:
    methods = ["attention", "integrated_gradients", "occlusion"]
    assert main(["--run", str(run_dir), "--methods", *methods, *FAST]) == 0
    payload = json.loads((run_dir / "localization.json").read_text())
    assert payload["n_photos"] == 3 and payload["n_abnormal_photos"] == 2
    assert set(payload["methods"]) == set(methods)
    for name, entry in payload["methods"].items():
        assert 0.0 <= entry["pointing_game"] <= 1.0, name
        assert entry["instance_auroc"] is None or 0.0 <= entry["instance_auroc"] <= 1.0
        assert list(entry["froc"]) == [f"{r:g}" for r in FP_RATES]
        for key in ("deletion_auc", "insertion_auc", "random_deletion_auc"):
            assert 0.0 <= entry[key] <= 1.0, (name, key)
        assert entry["cpu_seconds_per_photo"] > 0
    maps = sorted((run_dir / "explain" / "maps").glob("*.npz"))
    assert [p.name for p in maps] == ["images_p0.png.npz", "images_p1.png.npz", "images_p2.png.npz"]
    with np.load(maps[0]) as stored:
        assert stored["integrated_gradients.map"].shape == (32, 32)  # 128 px / map scale 4
        assert stored["attention.tile"].shape == (len(stored["coords"]),)
        assert stored["occlusion.detections"].shape[1] == 7
    assert len(list((run_dir / "explain" / "overlays").glob("*.png"))) == 3


def test_a_cells_run_is_explained_on_its_nucleus_crops(run_dir: Path) -> None:
    """The instances the model was trained on (here nucleus crops) are the ones explained;
    results stored for other instances (grid tiles) are not reused."""
    from scipy.special import softmax

    from explain.detect import Detections
    from mil_cyto.data.images import load_rgb
    from mil_cyto.data.instances import instance_centres
    from mil_cyto.data.tiling import TilingConfig

    assert main(["--run", str(run_dir), "--methods", "attention", *FAST, "--no-overlays"]) == 0
    model_json = run_dir / "model.json"
    recipe = json.loads(model_json.read_text())
    recipe["tiling"]["instances"] = "cells"
    write_json(model_json, recipe)
    assert main(["--run", str(run_dir), "--methods", "attention", *FAST, "--no-overlays"]) == 0
    cells = TilingConfig(32, 32, 0.05, "cells")
    for name in BLOBS:
        photo = load_rgb(run_dir.parent / "data" / "images" / f"{name}.png")
        centres, boxes = instance_centres(photo, cells)
        with np.load(run_dir / "explain" / "maps" / f"images_{name}.png.npz") as stored:
            np.testing.assert_array_equal(stored["coords"], boxes)
            # each crop is a detection at its nucleus, ranked across photos by its attention
            # logit (the weights are shares of the photo), in the same order as the weights
            dets = Detections.from_array(stored["attention.detections"])
            logits, weights = stored["attention.pooled"], stored["attention.tile"]
            np.testing.assert_allclose(dets.scores, np.sort(logits)[::-1], rtol=1e-5)
            np.testing.assert_allclose(weights / weights.sum(), softmax(logits), rtol=1e-4)
            found = (dets.points[:, None, :] == centres[None, :, :]).all(-1).any(1)
            assert found.all()


def test_rerun_resumes_and_adds_only_missing_methods(run_dir: Path) -> None:
    fast = [*FAST, "--no-overlays"]
    assert main(["--run", str(run_dir), "--methods", "attention", *fast]) == 0
    npz = run_dir / "explain" / "maps" / "images_p0.png.npz"
    with np.load(npz) as stored:
        first = stored["attention.tile"].copy()
    stamp = npz.stat().st_mtime_ns
    assert main(["--run", str(run_dir), "--methods", "attention", *fast]) == 0
    assert npz.stat().st_mtime_ns == stamp  # nothing redone
    assert main(["--run", str(run_dir), "--methods", "attention", "saliency", *fast]) == 0
    with np.load(npz) as stored:
        np.testing.assert_array_equal(stored["attention.tile"], first)
        assert "saliency.map" in stored.files


def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["--run", str(tmp_path / "nowhere"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json not found" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_explain_a_trained_run_end_to_end(tmp_path: Path) -> None:
    """Train a tiny run with the real command, then explain it with every method."""
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset
    from mil_cyto.train import main as train_main

    config = SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3))
    data = generate_dataset(tmp_path / "data", config, workers=1, progress=False)
    run = tmp_path / "run"
    train = ["--data", str(data), "--out", str(run), "--epochs", "1", "--quiet"]
    assert train_main([*train, "--tile-size", "48", "--stride", "48", "--threads", "2"]) == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "explain", "--run", str(run), "--max-images", "4", *FAST],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads((run / "localization.json").read_text())
    assert payload["n_photos"] == 4
    assert set(payload["methods"]) == set(list_methods())
    assert "| attention |" in done.stdout


def test_gradient_shap_gives_the_same_maps_whatever_ran_before(run_dir: Path) -> None:
    """Captum's GradientShap draws from torch's and NumPy's global random streams; each
    photo's attribution is seeded by the photo and method, so two runs agree exactly."""
    fast = [*FAST, "--no-overlays"]
    first = run_dir.parent / "first"
    shutil.copytree(run_dir, first)
    assert main(["--run", str(first), "--methods", "gradient_shap", *fast]) == 0
    torch.manual_seed(123)
    np.random.seed(123)
    np.random.random(7)  # a different state before the second run
    assert main(["--run", str(run_dir), "--methods", "saliency", "gradient_shap", *fast]) == 0
    state = np.random.get_state()[1].copy()
    for name in BLOBS:
        npz = f"explain/maps/images_{name}.png.npz"
        with np.load(first / npz) as a, np.load(run_dir / npz) as b:
            np.testing.assert_array_equal(a["gradient_shap.tile"], b["gradient_shap.tile"])
            np.testing.assert_array_equal(a["gradient_shap.map"], b["gradient_shap.map"])
    assert main(["--run", str(first), "--methods", "saliency", *fast]) == 0
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the caller's stream stays
