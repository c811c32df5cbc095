#!/usr/bin/env bash
# Nsight Compute reports of the fused kernels at the benchmark shape, one call on a CUDA machine:
#   bash benchmarks/gpu_profile.sh [backend:kind ...]     (default: every backend and kind)
# Assumes the package is built (scripts/gpu_suite.sh or `pip install --no-build-isolation
# --no-deps -e .`). Writes <backend>-<kind>.txt (ncu's text report: speed of light, memory,
# occupancy, warp states, instruction mix) into $OUT, else benchmarks/results/profile/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/results/profile}
mkdir -p "$DEST"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 2; }
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(triton:fwd triton:bwd cuda:fwd cuda:bwd)
for target in "${TARGETS[@]}"; do
  backend=${target%%:*}; kind=${target##*:}
  echo "=== $backend $kind ==="
  timeout 150 "$NCU" --clock-control none -k regex:fractal --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section LaunchStats --section WarpStateStats --section SchedulerStats \
    --section InstructionStats --section ComputeWorkloadAnalysis \
    $PY benchmarks/profile_op.py --backend "$backend" --kind "$kind" \
    > "$DEST/$backend-$kind.txt" 2>&1
  echo "exit $?"
  grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Executed Ipc Active|L1/TEX Hit|L2 Hit|Block Limit|Dynamic Shared|Grid Size|Stall" \
    "$DEST/$backend-$kind.txt" | head -40
done
