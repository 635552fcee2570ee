"""Scale-out: photo sharding, shard merging, the extract command, torchrun and DDP on gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.distributed import DistContext, context_from_env, shard, shard_epoch, shard_path
from mil_cyto.errors import MilCytoError
from mil_cyto.extract import main as extract_main
from mil_cyto.features import BagStore
from mil_cyto.features.store import merge_stores

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--encoder", "smallcnn", "--encoder-kwargs", '{"width": 4, "out_dim": 8}']
ARGS += ["--tile-size", "32", "--stride", "32", "--compile", "off", "--quiet"]


@pytest.fixture
def data(tmp_path: Path, blob_photo: Callable[..., np.ndarray], write_png) -> Path:
    folder = tmp_path / "data"
    lines = ["image,patient_id,histology"]
    for i in range(7):
        rng = np.random.default_rng(i)
        spots = rng.integers((8, 8, 5), (88, 88, 12), (3, 3))
        blobs = [(int(x), int(y), int(r)) for x, y, r in spots]
        write_png(folder / f"p{i}.png", blob_photo(96, 96 + 32 * (i % 2), blobs=blobs, seed=i))
        lines.append(f"p{i}.png,pat{i // 2},{['normal', 'CIN1', 'CIN2'][i % 3]}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def _read(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray, tuple]]]:
    with BagStore(path) as store:
        bags = {i: (*store[i], store.size(i)) for i in store.image_ids()}
        return store.provenance, bags


def _assert_same_store(a: Path, b: Path) -> None:
    prov_a, bags_a = _read(a)
    prov_b, bags_b = _read(b)
    assert prov_a == prov_b and sorted(bags_a) == sorted(bags_b)
    for key, (feats, coords, size) in bags_a.items():
        np.testing.assert_allclose(bags_b[key][0], feats, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(bags_b[key][1], coords)
        assert bags_b[key][2] == size


def test_context_from_env() -> None:
    assert context_from_env({}) == DistContext(0, 1, 0)
    ctx = context_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (3, 4, 1, False)
    with pytest.raises(MilCytoError, match="torchrun"):
        context_from_env({"RANK": "4", "WORLD_SIZE": "4"})


@pytest.mark.parametrize("n, world", [(7, 2), (5, 3), (2, 4), (0, 2)])
def test_shards_are_disjoint_and_cover_everything(n: int, world: int) -> None:
    items = list(range(n))
    parts = [shard(items, DistContext(r, world)) for r in range(world)]
    assert sorted(sum(parts, [])) == items
    epochs = [shard_epoch(items, DistContext(r, world)) for r in range(world)]
    assert len({len(e) for e in epochs}) == 1  # same number of steps on every rank
    assert set(sum(epochs, [])) == set(items)
    paths = {shard_path(Path("out/f.h5"), DistContext(r, world)) for r in range(world)}
    assert len(paths) == world


def test_extract_command_and_cache_hit(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "feats.h5"
    assert extract_main(["--data", str(data), "--out", str(out), *ARGS]) == 0
    assert "7 photos" in capsys.readouterr().out
    provenance, bags = _read(out)
    assert provenance["encoder"] == "smallcnn" and provenance["tiling"]["tile_size"] == 32
    assert len(bags) == 7
    before = out.stat().st_mtime_ns
    assert extract_main(["--data", str(data), "--out", str(out), *ARGS]) == 0
    assert out.stat().st_mtime_ns == before
    # other settings on the same path: an error naming the file, no traceback
    assert extract_main(["--data", str(data), "--out", str(out), *ARGS, "--min-tissue", "0.2"]) == 2
    assert "feats.h5" in capsys.readouterr().err


def test_extract_command_with_decoding_processes(data: Path, tmp_path: Path, capsys) -> None:
    """--decode-processes writes the store the decoding threads write."""
    threads, procs = tmp_path / "threads.h5", tmp_path / "procs.h5"
    assert extract_main(["--data", str(data), "--out", str(threads), *ARGS]) == 0
    assert (
        extract_main(["--data", str(data), "--out", str(procs), *ARGS, "--decode-processes", "2"])
        == 0
    )
    _assert_same_store(threads, procs)
    bad = tmp_path / "bad.h5"
    assert (
        extract_main(["--data", str(data), "--out", str(bad), *ARGS, "--decode-processes", "-1"])
        == 2
    )
    assert "--decode-processes" in capsys.readouterr().err


def test_shard_stores_merge_into_the_single_process_store(data: Path, tmp_path: Path) -> None:
    """What each torchrun rank writes, merged on rank 0, equals one process's store."""
    single = tmp_path / "single.h5"
    assert extract_main(["--data", str(data), "--out", str(single), *ARGS]) == 0
    rows: list[ManifestRow] = read_manifest(data / "manifest.csv")
    parts = []
    for rank in range(2):
        sub = tmp_path / f"rank{rank}"
        sub.mkdir()
        lines = (data / "manifest.csv").read_text().splitlines()
        mine = shard(lines[1:], DistContext(rank, 2))
        (sub / "manifest.csv").write_text("\n".join([lines[0], *mine]) + "\n")
        for row in shard(rows, DistContext(rank, 2)):
            os.symlink(row.image, sub / row.image_id)
        parts.append(tmp_path / f"part{rank}.h5")
        assert extract_main(["--data", str(sub), "--out", str(parts[-1]), *ARGS]) == 0
    merged = merge_stores(parts, tmp_path / "merged.h5")
    _assert_same_store(single, merged)
    with pytest.raises(MilCytoError, match="two shards"):
        merge_stores([parts[0], parts[0]], tmp_path / "twice.h5")
    assert not (tmp_path / "twice.h5").exists()


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_ranks_write_the_single_process_store(data: Path, tmp_path: Path) -> None:
    single = tmp_path / "single.h5"
    assert extract_main(["--data", str(data), "--out", str(single), *ARGS]) == 0
    out = tmp_path / "ddp.h5"
    done = _torchrun(
        "-m", "mil_cyto.extract", "--data", str(data), "--out", str(out), *ARGS, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_store(single, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ddp.h5")) == ["ddp.h5"]


DDP_SCRIPT = """
import sys, numpy as np, torch
from safetensors.torch import save_file
from mil_cyto.distributed import context_from_env, init_distributed, shutdown
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.training import FeatureBag, FitConfig, fit

ctx, device = init_distributed(torch.device("cpu"))
rng = np.random.default_rng(0)
bags = [FeatureBag(f"b{i}", f"p{i}", i % 3, rng.normal(size=(5 + i % 4, 6)).astype("float32"),
        np.zeros((5 + i % 4, 4), "int32"), (64, 64)) for i in range(10)]
torch.manual_seed(0)
model = MILModel(None, create_aggregator("abmil", in_dim=6, dropout=0.0))
world = ctx.world_size
config = FitConfig(epochs=2, batch_bags=2 // world, lr=1e-2, class_weights=False, augment=False,
                   instance_loss_weight=0.0)  # its loss is not a mean over bags
fit(model, bags[:8], bags[8:], config, device, progress=False, dist_ctx=ctx)
if ctx.is_main:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
shutdown(ctx)
"""


@pytest.mark.slow
def test_ddp_fit_on_two_ranks_matches_one_process(tmp_path: Path) -> None:
    """Two gloo ranks with one photo each per step == one process with two photos per step."""
    from safetensors.torch import load_file

    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(str(script), str(tmp_path / "two.safetensors"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        if key == "aggregator.attention_w.bias":
            # softmax ignores a shift: this bias's gradient is 0 up to rounding, and Adam
            # turns rounding noise into full lr-sized steps, differently in each run
            continue
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
