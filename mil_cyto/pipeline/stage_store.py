"""A run folder's resume folder: the encoders its finished stages trained, for a killed run.

Each stage keeps its encoder under its own name and fingerprint (what it depends on), so
the same command after a stop skips what it already did; the folder goes when the run
finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mil_cyto.resume import load_stage, save_stage

RESUME_DIR = "resume"
"""Per-epoch checkpoint folder inside an unfinished run folder (removed when it finishes)."""


def restore_encoder(
    encoder: torch.nn.Module, run_dir: Path, stage_name: str, key: str
) -> dict[str, Any] | None:
    """Load the encoder a killed run already trained in stage ``stage_name`` (pretraining or
    self-training), and torch's RNG state after it, so the rest of the run is the same;
    returns the stage's record, or None."""
    stage = load_stage(run_dir / RESUME_DIR, stage_name, key)
    if stage is None:
        return None
    tensors, record = stage
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in tensors.items() if k != "rng"})
    torch.set_rng_state(tensors["rng"])
    return record


def save_encoder(
    encoder: torch.nn.Module, run_dir: Path, stage_name: str, record: Any, key: str
) -> None:
    """Keep a trained encoder and torch's RNG state for :func:`restore_encoder`."""
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors["rng"] = torch.get_rng_state()
    save_stage(run_dir / RESUME_DIR, stage_name, tensors, record, key)
