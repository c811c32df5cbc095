"""The op, forward and forward+backward, for every backend available on the device, against
the reference eager and full attention by SDPA (pytest-benchmark)."""
import pytest
import torch
import torch.nn.functional as F

import mstr_kernels
from mstr_kernels.bench.timing import synchronized
from mstr_kernels.ops import available_backends

SHAPE = dict(B=2, H=4, T=512, D=32)
P, LEVELS = 3, 4


def contenders():
    names = [n for n in available_backends()]
    return names + ["sdpa-full"]


def op(name):
    if name == "sdpa-full":
        return F.scaled_dot_product_attention
    return lambda q, k, v: mstr_kernels.fractal_attention(q, k, v, p=P, levels=LEVELS,
                                                          backend=name)


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("name", contenders())
def test_op(benchmark, device, require_backend, name, pass_):
    if name != "sdpa-full":
        require_backend(name, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    grad = pass_ == "fwd+bwd"
    q, k, v, dout = (torch.randn(SHAPE["B"], SHAPE["H"], SHAPE["T"], SHAPE["D"], device=device,
                                 dtype=dtype, requires_grad=grad and i < 3) for i in range(4))
    fn = op(name)
    if grad:
        def run():
            return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)
    else:
        def run():
            with torch.no_grad():
                return fn(q, k, v)
    benchmark.extra_info.update(SHAPE, dtype=str(dtype), p=P, levels=LEVELS, device=device.type)
    result = benchmark(synchronized(run, device))
    out = result[0] if grad else result
    assert torch.isfinite(out).all()
