"""Peak memory of one photo through extraction and a trained head, for 1k, 5k and 20k tiles.

Each size runs in a fresh subprocess (peak RSS from ``resource.getrusage(...).ru_maxrss``):
decode the photo, find its tissue tiles, embed them in batches (tiles are cut a batch at a
time, never the whole bag), write the HDF5 bag store, read the features back and run an
attention-MIL head over them a chunk of tiles at a time. Photos are full of cells and tiled
with 64-px tiles on an 8-px stride, so 20,000 tiles come from a 1656 x 856 px photo; the
encoder is the small CNN with 512-d output (resnet18's width), so the features are
``N x 512`` float32. The head (gated ABMIL, within-bag standardisation) is trained for two
epochs on small random bags first, in the parent, and loaded from safetensors.

Target: peak RSS at 20k tiles <= 1.5 x the 1k figure + the 20k bag's features in bytes.
The process's peak RSS is usually set by importing torch and friends, so the peak during the
work alone (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) is reported and
checked against the same rule too.

    OMP_NUM_THREADS=1 python benchmarks/bounded_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE, STRIDE, DIM = 64, 8, 512
GRIDS = {1000: (20, 50), 5000: (50, 100), 20000: (100, 200)}  # tile rows x columns


def _photo(rows: int, cols: int, seed: int) -> np.ndarray:
    """A field packed with dark cells on glass, so every grid tile holds tissue."""
    height, width = TILE + (rows - 1) * STRIDE, TILE + (cols - 1) * STRIDE
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 235, dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    cells = (np.sin(xx / 5.0) * np.sin(yy / 6.0)) > 0.2
    image[cells] = (110, 60, 140)
    noise = rng.integers(-6, 7, size=image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux ``clear_refs``), so the work's own peak can be read
    apart from the libraries' import-time peak; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _child(folder: Path, n: int) -> None:
    import torch
    from safetensors.torch import load_file

    from mil_cyto.data.manifest import read_manifest
    from mil_cyto.data.tiling import TilingConfig
    from mil_cyto.encoders import EncoderSpec, create_encoder
    from mil_cyto.features.store import BagStore, extract_to_store
    from mil_cyto.models import create_aggregator
    from mil_cyto.models.streaming import attend_in_chunks

    start = time.perf_counter()
    setup_mb = _status_mb("VmRSS")
    reset = _reset_peak()
    rows = [r for r in read_manifest(folder / "manifest.csv") if r.image_id == f"n{n}.png"]
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn", kwargs={"out_dim": DIM})).eval()
    tiling = TilingConfig(TILE, STRIDE, 0.05)
    store = folder / f"n{n}.h5"
    extract_to_store(rows, encoder, store, tiling=tiling, provenance={}, progress=False)
    head = create_aggregator("gated_abmil", in_dim=DIM, bag_norm=True)
    head.load_state_dict(load_file(folder / "head.safetensors"))
    head.eval()
    with BagStore(store) as bags:
        features, coords = bags[rows[0].image_id]
    out = attend_in_chunks(head, torch.from_numpy(features))
    probs = torch.softmax(out.logits, dim=1)[0].tolist()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    work_peak_mb = _status_mb("VmHWM") if reset else None
    print(
        json.dumps(
            {
                "n_tiles": len(coords),
                "peak_rss_mb": round(peak_mb, 1),
                "rss_after_imports_mb": round(setup_mb, 1),
                "peak_rss_during_work_mb": round(work_peak_mb, 1) if reset else None,
                "features_mb": round(features.nbytes / 2**20, 1),
                "seconds": round(time.perf_counter() - start, 1),
                "probs": [round(p, 4) for p in probs],
            }
        )
    )


def _train_head(folder: Path) -> None:
    """Two epochs of the package's training loop on random bags (features of width DIM)."""
    import torch
    from safetensors.torch import save_file

    from mil_cyto.models import MILModel, create_aggregator
    from mil_cyto.training import FeatureBag, FitConfig, fit

    rng = np.random.default_rng(0)
    bags = []
    for i in range(24):
        n = int(rng.integers(20, 60))
        feats = rng.normal(size=(n, DIM)).astype(np.float32) + (i % 3) * 0.3
        bags.append(FeatureBag(f"b{i}", f"p{i}", i % 3, feats, np.zeros((n, 4), np.int32), (1, 1)))
    torch.manual_seed(0)
    model = MILModel(None, create_aggregator("gated_abmil", in_dim=DIM, bag_norm=True))
    fit(model, bags[:18], bags[18:], FitConfig(epochs=2), torch.device("cpu"), progress=False)
    state = {k: v.contiguous() for k, v in model.aggregator.state_dict().items()}
    save_file(state, str(folder / "head.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(GRIDS))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.folder, args.child)
        return
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="mil-cyto-mem-") as tmp:
        folder = Path(tmp)
        lines = ["image,patient_id,histology"]
        for n in args.sizes:
            Image.fromarray(_photo(*GRIDS[n], seed=n)).save(folder / f"n{n}.png")
            lines.append(f"n{n}.png,P{n},normal")
        (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
        _train_head(folder)
        results = {}
        for n in args.sizes:
            command = [sys.executable, __file__, "--child", str(n), "--folder", str(folder)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[n] = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(results[n]), flush=True)
    small, large = results[min(results)], results[max(results)]
    budget = 1.5 * small["peak_rss_mb"] + large["features_mb"]
    summary = {
        "peak_rss_mb": {str(n): r["peak_rss_mb"] for n, r in results.items()},
        "peak_rss_during_work_mb": {
            str(n): r["peak_rss_during_work_mb"] for n, r in results.items()
        },
        "n_tiles": {str(n): r["n_tiles"] for n, r in results.items()},
        "features_mb": {str(n): r["features_mb"] for n, r in results.items()},
        "budget_mb": round(budget, 1),
        "within_budget": large["peak_rss_mb"] <= budget,
    }
    if small["peak_rss_during_work_mb"] is not None:
        work_budget = 1.5 * small["peak_rss_during_work_mb"] + large["features_mb"]
        summary["work_budget_mb"] = round(work_budget, 1)
        summary["work_within_budget"] = large["peak_rss_during_work_mb"] <= work_budget
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
