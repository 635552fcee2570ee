#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with a GPU (run from the repository root):
# the CUDA tests, the extraction throughput benchmark on the GPU, the default command with
# --device auto, and a frozen timm encoder run. Logs go to $OUT (default ./gpu-check).
# Each step has its own time limit so that one slow step cannot hide the others.
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
step cuda_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
step extract_cuda 180 python3 benchmarks/extract_throughput.py --device cuda --photos 300 \
    --batch-size 256 --workers 12 --rounds 3
step train_default_gpu 120 python3 -m mil_cyto.train --device auto --out /tmp/gpu-run --quiet
step train_frozen_resnet18_gpu 90 python3 -m mil_cyto.train --device auto --encoder resnet18 \
    --mode frozen --out /tmp/gpu-frozen --quiet
