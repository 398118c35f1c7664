#!/usr/bin/env bash
# The prepared device check: every CUDA path against the CPU fp32 reference, tiles/s at batch 1-256 in fp32
# and bf16, peak memory, top kernels (see benchmarks/gpu_check.py). Runs unchanged on a bare CUDA image
# (torch + triton, no project pins, no internet): only torch, numpy, triton and this repository's modules.
#   bash benchmarks/gpu_check.sh            # on the GPU machine, <= 6 minutes
#   bash benchmarks/gpu_check.sh --cpu      # smoke mode on a CPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
echo "== gpu_check on $(hostname) at $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi
grep -m1 'model name' /proc/cpuinfo 2>/dev/null || true
# 6-minute hard cap; the script's own budget (300 s) stops starting new measurements before it.
exec timeout --signal=INT 360 "$PYTHON" -u -m benchmarks.gpu_check "$@"
