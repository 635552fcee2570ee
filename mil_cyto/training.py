"""Training an attention-MIL model on bags, with model selection on the validation split.

Two modes share one loop: ``finetune`` trains encoder and head together on uint8 tiles;
``frozen`` trains the head alone on features cached in a bag store.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from mil_cyto import resume
from mil_cyto.augment import orient_and_stain
from mil_cyto.devices import mixed_precision
from mil_cyto.distributed import DistContext, ddp_forward, shard_epoch
from mil_cyto.labels import GRADES
from mil_cyto.losses import bag_loss, ordinal_instance_loss
from mil_cyto.metrics import classification_metrics
from mil_cyto.models.aggregators import MILOutput, standardise_features
from mil_cyto.models.mil_model import MILModel, pad_bags
from mil_cyto.sampling import bucket_by_length, epoch_order, subsample_bag


@dataclass
class FeatureBag:
    """A photo's cached tile features ``(N, D)`` float32 with coords ``(N, 4)`` and the
    photo's ``size`` ``(H, W)``."""

    image_id: str
    patient_id: str
    label: int
    features: np.ndarray
    coords: np.ndarray
    size: tuple[int, int]


def embed_bags(
    encoder: torch.nn.Module, bags: Sequence[Any], device: torch.device, batch_size: int = 256
) -> list[FeatureBag]:
    """Features of in-memory bags of tiles (``mil_cyto.data.bags.Bag``; encoder in eval mode,
    no gradient, ``batch_size`` tiles at a time), as the bag store would hold them:
    ``(N_i, encoder.out_dim)`` float32 per photo."""
    encoder.eval()
    out = []
    with torch.inference_mode():
        for bag in bags:
            parts = [
                encoder(torch.from_numpy(bag.tiles[i : i + batch_size]).to(device)).float().cpu()
                for i in range(0, len(bag.tiles), batch_size)
            ]
            features = torch.cat(parts).numpy() if parts else np.zeros((0, encoder.out_dim))
            out.append(
                FeatureBag(
                    bag.image_id,
                    bag.patient_id,
                    bag.label,
                    features.astype(np.float32),
                    bag.coords,
                    bag.size,
                )
            )
    return out


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
class Predictions:
    """Per photo: class probabilities ``(B, C)``; per tile: attention and its logits, and
    (heads with an instance head) the ordinal instance logits ``(N_i, C - 1)``, else None."""

    image_ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    attention: list[np.ndarray]
    scores: list[np.ndarray]
    loss: float
    instance_logits: list[np.ndarray] | None = None

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


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


def _forward(
    model: MILModel,
    bags: Sequence[Any],
    device: torch.device,
    generator: torch.Generator | None = None,
    chunk: int = 0,
    runner: torch.nn.Module | None = None,
    checkpoint: bool = False,
) -> MILOutput:
    """``runner``: a DDP-wrapped ``distributed.BagForward`` of ``model`` under torchrun."""
    if model.encoder is None:
        feats = [torch.from_numpy(b.features).to(device) for b in bags]
        padded, mask = pad_bags(feats)
        return runner(padded, mask) if runner is not None else model(padded, mask)
    tiles = [torch.from_numpy(b.tiles).to(device) for b in bags]
    if generator is not None:
        tiles = [orient_and_stain(t, generator) for t in tiles]
    if runner is not None:
        return runner(tiles, chunk=chunk, checkpoint=checkpoint)
    return model.forward_tiles(tiles, chunk=chunk, checkpoint=checkpoint)


