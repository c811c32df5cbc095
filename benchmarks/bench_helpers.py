"""Helpers shared by the benchmark modules (a name apart from tests/conftest.py)."""
import torch


def synchronized(fn, device):
    """`fn` followed by a device synchronize, so pytest-benchmark's wall clock times the work."""
    if device.type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result
    return run
