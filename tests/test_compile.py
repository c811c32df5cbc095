"""torch.compile(fullgraph=True) with inductor, the path users get (issue 15): the op,
MultiScaleAttention and MSTR with the default backend='auto' and each CPU backend, forward and
backward; range checks hold compiled as eagerly; and the first call of a fresh process."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mstr_kernels
from mstr_kernels import MultiScaleAttention
from mstr_kernels.models import MSTR, MSTRConfig
from mstr_kernels.ops import BACKENDS, available_backends
from parity import qkv_views


def compile_backends():
    """auto and every backend that runs CPU tensors here (triton: under its interpreter)."""
    return ["auto"] + [n for n, why in available_backends().items()
                       if why is None and "cpu" in BACKENDS[n].devices]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", compile_backends())
def test_op_compiles_fullgraph_with_inductor(backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 12, 4, generator=g))
    lengths = torch.tensor([12, 7])

    def f(q, k, v, lengths):
        return mstr_kernels.fractal_attention(q, k, v, p=3, levels=2, lengths=lengths,
                                              backend=backend).sum(dim=-1)

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v, lengths)
    expected = f(q, k, v, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    dout = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), dout),
                    torch.autograd.grad(expected, (q, k, v), dout)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", compile_backends())
def test_lengths_out_of_range_refused_compiled_as_eagerly(backend):
    q, k, v = qkv_views(2, 1, 20, 4)

    def f(q, k, v, lengths):
        return mstr_kernels.fractal_attention(q, k, v, p=3, levels=2, lengths=lengths,
                                              backend=backend)

    compiled = torch.compile(f, fullgraph=True)
    compiled(q, k, v, torch.tensor([20, 3]))
    for bad in ([25, 3], [20, -3], [2 ** 32 + 3, 3]):
        lengths = torch.tensor(bad)
        with pytest.raises(ValueError, match="lengths contains .* out of range"):
            f(q, k, v, lengths)
        with pytest.raises(ValueError, match="lengths contains .* out of range"):
            compiled(q, k, v, lengths)


def test_module_compiles_with_defaults_and_refuses_mask_holes():
    torch.manual_seed(0)
    module = MultiScaleAttention(8, 2, p=3, levels=2)
    x = torch.randn(2, 9, 8, requires_grad=True)
    mask = torch.arange(9)[None, :] >= torch.tensor([9, 4])[:, None]
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(x, key_padding_mask=mask)[0]
    expected = module(x, key_padding_mask=mask)[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (ex,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(gx, ex, rtol=1e-5, atol=1e-5)
    holes = mask.clone()
    holes[1, 2] = True
    for call in (module, compiled):
        with pytest.raises(ValueError, match="key_padding_mask must mark padding only at the end"):
            call(x, key_padding_mask=holes)


def test_mstr_compiles_with_defaults():
    torch.manual_seed(0)
    model = MSTR(MSTRConfig(feature_dim=16, num_classes=4, num_heads=2)).eval()
    x = torch.randn(2, 20, 16)
    lengths = torch.tensor([20, 13])
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x, lengths=lengths)
    expected = model(x, lengths=lengths)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    grads_eager = torch.autograd.grad(expected.sum(), list(model.parameters()))
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


FRESH_PROCESS = textwrap.dedent("""
    import torch
    import mstr_kernels
    from mstr_kernels.models import MSTR, MSTRConfig

    # The very first call of each backend is a compiled one (no eager call before it).
    model = MSTR(MSTRConfig(feature_dim=16, num_classes=4, num_heads=2))
    x, lengths = torch.randn(2, 10, 16), torch.tensor([10, 6])
    loss = torch.compile(model, fullgraph=True)(x, lengths=lengths).sum()
    loss.backward()
    for backend in {backends!r}:
        q = torch.randn(1, 2, 9, 4, requires_grad=True)
        f = torch.compile(lambda q: mstr_kernels.fractal_attention(
            q, q, q, p=3, levels=2, lengths=torch.tensor([7]), backend=backend), fullgraph=True)
        f(q).sum().backward()
        assert torch.isfinite(q.grad).all()
    print("fresh-process compile ok")
""")


def test_first_call_of_a_fresh_process_is_compiled():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(mstr_kernels.__file__)), os.environ.get("PYTHONPATH", "")]))
    script = FRESH_PROCESS.format(backends=compile_backends()[1:])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fresh-process compile ok" in result.stdout
