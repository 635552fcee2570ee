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
    assert {"ece", "brier"} <= set(folds[0]["metrics"]["calibration"])  # uncalibrated
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


def test_instance_methods_and_train_default_parse() -> None:
    assert parse_method("sil_gbm@cells").kind == "instance"
    assert parse_method("pseudo_gbm").instances == "grid"
    assert parse_method("sil@cells").kind == "mil"  # the neural SIL head is an aggregator
    assert parse_method("train-default").kind == "pipeline"
    assert {"sil", "sil_gbm", "pseudo_gbm@cells", "train-default"} <= set(available_methods())
    with pytest.raises(MilCytoError, match="unknown method"):
        parse_method("sil_gbm@pixels")


def test_instance_rows_on_a_bag_store_share_the_folds(tiny_data: Path, tmp_path: Path) -> None:
    """SIL (neural and boosted) and the pseudo-label classifier on a stored feature bag:
    rows with localization, every method tested on the same photos, each photo once; a store
    of other instances is refused."""
    from mil_cyto.extract import main as extract

    store = tmp_path / "features.h5"
    assert extract(["--data", str(tiny_data), "--out", str(store), "--encoder", "smallcnn",
                    "--encoder-kwargs", '{"width": 4, "out_dim": 8}', "--tile-size", "48",
                    "--stride", "48", "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "cmp"
    methods = ["sil", "sil_gbm", "pseudo_gbm"]
    args = ["--data", str(tiny_data), "--out", str(out), *TINY, "--features", str(store)]
    assert main([*args, "--methods", ",".join(methods), "--gbm-max-iter", "10"]) == 0
    with (out / "comparison.csv").open() as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    for name in methods:
        assert rows[name]["n_folds"] == "2" and rows[name]["instance_auroc_mean"] != "", name
    tested = {
        name: [
            sorted(t[0] for t in json.loads((out / "folds" / name / f"fold{k}.json").read_text())
                   ["metrics"]["test"])
            for k in (0, 1)
        ]
        for name in methods
    }  # fmt: skip
    assert tested["sil"] == tested["sil_gbm"] == tested["pseudo_gbm"]
    assert len(set(tested["sil"][0] + tested["sil"][1])) == 36
    pseudo = json.loads((out / "folds" / "pseudo_gbm" / "fold0.json").read_text())
    per_grade = pseudo["metrics"]["instance_model"]["instances_per_grade"]
    assert per_grade[0] > 0 and sum(per_grade[1:]) > 0
    assert json.loads((out / "config.json").read_text())["features"] == str(store)
    assert main([*args, "--methods", "sil_gbm@cells", "--out", str(tmp_path / "c2")]) == 2


def test_train_default_row_runs_the_pipeline_on_each_fold(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train-default`` calls the training run with the defaults and the fold's own split
    (here a stand-in for the run, which writes the predictions of the split's test photos)."""
    import mil_cyto.pipeline.run as pipeline_run
    from mil_cyto.config import TrainConfig
    from mil_cyto.data.manifest import read_manifest
    from mil_cyto.data.splits import Split

    seen: list[tuple[TrainConfig, Split]] = []
    rows = read_manifest(tiny_data / "manifest.csv")

    def fake_run(config: TrainConfig, *, progress: bool = True, split: Split | None = None):
        assert split is not None
        seen.append((config, split))
        out = Path(config.out or "")
        out.mkdir(parents=True, exist_ok=True)
        with (out / "predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "patient_id", "label", "pred"])
            for i in split.test:
                writer.writerow([rows[i].image_id, rows[i].patient_id, "normal", "normal"])
        labels = [rows[i].label for i in split.test]
        from mil_cyto.metrics import classification_metrics

        return out, classification_metrics(labels, [0] * len(labels))

    monkeypatch.setattr(pipeline_run, "run_training", fake_run)
    out = tmp_path / "cmp"
    args = ["--data", str(tiny_data), "--out", str(out), *TINY, "--seed", "3"]
    assert main([*args, "--methods", "train-default"]) == 0
    folds = json.loads((out / "folds.json").read_text())
    assert [s.as_dict() for _, s in seen] == folds
    config = seen[0][0]
    assert config.seed == 3 and config.aggregator == TrainConfig().aggregator
    defaults = TrainConfig()
    assert (config.heads, config.refine_rounds) == (defaults.heads, defaults.refine_rounds)
    row = json.loads((out / "folds" / "train-default" / "fold1.json").read_text())
    assert [t[0] for t in row["metrics"]["test"]] == [rows[i].image_id for i in folds[1]["test"]]
