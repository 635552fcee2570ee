"""Fitting a MIL model on bags, with model selection on the validation photos.

Two modes share one loop: ``finetune`` trains encoder and head together on uint8 tiles;
``frozen`` trains the head alone on features cached in a bag store.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from mil_cyto import resume
from mil_cyto.devices import mixed_precision
from mil_cyto.distributed import DistContext, ddp_forward, shard_epoch
from mil_cyto.labels import GRADES
from mil_cyto.losses import bag_loss, ordinal_instance_loss
from mil_cyto.metrics import classification_metrics
from mil_cyto.models.base import require_aggregator
from mil_cyto.models.mil_model import MILModel
from mil_cyto.sampling import bucket_by_length, epoch_order, subsample_bag
from mil_cyto.training.bags import forward_bags
from mil_cyto.training.prediction import bag_norm_once, predict


@dataclass
class FitConfig:
    """Optimisation settings (all epochs in passes over the training photos)."""

    epochs: int = 10
    batch_bags: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: bool = True
    augment: bool = True
    seed: int = 0
    instance_loss_weight: float = 0.0
    instance_loss: str = "max"  # max | propagate (see ordinal_instance_loss)
    resume_dir: str | None = None  # per-epoch checkpoint folder (mil_cyto.resume); None: off
    balanced_sampling: bool = False  # draw photos class-balanced (with replacement) per epoch
    loss: str = "ce"  # ce | ordinal (cumulative, respects normal < CIN1 < CIN2+)
    max_tiles: int = 0  # > 0: a random subset of at most this many tiles per photo per step
    chunk: int = 0  # > 0: encode tiles in chunks of this size (fine-tuning)
    checkpoint: bool = False  # gradient checkpointing of the encoder chunks (fine-tuning)
    amp: bool = True  # bf16 autocast of the forward passes on CUDA; no effect on CPU
    keep: str = "best"  # best: the best validation epoch's weights | last: the last epoch's


@dataclass
class FitResult:
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class _Loop:
    """What every epoch of one fit uses: the model, its optimiser and schedule, the class
    weights, the random streams (photo order, subsampling and augmentation) and, under
    torchrun, the DDP runner."""

    model: MILModel
    config: FitConfig
    device: torch.device
    ctx: DistContext
    weight: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    order_gen: torch.Generator
    aug_gen: torch.Generator
    runner: torch.nn.Module | None


@dataclass
class _Best:
    """The selection so far: its key, the fit's result and the best epoch's weights."""

    result: FitResult
    key: tuple[float, float] | None = None
    state: dict[str, torch.Tensor] | None = None


def _selection_key(metrics: dict[str, Any], loss: float) -> tuple[float, float]:
    """Higher is better: macro sensitivity (balanced accuracy), then lower loss."""
    return (metrics["macro_sensitivity"] or 0.0, -loss)


def _class_weight(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Inverse class frequency of the training photos ``(C,)`` (1 for absent grades)."""
    present = np.unique(labels)
    w = np.ones(len(GRADES))
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(w, dtype=torch.float32, device=device)


def _start(
    model: MILModel,
    n_train: int,
    labels: np.ndarray,
    config: FitConfig,
    device: torch.device,
    ctx: DistContext,
) -> _Loop:
    """Move ``model`` to ``device`` and set up its loop: AdamW on a one-cycle cosine schedule
    over ``config.epochs`` epochs of ``n_train`` photos shared among the ranks."""
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    runner = ddp_forward(model, ctx, device, instance_outputs=config.instance_loss_weight > 0)
    # one order for all ranks; each rank its own augmentation stream
    order_gen = torch.Generator().manual_seed(config.seed) if runner else generator
    aug_gen = torch.Generator().manual_seed(config.seed + 7919 * ctx.rank) if runner else generator
    weight = _class_weight(labels, device) if config.class_weights else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    per_rank = len(shard_epoch(range(n_train), ctx))
    steps_per_epoch = int(np.ceil(per_rank / config.batch_bags))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=max(1, config.epochs * steps_per_epoch),
        pct_start=0.15,
    )
    return _Loop(
        model,
        config,
        device,
        ctx,
        weight,
        optimizer,
        scheduler,
        generator,
        order_gen,
        aug_gen,
        runner,
    )


def _train_epoch(loop: _Loop, bags: Sequence[Any], order: list[int]) -> float:
    """One pass over ``bags`` in ``order``, ``config.batch_bags`` photos per optimiser step;
    returns the mean training loss per photo."""
    model, config, device = loop.model, loop.config, loop.device
    head = require_aggregator(model.aggregator)
    model.train()
    total, seen = 0.0, 0
    for i in range(0, len(order), config.batch_bags):
        batch = [
            subsample_bag(bags[j], config.max_tiles, loop.generator)
            for j in order[i : i + config.batch_bags]
        ]
        target = torch.tensor([b.label for b in batch], device=device)
        with mixed_precision(device, config.amp):
            out = forward_bags(
                model,
                batch,
                device,
                loop.aug_gen if config.augment else None,
                chunk=config.chunk,
                runner=loop.runner,
                checkpoint=config.checkpoint,
            )
            loss = bag_loss(out.logits, target, loop.weight, config.loss)
            if out.instance_logits is not None and config.instance_loss_weight > 0:
                loss = loss + config.instance_loss_weight * ordinal_instance_loss(
                    out, target, config.instance_loss
                )
            auxiliary = head.auxiliary_loss(out, target)
            if auxiliary is not None:  # e.g. CLAM's instance clustering, DSMIL's max stream
                loss = loss + auxiliary
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loop.scheduler.step()
        total += loss.item() * len(batch)
        seen += len(batch)
    return total / max(seen, 1)


