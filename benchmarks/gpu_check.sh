#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with a GPU (run from the repository root):
# the CUDA tests, the extraction throughput benchmark on the GPU (decoding on threads, then on
# processes), the default command with --device auto and head epochs on CPU vs GPU.
# Logs go to $OUT (default ./gpu-check).
# Each step has its own time limit so that one slow step cannot hide the others.
# Needs the package's dependencies there (a machine without Captum fails the whole-image test).
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export MIL_CYTO_CACHE=${MIL_CYTO_CACHE:-/tmp/mil-cyto-cache}
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: rc $? in $((SECONDS - start)) s"; tail -n 6 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
step cuda_tests 180 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
# decoding on threads, then on a pool of processes (same photos, same machine)
step extract_cuda_threads 100 python3 benchmarks/extract_throughput.py --device cuda --photos 300 \
    --batch-size 256 --workers 14 --rounds 2
step extract_cuda_processes 100 python3 benchmarks/extract_throughput.py --device cuda \
    --photos 300 --batch-size 256 --decode-processes 14 --rounds 2
# the default fits eight heads (two self-training rounds, three heads with refits) at one photo
# per step: launch-bound on a GPU (docs/performance.md)
step train_default_gpu 540 python3 -m mil_cyto.train --device auto --workers 14 --out /tmp/gpu-run
step head_device 90 python3 benchmarks/head_device.py /tmp/gpu-run --epochs 3 --batch-bags 1 8 32
cp /tmp/gpu-run/metrics.json /tmp/gpu-run/report.md /tmp/gpu-run/config.json "$OUT/" 2>/dev/null
