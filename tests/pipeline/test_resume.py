"""Interrupt and resume: feature extraction and training killed mid-way (a real subprocess
killed with SIGKILL) resume from where they were, with no corrupt file and equal results.

The two real-kill tests are marked slow; the fast tier covers the same code in process
(``test_fit_resumes_to_identical_weights`` here, the extraction resume in
``test_feature_store.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mil_cyto import resume
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.synthetic import SynthConfig, generate_dataset
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders import create_encoder
from mil_cyto.features import BagStore, extract_to_store
from mil_cyto.features.store import bag_key
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.training import FeatureBag, FitConfig, fit

REPO = Path(__file__).resolve().parents[2]
TILING = TilingConfig(48, 48, 0.05)
BATCH = 8  # tiles per encoder call in the killed extraction: several calls per photo

EXTRACT_SCRIPT = """
import sys, torch
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders import create_encoder
from mil_cyto.features import extract_to_store
torch.set_num_threads(1)
torch.manual_seed(0)
encoder = create_encoder("smallcnn")
plain = encoder.forward
def gated(tiles):
    print("batch", flush=True)  # batches span photos; finished photos are already written
    sys.stdin.readline()  # wait for the test's go-ahead: it kills the process here instead
    return plain(tiles)
encoder.forward = gated
rows = read_manifest(sys.argv[1])
extract_to_store(rows, encoder, sys.argv[2], tiling=TilingConfig(48, 48, 0.05),
                 provenance={"encoder": "smallcnn"}, batch_size=BATCH, workers=1, progress=False)
print("done", flush=True)
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(n_images=30, seed=3, width=256, height=192, images_per_patient=(2, 3))
    return generate_dataset(out, config, workers=1, progress=False)


def _encoder(calls: list[int]) -> torch.nn.Module:
    """The script's encoder; ``calls`` receives the number of tiles of every call."""
    torch.manual_seed(0)
    encoder = create_encoder("smallcnn")
    plain = encoder.forward

    def counting(tiles: torch.Tensor) -> torch.Tensor:
        calls.append(len(tiles))
        return plain(tiles)

    encoder.forward = counting  # type: ignore[method-assign]
    return encoder


@pytest.mark.slow  # a subprocess importing torch: ~10 s idle, over a minute on a busy CPU
def test_extraction_killed_then_resumed(tiny_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rows = read_manifest(tiny_data / "manifest.csv")[:8]
    manifest = tmp_path / "manifest.csv"  # the first 8 photos only
    lines = (tiny_data / "manifest.csv").read_text().splitlines()[:9]
    manifest.write_text("\n".join(lines).replace("images/", f"{tiny_data}/images/") + "\n")
    store = tmp_path / "features.h5"
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT_SCRIPT.replace("BATCH", str(BATCH)))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(manifest), str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stdin is not None
    seen = 0
    while seen < 6:  # let 5 batches (40 tiles) through; kill while the 6th is being embedded
        line = proc.stdout.readline()
        assert line, "extraction ended before it could be killed"
        if line.strip() == "batch":
            seen += 1
            if seen < 6:
                proc.stdin.write("\n")
                proc.stdin.flush()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = store.with_name(store.name + ".partial")
    assert not store.exists() and partial.is_file()  # nothing half-finished under the real name
    with h5py.File(partial, "r") as handle:  # the partial file is readable
        complete = {k for k, g in handle["bags"].items() if g.attrs.get("complete")}
    assert 1 <= len(complete) < len(rows)  # some photos finished, not all

    calls: list[int] = []
    rows = read_manifest(manifest)
    extract_to_store(
        rows,
        _encoder(calls),
        store,
        tiling=TILING,
        provenance={"encoder": "smallcnn"},
        workers=1,
        progress=False,
    )
    with BagStore(store) as done:  # only the tiles of the unfinished photos were embedded
        missing = [r.image_id for r in rows if bag_key(r.image_id) not in complete]
        assert sum(calls) == sum(len(done[i][0]) for i in missing)
    assert not partial.exists()
    fresh = tmp_path / "fresh.h5"
    extract_to_store(
        rows,
        _encoder([]),
        fresh,
        tiling=TILING,
        provenance={"encoder": "smallcnn"},
        workers=1,
        progress=False,
    )
    with BagStore(store) as a, BagStore(fresh) as b:
        assert sorted(a.image_ids()) == sorted(b.image_ids()) == sorted(r.image_id for r in rows)
        for r in rows:
            fa, ca = a[r.image_id]
            fb, cb = b[r.image_id]
            np.testing.assert_array_equal(ca, cb)
            np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)


