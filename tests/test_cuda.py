"""The CUDA paths: extraction under fp16 autocast, training and prediction under bf16, the
whole-image baseline, and the command with ``--device auto``. Each compares with the CPU
result where the numbers should agree. Skipped on machines without a GPU (CI has none); the
CPU half of the mixed-precision switch is checked here on every machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mil_cyto.data.splits import Split
from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.devices import mixed_precision
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.features.extraction import EncoderRunner
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.training import FeatureBag, FitConfig, fit, predict

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _bags(n: int = 24, dim: int = 16, seed: int = 0) -> list[FeatureBag]:
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        size = int(rng.integers(4, 40))
        label = i % 3
        x = rng.normal(size=(size, dim)).astype(np.float32)
        x[:label] += 3.0  # planted atypical tiles
        coords = np.zeros((size, 4), dtype=np.int32)
        bags.append(FeatureBag(f"b{i}", f"p{i}", label, x, coords, (1, 1)))
    return bags


def _head_model(seed: int = 0, dim: int = 16) -> MILModel:
    torch.manual_seed(seed)
    head = create_aggregator("gated_abmil", in_dim=dim, bag_norm=True, instance_attention=True)
    return MILModel(None, head)


def test_mixed_precision_is_a_no_op_on_cpu() -> None:
    for device in (CPU, "cpu"):  # a device or its name, as fit's callers pass either
        with mixed_precision(device, True):
            assert not torch.is_autocast_enabled("cpu")
    with mixed_precision(CPU, True):
        assert not torch.is_autocast_enabled("cpu")
        y = torch.ones(2, 3) @ torch.ones(3, 2)
    assert y.dtype == torch.float32
    bags = _bags()
    config = FitConfig(epochs=2, batch_bags=4, instance_loss_weight=1.0, instance_loss="propagate")
    trained = []
    for amp in (True, False):
        model = _head_model()  # seeds torch, so dropout draws alike in both runs
        fit(
            model,
            bags[:16],
            bags[16:],
            FitConfig(**{**vars(config), "amp": amp}),
            CPU,
            progress=False,
        )
        trained.append(model.state_dict())
    on, off = trained
    for (name, a), b in zip(on.items(), off.values(), strict=True):
        assert torch.equal(a, b), name


@needs_cuda
def test_extraction_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("resnet18")).eval()
    tiles = torch.randint(0, 256, (8, 3, 96, 96), dtype=torch.uint8)
    expected = EncoderRunner(encoder, "cpu")(tiles)
    gpu = EncoderRunner(encoder, "cuda")  # fp16 autocast by default
    assert gpu.amp
    got = gpu(tiles)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 2e-2 * scale
    compiled = EncoderRunner(create_encoder(EncoderSpec("smallcnn")).eval(), "cuda", compile="on")
    plain = EncoderRunner(compiled.encoder, "cuda", compile="off")
    a, b = compiled(tiles), plain(tiles)
    assert compiled.compiled and (a - b).abs().max().item() < 2e-2 * b.abs().max().item()


@needs_cuda
def test_cuda_fp16_store_records_its_precision(tmp_path: Path) -> None:
    """A store extracted under fp16 autocast says so, and float32 features never join it."""
    from PIL import Image

    from mil_cyto.data.manifest import ManifestRow
    from mil_cyto.data.tiling import TilingConfig
    from mil_cyto.errors import MilCytoError
    from mil_cyto.features.store import BagStore, extract_to_store

    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 200, (96, 128, 3), dtype=np.uint8)).save(path)
        rows.append(ManifestRow(path, f"p{i}.png", f"pt{i}", i % 3))
    tiling = TilingConfig(tile_size=32, stride=32, min_tissue=0.0)
    encoder = create_encoder(EncoderSpec("smallcnn")).eval()
    out = tmp_path / "fp16.h5"
    extract_to_store(rows, encoder, out, tiling=tiling, provenance={"e": "s"}, device="cuda")
    with BagStore(out) as store:
        assert store.provenance["precision"] == "float16"
    with pytest.raises(MilCytoError, match="holds other features"):
        extract_to_store(rows, encoder, out, tiling=tiling, provenance={"e": "s"}, amp=False)


@needs_cuda
def test_head_training_on_cuda_under_bf16() -> None:
    bags = _bags(60)
    model = _head_model()
    config = FitConfig(epochs=6, batch_bags=8, instance_loss_weight=1.0, instance_loss="propagate")
    result = fit(model, bags[:42], bags[42:], config, torch.device("cuda"), progress=False)
    assert result.best_epoch >= 1
    assert all(p.device.type == "cuda" for p in model.parameters())
    gpu = predict(model, bags[42:], torch.device("cuda"))
    cpu = predict(model.to(CPU), bags[42:], CPU)
    assert gpu.probs.dtype == np.float32
    np.testing.assert_allclose(gpu.probs, cpu.probs, atol=0.03)  # bf16 forward vs float32
    for a, b in zip(gpu.attention, cpu.attention, strict=True):
        np.testing.assert_allclose(a.sum(), 1.0, atol=1e-3)
        np.testing.assert_allclose(a, b, atol=0.03)


@needs_cuda
def test_fine_tuning_step_on_cuda() -> None:
    from mil_cyto.data.bags import Bag

    rng = np.random.default_rng(0)
    bags = [
        Bag(
            f"b{i}",
            f"p{i}",
            i % 3,
            rng.integers(0, 256, (int(rng.integers(2, 9)), 3, 48, 48), dtype=np.uint8),
            np.zeros((1, 4), dtype=np.int32),
            (48, 48),
        )
        for i in range(9)
    ]
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn"))
    head = create_aggregator("gated_abmil", in_dim=encoder.out_dim, instance_attention=True)
    model = MILModel(encoder, head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FitConfig(epochs=1, instance_loss_weight=1.0, instance_loss="propagate")
    fit(model, bags[:6], bags[6:], config, torch.device("cuda"), progress=False)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v.cpu(), before[k])]
    assert any(k.startswith("encoder.") for k in changed)
    pred = predict(model, bags[6:], torch.device("cuda"))
    assert np.isfinite(pred.probs).all()


@needs_cuda
def test_whole_image_baseline_on_cuda() -> None:
    from mil_cyto.baseline import BaselineConfig, fit_baseline
    from mil_cyto.models.whole_image import build_whole_image_cnn

    torch.manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8)
    y = torch.arange(12) % 3
    split = Split(train=np.arange(8), val=np.array([8, 9]), test=np.array([10, 11]))
    model = build_whole_image_cnn("resnet18")
    config = BaselineConfig(epochs=2, batch_size=4, size=64)
    out = fit_baseline(model, x, y, split, config, torch.device("cuda"))
    assert len(out["history"]) == 2
    assert np.isfinite([h["train_loss"] for h in out["history"]]).all()


@needs_cuda
def test_train_command_runs_on_cuda_with_device_auto(tmp_path: Path) -> None:
    from mil_cyto.train import main

    data = generate_dataset(
        tmp_path / "data",
        SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3)),
        workers=1,
        progress=False,
    )
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "2", "--quiet"]
    assert main([*args, "--tile-size", "48", "--stride", "48", "--device", "auto"]) == 0
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["device"] == "auto" and config["amp"] is True
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # the default frozen run pretrains (SimCLR) and self-trains the encoder on the GPU too
    assert config["pretrain"] == "simclr" and config["refine_epochs"] > 0
    losses = metrics["self_training"]["loss_per_epoch"]
    assert len(losses) == config["refine_epochs"] and np.isfinite(losses).all()
    assert len(metrics["self_training"]["rounds"]) == config["refine_rounds"] == 2
    assert len(metrics["training"]["members"]) == config["heads"] == 3  # the head ensemble
