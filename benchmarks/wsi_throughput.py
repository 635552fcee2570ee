"""A synthetic whole slide through frozen extraction: peak memory and tiles/s against photos.

The parent writes a ``--size`` x ``--size`` px pyramidal TIFF (JPEG tiles of 512 px, four
levels, 0.5 um/px at level 0, synthetic fields stitched into an elliptical smear on glass;
:mod:`mil_cyto.slides.synthetic`) and a small synthetic photo set, both under a temporary
folder that is deleted afterwards. Each measurement runs in a fresh subprocess, so its peak
RSS (``ru_maxrss``) is that run's alone: photos, then the slide, then photos again
(``--rounds`` repeats slide + photos; the photo rate is the mean of the photo runs, so load
from other processes falls on both paths alike). Both
use the same default encoder (``smallcnn``, random init, frozen), the same tiling and batch
size, and ``extract_to_store`` end to end (decoding, instance search, batching on a
background thread, the forward, HDF5 writes). The slide is read at ``--um-per-px``
(0.7: level 0 resampled by 1.4), only in the regions its overview finds.

The last line is JSON: ``{"cpu", "slide_px", "instances", "slide_tiles", "slide_tiles_per_s",
"photo_tiles_per_s", "ratio", "peak_rss_mb", "work_peak_rss_mb", ...}``; targets: peak RSS
under 2048 MB, ratio >= 0.8.

    OMP_NUM_THREADS=2 python benchmarks/wsi_throughput.py --size 40000
    python benchmarks/wsi_throughput.py --size 8192 --instances cells
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLOCK = 1024


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark so the work's own peak can be read (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One measurement: extract ``args.data``'s manifest into a fresh store; prints JSON."""
    import h5py
    import torch

    from mil_cyto.data.manifest import read_manifest
    from mil_cyto.data.tiling import TilingConfig
    from mil_cyto.encoders import EncoderSpec, create_encoder
    from mil_cyto.features.store import extract_to_store
    from mil_cyto.slides import SlideConfig

    torch.manual_seed(0)
    rows = read_manifest(Path(args.data) / "manifest.csv")
    tiling = TilingConfig(args.tile_size, args.tile_size, 0.05, args.instances)
    encoder = create_encoder(EncoderSpec("smallcnn")).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    out = Path(args.data) / f"features-{os.getpid()}.h5"
    reset = _reset_peak()
    clock = time.perf_counter()
    extract_to_store(
        rows,
        encoder,
        out,
        tiling=tiling,
        provenance={"encoder": "smallcnn"},
        batch_size=args.batch_size,
        workers=args.workers,
        progress=False,
        slides=SlideConfig(um_per_px=args.um_per_px),
    )
    seconds = time.perf_counter() - clock
    with h5py.File(out, "r") as store:
        tiles = sum(len(group["coords"]) for group in store["bags"].values())
        slide = [json.loads(g.attrs["slide"]) for g in store["bags"].values() if "slide" in g.attrs]
    out.unlink()
    result = {
        "tiles": tiles,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "work_peak_rss_mb": _vm_hwm_mb() if reset else None,
        "slide": slide[0] if slide else None,
    }
    print(json.dumps(result))


def _run_child(data: Path, args: argparse.Namespace) -> dict[str, object]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--data",
        str(data),
        "--tile-size",
        str(args.tile_size),
        "--instances",
        args.instances,
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--um-per-px",
        str(args.um_per_px),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _photo_set(folder: Path, n_images: int) -> Path:
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset

    return generate_dataset(folder, SynthConfig(n_images=n_images, seed=0), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=40000, help="slide side, px (rounded up)")
    parser.add_argument("--um-per-px", type=float, default=0.7, help="working pixel size")
    parser.add_argument("--instances", default="grid", choices=("grid", "cells"))
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="photo decoding threads")
    parser.add_argument("--photos", type=int, default=40, help="synthetic photos (800x600)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="slide runs, each followed by a photo run"
    )
    parser.add_argument("--tmp", default=None, help="scratch folder (default: system temp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from mil_cyto.slides.synthetic import write_synthetic_slide

    size = -(-args.size // BLOCK) * BLOCK
    tmp = Path(tempfile.mkdtemp(prefix="mil-cyto-wsi-", dir=args.tmp))
    try:
        clock = time.perf_counter()
        slide_dir = tmp / "slide"
        slide_dir.mkdir()
        write_synthetic_slide(slide_dir / "slide.tif", size, um_per_px=0.5, block=BLOCK)
        write_s = time.perf_counter() - clock
        slide_mb = (slide_dir / "slide.tif").stat().st_size / 2**20
        (slide_dir / "manifest.csv").write_text("image,patient_id,histology\nslide.tif,S1,CIN2\n")
        photos = _photo_set(tmp / "photos", args.photos)
        photo_runs = [_run_child(photos, args)]
        slide_runs = []
        for _ in range(args.rounds):  # photos, slide, photos, slide, ..., photos
            slide_runs.append(_run_child(slide_dir, args))
            photo_runs.append(_run_child(photos, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    photo_rate = sum(r["tiles"] / r["seconds"] for r in photo_runs) / len(photo_runs)  # type: ignore[operator]
    slide = slide_runs[0]
    slide_rate = sum(r["tiles"] for r in slide_runs) / sum(r["seconds"] for r in slide_runs)  # type: ignore[misc]
    runs = [photo_runs[0], slide, photo_runs[-1]]
    print(
        f"slide {size}x{size} px ({slide_mb:.0f} MB, written in {write_s:.0f} s): "
        f"{slide['tiles']} {args.instances} tiles in {slide['seconds']:.0f} s; photos: "
        f"{runs[0]['tiles']} tiles in {runs[0]['seconds']:.1f} s / {runs[2]['seconds']:.1f} s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        file=sys.stderr,
    )
    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "slide_px": [size, size],
        "slide_mb": round(slide_mb, 1),
        "write_s": round(write_s, 1),
        "um_per_px": args.um_per_px,
        "instances": args.instances,
        "tile_size": args.tile_size,
        "slide_tiles": slide["tiles"],
        "slide_s": round(slide["seconds"], 1),  # type: ignore[arg-type]
        "rounds": args.rounds,
        "slide_tiles_per_s": round(slide_rate, 1),
        "photo_tiles_per_s": round(photo_rate, 1),
        "ratio": round(slide_rate / photo_rate, 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in slide_runs), 1),  # type: ignore[type-var]
        "work_peak_rss_mb": slide["work_peak_rss_mb"],
        "photo_peak_rss_mb": round(max(r["peak_rss_mb"] for r in photo_runs), 1),  # type: ignore[type-var]
        "region_fraction": (slide["slide"] or {}).get("region_fraction"),  # type: ignore[union-attr]
        "rss_ok": max(r["peak_rss_mb"] for r in slide_runs) < 2048,  # type: ignore[type-var]
        "ratio_ok": slide_rate / photo_rate >= 0.8,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
