"""Per-epoch training checkpoints, so that a killed training run resumes where it stopped.

A checkpoint is a folder with two files, each written atomically (``mil_cyto.io``):
``state.safetensors`` (every tensor: model weights, the best epoch's weights, optimizer
moments, torch RNG states) and ``state.json`` (everything else: epoch, optimizer
hyper-parameters, scheduler state, best key, history, and a fingerprint of the run). The JSON
is written last and names the tensor file's SHA-256, so a kill between the two writes leaves
a checkpoint that is ignored, never a mixed one. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mil_cyto.io import atomic_path, write_json

FORMAT = "mil-cyto-resume/1"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


@dataclass
class ResumeState:
    """What the training loop needs to continue after ``epoch`` finished epochs."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor  # the loop's torch.Generator state (uint8)
    torch_rng: torch.Tensor  # torch's global CPU RNG state (dropout etc.)
    best_key: list[float] | None
    best_epoch: int
    best_state: dict[str, torch.Tensor] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    cuda_rng: torch.Tensor | None = None  # the current CUDA device's RNG (dropout on a GPU)


def fingerprint(payload: Any) -> str:
    """SHA-256 of a JSON-able description of the run (settings and training bags)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples -> lists; non-finite floats as strings (JSON has none)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def _write_pair(
    tensor_path: Path, json_path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """``tensors`` (safetensors) first, then ``meta`` (JSON, with the format and the tensor
    file's SHA-256 added), each atomically: a kill between the two writes leaves a pair
    that :func:`_read_pair` ignores."""
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(tensor_path) as tmp:
        save_file(plain, str(tmp), metadata={"format": FORMAT})
    digest = hashlib.sha256(tensor_path.read_bytes()).hexdigest()
    write_json(json_path, {"format": FORMAT, **meta, "tensors_sha256": digest})


def _read_pair(
    tensor_path: Path, json_path: Path, run_fingerprint: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(meta, tensors)`` written by :func:`_write_pair` for this run, or None when missing,
    of another run (fingerprint) or mismatched (a kill between the writes)."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        raw = tensor_path.read_bytes()
    except (OSError, ValueError):
        return None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or meta.get("fingerprint") != run_fingerprint
        or meta.get("tensors_sha256") != hashlib.sha256(raw).hexdigest()
    ):
        return None
    try:
        return meta, load_file(str(tensor_path))
    except (SafetensorError, OSError):
        return None


def save_checkpoint(folder: Path, state: ResumeState, run_fingerprint: str) -> None:
    """Write ``state`` into ``folder`` (created), tensors first, JSON last."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {
        "generator": state.generator,
        "torch_rng": state.torch_rng,
    }
    if state.cuda_rng is not None:
        tensors["cuda_rng"] = state.cuda_rng
    tensors.update({f"model.{k}": v for k, v in state.model.items()})
    if state.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
    opt_state: dict[str, list[str]] = {}
    for idx, entry in state.optimizer["state"].items():
        names = []
        for name, value in entry.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"opt.{idx}.{name}"] = t
            names.append(name)
        opt_state[str(idx)] = names
    _write_pair(
        folder / STATE_TENSORS,
        folder / STATE_JSON,
        tensors,
        {
            "fingerprint": run_fingerprint,
            "epoch": state.epoch,
            "optimizer_param_groups": _plain(state.optimizer["param_groups"]),
            "optimizer_state_keys": opt_state,
            "scheduler": _plain(state.scheduler),
            "best_key": state.best_key,
            "best_epoch": state.best_epoch,
            "has_best_state": state.best_state is not None,
            "history": _plain(state.history),
        },
    )


