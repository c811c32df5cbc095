#!/usr/bin/env bash
# The GPU suite, one command on a CUDA machine (issue 8 item 5), from the repository root:
#   bash scripts/gpu_suite.sh [extra `mstr bench` arguments]
# 1. builds and installs the package with its CUDA extension (no downloads: --no-deps),
# 2. runs the op-level parity tests on CUDA for every backend (pytest; a plain script without it),
# 3. runs `mstr bench --device cuda` (op and model benchmarks) and writes <gpu>-<date>.json,
#    its plots in <gpu>-<date>/ and the log <gpu>-<date>.log into benchmarks/results/, or, when
#    $OUT is set (the device machine returns only what is under $OUT: at most 8 files, 2 folder
#    levels), straight into $OUT, so that a run killed at its time limit still returns what it
#    wrote; copy them into benchmarks/results/ and commit them.
# Where the tree is a copy without .git, set MSTR_BENCH_COMMIT to the commit it was taken from.
# GPU_SUITE_STEPS picks the steps (default "parity bench"; the build always runs): on an H100
# each takes minutes (the step times are in benchmarks/NOTES.md and the results' .log files);
# parity runs on 4 pytest-xdist workers where xdist is installed, to fit both in one 10-minute
# call (otherwise the parity step stops at half the time left and the benchmarks still run). The step "tune" runs benchmarks/triton_tune.py
# first and benchmarks the Triton backend with the knobs it found (MSTR_KERNELS_TRITON_TUNING;
# the results file records them under env.triton_tuning; commit them to TUNING afterwards).
# Each step has a time limit so that the whole stays under 10 minutes (GPU_SUITE_LIMIT_S, default
# 570; GPU_SUITE_PARITY_S for the parity step). Exit status: 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT_S=${GPU_SUITE_LIMIT_S:-570}
START=$SECONDS
status=0

STEM=$($PY -c "import torch; from mstr_kernels.bench.report import environment, results_stem; \
print(results_stem(environment(torch.device('cuda'))))") || { echo "no CUDA torch here"; exit 2; }
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/$STEM.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name (limit ${limit}s, $(( SECONDS - START ))s elapsed) ==="
  timeout --signal=INT --kill-after=20 "$limit" "$@"
  local rc=$?
  [ $rc -eq 0 ] || { echo "=== $name FAILED (exit $rc) ==="; status=1; }
  return $rc
}

echo "GPU suite: $STEM, $(date -u +%FT%TZ), commit ${MSTR_BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"

export MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
step "build and install" 300 $PY -m pip install --no-build-isolation --no-deps -e .
# Code runs from the source tree: make sure the extension sits there too.
$PY -c "import mstr_kernels._C" 2>/dev/null \
  || step "build the extension in place" 240 $PY setup.py build_ext --inplace
$PY -m mstr_kernels.cli info

STEPS=" ${GPU_SUITE_STEPS:-parity bench} "
left=$(( LIMIT_S - (SECONDS - START) ))
parity_limit=${GPU_SUITE_PARITY_S:-$([[ $STEPS == *" bench "* ]] && echo $(( left / 2 )) || echo $left)}
if [[ $STEPS != *" parity "* ]]; then
  echo "(parity step not selected)"
elif $PY -c "import pytest" 2>/dev/null; then
  # The op-level files: the parity suite (every backend and auto against the float64 loop, on
  # CUDA and the CPU), the backend-specific tests, the op API, the module
  # and the model. (Data and training tests need soundfile/PyAV, which GPU images may lack; CI
  # runs them.) No -x: one failure must not hide the others.
  # With pytest-xdist, 4 workers share the Triton compiles (tests that need most of the GPU
  # memory take a lock: the whole_gpu fixture); --durations tells where the time goes.
  parallel=$($PY -c "import xdist" 2>/dev/null && echo "-n 4 --dist load")
  step "parity suite on CUDA (pytest)" "$parity_limit" $PY -m pytest -q -p no:cacheprovider \
    --maxfail=25 --durations=20 $parallel tests/test_parity.py tests/test_parity_registry.py \
    tests/test_cuda_backend.py tests/test_triton_backend.py tests/test_reference.py \
    tests/test_op_api.py tests/test_errors.py tests/test_module.py tests/test_model.py \
    tests/test_cuda_build.py
else
  echo "pytest is not installed here: parity through scripts/gpu_parity.py"
  step "parity on CUDA (plain script)" "$parity_limit" $PY scripts/gpu_parity.py --device cuda
fi

if [[ $STEPS == *" tune "* ]]; then
  left=$(( LIMIT_S - (SECONDS - START) ))
  step "tune the Triton launch knobs" "$(( left * 2 / 5 ))" $PY benchmarks/triton_tune.py \
    --budget-s $(( left / 6 )) --json-out "$RESULTS/$STEM-triton-tuning.json" \
    && export MSTR_KERNELS_TRITON_TUNING="$RESULTS/$STEM-triton-tuning.json"
fi

[[ $STEPS == *" bench "* ]] || { echo "GPU suite done in $(( SECONDS - START ))s, status $status"; exit $status; }
left=$(( LIMIT_S - (SECONDS - START) ))
step "benchmarks" "$(( left > 60 ? left : 60 ))" $PY -m mstr_kernels.cli bench --device cuda \
  --budget 0.25 --json "$RESULTS/$STEM.json" --plots "$RESULTS/$STEM" "$@"

echo; echo "GPU suite done in $(( SECONDS - START ))s, status $status: $RESULTS/$STEM.json"
exit $status
