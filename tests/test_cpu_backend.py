"""The fused `cpu` backend (csrc/cpu) against the independent float64 loop and the reference."""
import os
import subprocess
import sys

import pytest
import torch

import mstr_kernels
from mstr_kernels.ops import BACKENDS, select_backend
from parity import SPEC_BOUND, f64_outputs, qkv_views, random_lengths, rel_err

CPU_MISSING = BACKENDS["cpu"].unavailable_reason()
pytestmark = pytest.mark.skipif(CPU_MISSING is not None,
                                reason=f"the cpu backend is not built: {CPU_MISSING}")


def fused(q, k, v, **kw):
    return mstr_kernels.fractal_attention(q, k, v, backend="cpu", **kw)


def reference_grads(q, k, v, dout, **kw):
    """Output and (dq, dk, dv) of the reference backend in float64 (PyTorch's autograd)."""
    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, backend="reference", **kw)
    return out.detach(), torch.autograd.grad(out, leaves, dout.double())


def fused_grads(q, k, v, dout, **kw):
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    out = fused(*leaves, **kw)
    return out.detach(), torch.autograd.grad(out, leaves, dout)


def random_cases(n, seed):
    """Seeded shapes over the SPEC range: tails, T < p, several tiles, D off the vector width."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n):
        p = int(torch.randint(2, 9, (1,), generator=g))
        max_levels = {2: 4, 3: 3, 4: 2}.get(p, 2)
        levels = int(torch.randint(1, max_levels + 1, (1,), generator=g))
        tile = p ** levels
        T = int(torch.randint(1, 2 * tile + p + 1, (1,), generator=g))
        B = int(torch.randint(1, 4, (1,), generator=g))
        H = int(torch.randint(1, 3, (1,), generator=g))
        D = int(torch.randint(1, 40, (1,), generator=g))
        cases.append((B, H, T, D, p, levels, bool(torch.randint(0, 2, (1,), generator=g)),
                      int(torch.randint(0, 2**31 - 1, (1,), generator=g))))
    return cases


@pytest.mark.parametrize("layout", ["projection", "contiguous"])
@pytest.mark.parametrize("case", random_cases(12, seed=0))
def test_forward_and_grads_match_float64(case, layout):
    B, H, T, D, p, levels, use_lengths, seed = case
    g = torch.Generator().manual_seed(seed)
    q, k, v = qkv_views(B, H, T, D, torch.float64, generator=g, layout=layout)
    lengths = random_lengths(B, T, generator=g) if use_lengths else None
    dout = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    kw = dict(p=p, levels=levels, lengths=lengths)
    out, grads = fused_grads(q, k, v, dout, **kw)
    expected = f64_outputs(q, k, v, p, levels, lengths)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12 * max(1.0, float(expected.abs().max())))
    ref_out, ref_grads = reference_grads(q, k, v, dout, **kw)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, rtol=0, atol=1e-11 * max(1.0, float(want.abs().max())))
    # float32 through the same kernel stays within SPEC's bound, forward and gradients
    out32, grads32 = fused_grads(q.float(), k.float(), v.float(), dout.float(), **kw)
    for got, want in zip((out32,) + grads32, (expected,) + ref_grads):
        if want.norm() > 0:
            assert rel_err(got, want) < SPEC_BOUND[torch.float32]
        else:
            assert torch.count_nonzero(got) == 0


@pytest.mark.parametrize("p,levels,D", [(3, 4, 64), (2, 10, 3), (8, 3, 1), (4, 5, 256), (5, 2, 17)])
def test_parameter_extremes(p, levels, D):
    """p**levels up to 1024 and D from 1 to 256, with a tail tile and a length mid-tile."""
    g = torch.Generator().manual_seed(p * 100 + levels)
    T = p ** levels + p + 1
    q, k, v = qkv_views(2, 1, T, D, torch.float64, generator=g)
    lengths = torch.tensor([T, p ** levels - 2])
    dout = torch.randn(2, 1, T, D, generator=g, dtype=torch.float64)
    kw = dict(p=p, levels=levels, lengths=lengths)
    out, grads = fused_grads(q, k, v, dout, **kw)
    ref_out, ref_grads = reference_grads(q, k, v, dout, **kw)
    for got, want in zip((out,) + grads, (ref_out,) + ref_grads):
        assert rel_err(got, want) < 1e-12


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(7)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 11, 3, torch.float64, generator=g))
    lengths = torch.tensor([11, 5])
    assert torch.autograd.gradcheck(
        lambda q, k, v: fused(q, k, v, p=2, levels=3, lengths=lengths), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_reference_error(dtype):
    """Flash-attention style: the kernel's error against float64 stays within a small multiple of
    the reference backend's error in the same dtype, and within SPEC's bound."""
    g = torch.Generator().manual_seed(11)
    B, H, T, D, p, levels = 2, 2, 95, 24, 3, 3
    q, k, v = qkv_views(B, H, T, D, dtype, generator=g)
    lengths = torch.tensor([95, 40])
    dout = torch.randn(B, H, T, D, generator=g).to(dtype)
    kw = dict(p=p, levels=levels, lengths=lengths)
    out, grads = fused_grads(q, k, v, dout, **kw)
    assert out.dtype == dtype and all(x.dtype == dtype for x in grads)
    exact_out, exact_grads = reference_grads(q, k, v, dout, **kw)  # float64 of the same inputs
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    ref_out = mstr_kernels.fractal_attention(*leaves, backend="reference", **kw)
    ref_grads = torch.autograd.grad(ref_out, leaves, dout)
    ref_out = ref_out.detach()
    for got, ref, exact in zip((out,) + grads, (ref_out,) + ref_grads, (exact_out,) + exact_grads):
        err, ref_err = rel_err(got, exact), rel_err(ref, exact)
        assert err < SPEC_BOUND[dtype]
        assert err <= 2 * ref_err + 1e-6, (err, ref_err)


def test_padding_exact_zeros_with_poisoned_memory():
    """NaN in the padding frames, in dout's padding and in the memory between strided views
    changes nothing: outputs and gradients are finite, exactly 0 in the padding."""
    g = torch.Generator().manual_seed(3)
    B, H, T, D = 3, 2, 29, 6
    buf = torch.full((B, T, 4, H, D + 3), float("nan"))
    q, k, v = (buf[:, :, i, :, :D].transpose(1, 2) for i in range(3))
    clean = qkv_views(B, H, T, D, generator=g)
    lengths = torch.tensor([29, 0, 13])
    for view, src in zip((q, k, v), clean):
        view.copy_(src)
    for b, n in enumerate(lengths.tolist()):
        for view in (q, k, v):
            view[b, :, n:] = float("nan")
    dout = torch.randn(B, H, T, D, generator=g)
    for b, n in enumerate(lengths.tolist()):
        dout[b, :, n:] = float("nan")
    out, grads = fused_grads(q, k, v, dout, p=3, levels=2, lengths=lengths)
    clean_out, clean_grads = fused_grads(*clean, dout.nan_to_num(0.0), p=3, levels=2,
                                         lengths=lengths)
    for got, want in zip((out,) + grads, (clean_out,) + clean_grads):
        assert torch.isfinite(got).all()
        assert torch.equal(got, want)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(got[b, :, n:] == 0)
    assert torch.count_nonzero(out[2, :, :13]) > 0


def test_stride_zero_dout_and_permuted_inputs():
    g = torch.Generator().manual_seed(5)
    B, H, T, D = 2, 3, 20, 5
    base = torch.randn(D, T, H, B, generator=g, dtype=torch.float64)
    q = base.permute(3, 2, 1, 0)  # no dimension has stride 1 in D's place
    _, k, v = (x.contiguous() for x in qkv_views(B, H, T, D, torch.float64, generator=g))
    dout = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64).expand(B, H, T, D)
    out, grads = fused_grads(q, k, v, dout, p=2, levels=3)
    ref_out, ref_grads = reference_grads(q, k, v, dout.contiguous(), p=2, levels=3)
    for got, want in zip((out,) + grads, (ref_out,) + ref_grads):
        assert rel_err(got, want) < 1e-12
    assert out.transpose(1, 2).is_contiguous() and grads[0].transpose(1, 2).is_contiguous()


def test_deterministic_and_thread_count_independent():
    g = torch.Generator().manual_seed(9)
    B, H, T, D = 3, 4, 100, 32
    q, k, v = qkv_views(B, H, T, D, generator=g)
    dout = torch.randn(B, H, T, D, generator=g)
    lengths = torch.tensor([100, 61, 7])
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            out, grads = fused_grads(q, k, v, dout, p=3, levels=3, lengths=lengths)
            results.append((out,) + grads)
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["projection", "contiguous"])
@pytest.mark.parametrize("D,scale", [(64, None), (32, -0.7), (16, 2.5)])
def test_float32_whole_vector_rows_and_any_scale(layout, D, scale):
    """Rows of whole vectors take the kernel's direct (streamed) output path; a negative scale
    flips which score is the softmax's maximum; magnified inputs make that matter (and make the
    gradients ill-conditioned, so they are held to the float32 reference's own error)."""
    g = torch.Generator().manual_seed(D)
    B, H, T, p, levels = 3, 2, 2 * 81 + 5, 3, 4
    q, k, v = qkv_views(B, H, T, D, generator=g, layout=layout)
    q, k = q * 4, k * 4
    lengths = torch.tensor([T, 0, 100])
    dout = torch.randn(B, H, T, D, generator=g)
    kw = dict(p=p, levels=levels, lengths=lengths, scale=scale)
    out, grads = fused_grads(q, k, v, dout, **kw)
    expected = f64_outputs(q, k, v, p, levels, lengths, scale)
    assert rel_err(out, expected) < SPEC_BOUND[torch.float32]
    _, exact_grads = reference_grads(q, k, v, dout, **kw)
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    ref_out = mstr_kernels.fractal_attention(*leaves, backend="reference", **kw)
    ref_grads = torch.autograd.grad(ref_out, leaves, dout)  # float32 reference
    for got, ref, exact in zip(grads, ref_grads, exact_grads):
        assert rel_err(got, exact) <= 2 * rel_err(ref, exact) + 1e-6
    for got in (out,) + grads:
        assert torch.all(got[1] == 0) and torch.all(got[2, :, 100:] == 0)