@torch.inference_mode()
def predict(
    model: MILModel,
    bags: Sequence[Any],
    device: torch.device,
    *,
    chunk: int = 1024,
    progress: bool = False,
    desc: str = "predicting",
    batch_bags: int = 64,
    amp: bool = True,
) -> Predictions:
    """Class probabilities and per-tile attention for every bag, in the order of ``bags``:
    cached features in padded batches of ``batch_bags`` photos of similar tile counts
    (padding changes nothing), tiles one photo at a time.
    ``amp``: bf16 autocast on CUDA (see :func:`mixed_precision`)."""
    model.eval()
    on_features = model.encoder is None
    per_step = batch_bags if on_features else 1
    n = len(bags)
    # shortest bags first, so that each padded batch holds bags of similar length
    lengths = [len(b.features) for b in bags] if on_features else [0] * n
    positions = np.argsort(lengths, kind="stable").tolist()
    probs: list[np.ndarray] = [np.empty(0, np.float32)] * n
    losses = np.zeros(n)
    attention: list[np.ndarray] = [np.empty(0, np.float32)] * n
    scores: list[np.ndarray] = [np.empty(0, np.float32)] * n
    instance: list[np.ndarray] = [np.empty((0, 0), np.float32)] * n
    has_instance = False
    with bag_norm_once(model, bags) as (ready,):
        steps = range(0, n, per_step)
        for i in tqdm(steps, desc=desc, disable=not progress, unit="step"):
            where = positions[i : i + per_step]
            part = [ready[j] for j in where]
            with mixed_precision(device, amp):
                out = _forward(model, part, device, chunk=chunk)
            logits = out.logits.float()
            target = torch.tensor([b.label for b in part], device=device)
            losses[where] = F.cross_entropy(logits, target, reduction="none").cpu().numpy()
            bag_probs = torch.softmax(logits, dim=1).cpu().numpy()
            for row, (j, bag) in enumerate(zip(where, part, strict=True)):
                probs[j] = bag_probs[row]
                size = len(bag.features if on_features else bag.tiles)
                attention[j] = out.attention[row, :size].float().cpu().numpy()
                scores[j] = out.scores[row, :size].float().cpu().numpy()
                if out.instance_logits is not None:
                    has_instance = True
                    instance[j] = out.instance_logits[row, :size].float().cpu().numpy()
    return Predictions(
        image_ids=[b.image_id for b in bags],
        labels=np.array([b.label for b in bags]),
        probs=np.stack(probs),
        attention=attention,
        scores=scores,
        loss=float(losses.mean()),
        instance_logits=instance if has_instance else None,
    )


@contextlib.contextmanager
def bag_norm_once(model: MILModel, *bag_lists: Sequence[Any]) -> Iterator[list[Sequence[Any]]]:
    """Yield ``bag_lists`` ready for ``model``: cached features standardised within each bag
    once, with the head's own per-step standardisation switched off until the block ends.

    The head's within-bag standardisation (``bag_norm``) is a fixed function of its input; on
    frozen features recomputing its medians at every step and for every validation pass was
    most of an epoch's time. Tiles (fine-tuning) and heads without ``bag_norm`` pass through.
    A ``max_tiles`` subsample then takes the statistics of the whole photo, not the subsample.
    The copies take as much memory as the features themselves while the block runs.
    """
    head = model.aggregator
    if model.encoder is not None or not getattr(head, "bag_norm", False):
        yield list(bag_lists)
        return
    ready = [_standardised(bags) for bags in bag_lists]
    head.bag_norm = False
    try:
        yield ready
    finally:
        head.bag_norm = True


def _standardised(bags: Sequence[FeatureBag]) -> list[FeatureBag]:
    """Each bag with its features standardised, on torch's CPU thread count (NumPy's
    partial sorts release the GIL: 1.5x faster on 2 threads)."""
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        features = list(pool.map(standardise_features, [b.features for b in bags]))
    return [dataclasses.replace(b, features=f) for b, f in zip(bags, features, strict=True)]


def _selection_key(metrics: dict[str, Any], loss: float) -> tuple[float, float]:
    """Higher is better: macro sensitivity (balanced accuracy), then lower loss."""
    return (metrics["macro_sensitivity"] or 0.0, -loss)


