"""Safe loading: a crafted pickle handed over as a checkpoint or as encoder weights must not
run its payload; every loader answers with one clear MilCytoError (or ignores the file)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from mil_cyto import resume
from mil_cyto.checkpoint import load_model
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError


class _Payload:
    """Unpickling this object writes ``marker``: proof that the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _crafted(path: Path, marker: Path, *, torch_format: bool) -> Path:
    obj = {"state_dict": _Payload(marker)}
    if torch_format:
        torch.save(obj, path)  # the zip format torch.load reads
    else:
        path.write_bytes(pickle.dumps(obj))
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    """Guard for the tests below: plain pickle does run it (so not running it means safety)."""
    marker = tmp_path / "marker"
    pickle.loads(_crafted(tmp_path / "x.pkl", marker, torch_format=False).read_bytes())
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("torch_format", [True, False])
def test_load_model_refuses_a_pickle(tmp_path: Path, torch_format: bool) -> None:
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    _crafted(run / "model.safetensors", marker, torch_format=torch_format)
    (run / "model.json").write_text(
        '{"format": "mil-cyto-model/1", "classes": ["normal", "CIN1", "CIN2+"], '
        '"encoder": {"name": "smallcnn", "kwargs": {}}, '
        '"aggregator": {"name": "abmil", "kwargs": {}, "in_dim": 128}, "tiling": {}}'
    )
    with pytest.raises(MilCytoError, match="not a readable safetensors file"):
        load_model(run)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_encoder_weights_refuse_a_pickle(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "marker"
    weights = _crafted(tmp_path / f"weights{suffix}", marker, torch_format=True)
    with pytest.raises(MilCytoError, match="cannot read weights"):
        create_encoder(EncoderSpec(name="resnet18", weights=str(weights)))
    assert not marker.exists()


def test_resume_checkpoint_ignores_a_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "ck"
    folder.mkdir()
    _crafted(folder / resume.STATE_TENSORS, marker, torch_format=True)
    digest = __import__("hashlib").sha256((folder / resume.STATE_TENSORS).read_bytes()).hexdigest()
    (folder / resume.STATE_JSON).write_text(
        f'{{"format": "{resume.FORMAT}", "fingerprint": "x", "tensors_sha256": "{digest}"}}'
    )
    assert resume.load_checkpoint(folder, "x") is None
    assert not marker.exists()
