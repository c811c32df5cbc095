import os
import sys

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors under its interpreter; the variable must be set
# before triton or mstr_kernels is imported.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # float64_loop and helpers

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none visible to torch)")


def pytest_report_header(config):
    return (f"torch {torch.__version__}, CUDA available: {CUDA}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}")