def _feature_bags(n: int, seed: int) -> list[FeatureBag]:
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        label = i % 3
        feats = rng.normal(0, 1, (12, 8)).astype(np.float32)
        feats[: label + 1, 0] += 2.0 * label
        coords = np.zeros((12, 4), np.int32)
        bags.append(FeatureBag(f"im{i}", f"P{i}", label, feats, coords, (64, 64)))
    return bags


def _model() -> MILModel:
    torch.manual_seed(0)
    return MILModel(None, create_aggregator("gated_abmil", in_dim=8, n_classes=3))


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_fit_resumes_to_identical_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    """In process: a fit stopped after epoch 2 and resumed equals an uninterrupted fit (on
    CUDA too, where dropout draws from the GPU's RNG, which the checkpoint restores)."""
    train, val = _feature_bags(18, 0), _feature_bags(6, 1)
    cfg = FitConfig(epochs=4, seed=0, instance_loss_weight=1.0, resume_dir=str(tmp_path / "ck"))
    plain = FitConfig(**{**vars(cfg), "resume_dir": None})

    reference = _model()
    ref_result = fit(reference, train, val, plain, torch.device(device), progress=False)

    real_snapshot = resume.snapshot_fit

    def stop_after_two(*args: object, **kwargs: object) -> None:
        real_snapshot(*args, **kwargs)  # type: ignore[arg-type]
        if args[2] == 2:
            raise _Stop

    monkeypatch.setattr(resume, "snapshot_fit", stop_after_two)
    with pytest.raises(_Stop):
        fit(_model(), train, val, cfg, torch.device(device), progress=False)
    monkeypatch.setattr(resume, "snapshot_fit", real_snapshot)
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["epoch"] == 2

    torch.manual_seed(123)  # the global RNG state comes from the checkpoint, not from here
    resumed = _model()
    result = fit(resumed, train, val, cfg, torch.device(device), progress=False)
    assert result.best_epoch == ref_result.best_epoch
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for k, v in reference.state_dict().items():
        if device == "cpu":
            assert torch.equal(v, resumed.state_dict()[k]), k
        else:  # CUDA kernels need not be bit-reproducible; another dropout draw is far off
            torch.testing.assert_close(v, resumed.state_dict()[k], rtol=1e-4, atol=1e-5)
    if device == "cpu":
        assert result.history == ref_result.history

    # a checkpoint of another run (other settings) is ignored: training starts over
    other = FitConfig(**{**vars(cfg), "lr": 5e-4, "epochs": 1})
    assert len(fit(_model(), train, val, other, torch.device("cpu"), progress=False).history) == 1


def test_mismatched_checkpoint_files_are_ignored(tmp_path: Path) -> None:
    train, val = _feature_bags(9, 0), _feature_bags(3, 1)
    cfg = FitConfig(epochs=1, seed=0, resume_dir=str(tmp_path / "ck"))
    model = _model()
    fit(model, train, val, cfg, torch.device("cpu"), progress=False)
    run_id = resume.fit_fingerprint(
        cfg, model, [(b.image_id, b.label) for b in train], [b.image_id for b in val]
    )
    assert resume.load_checkpoint(tmp_path / "ck", run_id) is not None
    # a head that differs only in a setting without weights is another run
    ids = ([(b.image_id, b.label) for b in train], [b.image_id for b in val])

    def head_id(**kwargs: object) -> str:
        head = create_aggregator("gated_abmil", in_dim=8, n_classes=3, **kwargs)
        return resume.fit_fingerprint(cfg, MILModel(None, head), *ids)

    assert head_id() == run_id
    assert head_id(bag_norm=True) != run_id
    summed = head_id(instance_attention=True)
    assert head_id(instance_attention=True, attention_threshold=1) != summed
    # a kill between the two writes: new tensors, old JSON -> the checkpoint is not used
    tensors = tmp_path / "ck" / "state.safetensors"
    tensors.write_bytes(tensors.read_bytes() + b" ")
    assert resume.load_checkpoint(tmp_path / "ck", run_id) is None
    (tmp_path / "ck" / "state.json").write_text("{trunc")
    assert resume.load_checkpoint(tmp_path / "ck", run_id) is None


