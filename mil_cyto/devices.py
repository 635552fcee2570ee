"""Where the numbers are computed: the device a run uses, and its mixed precision."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def mixed_precision(
    device: torch.device | str, enabled: bool = True, dtype: torch.dtype = torch.bfloat16
) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on CUDA when ``enabled``; a no-op on CPU (CPU runs stay float32
    and deterministic). Training uses bf16, which keeps float32's exponent range, so no
    gradient scaler is needed; frozen-feature extraction uses fp16."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()
