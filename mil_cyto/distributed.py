"""Scale-out under ``torchrun``: rank context, photo sharding and DDP training hooks.

``torchrun --standalone --nproc_per_node N -m mil_cyto.extract ...`` (or ``mil_cyto.train``)
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything here is a no-op
for one process. Backends: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mil_cyto.errors import MilCytoError

if TYPE_CHECKING:
    from mil_cyto.models.mil_model import MILModel

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def context_from_env(env: Mapping[str, str] | None = None) -> DistContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (one process when absent)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise MilCytoError(f"bad torchrun environment ({err}); launch with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise MilCytoError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistContext(rank, world, local)


def init_distributed(
    device: torch.device, timeout_s: float = 7200.0
) -> tuple[DistContext, torch.device]:
    """Join the torchrun job if there is one; returns the context and this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK``. ``timeout_s`` bounds the wait at barriers
    (ranks may finish their shards of photos minutes apart).
    """
    ctx = context_from_env()
    if not ctx.is_distributed:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return ctx, device


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (building a cache, a store); the others wait, then run it
    (finding the cache)."""
    if not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.is_main:
        barrier(ctx)


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share, round-robin: ``items[rank::world_size]`` (disjoint, covers all)."""
    return list(items[ctx.rank :: ctx.world_size])


def shard_path(out_path: Path, ctx: DistContext) -> Path:
    """Where a rank writes its shard store beside the final one."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.name}.rank{ctx.rank}-of-{ctx.world_size}")


def shard_epoch(order: Sequence[int], ctx: DistContext) -> list[int]:
    """This rank's photos of an epoch's ``order``: ``order[rank::world]``, padded by wrapping
    around so that every rank takes the same number of steps (as DistributedSampler does)."""
    if not ctx.is_distributed:
        return list(order)
    per_rank = -(-len(order) // ctx.world_size)
    padded = list(order) + list(order[: per_rank * ctx.world_size - len(order)])
    return padded[ctx.rank :: ctx.world_size]


class BagForward(nn.Module):
    """``MILModel``'s training forward as one ``forward`` (DDP hooks only ``forward``):
    cached features ``(B, N, D)`` with their mask, or a list of uint8 tile bags.

    ``instance_outputs=False`` drops ``instance_logits`` from the output, so that DDP sees the
    instance head as unused (rather than waiting forever for its gradients) when no loss
    reads it."""

    def __init__(self, model: MILModel, instance_outputs: bool = True) -> None:
        super().__init__()
        self.model = model
        self.instance_outputs = instance_outputs

    def forward(
        self,
        inputs: Any,
        mask: torch.Tensor | None = None,
        chunk: int = 0,
        checkpoint: bool = False,
    ) -> Any:
        if self.model.encoder is None:
            out = self.model(inputs, mask)
        else:
            out = self.model.forward_tiles(inputs, chunk=chunk, checkpoint=checkpoint)
        return out if self.instance_outputs else replace(out, instance_logits=None)


def ddp_forward(
    model: MILModel, ctx: DistContext, device: torch.device, *, instance_outputs: bool = True
) -> nn.Module | None:
    """A DistributedDataParallel wrapper of :class:`BagForward` (None for one process).

    Without instance outputs, the idle instance head is found and skipped each step
    (``find_unused_parameters``, only then: it costs a graph traversal per step).
    """
    if not ctx.is_distributed:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        BagForward(model, instance_outputs),
        device_ids=ids,
        find_unused_parameters=not instance_outputs,
    )