def _wait_for_epoch(state: Path, proc: subprocess.Popen[str], epoch: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        try:
            if json.loads(state.read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", ["state.json", "refit/state.json", "head-1/state.json", "head-1/refit/state.json"]
)
def test_training_killed_then_resumed(tiny_data: Path, tmp_path: Path, stage: str) -> None:
    """``python -m mil_cyto.train`` killed after the first epoch of the head's first fit, or
    of its refit on training + validation photos, or of either for the second head of an
    ensemble (``--heads 2``); the same command again finishes the run, which equals an
    uninterrupted run (weights, predictions, metrics)."""
    args = ["--data", str(tiny_data), "--epochs", "3", "--quiet", "--tile-size", "48"]
    args += ["--stride", "48", "--threads", "1", "--workers", "1"]
    second_head = stage.startswith("head-1")
    args += ["--heads", "2" if second_head else "1"]
    cmd = [sys.executable, "-m", "mil_cyto.train", *args]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    subprocess.run([*cmd, "--out", str(fresh)], env=_env(), check=True, capture_output=True)
    training = json.loads((fresh / "metrics.json").read_text())["training"]
    fitted = training["members"][1] if second_head else training
    assert fitted["refit"]["epochs"] >= 2  # so that a kill after its first epoch lands inside it
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=_env(), text=True)
    _wait_for_epoch(killed / "resume" / stage, proc, 1, 600)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "metrics.json").exists()
    subprocess.run([*cmd, "--out", str(killed)], env=_env(), check=True, capture_output=True)
    assert not (killed / "resume").exists()
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    a, b = load_file(str(killed / "model.safetensors")), load_file(str(fresh / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "predictions.csv").read_text() == (fresh / "predictions.csv").read_text()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (killed, fresh))
    for m in (ma, mb):
        m.pop("timing_s")
        for fitted in [m["training"], *m["training"].get("members", [])]:
            for h in fitted["history"]:
                h.pop("seconds", None)
    assert ma == mb


def test_keep_last_returns_the_last_epoch_without_validating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keep="last"``: no validation photos needed, the weights after the last epoch, the
    same training as ``keep="best"`` up to there; an unknown choice is refused."""
    train = _feature_bags(18, 0)
    cfg = FitConfig(epochs=3, seed=0, instance_loss_weight=1.0, keep="last")
    last = _model()
    result = fit(last, train, [], cfg, torch.device("cpu"), progress=False)
    assert result.best_epoch == 3
    assert [set(h) for h in result.history] == [{"epoch", "train_loss"}] * 3

    snapshots: list[dict[str, torch.Tensor]] = []
    real = resume.snapshot_fit

    def remember(folder, fingerprint, epoch, model, *rest):  # type: ignore[no-untyped-def]
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        real(folder, fingerprint, epoch, model, *rest)

    monkeypatch.setattr(resume, "snapshot_fit", remember)
    best_cfg = FitConfig(**{**vars(cfg), "keep": "best", "resume_dir": str(tmp_path / "ck")})
    fit(_model(), train, _feature_bags(6, 1), best_cfg, torch.device("cpu"), progress=False)
    for k, v in last.state_dict().items():  # validating does not change the training
        assert torch.equal(v, snapshots[-1][k]), k
    with pytest.raises(ValueError, match="keep"):
        fit(_model(), train, [], FitConfig(epochs=1, keep="first"), torch.device("cpu"))
