"""Tile-embedding throughput on the same tiles, three ways, in one run.

1. ``package``: ``mil_cyto`` extraction end to end, photos -> HDF5 bag store (PNG decoding,
   tissue tiling, cross-photo batching on a background thread, compiled forward, writes);
2. ``raw``: the bare compiled forward of the same model on the same tiles, already cut and
   batched in memory (the ceiling for the package);
3. ``eager``: plain eager timm (NCHW float input, ``torch.no_grad``, float32), the usual
   user code.

``--device cuda`` runs all three on the GPU: the package and the raw forward under the
package's fp16 autocast, eager timm in float32 with each batch copied to the GPU and the
features back (as user code does); every timing ends with the features on the host.
``--amp`` on a CPU with native bf16 (AVX512-BF16 or AMX) runs the package and the raw
forward under bf16 autocast in the same way (eager timm stays float32); the JSON's
``precision`` says which.

The three are timed in interleaved rounds so that load from other processes falls on all
of them alike. Compilation happens once, before timing. The last line is JSON:
``{"model", "tiles_per_s", "raw_forward_tiles_per_s", "eager_tiles_per_s", "ratio_to_raw",
"speedup_over_eager"}``.

    OMP_NUM_THREADS=2 python benchmarks/extract_throughput.py --photos 16 --rounds 2
    python benchmarks/extract_throughput.py --device cuda --photos 300 --batch-size 256 \
        --decode-processes 14
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.tiling import TilingConfig, extract_tiles, tissue_coords
from mil_cyto.devices import precision_name, resolve_device
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.features.decoding import DecodingProcesses
from mil_cyto.features.extraction import EncoderRunner
from mil_cyto.features.store import BagStore, extract_to_store


def _data_dir(data: str | None) -> Path:
    if data:
        return Path(data)
    from mil_cyto.config import default_cache_dir
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset

    synth = SynthConfig(n_images=300, seed=0)
    target = default_cache_dir() / f"synthetic-n{synth.n_images}-s{synth.seed}"
    return generate_dataset(target, synth, progress=False)


def _batches(tiles: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """``(N, 3, T, T)`` uint8 -> channels-last uint8 batches (as the package cuts them)."""
    nhwc = np.ascontiguousarray(tiles.transpose(0, 2, 3, 1))
    parts = [nhwc[i : i + batch_size] for i in range(0, len(nhwc), batch_size)]
    return [torch.from_numpy(part).permute(0, 3, 1, 2) for part in parts]


def _device_name(device: torch.device, dtype: torch.dtype | None) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if dtype is None:
        return name
    return f"{name} (package and raw: {precision_name(dtype)} autocast)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with manifest.csv (default: built-in synthetic)")
    parser.add_argument("--model", default="resnet18", help="timm model name")
    parser.add_argument("--tile-size", type=int, default=224)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument(
        "--decode-processes",
        type=int,
        default=0,
        help="decode on a pool of this many processes (started once, before the rounds)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="package and raw forward in reduced precision: fp16 on CUDA (default on there), "
        "bf16 on a CPU with native bf16 (opt-in); eager timm stays float32",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    device = resolve_device(args.device)
    rows = read_manifest(_data_dir(args.data) / "manifest.csv")[: args.photos]
    tiling = TilingConfig(args.tile_size, args.tile_size, 0.05)
    tiles = np.concatenate(
        [
            extract_tiles(img, tissue_coords(img, tiling))
            for img in map(load_rgb, [r.image for r in rows])
        ]
    )
    n = len(tiles)
    encoder = create_encoder(EncoderSpec(args.model)).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    eager_model = timm.create_model(args.model, pretrained=False, num_classes=0).eval()
    eager_model.load_state_dict(encoder.backbone.state_dict())
    eager_model.to(device)
    eager_inputs = [
        encoder.normalise(torch.from_numpy(tiles[i : i + args.batch_size])).contiguous()
        for i in range(0, n, args.batch_size)
    ]
    raw_inputs = _batches(tiles, args.batch_size)

    clock = time.perf_counter()
    runner = EncoderRunner(encoder, device, compile="on", amp=args.amp)
    runner.warm_up(args.tile_size, args.batch_size)
    compile_s = time.perf_counter() - clock

    tmp = Path(tempfile.mkdtemp(prefix="mil-cyto-bench-"))
    seconds = {"package": 0.0, "raw": 0.0, "eager": 0.0}
    load_start = os.getloadavg()[0]
    decoder = DecodingProcesses(args.decode_processes) if args.decode_processes else None
    if decoder is not None:  # start the workers now: the pool is set up once, not per round
        list(decoder.map(abs, range(args.decode_processes)))
    try:
        for r in range(args.rounds):
            clock = time.perf_counter()
            with torch.no_grad():
                eager_feats = torch.cat([eager_model(x.to(device)).cpu() for x in eager_inputs])
            seconds["eager"] += time.perf_counter() - clock

            clock = time.perf_counter()
            raw_feats = torch.cat([runner(x) for x in raw_inputs])
            seconds["raw"] += time.perf_counter() - clock

            out = tmp / f"round{r}.h5"
            clock = time.perf_counter()
            extract_to_store(
                rows,
                runner,
                out,
                tiling=tiling,
                provenance={"encoder": args.model},
                batch_size=args.batch_size,
                workers=args.workers,
                progress=False,
                decoder=decoder,
            )
            seconds["package"] += time.perf_counter() - clock
        with BagStore(out) as store:
            package_feats = np.concatenate([store[row.image_id][0] for row in rows])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if decoder is not None:
            decoder.shutdown()
    assert len(package_feats) == n
    rate = {k: args.rounds * n / v for k, v in seconds.items()}
    print(
        f"{n} tiles of {args.tile_size} px from {len(rows)} photos, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads, decoding on "
        f"{f'{args.decode_processes} processes' if decoder else f'{args.workers} threads'}, "
        f"{args.rounds} interleaved rounds on "
        f"{_device_name(device, runner.dtype)}; "
        f"compile {compile_s:.0f} s; load average {load_start:.1f} -> {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print(
        "max |package - eager| feature difference: "
        f"{np.abs(package_feats - eager_feats.numpy()).max():.2e}; "
        f"|raw - eager|: {(raw_feats - eager_feats).abs().max().item():.2e} "
        f"(features up to {eager_feats.abs().max().item():.2e})"
    )
    result = {
        "model": args.model,
        "device": device.type,
        "precision": precision_name(runner.dtype),
        "tiles_per_s": round(rate["package"], 2),
        "raw_forward_tiles_per_s": round(rate["raw"], 2),
        "eager_tiles_per_s": round(rate["eager"], 2),
        "ratio_to_raw": round(rate["package"] / rate["raw"], 3),
        "speedup_over_eager": round(rate["package"] / rate["eager"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
