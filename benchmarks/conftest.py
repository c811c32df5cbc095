"""pytest-benchmark suite, apart from the test suite: `pytest benchmarks` (small enough for a
CPU; `--bench-device cuda` runs them on a GPU, the model step at the paper's size)."""
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
