"""End to end: photos -> run folder, through the command's own entry point."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mil_cyto.checkpoint import load_model
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.features import BagStore
from mil_cyto.labels import GRADES
from mil_cyto.models import MILModel
from mil_cyto.pipeline.features import stored_bags
from mil_cyto.train import main

FAST = ["--epochs", "1", "--quiet", "--tile-size", "48", "--stride", "48", "--threads", "2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 small synthetic photos from 10+ patients (enough for a 60/20/20 split)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def _copy_data(src: Path, dst: Path) -> Path:
    """A writable copy of a data set (manifest, images, cells) to damage in a test."""
    dst.mkdir()
    (dst / "images").mkdir()
    for p in (src / "images").iterdir():
        (dst / "images" / p.name).write_bytes(p.read_bytes())
    for name in ("manifest.csv", "cells.csv"):
        (dst / name).write_text((src / name).read_text())
    return dst


def test_run_folder_contract(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["--data", str(tiny_data), "--out", str(run), *FAST]) == 0
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
    for key in ("accuracy", "macro_sensitivity", "macro_specificity", "per_class", "n_test"):
        assert key in metrics
    assert set(metrics["per_class"]) == set(GRADES)
    assert {"sensitivity", "specificity"} <= set(metrics["per_class"]["CIN2+"])
    loc = metrics["localization"]
    assert {"instance_auroc", "pointing_game", "tiles", "per_instance"} <= set(loc)
    assert {"instance_auroc", "pointing_game"} <= set(loc["per_instance"])
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "image",
        "patient_id",
        "label",
        "pred",
        "p_normal",
        "p_CIN1",
        "p_CIN2+",
    ]
    assert len(rows) == metrics["n_test"]
    probs = np.array([[float(r[f"p_{g}"]) for g in GRADES] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    splits = json.loads((run / "splits.json").read_text())
    test_patients = {r["patient_id"] for r in rows}
    manifest = {
        r["image"]: r["patient_id"] for r in csv.DictReader((tiny_data / "manifest.csv").open())
    }
    train_patients = {manifest[i] for i in splits["train"] + splits["val"]}
    assert not test_patients & train_patients
    with h5py.File(run / "attention.h5") as handle:
        assert len(handle) == len(rows)
        group = handle[next(iter(handle))]
        coords, attention = group["coords"][()], group["attention"][()]
        assert coords.shape == (len(attention), 4)
        assert abs(attention.sum() - 1) < 1e-4
        assert (coords[:, 2] - coords[:, 0] == 48).all()
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1 and config["tile_size"] == 48
    # the saved model rebuilds and gives the saved predictions
    model, recipe = load_model(run)
    assert recipe["tiling"]["tile_size"] == 48
    from mil_cyto.data.bags import load_bag
    from mil_cyto.data.tiling import TilingConfig

    row = next(r for r in read_manifest(tiny_data) if r.image_id == rows[0]["image"])
    bag = load_bag(row, TilingConfig(**recipe["tiling"]))
    with torch.inference_mode():
        out = model.forward_tiles([torch.from_numpy(bag.tiles)])
    p = torch.softmax(out.logits, dim=1)[0].numpy()
    np.testing.assert_allclose(p, probs[0], atol=1e-4)


def test_config_file_and_refusal_to_overwrite(tiny_data: Path, tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(
        json.dumps(
            {
                "data": str(tiny_data),
                "epochs": 1,
                "aggregator": "abmil",
                "tile_size": 48,
                "stride": 48,
            }
        )
    )
    run = tmp_path / "run"
    assert main(["--config", str(config), "--out", str(run), "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["aggregator"] == "abmil" and saved["data"] == str(tiny_data)
    # the saved config.json repeats the run
    assert (
        main(["--config", str(run / "config.json"), "--out", str(tmp_path / "again"), "--quiet"])
        == 0
    )
    a = json.loads((run / "metrics.json").read_text())
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert a["accuracy"] == b["accuracy"]
    assert main(["--config", str(config), "--out", str(run), "--quiet"]) == 2


def test_same_seed_same_result(tiny_data: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert main(["--data", str(tiny_data), "--out", str(run), *FAST]) == 0
        outs.append((run / "predictions.csv").read_text())
    assert outs[0] == outs[1]


def test_frozen_mode_with_timm_encoder_and_local_weights(tiny_data: Path, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    reference = timm.create_model("resnet18", num_classes=0)
    save_file(reference.state_dict(), str(weights))
    run = tmp_path / "run"
    args = [
        "--data",
        str(tiny_data),
        "--out",
        str(run),
        "--encoder",
        "resnet18",
        "--weights",
        str(weights),
        "--mode",
        "frozen",
        *FAST,
    ]
    assert main(args) == 0
    with h5py.File(run / "features.h5") as handle:
        provenance = json.loads(handle.attrs["provenance"])
        assert provenance["encoder"] == "resnet18" and provenance["weights"] == str(weights)
        first = handle["bags"][next(iter(handle["bags"]))]
        # resnet18's 512 features, then the nucleus crops' radial profile (16 rings x 6)
        assert provenance["encoder_kwargs"] == {"radial_rings": 16}
        assert first["features"].shape[1] == 512 + 96
    model, _ = load_model(run)
    loaded = model.encoder.backbone.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded[key], value), key


def _run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "mil_cyto.train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("unknown_label", "CIN4"),
        ("missing_column", "patient_id"),
        ("missing_image", "not found"),
        ("corrupt_image", "cannot read image"),
        ("tiny_image", "smaller than one"),
        ("empty_bag", "empty bag"),
    ],
)
def test_bad_input_one_clear_message(
    tiny_data: Path, tmp_path: Path, damage: str, expected: str
) -> None:
    data = _copy_data(tiny_data, tmp_path / "data")
    manifest = data / "manifest.csv"
    lines = manifest.read_text().splitlines()
    first_image = data / lines[1].split(",")[0]
    if damage == "unknown_label":
        lines[3] = lines[3].replace(lines[3].split(",")[2], "CIN4", 1)
    elif damage == "missing_column":
        lines = [line.split(",", 2)[0] + "," + line.split(",", 2)[2] for line in lines]
    elif damage == "missing_image":
        first_image.unlink()
    elif damage == "corrupt_image":
        first_image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    elif damage == "tiny_image":
        Image.new("RGB", (20, 20), (120, 60, 140)).save(first_image)
    elif damage == "empty_bag":
        Image.new("RGB", (256, 192), (250, 250, 250)).save(first_image)
    manifest.write_text("\n".join(lines) + "\n")
    result = _run_cli(["--data", str(data), "--out", str(tmp_path / "run"), *FAST])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and expected in message[0], result.stderr[-2000:]
    if damage == "unknown_label":
        assert "manifest.csv line 4" in message[0]
    elif damage != "missing_column":
        assert first_image.name in message[0]


def test_grayscale_and_rgba_photos_are_converted(tiny_data: Path, tmp_path: Path) -> None:
    data = _copy_data(tiny_data, tmp_path / "data")
    images = sorted((data / "images").iterdir())
    Image.open(images[0]).convert("L").save(images[0])
    Image.open(images[1]).convert("RGBA").save(images[1])
    assert main(["--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 0


def test_help_lists_the_options() -> None:
    result = _run_cli(["--help"])
    assert result.returncode == 0
    for flag in ("--data", "--out", "--encoder", "--aggregator", "--epochs", "--seed", "--config"):
        assert flag in result.stdout


@pytest.mark.slow
def test_default_command_meets_the_targets(tmp_path: Path) -> None:
    """The embedded default (built-in synthetic set, CPU, seed 0) against the issue's
    targets. Measured on the 2-core AVX-512 machine: 0.933 / 0.931 / 0.964, grid instance
    AUROC 0.916, pointing 0.944; other CPUs round differently and may land elsewhere
    (over ten seeds there, 9 of 10 met all five; docs/cin1_gap.md)."""
    env = {**os.environ, "MIL_CYTO_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mil_cyto.train", "--out", str(run), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.90
    assert metrics["macro_sensitivity"] >= 0.87
    assert metrics["macro_specificity"] >= 0.94
    assert metrics["localization"]["instance_auroc"] >= 0.90
    assert metrics["localization"]["pointing_game"] >= 0.80


@pytest.mark.parametrize("aggregator", ["mean", "clam_sb", "dsmil"])
def test_default_config_trains_non_abmil_heads(
    aggregator: str, tiny_data: Path, tmp_path: Path
) -> None:
    """``instance_attention`` (on by default) belongs to the ABMIL heads; the others still
    train with the default configuration."""
    run = tmp_path / "run"
    assert (
        main(["--data", str(tiny_data), "--out", str(run), "--aggregator", aggregator, *FAST]) == 0
    )
    recipe = json.loads((run / "model.json").read_text())
    assert "instance_attention" not in json.dumps(recipe)


def test_simclr_pretraining_then_frozen_features(tiny_data: Path, tmp_path: Path) -> None:
    """--pretrain simclr: the encoder is trained before the head (it is no longer the seeded
    random init), then self-trained on the first head's pseudo-labels (by default); it is the
    encoder that made the cached features and the one saved, and the store's provenance
    names its weights. With --refine-epochs 0 the features are the pretrained encoder's."""
    from mil_cyto.data.images import load_rgb
    from mil_cyto.data.tiling import extract_tiles
    from mil_cyto.encoders import create_encoder

    run = tmp_path / "run"
    args = ["--data", str(tiny_data), "--out", str(run), "--mode", "frozen"]
    args += ["--pretrain", "simclr", "--pretrain-epochs", "1", *FAST]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["timing_s"]["pretraining"] > 0
    assert len(metrics["pretraining"]["loss_per_epoch"]) == 1
    refined = metrics["self_training"]
    assert metrics["timing_s"]["self-training"] > 0 and len(refined["loss_per_epoch"]) == 5
    n_train = len(json.loads((run / "splits.json").read_text())["train"])
    normal, cin1, cin2 = refined["pseudo_labels_per_grade"]
    assert normal > n_train and 0 < cin1 + cin2 < n_train  # one instance per abnormal photo
    assert 0.0 <= refined["pseudo_abnormal_on_atypical_cells"] <= 1.0
    assert refined["encoder_sha256"] != metrics["pretraining"]["encoder_sha256"]
    model, _ = load_model(run)
    torch.manual_seed(0)  # the run's seed, set before it builds its encoder
    init = create_encoder("smallcnn").state_dict()
    saved = model.encoder.state_dict()
    assert any(not torch.equal(init[k], v) for k, v in saved.items() if k in init)
    image_id = json.loads((run / "splits.json").read_text())["test"][0]
    with BagStore(run / "features.h5") as store:
        assert store.provenance["pretrained_sha256"] == refined["encoder_sha256"]
        stored, coords = store[image_id]
    tiles = extract_tiles(load_rgb(tiny_data / image_id), coords)
    with torch.inference_mode():
        again = model.encoder(torch.from_numpy(tiles)).numpy()
    np.testing.assert_allclose(again, stored, atol=1e-4)
    plain = tmp_path / "plain"
    assert main([*args[:3], str(plain), *args[4:], "--refine-epochs", "0"]) == 0
    metrics = json.loads((plain / "metrics.json").read_text())
    assert "self_training" not in metrics and "self-training" not in metrics["timing_s"]
    with BagStore(plain / "features.h5") as store:
        assert store.provenance["pretrained_sha256"] == metrics["pretraining"]["encoder_sha256"]


