#!/usr/bin/env bash
# One short GPU window that settles the specialised CUDA kernels (issue 14 item 5), from the
# repository root on a CUDA machine:   bash scripts/gpu_window.sh
# In at most ~8 minutes (GPU_WINDOW_LIMIT_S, default 480), every step under `timeout` so that a
# failing or hanging step cannot eat the window:
#   1. build the extension for this GPU only (TORCH_CUDA_ARCH_LIST=9.0a on an H100/H200) with
#      all cores, in place (`pip install --no-build-isolation --no-deps -e .`; no registry);
#   2. the static report on the freshly built cubins (scripts/gpu_static_report.py);
#   3. parity against the float64 loop: every specialised configuration
#      (tests/test_cuda_specialised.py: partial tiles, lengths, NaN-filled output memory) and
#      every GPU backend (scripts/gpu_parity.py);
#   3b. packed sequences (step `packed`, ~60 s): fractal_attention_varlen's CUDA cases
#      (tests/test_varlen.py -k cuda: the cuda backend's work list through the specialised and the
#      general kernels, and auto) and benchmarks/packed_vs_padded.py on the cuda backend at the
#      paper's layer size (packed-vs-padded.json);
#   4. the op benchmark (mstr_kernels.bench) at B=32 H=16 D=64 bf16 p=3 levels=4 and
#      T = 4096, 150, 224, 326, 1024: cuda, triton and SDPA (flash) with the same inputs;
#   4b. issue 15's training figures (step `training`): the op's host overhead per call against
#      SDPA's on CUDA (benchmarks/host_overhead.py), the CUDA-graph capture and no-host-read
#      tests on CUDA, and the model rows (`mstr bench --no-op`: MSTR[triton] and vanilla, eager
#      and compiled, B=32 and B=8, GPU busy time beside wall time), saved row by row;
#   5. an alternating A/B of the forward and the backward at the headline shape
#      (benchmarks/cuda_variants_ab.py, rounds interleaved in one process): the specialised
#      kernels, their loads and stores alone, their arithmetic alone, the erf-form GELU, the
#      general CUDA kernels and triton, each against the memory floor (ab.json);
#   6. ncu on one launch of each kernel (--clock-control none): DRAM bytes read and written,
#      warp instructions, issue-active percentage, warp stall reasons;
#   7. a results file <gpu>-<date>-window.json under benchmarks/results/ and a short table,
#      printed last (scripts/gpu_window_summary.py); the details in <stem>/ beside it, or, when
#      $OUT is set (the device tool returns at most 8 files from there), in <stem>.tar.gz.
# GPU_WINDOW_STEPS selects steps (default "build report parity packed bench training ab ncu").
# GPU_WINDOW_DRY=1 runs only what needs no GPU (the summary of whatever is there), for checking.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT_S=${GPU_WINDOW_LIMIT_S:-480}
STEPS=" ${GPU_WINDOW_STEPS:-build report parity packed bench training ab ncu} "
START=$SECONDS
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
STEM=$($PY -c "import torch; from mstr_kernels.bench.report import environment, results_stem; \
print(results_stem(environment(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))))" \
  2>/dev/null || echo "unknown-$(date -u +%F)")-window
WORK="$RESULTS/$STEM"
mkdir -p "$WORK"
exec > >(tee -a "$WORK/window.log") 2>&1
echo "GPU window: $STEM, $(date -u +%FT%TZ), commit ${MSTR_BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}"

left() { echo $(( LIMIT_S - (SECONDS - START) )); }
# step NAME LIMIT_SECONDS COMMAND...: runs with min(LIMIT, time left - 20 s kept for the summary)
step() {
  local name=$1 limit=$2; shift 2
  local avail=$(( $(left) - 20 ))
  (( limit > avail )) && limit=$avail
  if (( limit < 5 )); then
    echo "=== $name SKIPPED (window spent) ==="; echo "$name skipped" >> "$WORK/steps.txt"
    return 1
  fi
  echo; echo "=== $name (limit ${limit}s, $(( SECONDS - START ))s elapsed) ==="
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "$name $rc" >> "$WORK/steps.txt"
  [ $rc -eq 0 ] || echo "=== $name FAILED (exit $rc) ==="
  return $rc
}
: > "$WORK/steps.txt"
want() { [[ $STEPS == *" $1 "* ]] && [ "${GPU_WINDOW_DRY:-0}" != 1 ]; }

