"""``mil-cyto extract`` (``python -m mil_cyto.extract``): photos -> an HDF5 bag store.

Flags: the fields of :class:`mil_cyto.extract.ExtractConfig`. Under ``torchrun`` the photos
are sharded across ranks and rank 0 merges the shards.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from mil_cyto.cli.options import Console, exit_code, from_args, set_threads
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.extract import ExtractConfig, run_extract

PROG = "mil-cyto extract"
DESCRIPTION = (
    "Embed the tissue tiles of every photo in DATA/manifest.csv with a frozen encoder into an "
    "HDF5 bag store (features + coords per photo). Resumable; under torchrun the photos are "
    "sharded across ranks."
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`ExtractConfig` field, plus ``--quiet``."""
    return generated_parser(prog, DESCRIPTION, ExtractConfig)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    from mil_cyto.devices import resolve_device
    from mil_cyto.distributed import DistContext, init_distributed, shutdown
    from mil_cyto.features.store import BagStore

    args = build_parser(prog).parse_args(argv)
    config = from_args(ExtractConfig, args)
    quiet = from_args(Console, args).quiet
    ctx = DistContext()

    def run() -> int:
        nonlocal ctx
        set_threads(config.threads)
        ctx, device = init_distributed(resolve_device(config.device))
        start = time.perf_counter()
        out = run_extract(config, ctx, device, progress=not quiet)
        if ctx.is_main:
            with BagStore(out) as store:
                n = len(store.image_ids())
            print(f"bag store: {out} ({n} photos, {time.perf_counter() - start:.1f} s)")
        return 0

    try:
        return exit_code(run)
    finally:
        shutdown(ctx)