def load_checkpoint(folder: Path, run_fingerprint: str) -> ResumeState | None:
    """The checkpoint in ``folder``, or None when there is none, it belongs to another run
    (fingerprint), or its two files do not match (a kill between the writes)."""
    folder = Path(folder)
    pair = _read_pair(folder / STATE_TENSORS, folder / STATE_JSON, run_fingerprint)
    if pair is None:
        return None
    meta, tensors = pair

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt_state = {
        int(idx): {name: tensors[f"opt.{idx}.{name}"] for name in names}
        for idx, names in meta["optimizer_state_keys"].items()
    }
    return ResumeState(
        epoch=int(meta["epoch"]),
        model=part("model."),
        optimizer={"state": opt_state, "param_groups": _unplain(meta["optimizer_param_groups"])},
        scheduler=_unplain(meta["scheduler"]),
        generator=tensors["generator"],
        torch_rng=tensors["torch_rng"],
        best_key=meta["best_key"],
        best_epoch=int(meta["best_epoch"]),
        best_state=part("best.") if meta["has_best_state"] else None,
        history=_unplain(meta["history"]),
        cuda_rng=tensors.get("cuda_rng"),
    )


def fit_fingerprint(
    config: Any, model: torch.nn.Module, train_ids: list[Any], val_ids: list[Any]
) -> str:
    """Fingerprint of a ``fit`` call: its settings (``resume_dir`` aside), the model's
    parameter names and shapes and its printed form (which holds settings without weights,
    e.g. an ABMIL head's within-bag standardisation or attention threshold), and the
    training and validation bags (ids and labels)."""
    settings = {k: v for k, v in vars(config).items() if k != "resume_dir"}
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    return fingerprint(
        {
            "settings": settings,
            "model": shapes,
            "architecture": repr(model),
            "train": train_ids,
            "val": val_ids,
        }
    )


def restore_fit(
    folder: Path,
    run_fingerprint: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> ResumeState | None:
    """Load the checkpoint (if it belongs to this run) into the live objects; returns it, or
    None to start from epoch 0."""
    state = load_checkpoint(folder, run_fingerprint)
    if state is None:
        return None
    device = next(iter(model.parameters())).device
    model.load_state_dict({k: v.to(device) for k, v in state.model.items()})
    opt = {
        "state": {
            i: {k: v.to(device) if k != "step" else v for k, v in e.items()}
            for i, e in state.optimizer["state"].items()
        },
        "param_groups": state.optimizer["param_groups"],
    }
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(state.scheduler)
    generator.set_state(state.generator)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)
    return state


def snapshot_fit(
    folder: Path,
    run_fingerprint: str,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    best: tuple[Any, int, dict[str, torch.Tensor] | None],
    history: list[dict[str, Any]],
) -> None:
    """Save the state after ``epoch`` finished epochs; ``best`` = (key, epoch, weights)."""
    key, best_epoch, best_state = best
    save_checkpoint(
        folder,
        ResumeState(
            epoch=epoch,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            generator=generator.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=_cuda_rng(model),
            best_key=None if key is None else [float(v) for v in key],
            best_epoch=best_epoch,
            best_state=best_state,
            history=history,
        ),
        run_fingerprint,
    )


def save_stage(
    folder: Path, name: str, tensors: dict[str, torch.Tensor], record: Any, run_fingerprint: str
) -> None:
    """Keep the result of a finished stage of a run (e.g. the pretrained encoder):
    ``folder/name.safetensors`` first, then ``folder/name.json`` (``record``, JSON-able, the
    fingerprint and the tensors' SHA-256), both atomically."""
    folder = Path(folder)
    meta = {"fingerprint": run_fingerprint, "record": _plain(record)}
    _write_pair(folder / f"{name}.safetensors", folder / f"{name}.json", tensors, meta)


def load_stage(
    folder: Path, name: str, run_fingerprint: str
) -> tuple[dict[str, torch.Tensor], Any] | None:
    """``(tensors, record)`` of a stage :func:`save_stage` kept for this run, or None when
    there is none, it belongs to another run, or its two files do not match."""
    folder = Path(folder)
    pair = _read_pair(folder / f"{name}.safetensors", folder / f"{name}.json", run_fingerprint)
    if pair is None:
        return None
    meta, tensors = pair
    return tensors, _unplain(meta.get("record"))


def _cuda_rng(model: torch.nn.Module) -> torch.Tensor | None:
    """The RNG state of the CUDA device ``model`` trains on; None off CUDA."""
    device = next(iter(model.parameters())).device
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None