if [ "${GPU_WINDOW_DRY:-0}" != 1 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"
fi

if want build; then
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; c = torch.cuda.get_device_capability(); print('%d.%d%s' % (c[0], c[1], 'a' if c[0] == 9 else ''))")}
  export MSTR_KERNELS_FORCE_CUDA=1
  step build 240 $PY -m pip install --no-build-isolation --no-deps -e . \
    || step "build in place" 200 $PY setup.py build_ext --inplace
fi

want report && step "static report" 60 $PY scripts/gpu_static_report.py --no-triton \
  --json "$WORK/static.json"

if want parity; then
  if $PY -c "import pytest" 2>/dev/null; then
    step "parity: specialised configurations" 100 $PY -m pytest -q -p no:cacheprovider \
      --maxfail=10 tests/test_cuda_specialised.py
    # float16 keeps the erf-form GELU where GELU' is small (session 9), on every CUDA backend
    step "parity: GELU's form" 40 $PY -m pytest -q -p no:cacheprovider tests/test_adversarial.py \
      -k "gelus_derivative and cuda"
  else
    step "parity: specialised configurations" 100 $PY tests/test_cuda_specialised.py
  fi
  step "parity: every GPU backend" 90 $PY scripts/gpu_parity.py --device cuda
fi

if want packed; then
  step "packed: varlen parity on CUDA" 35 $PY -m pytest -q -p no:cacheprovider -rs \
    tests/test_varlen.py -k cuda
  # The paper's layer (F=1024, 16 heads: D=64, 4 layers), so that the steps are GPU work, not
  # launches; float32, 96 utterances, 3 timed rounds.
  step "packed: packed vs padded training" 25 $PY benchmarks/packed_vs_padded.py --device cuda \
    --backend cuda --feature-dim 1024 --heads 16 --layers 4 --repeats 3 \
    --json "$WORK/packed-vs-padded.json"
fi

want bench && step "benchmark vs SDPA" 110 $PY -m mstr_kernels.cli bench --device cuda \
  --T 4096 150 224 326 1024 --B 32 --H 16 --D 64 --dtype bfloat16 --p 3 --levels 4 \
  --contenders cuda triton sdpa-full --no-model --budget 0.2 --json "$WORK/bench.json"

if want training; then
  step "host overhead vs SDPA" 30 $PY benchmarks/host_overhead.py --device cuda \
    --backends auto triton cuda --rounds 3 --budget 0.2 --json "$WORK/host-overhead.json"
  step "CUDA graph capture, no host reads" 60 $PY -m pytest -q -p no:cacheprovider \
    tests/test_host_path.py -k "cuda_graph or no_host_read"
  # Compile mode "default": max-autotune's GEMM search would not fit the window.
  step "model training step" 150 $PY -m mstr_kernels.cli bench --device cuda --no-op \
    --contenders triton --compile-mode default --budget 0.1 --json "$WORK/model.json"
fi

if want ab; then  # rounds interleaved, so that clock and thermal drift hit every variant alike
  step "A/B of the kernel variants" 90 $PY benchmarks/cuda_variants_ab.py --kinds fwd bwd \
    --rounds 3 --json "$WORK/ab.json"
fi

if want ncu; then
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  if [ -z "$NCU" ]; then
    echo "ncu not found: step skipped"; echo "ncu missing" >> "$WORK/steps.txt"
  else
    : > "$WORK/ncu.txt"
    METRICS=dram__bytes_read.sum,dram__bytes_write.sum,smsp__inst_executed.sum
    METRICS+=,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum
    for target in cuda:fwd:0 cuda:fwd:1 cuda:bwd:0 cuda:bwd:1 triton:fwd:0 triton:bwd:0; do
      IFS=: read -r backend kind general <<< "$target"
      echo "### ncu-$backend-$kind-general$general" >> "$WORK/ncu.txt"
      MSTR_KERNELS_CUDA_GENERAL=$general step "ncu $backend $kind general=$general" 40 "$NCU" \
        --clock-control none -k regex:fractal --launch-skip 2 --launch-count 1 \
        --metrics "$METRICS" --section WarpStateStats --csv --page raw \
        $PY benchmarks/profile_op.py --backend "$backend" --kind "$kind" --calls 3 \
        >> "$WORK/ncu.txt"
    done
  fi
fi

$PY scripts/gpu_window_summary.py "$WORK" --json "$RESULTS/$STEM.json"
if [ -n "${OUT:-}" ]; then
  # The device tool returns at most 8 files from $OUT: the summary and one archive of $WORK
  # (unpack it into benchmarks/results/ to commit the details).
  echo "GPU window done in $(( SECONDS - START ))s: $RESULTS/$STEM.json (details in $STEM.tar.gz)"
  sleep 1  # let tee write the last lines of window.log
  tar -czf "$RESULTS/$STEM.tar.gz" -C "$RESULTS" "$STEM" && rm -rf "$WORK"
else
  echo "GPU window done in $(( SECONDS - START ))s: $RESULTS/$STEM.json (details in $WORK/)"
fi
