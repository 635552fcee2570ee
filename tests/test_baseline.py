"""Whole-image baselines: the run-folder contract, Grad-CAM tiles, local weights."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from mil_cyto.baseline import main
from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.errors import MilCytoError
from mil_cyto.models.whole_image import (
    STUDY_ARCHS,
    build_whole_image_cnn,
    grad_cam,
    tile_scores,
)

FAST = ["--size", "64", "--epochs", "1", "--batch-size", "8", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def test_run_folder_contract(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--arch", "resnet18", "--data", str(tiny_data), "--out", str(run)]
    assert main([*args, *FAST, "--tile-size", "48", "--stride", "48"]) == 0
    for name in (
        "config.json",
        "metrics.json",
        "predictions.csv",
        "attention.h5",
        "model.safetensors",
        "model.json",
        "report.md",
        "confusion_matrix.png",
        "splits.json",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"accuracy", "macro_sensitivity", "macro_specificity", "per_class"} <= set(metrics)
    assert {"instance_auroc", "pointing_game"} <= set(metrics["localization"])
    assert metrics["calibration"]["temperature"] == 1.0 and 0 <= metrics["calibration"]["ece"] <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.01 and config["timm_name"] == "resnet18"
    with h5py.File(run / "attention.h5") as handle:
        assert len(handle) == metrics["n_test"]
        for group in handle.values():
            coords, att = group["coords"][()], group["attention"][()]
            assert coords.shape == (len(att), 4) and (coords[:, 2] - coords[:, 0] == 48).all()
            assert abs(att.sum() - 1) < 1e-4 and (att >= 0).all()
    assert main([*args, *FAST]) == 2  # a finished run is never overwritten


def test_tile_scores_pool_the_map_over_tiles() -> None:
    cam = np.zeros((4, 4))
    cam[3, 0] = 1.0  # bottom-left cell of a 4x4 map
    coords = np.array([[0, 0, 50, 50], [0, 150, 50, 200], [150, 150, 200, 200]])
    s = tile_scores(cam, coords, (200, 200))
    assert s.argmax() == 1 and s[1] > 0.5 and s[2] < 0.05 * s[1]


def test_grad_cam_shapes_and_sign() -> None:
    torch.manual_seed(0)
    model = build_whole_image_cnn("resnet18").eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    maps = grad_cam(model, x, torch.tensor([1, 2]))
    assert maps.shape == (2, 2, 2) and (maps >= 0).all()


def test_study_names_and_local_weights(tmp_path: Path) -> None:
    assert len(STUDY_ARCHS) == 9
    headless = timm.create_model("resnet18", pretrained=False, num_classes=0)
    state = {
        k: torch.full_like(v, 0.5) if v.is_floating_point() else v
        for k, v in headless.state_dict().items()
    }
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    model = build_whole_image_cnn("resnet18", weights=str(path))
    conv = model.feature_maps.encoder.backbone.conv1.weight
    assert torch.all(conv == 0.5)
    with pytest.raises(MilCytoError, match="unknown encoder"):
        build_whole_image_cnn("resnet9000")
