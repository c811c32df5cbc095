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


@pytest.fixture
def whole_gpu():
    """For tests that need most of the GPU's memory: held by one test at a time, also across
    pytest-xdist workers (scripts/gpu_suite.sh runs the parity tests in parallel)."""
    import tempfile

    from filelock import FileLock  # a dependency of torch
    with FileLock(os.path.join(tempfile.gettempdir(), "mstr-kernels-whole-gpu.lock")):
        if CUDA:
            torch.cuda.empty_cache()
        yield


@pytest.fixture(scope="session")
def fake_corpora(tmp_path_factory):
    """IEMOCAP, MELD and CREMA-D folders laid out like the real ones (fake_corpora.py) and a tiny
    random HuBERT, built once per test session: {"roots", "written", "hubert"}."""
    from fake_corpora import make_cremad, make_iemocap, make_meld, make_tiny_hubert
    root = tmp_path_factory.mktemp("fake_corpora")
    roots = {"iemocap": root / "IEMOCAP_full_release", "meld": root / "MELD.Raw",
             "cremad": root / "AudioWAV_parent"}
    written = {"iemocap": make_iemocap(roots["iemocap"]), "meld": make_meld(roots["meld"]),
               "cremad": make_cremad(roots["cremad"])}
    make_tiny_hubert(root / "hubert")
    return {"roots": roots, "written": written, "hubert": root / "hubert"}
