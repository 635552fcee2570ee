"""The comparison command: same folds for every method, tables, resumption, statistics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mil_cyto.compare import available_methods, bootstrap_ci, main, parse_method
from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.errors import MilCytoError

TINY = ["--folds", "2", "--encoder-epochs", "1", "--encoder-max-tiles", "8", "--mil-epochs", "1",
        "--cnn-size", "64", "--cnn-epochs", "1", "--tile-size", "48", "--stride", "48",
        "--threads", "1", "--quiet"]  # fmt: skip


KEYS = ("accuracy_mean", "macro_sensitivity_mean", "macro_sensitivity_ci_lo", "sens_CIN1_mean",
        "spec_CIN2+_mean", "cpu_s_mean", "peak_extra_mb")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=36, seed=5, width=256, height=192, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def test_methods_parse_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    names = available_methods()
    assert {"transmil", "clam_mb@cells", "cnn:densenet121", "cnn:mobilenetv3_small"} <= set(names)
    assert parse_method("dsmil@cells").instances == "cells"
    assert parse_method("cnn:resnet50").kind == "cnn"
    with pytest.raises(MilCytoError, match="unknown method"):
        parse_method("abmil@pixels")
    assert main(["--list"]) == 0
    assert "clam_sb@cells" in capsys.readouterr().out


def test_compare_fast_path_and_resume(tiny_data: Path, tmp_path: Path) -> None:
    """Two MIL heads on a random-init encoder: tables, shared folds, resumption."""
    out = tmp_path / "cmp"
    args = ["--data", str(tiny_data), "--out", str(out), *TINY, "--encoder-epochs", "0"]
    assert main([*args, "--methods", "abmil,max"]) == 0
    with (out / "comparison.csv").open() as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert {"abmil", "max", "DenseNet121 (reference study)"} <= set(rows)
    for key in KEYS:
        assert rows["max"][key] != "", key
    folds = [json.loads((out / "folds" / m / "fold1.json").read_text()) for m in ("abmil", "max")]
    assert [t[0] for t in folds[0]["metrics"]["test"]] == [
        t[0] for t in folds[1]["metrics"]["test"]
    ]
    stamp = (out / "folds" / "abmil" / "fold0.json").stat().st_mtime_ns
    assert main([*args, "--methods", "abmil"]) == 0
    assert (out / "folds" / "abmil" / "fold0.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_compare_writes_tables_on_shared_folds(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    methods = "abmil,mean@cells,cnn:resnet18"
    assert main(["--data", str(tiny_data), "--methods", methods, "--out", str(out), *TINY]) == 0
    with (out / "comparison.csv").open() as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert {"abmil", "mean@cells", "cnn:resnet18"} <= set(rows)
    assert any(r["kind"] == "reference" for r in rows.values())
    for name in ("abmil", "mean@cells", "cnn:resnet18"):
        row = rows[name]
        assert row["n_folds"] == "2"
        for key in KEYS:
            assert row[key] != "", (name, key)
        assert float(row["macro_sensitivity_ci_lo"]) <= float(row["macro_sensitivity_ci_hi"])
    # every method tested the same photos in each fold, and each photo exactly once
    tested = {}
    for name in ("abmil", "mean-at-cells", "cnn-resnet18"):
        folds = [json.loads((out / "folds" / name / f"fold{k}.json").read_text()) for k in (0, 1)]
        tested[name] = [sorted(t[0] for t in f["metrics"]["test"]) for f in folds]
    assert tested["abmil"] == tested["mean-at-cells"] == tested["cnn-resnet18"]
    all_images = tested["abmil"][0] + tested["abmil"][1]
    assert len(all_images) == len(set(all_images)) == 36
    assert (out / "runs" / "cnn-resnet18" / "fold0" / "attention.h5").is_file()
    md = (out / "comparison.md").read_text()
    assert "DenseNet121 (reference study)" in md and "| abmil |" in md
    # a rerun resumes: finished folds are read back, not retrained
    stamp = (out / "folds" / "abmil" / "fold0.json").stat().st_mtime_ns
    assert main(["--data", str(tiny_data), "--methods", "abmil", "--out", str(out), *TINY]) == 0
    assert (out / "folds" / "abmil" / "fold0.json").stat().st_mtime_ns == stamp


def test_bootstrap_ci_brackets_the_estimate() -> None:
    tests = [[f"i{i}", f"p{i // 2}", i % 3, i % 3 if i % 5 else 0] for i in range(60)]
    ci = bootstrap_ci(tests, n_boot=100)
    lo, hi = ci["macro_sensitivity"]
    assert 0 <= lo < hi <= 1
    perfect = bootstrap_ci([[f"i{i}", f"p{i}", i % 3, i % 3] for i in range(30)], n_boot=20)
    assert perfect["accuracy"] == (1.0, 1.0)
    # the vectorised rates agree with the metrics module on the full sample
    from mil_cyto.compare import _rates
    from mil_cyto.metrics import classification_metrics

    y, p = [t[2] for t in tests], [t[3] for t in tests]
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (y, p), 1)
    m = classification_metrics(y, p)
    np.testing.assert_allclose(
        _rates(cm), [m["accuracy"], m["macro_sensitivity"], m["macro_specificity"]]
    )


def test_fold_features_pretrain_on_training_instances_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pretrain_epochs`` > 0: SimCLR sees exactly the fold's training photos' instances
    (never validation or test), and the encoder that makes the features is the pretrained
    one, not the seeded random init."""
    import mil_cyto.compare as compare
    from mil_cyto.data.bags import Bag
    from mil_cyto.data.splits import Split

    rng = np.random.default_rng(0)
    bags = [
        Bag(
            f"i{i}",
            f"p{i}",
            i % 3,
            rng.integers(0, 255, (4 + i, 3, 32, 32), dtype=np.uint8),
            np.zeros((4 + i, 4), np.int32),
            (64, 64),
        )
        for i in range(6)
    ]
    split = Split(train=np.array([0, 1, 2]), val=np.array([3]), test=np.array([4, 5]))
    seen: list[int] = []
    real = compare.pretrain_encoder

    def spy(encoder, tiles, settings, device, **kw):
        seen.append(len(tiles))
        return real(encoder, tiles, settings, device, **kw)

    monkeypatch.setattr(compare, "pretrain_encoder", spy)
    budget = compare.Budget(
        encoder_kwargs={"width": 4, "out_dim": 8}, encoder_epochs=0, pretrain_epochs=1
    )
    pretrained = compare.fold_features(bags, split, budget, seed=0)
    assert seen == [4 + 5 + 6]
    plain = compare.fold_features(
        bags, split, compare.Budget(**{**vars(budget), "pretrain_epochs": 0}), seed=0
    )
    assert seen == [15]
    assert pretrained[0].features.shape == plain[0].features.shape == (4, 8)
    assert not np.allclose(pretrained[0].features, plain[0].features)
    import torch

    from mil_cyto.encoders.radial import RadialProfile

    radial = compare.fold_features(
        bags, split, compare.Budget(**{**vars(budget), "pretrain_epochs": 0, "radial_rings": 2}), 0
    )
    np.testing.assert_allclose(radial[0].features[:, :8], plain[0].features, rtol=1e-5, atol=1e-6)
    profile = RadialProfile(2)(torch.from_numpy(bags[0].tiles)).numpy()
    np.testing.assert_allclose(radial[0].features[:, 8:], profile, rtol=1e-5, atol=1e-6)
