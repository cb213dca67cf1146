#!/usr/bin/env bash
# The 512 px SD-1.5-config decoder on every GPU backend, in at most 10 minutes: export (and validate) the
# package, then build and time one loss-and-gradient step on torch-cuda, torch-cuda-graph, onnxruntime-cuda
# and tensorrt, each bounded in time, each compared with eager torch (benchmarks/gpu_large.py).
#
#   benchmarks/gpu_large.sh OUT_DIR          (gpu_check.sh runs it as its large_models part)
#
# Results: OUT_DIR/large.json (ms per step at batch 1 and 4, build seconds, peak GPU memory, gradient error
# against eager torch, the package's activation estimates), OUT_DIR/large.log. Exit status: 2 without a CUDA
# GPU (GPU_CHECK_DRY_RUN=1: a 64 px run on the CPU backends, to check the pipeline), 1 when a backend failed.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_large.sh OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export GENORIGIN_CACHE="${GENORIGIN_CACHE:-$OUT/cache}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$ROOT" || exit 1
# 570 s for everything (export on the host CPU, then the four backends), 30 s of the 10 minutes left in reserve
timeout --kill-after=10 570 "$PY" benchmarks/gpu_large.py --out "$OUT/large.json" --work "$OUT" \
  ${GPU_CHECK_DRY_RUN:+--allow-cpu} >"$OUT/large.log" 2>&1
rc=$?
tail -n 8 "$OUT/large.log"
[ "$rc" -eq 124 ] && echo "gpu_large: stopped at 570 s; large.json holds the backends that finished" >&2
exit "$rc"
