#!/usr/bin/env bash
# One-command GPU verification: every GPU test, the kernel and latency benchmarks, one report.
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# For a machine with a CUDA build of torch, cuda-python and NVRTC; TensorRT and onnxruntime-gpu are used when
# present (their tests and benchmark rows skip, saying why, when not). genorigin is installed without touching
# torch: pip install --no-deps -e . (no build isolation, so no index is needed), then only the missing
# dependencies, with torch pinned to the installed build. Offline, when pip cannot install, the source tree is
# put on PYTHONPATH instead and anything still missing shows up in the test report.
# Each part runs under `timeout` (limits plus kill grace: 585 s), so the whole check ends within 10 minutes
# (the parts need far less on an H100 when they work). Results: OUT_DIR/report.json and OUT_DIR/report.md
# (benchmarks/gpu_report.py), each part's log, pytest.xml, bench_kernels.json, bench_latency.json,
# bench_fast_gpu.json.
# Exit status: 2 when no CUDA GPU is usable (nothing else runs), 1 when a part or a test failed, 0 otherwise.
# GPU_CHECK_DRY_RUN=1 runs every part on a machine without a GPU (to check the pipeline; the GPU tests and
# benchmarks then skip or stop, and the report says DRY RUN; exit status 2).
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) && : >"$OUT/steps.tsv"
cd "$ROOT" || exit 1
export GENORIGIN_CACHE="$OUT/cache" HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

run() { # run NAME LIMIT_S COMMAND...: bounded by timeout, output in OUT/NAME.log, status in OUT/steps.tsv
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "gpu_check: $name (at most ${limit} s)"
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$OUT/steps.tsv"
  [ "$rc" -eq 0 ] || echo "gpu_check: $name exited $rc; see $OUT/$name.log"
  return "$rc"
}

# 1. A CUDA GPU visible to torch, or stop here.
run environment 20 "$PY" "$ROOT/benchmarks/gpu_env.py" "$OUT/env.json" ${GPU_CHECK_DRY_RUN:+--allow-cpu}
if [ $? -ne 0 ]; then
  echo "gpu_check: no usable CUDA GPU: $(tail -n 1 "$OUT/environment.log"); nothing was run" >&2
  exit 2
fi

# 2. genorigin into this Python without touching torch.
install() {
  local torch_pin missing
  torch_pin=$("$PY" -c 'import torch; print("torch==" + torch.__version__)')
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"; then
    echo "pip could not install genorigin (offline?); using the source tree on PYTHONPATH"
    return 3
  fi
  missing=$("$PY" "$ROOT/benchmarks/gpu_env.py" --missing)
  [ -z "$missing" ] || "$PY" -m pip install -q $missing --constraint <(echo "$torch_pin") || true
  "$PY" -c 'import genorigin.runtime.backends.gpu.torch_graph, genorigin.kernels.launch'
}
export -f install
export PY ROOT
if ! run install 60 bash -c install; then # an offline machine: import genorigin from the source tree
  shim="$OUT/pythonpath/genorigin"
  mkdir -p "$shim"
  ln -sfn "$ROOT"/src/genorigin/* "$shim/"
  for sub in export runtime kernels; do ln -sfn "$ROOT/$sub" "$shim/$sub"; done
  export PYTHONPATH="$OUT/pythonpath${PYTHONPATH:+:$PYTHONPATH}"
fi

# 3. Every GPU test, 4. the loss kernel against torch, 5. decision latency with and without the custom kernels.
run gpu_tests 170 "$PY" -m pytest -q -m "gpu or tensorrt" -p no:cacheprovider --continue-on-collection-errors \
  --junitxml="$OUT/pytest.xml" tests
run bench_kernels 70 "$PY" benchmarks/bench_kernels.py --out "$OUT/bench_kernels.json" --iters 20 --warmup 3
run bench_latency 115 "$PY" benchmarks/bench_latency.py --quick --out "$OUT/bench_latency.json" \
  --cache-dir "$OUT/engines"
# 6. The fast preset (the default decision) on every GPU backend: p50/p99 at batch 1, images/s at batch 64,
#    host syncs per step from the profiler, verdicts against the CPU run.
run bench_fast_gpu 120 "$PY" benchmarks/bench_fast_gpu.py --out "$OUT/bench_fast_gpu.json"

run large_models 600 bash benchmarks/gpu_large.sh "$OUT/large" # the 512 px decoder on every GPU backend
"$PY" benchmarks/gpu_report.py "$OUT"
