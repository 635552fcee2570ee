"""``python -m mil_cyto.extract``: photos of a manifest -> an HDF5 bag store of tile features.

Resumable (an interrupted run keeps its finished photos), provenance-checked (the store
records encoder, weights and tiling; ``python -m mil_cyto.train --mode frozen --features
STORE`` with the same settings reuses it), and scale-out: under
``torchrun --standalone --nproc_per_node N -m mil_cyto.extract ...`` each rank embeds every
N-th photo into a shard store, and rank 0 merges the shards into the same store one process
would write, replacing the output atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mil_cyto import __version__
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.devices import resolve_device
from mil_cyto.distributed import (
    DistContext,
    barrier,
    init_distributed,
    shard,
    shard_path,
    shutdown,
)
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features.extraction import COMPILE_CHOICES, DecodingProcesses
from mil_cyto.features.store import (
    BagStore,
    extract_to_store,
    merge_stores,
    store_matches,
    store_provenance,
)


def feature_provenance(
    encoder: str,
    encoder_kwargs: dict[str, Any] | None,
    weights: str | None,
    weights_cache: str | None,
) -> dict[str, Any]:
    """What a store records about its encoder (the keys ``mil_cyto.train`` writes, so a store
    made here is a cache hit for a frozen-mode training run with the same settings)."""
    return {
        "encoder": encoder,
        "encoder_kwargs": encoder_kwargs or {},
        "weights": weights,
        "weights_cache": weights_cache,
        "mil_cyto_version": __version__,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mil_cyto.extract",
        description="Embed the tissue tiles of every photo in DATA/manifest.csv with a frozen "
        "encoder into an HDF5 bag store (features + coords per photo). Resumable; under "
        "torchrun the photos are sharded across ranks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--data", required=True, type=Path, help="folder with manifest.csv")
    add("--out", required=True, type=Path, help="bag store to write (e.g. features.h5)")
    add("--encoder", required=True, help="registered encoder or any timm model name")
    add("--encoder-kwargs", default=None, help="JSON keyword arguments, e.g. '{\"width\": 8}'")
    add("--weights", default=None, help="local weights file (safetensors or .pth)")
    add("--weights-cache", default=None, help="existing Hugging Face cache folder")
    add("--label-column", default=None, help="grade column of the manifest")
    add("--tile-size", type=int, default=96, help="tile side in pixels")
    add("--stride", type=int, default=96, help="grid stride in pixels")
    add("--min-tissue", type=float, default=0.05, help="minimum tissue share of a kept tile")
    add(
        "--instances",
        choices=["grid", "cells"],
        default="grid",
        help="grid tiles, or one tile-size crop centred on each detected nucleus",
    )
    add("--batch-size", type=int, default=64, help="tiles per forward pass (across photos)")
    add("--workers", type=int, default=2, help="threads decoding photos")
    add(
        "--decode-processes",
        type=int,
        default=0,
        help="decode photos on this many processes instead of --workers threads (for a GPU, "
        "where decoding is the bottleneck; 0 = threads)",
    )
    add("--device", default="auto", help="auto, cpu or cuda (auto: CUDA when present)")
    add(
        "--compile",
        choices=COMPILE_CHOICES,
        default="auto",
        help="torch.compile the encoder (auto: when a compiler is present, eager if it fails)",
    )
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reduced precision: fp16 autocast on CUDA (default on there); on a CPU with "
        "native bf16 (AVX512-BF16 or AMX), bf16 autocast (opt-in: ~1.8x faster for resnet18, "
        "features within ~0.5%% of float32's; recorded in the store)",
    )
    add("--seed", type=int, default=0, help="seed of a randomly initialised encoder")
    add("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def _encoder_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise MilCytoError(f"--encoder-kwargs is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise MilCytoError("--encoder-kwargs must be a JSON object")
    return value


def run_extract(args: argparse.Namespace, ctx: DistContext, device: torch.device) -> Path:
    """Extract (this rank's share of) the photos; returns the finished store's path."""
    rows = read_manifest(args.data / "manifest.csv", label_column=args.label_column)
    tiling = TilingConfig(args.tile_size, args.stride, args.min_tissue, args.instances)
    kwargs = _encoder_kwargs(args.encoder_kwargs)
    provenance = feature_provenance(args.encoder, kwargs, args.weights, args.weights_cache)
    if store_matches(args.out, rows, store_provenance(provenance, tiling)):
        return args.out
    torch.manual_seed(args.seed)  # every rank builds the same random-init encoder
    encoder = create_encoder(EncoderSpec(args.encoder, args.weights, args.weights_cache, kwargs))
    for p in encoder.parameters():
        p.requires_grad_(False)
    options = {
        "tiling": tiling,
        "provenance": provenance,
        "batch_size": args.batch_size,
        "device": device,
        "workers": args.workers,
        "compile": args.compile,
        "amp": args.amp,
    }
    if args.decode_processes < 0:
        raise MilCytoError("--decode-processes must be >= 0 (0 = decoding threads)")
    with contextlib.ExitStack() as stack:
        if args.decode_processes:
            options["decoder"] = stack.enter_context(DecodingProcesses(args.decode_processes))
        if not ctx.is_distributed:
            return extract_to_store(rows, encoder, args.out, progress=not args.quiet, **options)
        part = shard_path(args.out, ctx)
        extract_to_store(shard(rows, ctx), encoder, part, progress=not args.quiet, **options)
    barrier(ctx)
    if ctx.is_main:
        world = ctx.world_size
        parts = [shard_path(args.out, DistContext(r, world)) for r in range(world)]
        merge_stores(parts, args.out)
        for p in parts:
            p.unlink()
    barrier(ctx)
    return args.out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = DistContext()
    try:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        ctx, device = init_distributed(resolve_device(args.device))
        start = time.perf_counter()
        out = run_extract(args, ctx, device)
        if ctx.is_main:
            with BagStore(out) as store:
                n = len(store.image_ids())
            print(f"bag store: {out} ({n} photos, {time.perf_counter() - start:.1f} s)")
    except MilCytoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
