"""pytest-benchmark suite, apart from the test suite: `pytest benchmarks` (small enough for a
CPU; on a GPU machine the same sizes run on CUDA with `--bench-device cuda`)."""
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", choices=["cpu", "cuda"],
                     help="device for the op and model benchmarks")


@pytest.fixture(scope="session")
def device(request):
    name = request.config.getoption("--bench-device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda: no CUDA GPU is visible to torch")
    return torch.device(name)


def synchronized(fn, device):
    """`fn` followed by a device synchronize, so pytest-benchmark's wall clock times the work."""
    if device.type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result
    return run
