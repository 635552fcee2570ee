"""The training run as stages (mil_cyto.pipeline): run_training is its stages called in
order, the timer fills timing_s, and no module outside the tests imports the train command."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mil_cyto.config import TrainConfig, resolve_config
from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.pipeline.data import load_data, write_run_start
from mil_cyto.pipeline.encoder_training import train_encoder
from mil_cyto.pipeline.evaluation import evaluate
from mil_cyto.pipeline.features import extract_features
from mil_cyto.pipeline.heads import fit_heads
from mil_cyto.pipeline.outputs import finish_run, write_outputs
from mil_cyto.pipeline.recipe import create_model_parts
from mil_cyto.pipeline.run import run_training
from mil_cyto.pipeline.runtime import start_runtime
from mil_cyto.pipeline.timing import StageTimer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def _config(data: Path, out: Path) -> TrainConfig:
    """Frozen mode with every stage on: SimCLR, one self-training round, two heads, refit."""
    settings = {"data": str(data), "out": str(out), "mode": "frozen", "pretrain": "simclr"}
    settings.update(pretrain_epochs=1, refine_epochs=1, refine_rounds=1, heads=2, epochs=2)
    settings.update(tile_size=48, stride=48, threads=2, workers=1)
    return resolve_config({}, settings)


def _by_hand(config: TrainConfig) -> tuple[Path, dict]:
    """The stages of a frozen-mode run, called one by one."""
    timer = StageTimer()
    runtime = start_runtime(config, progress=False)
    data = load_data(config, runtime)
    write_run_start(runtime, data)
    parts = create_model_parts(config)
    trained = train_encoder(config, data, parts.encoder, parts.tiling, None, runtime, timer)
    bags = extract_features(config, data.rows, parts, trained, runtime)
    train_bags, val_bags, test_bags = data.split.take(bags)
    heads = fit_heads(config, parts, False, train_bags, val_bags, runtime)
    result = evaluate(config, heads, trained, data, test_bags, runtime)
    write_outputs(config, runtime.run_dir, parts, heads.model, result, data.boxes)
    return runtime.run_dir, finish_run(runtime.run_dir, result.metrics, {}, data.resolved)


def test_run_training_is_its_stages_in_order(tiny_data: Path, tmp_path: Path) -> None:
    run_dir, metrics = run_training(_config(tiny_data, tmp_path / "run"), progress=False)
    hand_dir, hand = _by_hand(_config(tiny_data, tmp_path / "hand"))
    timing = metrics.pop("timing_s")
    assert list(timing) == [
        "data (build or reuse)",
        "pretraining",
        "self-training",
        "feature extraction",
        "training",
        "testing",
        "writing outputs",
        "total",
    ]
    assert all(v >= 0 for v in timing.values()) and timing["total"] >= timing["training"]
    hand.pop("timing_s")
    assert metrics == hand and len(metrics["training"]["members"]) == 2
    assert "pretraining" in metrics and "self_training" in metrics
    assert json.loads((run_dir / "metrics.json").read_text())["timing_s"] == timing
    for name in ("predictions.csv", "model.safetensors", "model.json", "splits.json"):
        assert (run_dir / name).read_bytes() == (hand_dir / name).read_bytes(), name
    assert not (run_dir / "resume").exists()


def test_the_timer_adds_each_stage_in_order() -> None:
    timer = StageTimer()
    for name in ("b", "a", "b"):
        with timer.stage(name):
            pass
    seconds = timer.seconds()
    assert list(seconds) == ["b", "a", "total"]
    assert seconds["total"] >= seconds["a"] + seconds["b"] >= 0


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_no_module_imports_the_train_command() -> None:
    """The library lives in mil_cyto.pipeline and mil_cyto.training; ``mil_cyto.train`` is a
    command, imported by the tests only."""
    folders = ("mil_cyto", "explain", "app", "benchmarks", "examples")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if path != ROOT / "mil_cyto" / "train.py" and "mil_cyto.train" in _imports(path)
    ]
    assert offenders == []
    code = (
        "import sys, mil_cyto.compare, mil_cyto.baseline, mil_cyto.pipeline.run; "
        "assert 'mil_cyto.train' not in sys.modules, 'mil_cyto.train was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
