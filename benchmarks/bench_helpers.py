"""Helpers shared by the benchmark modules (a name apart from tests/conftest.py)."""
import pytest
import torch

from mstr_kernels.ops import BACKENDS, available_backends


def synchronized(fn, device):
    """`fn` followed by a device synchronize, so pytest-benchmark's wall clock times the work."""
    if device.type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result
    return run


def skip_unless_backend_runs(name, device):
    """Skip (with the reason) when backend `name` is not built here or not for `device`."""
    why = available_backends()[name]
    if why is None and device.type not in BACKENDS[name].devices:
        why = f"runs on {BACKENDS[name].devices}, not {device.type}"
    if why:
        pytest.skip(f"backend {name!r} unavailable: {why}")
