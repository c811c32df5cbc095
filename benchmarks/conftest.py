"""pytest-benchmark suite, apart from the test suite: `pytest benchmarks` (small enough for a
CPU; `--bench-device cuda` runs them on a GPU, the model step at the paper's size)."""
import pytest
import torch

from mstr_kernels.ops import BACKENDS, available_backends


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", choices=["cpu", "cuda"],
                     help="device for the op and model benchmarks")


@pytest.fixture(scope="session")
def device(request):
    name = request.config.getoption("--bench-device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda: no CUDA GPU is visible to torch")
    return torch.device(name)


@pytest.fixture(scope="session")
def require_backend():
    """`require_backend(name, device)` skips (with the reason) when backend `name` is not built
    here or not for `device`."""
    def check(name, device):
        why = available_backends()[name]
        if why is None and device.type not in BACKENDS[name].devices:
            why = f"runs on {BACKENDS[name].devices}, not {device.type}"
        if why:
            pytest.skip(f"backend {name!r} unavailable: {why}")
    return check