def test_a_run_stopped_after_pretraining_does_not_pretrain_again(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pretrained encoder is kept in the run's resume folder: the same command after a
    stop skips the pretraining and gives the uninterrupted run's model and metrics; a run
    with other pretraining settings does not take it."""
    from mil_cyto.pipeline import heads, pretraining, self_training

    args = ["--data", str(tiny_data), "--mode", "frozen", "--pretrain", "simclr"]
    args += ["--pretrain-epochs", "1", "--instances", "cells", *FAST]
    fresh, stopped = tmp_path / "fresh", tmp_path / "stopped"
    assert main([*args, "--out", str(fresh)]) == 0

    def stop(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # killed right after the pretraining

    real_fit = heads.fit
    monkeypatch.setattr(heads, "fit", stop)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(stopped)])
    assert (stopped / "resume" / "pretrained_encoder.json").is_file()
    assert (stopped / "resume" / "self_trained_encoder.json").is_file()
    monkeypatch.setattr(heads, "fit", real_fit)
    calls: list[str] = []
    real_pretrain, real_self_train = pretraining.pretrain_encoder, self_training.self_train

    def counting(*a: object, **k: object) -> list[float]:
        calls.append("pretrain")
        return real_pretrain(*a, **k)  # type: ignore[arg-type]

    def counting_self_train(*a: object, **k: object) -> Any:
        calls.append("self-train")
        return real_self_train(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(pretraining, "pretrain_encoder", counting)
    monkeypatch.setattr(self_training, "self_train", counting_self_train)
    assert main([*args, "--out", str(stopped)]) == 0
    assert calls == []
    assert not (stopped / "resume").exists()
    a = load_file(str(fresh / "model.safetensors"))
    b = load_file(str(stopped / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (fresh, stopped))
    for m in (ma, mb):
        m.pop("timing_s")
        for h in m["training"]["history"]:
            h.pop("seconds", None)
    assert ma == mb
    # the kept encoder serves the same pretraining only
    from mil_cyto.config import resolve_config
    from mil_cyto.data.tiling import TilingConfig

    tiling, ids = TilingConfig(48, 48, 0.05, "cells"), ["a.png", "b.png"]
    keys = {
        pretraining.pretraining_fingerprint(resolve_config({}, change), ids, tiling)
        for change in ({}, {"pretrain_epochs": 2}, {"seed": 1}, {"encoder_kwargs": {"width": 8}})
    }
    assert len(keys) == 4
    base = resolve_config({}, {})
    assert pretraining.pretraining_fingerprint(base, ids[:1], tiling) not in keys
    # and the self-trained one the same pretraining, first head and self-training only
    refined = {
        self_training.self_training_fingerprint(resolve_config({}, change), ids, val, tiling)
        for change in (
            {},
            {"refine_epochs": 2},
            {"refine_top_k": 2},
            {"refine_rounds": 1},
            {"lr": 1e-2},
            {"seed": 1},
        )
        for val in (["c.png"], ["d.png"])
    }
    assert len(refined) == 12


def test_decoding_processes_train_the_same_model(tiny_data: Path, tmp_path: Path) -> None:
    """--decode-processes (pretraining crops and extraction decoded on processes) gives the
    run that decoding threads give."""
    args = ["--data", str(tiny_data), "--pretrain-epochs", "1", *FAST]
    threads, procs = tmp_path / "threads", tmp_path / "procs"
    assert main([*args, "--out", str(threads)]) == 0
    assert main([*args, "--out", str(procs), "--decode-processes", "2"]) == 0
    a = load_file(str(threads / "model.safetensors"))
    b = load_file(str(procs / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (threads / "predictions.csv").read_text() == (procs / "predictions.csv").read_text()
    assert main([*args, "--out", str(tmp_path / "bad"), "--decode-processes", "-1"]) == 2


def test_pretrain_settings_are_checked() -> None:
    from mil_cyto.config import resolve_config
    from mil_cyto.errors import MilCytoError

    with pytest.raises(MilCytoError, match="--pretrain-epochs"):
        resolve_config({}, {"pretrain": "simclr", "pretrain_epochs": 0})
    with pytest.raises(MilCytoError, match="use none or simclr"):
        resolve_config({"pretrain": "byol"}, {})
    # self-training: on after self-supervised pretraining in frozen mode, else off
    assert resolve_config({}, {}).refine_epochs == 5
    assert resolve_config({}, {}).refine_rounds == 2
    assert resolve_config({}, {"pretrain": "none"}).refine_epochs == 0
    assert resolve_config({}, {"mode": "finetune"}).refine_epochs == 0
    assert resolve_config({}, {"weights": "w.safetensors"}).refine_epochs == 0
    assert resolve_config({}, {"pretrain": "none", "refine_epochs": 2}).refine_epochs == 2
    for bad in ({"refine_epochs": -1}, {"refine_top_k": 0}):
        with pytest.raises(MilCytoError, match="--refine-epochs must be >= 0"):
            resolve_config({}, bad)
    with pytest.raises(MilCytoError, match="--refine-epochs needs --mode frozen"):
        resolve_config({}, {"mode": "finetune", "refine_epochs": 1})


def test_attention_threshold_reaches_the_head() -> None:
    """The default head's attention is its "atypical" (grade >= CIN1) logit; 0 sums the
    thresholds (the recipe then names none, so older models rebuild as they were)."""
    from mil_cyto.config import resolve_config
    from mil_cyto.errors import MilCytoError
    from mil_cyto.pipeline.recipe import create_head, head_kwargs

    default = resolve_config({}, {})
    assert head_kwargs(default)["attention_threshold"] == 1
    assert create_head(default, 8).attention_threshold == 1
    summed = resolve_config({}, {"attention_threshold": 0})
    assert "attention_threshold" not in head_kwargs(summed)
    assert create_head(summed, 8).attention_threshold is None
    assert "attention_threshold" not in head_kwargs(resolve_config({}, {"aggregator": "mean"}))
    off = resolve_config({}, {"instance_attention": False})
    assert "attention_threshold" not in head_kwargs(off)
    with pytest.raises(MilCytoError, match="--attention-threshold 3"):
        resolve_config({}, {"attention_threshold": 3})


def test_refit_trains_the_head_again_on_training_and_validation_photos(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Frozen mode by default: after the epoch is chosen on validation, the head trains again
    for that many epochs on training + validation photos, and that head is saved and tested;
    the first fit is the same with or without it."""
    runs = {}
    for flag in ("--refit", "--no-refit"):
        run = tmp_path / flag.strip("-")
        args = ["--data", str(tiny_data), "--out", str(run), "--pretrain-epochs", "1"]
        assert main([*args, *FAST, "--epochs", "3", flag]) == 0
        runs[flag] = json.loads((run / "metrics.json").read_text())["training"]
    with_refit, without = runs["--refit"], runs["--no-refit"]
    assert with_refit["history"] == without["history"] and "refit" not in without
    splits = json.loads((tmp_path / "refit" / "splits.json").read_text())
    refit = with_refit["refit"]
    assert refit["epochs"] == with_refit["best_epoch"]
    assert refit["photos"] == len(splits["train"]) + len(splits["val"])
    assert "trained again" in (tmp_path / "refit" / "report.md").read_text()
    a = load_file(str(tmp_path / "refit" / "model.safetensors"))
    b = load_file(str(tmp_path / "no-refit" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("aggregator."))


def test_defaults_follow_the_documented_recipe() -> None:
    """No flags: nucleus-centred 64-px crops, SimCLR-pretrained frozen small CNN, 48 head
    epochs; fine-tuning defaults to 16 epochs; an encoder with weights is not pretrained;
    the grid stride defaults to the tile size; explicit values win over all of that."""
    from mil_cyto.config import resolve_config
    from mil_cyto.errors import MilCytoError

    d = resolve_config({}, {})
    assert (d.mode, d.instances, d.tile_size, d.stride) == ("frozen", "cells", 64, 64)
    assert (d.pretrain, d.pretrain_epochs, d.epochs) == ("simclr", 8, 48)
    # nucleus crops get the radial profile (recorded in encoder_kwargs); grid tiles do not
    assert (d.radial_rings, d.encoder_kwargs) == (16, {"radial_rings": 16})
    grid = resolve_config({}, {"instances": "grid"})
    assert (grid.radial_rings, grid.encoder_kwargs) == (0, None)
    assert resolve_config({}, {"radial_rings": 0}).encoder_kwargs is None
    given = resolve_config({"encoder_kwargs": {"width": 8, "radial_rings": 4}}, {})
    assert (given.radial_rings, given.encoder_kwargs) == (4, {"width": 8, "radial_rings": 4})
    with pytest.raises(MilCytoError, match="--radial-rings"):
        resolve_config({}, {"radial_rings": -1})
    assert resolve_config({}, {"mode": "finetune"}).epochs == 16
    assert d.refit and not resolve_config({}, {"mode": "finetune"}).refit
    assert (d.heads, resolve_config({}, {"mode": "finetune"}).heads) == (3, 1)
    assert resolve_config({}, {"heads": 1}).heads == 1
    assert not resolve_config({}, {"refit": False}).refit
    assert resolve_config({"mode": "finetune"}, {"epochs": 3}).epochs == 3
    assert resolve_config({}, {"weights": "w.safetensors"}).pretrain == "none"
    assert resolve_config({}, {"weights_cache": "hub"}).pretrain == "none"
    assert resolve_config({}, {"weights": "w.safetensors", "pretrain": "simclr"}).pretrain == (
        "simclr"
    )
    assert resolve_config({}, {"tile_size": 96, "instances": "grid"}).stride == 96
    assert resolve_config({}, {"tile_size": 96, "stride": 48}).stride == 48


def test_heads_are_fitted_apart_and_averaged(tiny_data: Path, tmp_path: Path) -> None:
    """``--heads 2``: the first head is the one-head run's (same seed, same weights), the
    second is fitted from seed + 1000 with its own epoch choice and refit; the saved model is
    their ensemble, rebuilt from model.json, and its predictions are the ones written."""
    from mil_cyto.models import HeadEnsemble
    from mil_cyto.training import predict

    runs = {}
    for heads in ("1", "2"):
        run = tmp_path / f"heads{heads}"
        args = ["--data", str(tiny_data), "--out", str(run), "--pretrain-epochs", "1"]
        assert main([*args, *FAST, "--epochs", "3", "--heads", heads]) == 0
        runs[heads] = run
    one = json.loads((runs["1"] / "metrics.json").read_text())["training"]
    two = json.loads((runs["2"] / "metrics.json").read_text())["training"]
    assert "members" not in one and len(two["members"]) == 2
    assert two["members"][0] == {k: v for k, v in two.items() if k != "members"}
    assert two["members"][1]["seed"] == 1000
    assert "mean of 2 such heads from seeds 0, 1000" in (runs["2"] / "report.md").read_text()
    for fitted in two["members"]:
        assert fitted["refit"]["epochs"] == fitted["best_epoch"]
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in one["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in two["history"]]
    a = load_file(str(runs["1"] / "model.safetensors"))
    b = load_file(str(runs["2"] / "model.safetensors"))
    for key, value in a.items():
        if key.startswith("aggregator."):
            member = key.replace("aggregator.", "aggregator.members.0.", 1)
            assert torch.equal(value, b[member]), key
    assert any(
        not torch.equal(b[k], b[k.replace("members.0.", "members.1.")])
        for k in b
        if k.startswith("aggregator.members.0.")
    )
    model, recipe = load_model(runs["2"])
    assert recipe["aggregator"]["members"] == 2
    assert isinstance(model.aggregator, HeadEnsemble)
    rows = list(csv.DictReader((runs["2"] / "predictions.csv").open()))
    manifest = {r.image_id: r for r in read_manifest(tiny_data / "manifest.csv")}
    bags = stored_bags(runs["2"] / "features.h5", [manifest[r["image"]] for r in rows])
    pred = predict(MILModel(None, model.aggregator), bags, torch.device("cpu"))
    written = np.array([[float(r[f"p_{g}"]) for g in GRADES] for r in rows])
    np.testing.assert_allclose(pred.probs, written, atol=1e-4)


def test_refine_rounds_self_train_again(tiny_data: Path, tmp_path: Path) -> None:
    """Two self-training rounds by default: the first is the whole of a one-round run
    (``--refine-rounds 1``); in the second a new head labels the instances by the refined
    encoder's features and the encoder trains again. metrics.json keeps each round."""
    records = {}
    for rounds in ("1", "2"):
        run = tmp_path / rounds
        args = ["--data", str(tiny_data), "--out", str(run), "--pretrain-epochs", "1"]
        assert main([*args, *FAST, "--refine-rounds", rounds]) == 0
        records[rounds] = json.loads((run / "metrics.json").read_text())["self_training"]
        with BagStore(run / "features.h5") as store:
            assert store.provenance["pretrained_sha256"] == records[rounds]["encoder_sha256"]
    one, two = records["1"], records["2"]
    assert "rounds" not in one and len(two["rounds"]) == 2
    assert two["rounds"][0] == {k: v for k, v in one.items() if k != "encoder_sha256"}
    assert two["loss_per_epoch"] == two["rounds"][1]["loss_per_epoch"]
    assert two["rounds"][1]["loss_per_epoch"] != one["loss_per_epoch"]
    assert two["encoder_sha256"] != one["encoder_sha256"]


def test_heads_and_rounds_are_checked() -> None:
    from mil_cyto.config import resolve_config
    from mil_cyto.errors import MilCytoError

    with pytest.raises(MilCytoError, match="--heads 0"):
        resolve_config({}, {"heads": 0})
    with pytest.raises(MilCytoError, match="--heads > 1 needs --mode frozen"):
        resolve_config({}, {"heads": 2, "mode": "finetune"})
    with pytest.raises(MilCytoError, match="--refine-rounds >= 1"):
        resolve_config({}, {"refine_rounds": 0})
