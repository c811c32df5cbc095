#!/usr/bin/env bash
# The package on the GPU machines' software (torch 2.11, Triton 3.6, Python 3.12), without a GPU:
# builds a clone into its own venv, compiles every Triton kernel for sm_90 (the static report)
# and runs the test suite. Triton 3.6's interpreter needs numpy<2.4 (README, Install).
#   bash scripts/check_old_torch.sh [python3.12]     (about 30 minutes on 2 cores)
set -euo pipefail
PYTHON=${1:-python3.12}
WORK=${CHECK_OLD_TORCH_DIR:-/tmp/mstr-old-torch}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$WORK" && mkdir -p "$WORK"
git clone -q "$ROOT" "$WORK/src"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q torch==2.11.0 "numpy<2.4" setuptools wheel ninja pybind11
"$PY" -m pip install -q scikit-learn tqdm safetensors transformers soundfile soxr av matplotlib \
  pytest pytest-benchmark hypothesis
cd "$WORK/src"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} "$PY" -m pip install -q --no-build-isolation \
  --no-deps -e .
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
"$PY" scripts/gpu_static_report.py --json "$WORK/static.json"
"$PY" -m pytest tests -q -p no:cacheprovider