def test_large_magnitudes_stay_finite():
    g = torch.Generator().manual_seed(4)
    q, k, v = qkv_views(1, 2, 30, 8, generator=g)
    out, grads = fused_grads(q * 1e4, k * 1e4, v, torch.ones(1, 2, 30, 8), p=3, levels=3)
    assert all(torch.isfinite(x).all() for x in (out,) + grads)


def test_auto_picks_cpu_for_cpu_tensors():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        q = torch.zeros(1, 1, 4, 4, dtype=dtype)
        assert select_backend("auto", q, 3, 2).name == "cpu"


def test_opcheck_and_compile_fullgraph_inductor():
    g = torch.Generator().manual_seed(6)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 14, 8, generator=g))
    lengths = torch.tensor([14, 9], dtype=torch.int32)
    torch.library.opcheck(torch.ops.mstr_kernels.fractal_attention_fwd.default,
                          (q, k, v, lengths, 3, 2, 0.5, "cpu"))
    torch._dynamo.reset()

    def f(q, k, v):
        return fused(q, k, v, p=3, levels=2, lengths=lengths) * 2.0

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(q, k, v)
    expected = f(q, k, v)
    assert torch.equal(out, expected)
    dout = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), dout),
                    torch.autograd.grad(expected, (q, k, v), dout)):
        assert torch.equal(a, b)


CHECK_VARIANT = """
import sys, torch
sys.path.insert(0, {tests!r})
import mstr_kernels
from parity import f64_outputs, qkv_views, rel_err
g = torch.Generator().manual_seed(1)
q, k, v = qkv_views(2, 2, 40, 13, torch.float32, generator=g)
lengths = torch.tensor([40, 17])
out = mstr_kernels.fractal_attention(q, k, v, p=3, levels=3, lengths=lengths, backend="cpu")
print(torch.backends.cpu.get_cpu_capability(), rel_err(out, f64_outputs(q, k, v, 3, 3, lengths)))
"""


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_instruction_set_variants(capability):
    """Each compiled variant (chosen at run time from ATEN_CPU_CAPABILITY and the CPU) is right."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    script = CHECK_VARIANT.format(tests=os.path.dirname(__file__))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    reported, err = run.stdout.split()
    if reported.lower() != capability:
        pytest.skip(f"this CPU cannot run the {capability} variant (ATen reports {reported})")
    assert float(err) < SPEC_BOUND[torch.float32]
