"""Calibration (mil_cyto.calibration): ECE and Brier score on hand-computed cases and against
their textbook formulas, the fitted temperature, and a reloaded model's temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve

from mil_cyto.calibration import (
    attach_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    log_mean_softmax,
    nll,
    reliability_curve,
    scaled_probabilities,
)
from mil_cyto.checkpoint import build_model, load_model, model_recipe, save_model
from mil_cyto.encoders import EncoderSpec
from mil_cyto.errors import MilCytoError
from mil_cyto.models import HeadEnsemble, create_aggregator
from mil_cyto.reporting import plot_reliability


def _ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|, bins (lo, hi] (the first [0, hi])."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            acc = (pred[inside] == labels[inside]).mean()
            total += inside.sum() / len(conf) * abs(acc - conf[inside].mean())
    return float(total)


def test_ece_on_hand_computed_cases() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): two bins
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 1, 0])
    # bin (0.8, 0.9]: acc 0.5, conf 0.9 -> 0.4; bin (0.5, 0.6]: acc 1, conf 0.6 -> 0.4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    # perfectly confident and right: 0; confident and wrong: 1
    one_hot = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(one_hot, np.array([0, 1, 2])) == 0.0
    assert expected_calibration_error(one_hot, np.array([1, 2, 0])) == pytest.approx(1.0)
    # 3 of 4 right at confidence 0.75: calibrated, ECE 0
    p = np.array([[0.75, 0.25, 0.0]] * 4)
    assert expected_calibration_error(p, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_ece_matches_the_formula_and_sklearn_bins() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 3
    probs = scaled_probabilities(logits, 1.0).astype(np.float64)
    labels = rng.integers(0, 3, size=500)
    for n_bins in (5, 10, 15):
        assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
            _ece_reference(probs, labels, n_bins), abs=1e-12
        )
    accuracy, confidence, count = reliability_curve(probs, labels)
    want_acc, want_conf = calibration_curve(
        (probs.argmax(1) == labels).astype(int), probs.max(1), n_bins=10
    )
    np.testing.assert_allclose(accuracy, want_acc)
    np.testing.assert_allclose(confidence, want_conf)
    assert count.sum() == 500 and (count > 0).all()
    # the ECE is the count-weighted gap of the plotted points
    ece = (count * np.abs(accuracy - confidence)).sum() / count.sum()
    assert expected_calibration_error(probs, labels) == pytest.approx(ece)


def test_brier_on_hand_computed_cases_and_the_formula() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    # (0.09 + 0.04 + 0.01 + 0.01 + 0.81 + 0.64) / 2
    assert brier_score(probs, labels) == pytest.approx((0.14 + 1.46) / 2)
    assert brier_score(np.eye(3), np.array([0, 1, 2])) == 0.0
    assert brier_score(np.eye(3), np.array([1, 2, 0])) == pytest.approx(2.0)
    rng = np.random.default_rng(1)
    p = scaled_probabilities(rng.normal(size=(200, 3)), 1.0).astype(np.float64)
    y = rng.integers(0, 3, size=200)
    # a class absent from the labels still counts as a class
    assert brier_score(p, np.zeros(200, int)) == pytest.approx(
        np.mean(((p - np.eye(3)[0]) ** 2).sum(1))
    )
    assert brier_score(p, y) == pytest.approx(np.mean(((p - np.eye(3)[y]) ** 2).sum(1)))


def _overconfident(n: int, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model (labels drawn from softmax(z)), multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    p = scaled_probabilities(z, 1.0).astype(np.float64)
    labels = np.array([rng.choice(3, p=row / row.sum()) for row in p])
    return z * scale, labels


def test_temperature_fitted_on_overconfident_logits_is_above_one_and_lowers_nll() -> None:
    logits, labels = _overconfident(2000, 0, scale=4.0)
    t = fit_temperature(logits, labels)
    assert 3.0 < t < 5.5  # the true temperature is 4
    assert nll(logits, labels, t) < nll(logits, labels, 1.0) - 0.1
    # the NLL's minimum: no nearby temperature does better
    for other in (t * 0.9, t * 1.1):
        assert nll(logits, labels, t) <= nll(logits, labels, other)
    # and on held-out photos of the same model it lowers NLL and ECE too
    held, held_labels = _overconfident(2000, 1, scale=4.0)
    assert nll(held, held_labels, t) < nll(held, held_labels)
    before = expected_calibration_error(scaled_probabilities(held, 1.0), held_labels)
    after = expected_calibration_error(scaled_probabilities(held, t), held_labels)
    assert after < before
    # argmax kept
    assert (scaled_probabilities(held, t).argmax(1) == held.argmax(1)).all()
    # an underconfident model is sharpened
    under, under_labels = _overconfident(2000, 2, scale=0.5)
    assert fit_temperature(under, under_labels) < 1.0


def test_temperature_edge_cases() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    # perfectly separated photos: the search stops at its lower bound
    z = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    assert fit_temperature(z, np.array([0, 1]), bounds=(0.5, 2.0)) == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0, 0]]), np.array([0]))


def test_log_mean_softmax_is_the_ensembles_logits() -> None:
    torch.manual_seed(0)
    heads = [create_aggregator("gated_abmil", in_dim=8, n_classes=3) for _ in range(3)]
    ensemble = HeadEnsemble(heads).eval()
    x = torch.randn(4, 10, 8)
    with torch.no_grad():
        each = [h.eval()(x).logits.numpy() for h in heads]
        want = ensemble(x).logits.numpy()
    np.testing.assert_allclose(log_mean_softmax(each), want, atol=1e-5)
    np.testing.assert_array_equal(log_mean_softmax(each[:1]), each[0])


def _saved(tmp_path: Path, temperature: float) -> tuple[torch.nn.Module, dict]:
    spec = EncoderSpec(name="smallcnn", kwargs={"width": 4})
    recipe = model_recipe(spec, "gated_abmil", {}, 32, {"tile_size": 32}, temperature=temperature)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    save_model(tmp_path, model, recipe)
    return model, recipe


def test_a_reloaded_model_divides_its_logits_by_the_saved_temperature(tmp_path: Path) -> None:
    model, recipe = _saved(tmp_path, 2.5)
    assert json.loads((tmp_path / "model.json").read_text())["calibration"] == {"temperature": 2.5}
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 7, recipe["aggregator"]["in_dim"])
    with torch.no_grad():
        raw, out = model.aggregator(x), loaded.aggregator(x)
    torch.testing.assert_close(out.logits, raw.logits / 2.5)
    torch.testing.assert_close(out.attention, raw.attention)
    expected = scaled_probabilities(raw.logits.numpy(), 2.5)
    np.testing.assert_allclose(torch.softmax(out.logits, 1).numpy(), expected, atol=1e-6)
    # a handle removes the hook; temperature 1 adds none
    handle = attach_temperature(model.aggregator, 2.0)
    assert handle is not None
    handle.remove()
    assert attach_temperature(model.aggregator, 1.0) is None
    with torch.no_grad():
        torch.testing.assert_close(model.aggregator(x).logits, raw.logits)


def test_models_without_a_temperature_load_as_before_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    model, recipe = _saved(tmp_path, 1.0)
    del recipe["calibration"]
    (tmp_path / "model.json").write_text(json.dumps(recipe))
    loaded, _ = load_model(tmp_path)
    x = torch.randn(1, 5, recipe["aggregator"]["in_dim"])
    with torch.no_grad():
        assert torch.equal(loaded.aggregator(x).logits, model.aggregator(x).logits)
    for bad in (0, -1.0, "2", float("inf")):
        recipe["calibration"] = {"temperature": bad}
        (tmp_path / "model.json").write_text(json.dumps(recipe))
        with pytest.raises(MilCytoError, match="model.json.*temperature"):
            load_model(tmp_path)


def test_reliability_plot_is_written(tmp_path: Path) -> None:
    logits, labels = _overconfident(60, 3, scale=4.0)
    raw, cal = scaled_probabilities(logits, 1.0), scaled_probabilities(logits, 4.0)
    plot_reliability(tmp_path / "reliability.png", labels, raw, cal, 4.0)
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the training run ---------------------------------------------------------------------


def _feature_bags(n: int, dim: int, seed: int) -> list:
    """``n`` photos of 12 tiles whose features carry the grade (a shift on a few tiles)."""
    from mil_cyto.training import FeatureBag

    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        label = i % 3
        x = rng.normal(size=(12, dim)).astype(np.float32)
        x[: 2 * label, : dim // 2] += 1.5
        coords = np.tile(np.arange(12)[:, None] * 8, (1, 4)).astype(np.int32)
        bags.append(FeatureBag(f"p{seed}-{i}", f"q{i}", label, x, coords, (96, 96)))
    return bags


@pytest.mark.parametrize("refit", [True, False])
def test_the_heads_keep_validation_logits_from_before_the_refit(
    tmp_path: Path, refit: bool
) -> None:
    """``val_logits``: the validation photos through the validation-selected heads (their
    mean); with ``--refit`` taken before the refit trained on those photos, so they differ
    from the saved model's; without it they are the saved model's own."""
    from mil_cyto.config import resolve_config
    from mil_cyto.distributed import DistContext
    from mil_cyto.pipeline.heads import fit_heads
    from mil_cyto.pipeline.recipe import create_model_parts
    from mil_cyto.pipeline.runtime import Runtime
    from mil_cyto.training import predict

    config = resolve_config(
        {},
        {"out": str(tmp_path), "heads": 2, "epochs": 3, "refit": refit, "pretrain": "none"},
    )
    torch.manual_seed(0)
    parts = create_model_parts(config)
    dim = parts.encoder.out_dim
    train, val = _feature_bags(18, dim, 0), _feature_bags(9, dim, 1)
    runtime = Runtime(tmp_path, torch.device("cpu"), DistContext(), False)
    heads = fit_heads(config, parts, False, train, val, runtime)
    assert heads.val_logits is not None and heads.val_logits.shape == (9, 3)
    np.testing.assert_array_equal(heads.val_labels, [b.label for b in val])
    final = predict(heads.model, val, torch.device("cpu")).logits
    assert np.allclose(heads.val_logits, final, atol=1e-5) is not refit
    off = resolve_config({}, {"out": str(tmp_path / "off"), "heads": 1, "epochs": 1})
    off.temperature_scaling = False
    torch.manual_seed(0)
    parts = create_model_parts(off)
    runtime = Runtime(tmp_path / "off", torch.device("cpu"), DistContext(), False)
    assert fit_heads(off, parts, False, train, val, runtime).val_logits is None


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def test_a_run_calibrates_on_validation_photos_and_keeps_every_call(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Two heads with refit, with and without ``--temperature-scaling``: the same model and
    calls, accuracy and localization; metrics.json's ``calibration``, reliability.png and
    model.json's temperature; the reloaded model gives the calibrated predictions.csv."""
    import csv

    from mil_cyto.data.manifest import read_manifest
    from mil_cyto.labels import GRADES
    from mil_cyto.models import MILModel
    from mil_cyto.pipeline.features import stored_bags
    from mil_cyto.train import main
    from mil_cyto.training import predict

    fast = ["--quiet", "--tile-size", "48", "--stride", "48", "--threads", "2"]
    fast += ["--pretrain", "none", "--epochs", "3", "--heads", "2", "--data", str(tiny_data)]
    runs, metrics, rows = {}, {}, {}
    for flag in ("--temperature-scaling", "--no-temperature-scaling"):
        run = tmp_path / flag.strip("-")
        assert main([*fast, "--out", str(run), flag]) == 0
        runs[flag] = run
        metrics[flag] = json.loads((run / "metrics.json").read_text())
        rows[flag] = list(csv.DictReader((run / "predictions.csv").open()))
        assert (run / "reliability.png").is_file()
        assert "![reliability diagram](reliability.png)" in (run / "report.md").read_text()
    on, off = metrics["--temperature-scaling"], metrics["--no-temperature-scaling"]
    cal, plain = on["calibration"], off["calibration"]
    keys = {"ece", "brier", "temperature", "ece_uncalibrated", "brier_uncalibrated", "n_val"}
    assert keys <= set(cal) and keys <= set(plain)
    splits = json.loads((runs["--temperature-scaling"] / "splits.json").read_text())
    assert cal["n_val"] == len(splits["val"]) > 0 and cal["temperature"] != 1.0
    assert plain["temperature"] == 1.0 and plain["n_val"] == 0
    assert (plain["ece"], plain["brier"]) == (
        plain["ece_uncalibrated"],
        plain["brier_uncalibrated"],
    )
    # the same model before calibration, so the same uncalibrated figures
    assert (cal["ece_uncalibrated"], cal["brier_uncalibrated"]) == (plain["ece"], plain["brier"])
    weights = [(r / "model.safetensors").read_bytes() for r in runs.values()]
    assert weights[0] == weights[1]
    # every call, accuracy and localization unchanged
    for key in ("accuracy", "macro_sensitivity", "macro_specificity", "per_class"):
        assert on[key] == off[key], key
    assert on["confusion_matrix"] == off["confusion_matrix"]
    assert on["localization"] == off["localization"]
    ordered = [[(r["image"], r["pred"]) for r in rows[f]] for f in rows]
    assert ordered[0] == ordered[1]
    recipes = [json.loads((r / "model.json").read_text()) for r in runs.values()]
    assert recipes[0]["calibration"]["temperature"] == cal["temperature"]
    assert recipes[1]["calibration"]["temperature"] == 1.0
    # the written probabilities: the uncalibrated logits over T, as the reloaded model gives
    manifest = {r.image_id: r for r in read_manifest(tiny_data / "manifest.csv")}
    written = {f: np.array([[float(r[f"p_{g}"]) for g in GRADES] for r in rows[f]]) for f in rows}
    photos = [manifest[r["image"]] for r in rows["--temperature-scaling"]]
    bags = stored_bags(runs["--temperature-scaling"] / "features.h5", photos)
    raw, _ = load_model(runs["--no-temperature-scaling"])
    uncalibrated = predict(MILModel(None, raw.aggregator), bags, torch.device("cpu"))
    np.testing.assert_allclose(uncalibrated.probs, written["--no-temperature-scaling"], atol=1e-5)
    calibrated = scaled_probabilities(uncalibrated.logits, cal["temperature"])
    np.testing.assert_allclose(calibrated, written["--temperature-scaling"], atol=1e-5)
    model, _ = load_model(runs["--temperature-scaling"])
    reloaded = predict(MILModel(None, model.aggregator), bags, torch.device("cpu"))
    np.testing.assert_allclose(reloaded.probs, written["--temperature-scaling"], atol=1e-5)
    labels = np.array([GRADES.index(r["label"]) for r in rows["--temperature-scaling"]])
    assert expected_calibration_error(calibrated, labels) == pytest.approx(cal["ece"], abs=1e-5)
    assert brier_score(calibrated, labels) == pytest.approx(cal["brier"], abs=1e-5)