def _epoch_order(loop: _Loop, labels: np.ndarray, lengths: list[int]) -> list[int]:
    """This rank's photos of the next epoch, in training order."""
    config = loop.config
    order = epoch_order(labels.tolist(), loop.order_gen, config.balanced_sampling)
    if loop.model.encoder is None:  # padded feature batches: little padding per batch
        # bucketed by the global batch, so that N ranks x B photos per step train as
        # one process with N x B photos per step
        step_bags = config.batch_bags * loop.ctx.world_size
        order = bucket_by_length(order, lengths, step_bags, loop.order_gen)
    return shard_epoch(order, loop.ctx)


def _select(loop: _Loop, val_bags: Sequence[Any], row: dict[str, Any], best: _Best) -> None:
    """Validate the epoch ``row["epoch"]`` (its figures into ``row``) and keep its weights
    in ``best`` if it beats the best so far; with ``keep="last"`` it is the best, unseen."""
    epoch = row["epoch"]
    if loop.config.keep != "best":  # the last epoch's weights; nothing is validated
        best.result.best_epoch = epoch
        return
    val = predict(loop.model, val_bags, loop.device, amp=loop.config.amp)
    val_metrics = classification_metrics(val.labels, val.preds)
    key = _selection_key(val_metrics, val.loss)
    row.update(
        val_loss=val.loss,
        val_accuracy=val_metrics["accuracy"],
        val_macro_sensitivity=val_metrics["macro_sensitivity"],
    )
    if best.key is None or key > best.key:
        best.key, best.result.best_epoch = key, epoch
        best.state = copy.deepcopy(loop.model.state_dict())


def _resume(
    loop: _Loop, resume_dir: str, train_bags: Sequence[Any], val_bags: Sequence[Any]
) -> tuple[str, int, _Best]:
    """The fit's resume fingerprint, the first epoch still to train and the selection so
    far: a killed run's from its last finished epoch in ``resume_dir``, else a fresh one."""
    run_id = resume.fit_fingerprint(
        loop.config,
        loop.model,
        [(b.image_id, b.label) for b in train_bags],
        [b.image_id for b in val_bags],
    )
    best = _Best(FitResult(best_epoch=-1))
    restored = resume.restore_fit(
        Path(resume_dir), run_id, loop.model, loop.optimizer, loop.scheduler, loop.generator
    )
    if restored is None:
        return run_id, 0, best
    best.result.best_epoch, best.result.history = restored.best_epoch, restored.history
    key = restored.best_key  # saved as [val metric, -val loss] (_selection_key)
    best.key = (key[0], key[1]) if key else None
    best.state = restored.best_state
    return run_id, restored.epoch, best


def _snapshot(loop: _Loop, resume_dir: str, run_id: str, epochs: int, best: _Best) -> None:
    """Keep the fit after ``epochs`` finished epochs in ``resume_dir`` (:mod:`mil_cyto.resume`)."""
    resume.snapshot_fit(
        Path(resume_dir),
        run_id,
        epochs,
        loop.model,
        loop.optimizer,
        loop.scheduler,
        loop.generator,
        (best.key, best.result.best_epoch, best.state),
        best.result.history,
    )


def fit(
    model: MILModel,
    train_bags: Sequence[Any],
    val_bags: Sequence[Any],
    config: FitConfig,
    device: torch.device,
    *,
    progress: bool = True,
    dist_ctx: DistContext | None = None,
    desc: str = "training",
) -> FitResult:
    """Train with AdamW and a cosine schedule; keep the weights of the best validation epoch.

    Selection uses the validation split only (macro sensitivity, ties broken by loss); the
    test split is never seen here. On return ``model`` holds the best epoch's weights, or
    with ``config.keep == "last"`` the last epoch's (``val_bags`` are then not used).
    Under torchrun (``dist_ctx`` with several ranks) the model trains as DDP: each rank takes
    every world-size-th photo of the epoch's common order and gradients are averaged.
    A ``config.resume_dir`` (single process only) keeps every epoch, for a killed run.
    """
    if config.keep not in ("best", "last"):
        raise ValueError(f"keep {config.keep!r}: use best or last")
    require_aggregator(model.aggregator)
    start = time.perf_counter()
    ctx = dist_ctx or DistContext()
    labels = np.array([b.label for b in train_bags])
    loop = _start(model, len(train_bags), labels, config, device, ctx)
    lengths = [len(b.features) for b in train_bags] if model.encoder is None else []
    resume_dir = config.resume_dir if not ctx.is_distributed else None
    run_id, first, best = "", 0, _Best(FitResult(best_epoch=-1))
    if resume_dir:  # continue a killed run from its last finished epoch
        run_id, first, best = _resume(loop, resume_dir, train_bags, val_bags)
    # frozen features: the within-bag standardisation once, not at every step
    with bag_norm_once(model, train_bags, val_bags) as (ready_train, ready_val):
        epochs = tqdm(range(first, config.epochs), desc=desc, unit="epoch", disable=not progress)
        for epoch in epochs:
            train_loss = _train_epoch(loop, ready_train, _epoch_order(loop, labels, lengths))
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
            _select(loop, ready_val, row, best)
            best.result.history.append(row)
            epochs.set_postfix(
                loss=f"{train_loss:.3f}",
                **({"val_acc": f"{row['val_accuracy']:.3f}"} if "val_accuracy" in row else {}),
            )
            if resume_dir:
                _snapshot(loop, resume_dir, run_id, epoch + 1, best)
    if best.state is not None:
        model.load_state_dict(best.state)
    best.result.seconds = time.perf_counter() - start
    return best.result