def _train_epoch(
    model: MILModel,
    bags: Sequence[Any],
    order: list[int],
    config: FitConfig,
    device: torch.device,
    weight: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    aug_gen: torch.Generator,
    runner: torch.nn.Module | None,
) -> float:
    """One pass over ``bags`` in ``order``, ``config.batch_bags`` photos per optimiser step;
    returns the mean training loss per photo."""
    model.train()
    total, seen = 0.0, 0
    for i in range(0, len(order), config.batch_bags):
        batch = [
            subsample_bag(bags[j], config.max_tiles, generator)
            for j in order[i : i + config.batch_bags]
        ]
        target = torch.tensor([b.label for b in batch], device=device)
        with mixed_precision(device, config.amp):
            out = _forward(
                model,
                batch,
                device,
                aug_gen if config.augment else None,
                chunk=config.chunk,
                runner=runner,
                checkpoint=config.checkpoint,
            )
            loss = bag_loss(out.logits, target, weight, config.loss)
            if out.instance_logits is not None and config.instance_loss_weight > 0:
                loss = loss + config.instance_loss_weight * ordinal_instance_loss(
                    out, target, config.instance_loss
                )
            auxiliary = getattr(model.aggregator, "auxiliary_loss", None)
            if auxiliary is not None:  # e.g. CLAM's instance clustering, DSMIL's max stream
                loss = loss + auxiliary(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(batch)
        seen += len(batch)
    return total / max(seen, 1)


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
    """
    if config.keep not in ("best", "last"):
        raise ValueError(f"keep {config.keep!r}: use best or last")
    start = time.perf_counter()
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    ctx = dist_ctx or DistContext()
    runner = ddp_forward(model, ctx, device, instance_outputs=config.instance_loss_weight > 0)
    # one order for all ranks; each rank its own augmentation stream
    order_gen = torch.Generator().manual_seed(config.seed) if runner else generator
    aug_gen = torch.Generator().manual_seed(config.seed + 7919 * ctx.rank) if runner else generator
    labels = np.array([b.label for b in train_bags])
    lengths = [len(b.features) for b in train_bags] if model.encoder is None else []
    weight = None
    if config.class_weights:
        present = np.unique(labels)
        w = np.ones(len(GRADES))
        w[present] = compute_class_weight("balanced", classes=present, y=labels)
        weight = torch.tensor(w, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    per_rank = len(shard_epoch(range(len(train_bags)), ctx))
    steps_per_epoch = int(np.ceil(per_rank / config.batch_bags))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=max(1, config.epochs * steps_per_epoch),
        pct_start=0.15,
    )
    result = FitResult(best_epoch=-1)
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    first = 0
    resume_dir = config.resume_dir if not ctx.is_distributed else None  # single process only
    if resume_dir:  # continue a killed run from its last finished epoch
        run_id = resume.fit_fingerprint(
            config,
            model,
            [(b.image_id, b.label) for b in train_bags],
            [b.image_id for b in val_bags],
        )
        restored = resume.restore_fit(
            Path(resume_dir), run_id, model, optimizer, scheduler, generator
        )
        if restored is not None:
            first, result.best_epoch, result.history = (
                restored.epoch,
                restored.best_epoch,
                restored.history,
            )
            best_key = tuple(restored.best_key) if restored.best_key else None  # type: ignore[assignment]
            best_state = restored.best_state
    # frozen features: the within-bag standardisation once, not at every step
    with bag_norm_once(model, train_bags, val_bags) as (train_bags, val_bags):
        epochs = tqdm(range(first, config.epochs), desc=desc, unit="epoch", disable=not progress)
        for epoch in epochs:
            order = epoch_order(labels.tolist(), order_gen, config.balanced_sampling)
            if model.encoder is None:  # padded feature batches: little padding per batch
                # bucketed by the global batch, so that N ranks x B photos per step train as
                # one process with N x B photos per step
                step_bags = config.batch_bags * ctx.world_size
                order = bucket_by_length(order, lengths, step_bags, order_gen)
            order = shard_epoch(order, ctx)
            train_loss = _train_epoch(
                model,
                train_bags,
                order,
                config,
                device,
                weight,
                optimizer,
                scheduler,
                generator,
                aug_gen,
                runner,
            )
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
            if config.keep == "best":
                val = predict(model, val_bags, device, amp=config.amp)
                val_metrics = classification_metrics(val.labels, val.preds)
                key = _selection_key(val_metrics, val.loss)
                row.update(
                    val_loss=val.loss,
                    val_accuracy=val_metrics["accuracy"],
                    val_macro_sensitivity=val_metrics["macro_sensitivity"],
                )
                if best_key is None or key > best_key:
                    best_key, result.best_epoch = key, epoch + 1
                    best_state = copy.deepcopy(model.state_dict())
            else:  # the last epoch's weights; nothing is validated
                result.best_epoch = epoch + 1
            result.history.append(row)
            epochs.set_postfix(
                loss=f"{train_loss:.3f}",
                **({"val_acc": f"{row['val_accuracy']:.3f}"} if "val_accuracy" in row else {}),
            )
            if resume_dir:
                best = (best_key, result.best_epoch, best_state)
                resume.snapshot_fit(
                    Path(resume_dir),
                    run_id,
                    epoch + 1,
                    model,
                    optimizer,
                    scheduler,
                    generator,
                    best,
                    result.history,
                )
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
