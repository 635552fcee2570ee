"""Where and how a run runs: its folder, device, torchrun process group and progress bars."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from mil_cyto.config import TrainConfig
from mil_cyto.devices import resolve_device
from mil_cyto.distributed import DistContext, init_distributed
from mil_cyto.errors import MilCytoError
from mil_cyto.training import seed_everything


@dataclass(frozen=True)
class Runtime:
    """``run_dir``: the run folder (created); ``device`` and ``ctx``: where this process
    trains (``ctx``: its torchrun rank, or one process); ``progress``: draw progress bars
    (rank 0 only)."""

    run_dir: Path
    device: torch.device
    ctx: DistContext
    progress: bool


def create_run_dir(config: TrainConfig) -> Path:
    """``config.out`` (default ``runs/mil-<timestamp>``), created; refused if it holds a
    finished run."""
    out = Path(config.out or f"runs/mil-{datetime.now():%Y%m%d-%H%M%S}")
    if (out / "metrics.json").exists():
        raise MilCytoError(f"{out} already holds a finished run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def start_runtime(config: TrainConfig, progress: bool) -> Runtime:
    """Set torch's threads and every seed, join torchrun's process group if launched by it
    (DDP training) and create the run folder."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    ctx, device = init_distributed(resolve_device(config.device))
    return Runtime(create_run_dir(config), device, ctx, progress and ctx.is_main)
