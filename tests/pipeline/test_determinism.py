"""Same seed, same metrics: two CPU training runs in a row give identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.train import main


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=24, seed=4, width=192, height=144, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def _outputs(run: Path) -> tuple[dict, str, dict[str, torch.Tensor]]:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("timing_s")
    for row in metrics["training"]["history"]:
        row.pop("seconds", None)
    return metrics, (run / "predictions.csv").read_text(), load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("mode", [pytest.param("finetune", marks=pytest.mark.slow), "frozen"])
def test_same_seed_same_metrics_twice(tiny_data: Path, tmp_path: Path, mode: str) -> None:
    args = ["--data", str(tiny_data), "--epochs", "2", "--quiet", "--tile-size", "48"]
    args += ["--stride", "48", "--threads", "1", "--device", "cpu", "--mode", mode]
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main([*args, "--out", str(run)]) == 0
    (ma, pa, wa), (mb, pb, wb) = (_outputs(r) for r in runs)
    assert ma == mb
    assert pa == pb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # and a different training seed really changes the model (the check can fail)
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    wc = _outputs(tmp_path / "c")[2]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
