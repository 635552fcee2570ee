"""Where the numbers are computed: the device a run uses, and its mixed precision."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from mil_cyto.errors import MilCytoError


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
    on_cuda = enabled and torch.device(device).type == "cuda"
    return autocast_to(device, dtype if on_cuda else None)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16), so that bf16
    autocast runs faster than float32 instead of being emulated."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    try:
        found = capabilities()
    except (RuntimeError, AttributeError):
        return False
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def extraction_dtype(device: torch.device | str, amp: bool) -> torch.dtype | None:
    """The reduced precision of frozen-feature extraction, None for float32: with ``amp``,
    fp16 on CUDA and bf16 on a CPU that has it natively (opt-in there: resnet18 extraction
    ~1.8x the float32 throughput on an AVX512-BF16 CPU, features within ~0.5% of their range
    of float32's; docs/performance.md).

    Raises:
        MilCytoError: ``amp`` on a CPU without native bf16.
    """
    if not amp:
        return None
    if torch.device(device).type == "cuda":
        return torch.float16
    if not cpu_has_native_bf16():
        raise MilCytoError(
            "mixed precision (--amp) on the CPU needs native bf16 (AVX512-BF16 or AMX), which "
            "this CPU lacks; drop --amp"
        )
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float16"``, ``"bfloat16"``, or ``"float32"`` for None (no autocast)."""
    return str(dtype or torch.float32).removeprefix("torch.")


def autocast_to(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``'s type; nothing (float32) when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
