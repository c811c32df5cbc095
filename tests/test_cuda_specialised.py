"""The CUDA forward and backward specialised on (p, levels, D) on a GPU: what backend="cuda"
runs for the configurations they cover, against the float64 loop and float64 autograd of the
reference (fresh random inputs, a partial last tile, `lengths`, outputs in NaN-filled memory).
Without a GPU, the same tile code is tested on the host (test_cuda_tile_on_host.py). Also runs as a script where pytest is missing
(scripts/gpu_window.sh): `python tests/test_cuda_specialised.py`.
"""
import math
import sys

import torch

import mstr_kernels
from cuda_spec_configs import ITEMSIZE, SPEC_BWD_CASES, SPEC_CASES, SpecConfig
from float64_loop import fractal_attention_f64
from parity import SPEC_BOUND, rel_err

try:
    import pytest
except ImportError:  # the script path below
    pytest = None


def _inputs(B, H, T, D, dtype, lengths, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(B, T, 3, H, D, device="cuda", generator=g).to(dtype)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device="cuda")
    return q, k, v, lens


def _poison_allocator(nbytes):
    """Fill freed cached memory with NaN, so that an output the kernel fails to write shows."""
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda")


def check_case(p, levels, D, dtype):
    F = SpecConfig(ITEMSIZE[dtype], p, levels, D).F
    B, H, T = 2, 3, 2 * F + F // 2 + 1
    lengths = [T, max(1, F + F // 3)]
    q, k, v, lens = _inputs(B, H, T, D, dtype, lengths, seed=p * 1000 + levels * 100 + D)
    _poison_allocator(B * H * T * D * q.element_size())
    out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, lengths=lens,
                                         backend="cuda")
    ref = fractal_attention_f64(*(x.double().cpu() for x in (q, k, v)), p, levels,
                                lens.cpu(), 1.0 / math.sqrt(D))
    err = rel_err(out, ref)
    assert not torch.isnan(out).any(), "NaN in the output"
    assert err < SPEC_BOUND[dtype], f"error {err:.2e} > {SPEC_BOUND[dtype]:.0e}"
    assert (out[1, :, lengths[1]:] == 0).all(), "padding frames not zero"
    return err


def check_backward_case(p, levels, D, dtype):
    from mstr_kernels.ops.reference import fractal_attention_reference
    F = SpecConfig(ITEMSIZE[dtype], p, levels, D, "bwd").F
    B, H, T = 2, 3, 2 * F + F // 2 + 1
    lengths = [T, max(1, F + F // 3)]
    q, k, v, lens = _inputs(B, H, T, D, dtype, lengths, seed=p * 1000 + levels * 100 + D + 7)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, p=p, levels=levels, lengths=lens,
                                         backend="cuda")
    dout = torch.randn(out.shape, device="cuda", dtype=torch.float64)
    _poison_allocator(3 * B * H * T * D * q.element_size())
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))
    ref_leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = fractal_attention_reference(*ref_leaves, lens, p, levels, 1.0 / math.sqrt(D))
    want = torch.autograd.grad(ref, ref_leaves, dout)
    errs = []
    for name, g, w in zip(("dq", "dk", "dv"), grads, want):
        err = rel_err(g, w)
        assert not torch.isnan(g).any(), f"NaN in {name}"
        assert err < SPEC_BOUND[dtype], f"{name}: error {err:.2e} > {SPEC_BOUND[dtype]:.0e}"
        assert (g[1, :, lengths[1]:] == 0).all(), f"{name}: padding frames not zero"
        errs.append(err)
    return max(errs)


def check_dispatch():
    q, k, v, _ = _inputs(2, 4, 300, 64, torch.bfloat16, None, seed=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        mstr_kernels.fractal_attention(q, k, v, p=3, levels=4, backend="cuda")
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    assert any("fractal_spec_fwd_kernel" in n for n in names), sorted(names)[:20]
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, p=3, levels=4, backend="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    assert any("fractal_spec_bwd_kernel" in n for n in names), sorted(names)[:20]


def check_variants():
    """The A/B variants (MSTR_KERNELS_CUDA_VARIANT, read at every call): memory copies each
    input row to its output row, gelu-erf is correct, arithmetic runs, other inputs are refused
    by name, and unsetting the variable gives the full kernel back."""
    import os
    from mstr_kernels.ops import backends
    module = backends.get_backend("cuda").module()
    T, lengths = 300, [300, 130]
    q, k, v, lens = _inputs(2, 4, T, 64, torch.bfloat16, lengths, seed=3)
    dout = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)
    scale = 0.125
    ref = fractal_attention_f64(*(x.double().cpu() for x in (q, k, v)), 3, 4, lens.cpu(), scale)
    try:
        os.environ["MSTR_KERNELS_CUDA_VARIANT"] = "memory"
        out = module.fractal_attention_fwd(q, k, v, lens, 3, 4, scale)
        grads = module.fractal_attention_bwd(dout, q, k, v, lens, 3, 4, scale)
        for got, src in zip((out, *grads), (q, q, k, v)):
            want = src.clone()
            want[1, :, lengths[1]:] = 0
            assert torch.equal(got, want), "memory variant: not the input rows"
        os.environ["MSTR_KERNELS_CUDA_VARIANT"] = "gelu-erf"
        out = module.fractal_attention_fwd(q, k, v, lens, 3, 4, scale)
        assert rel_err(out, ref) < SPEC_BOUND[torch.bfloat16]
        os.environ["MSTR_KERNELS_CUDA_VARIANT"] = "arithmetic"
        module.fractal_attention_fwd(q, k, v, lens, 3, 4, scale)
        module.fractal_attention_bwd(dout, q, k, v, lens, 3, 4, scale)
        torch.cuda.synchronize()
        try:
            module.fractal_attention_fwd(q.float(), k.float(), v.float(), lens, 3, 4, scale)
        except RuntimeError as e:
            assert "MSTR_KERNELS_CUDA_VARIANT=arithmetic" in str(e), e
        else:
            raise AssertionError("a variant ran on float32 inputs")
    finally:
        os.environ.pop("MSTR_KERNELS_CUDA_VARIANT", None)
    out = module.fractal_attention_fwd(q, k, v, lens, 3, 4, scale)
    assert rel_err(out, ref) < SPEC_BOUND[torch.bfloat16], "the full kernel after the variants"


if pytest is not None:
    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

    @pytest.mark.parametrize("p,levels,D,dtype", SPEC_CASES)
    def test_specialised_forward_matches_float64(p, levels, D, dtype):
        check_case(p, levels, D, dtype)

    @pytest.mark.parametrize("p,levels,D,dtype", SPEC_BWD_CASES)
    def test_specialised_backward_matches_float64(p, levels, D, dtype):
        check_backward_case(p, levels, D, dtype)

    def test_headline_runs_the_specialised_kernels():
        check_dispatch()

    def test_variants_for_the_window_ab():
        check_variants()


if __name__ == "__main__":
    failures = 0
    for case in SPEC_CASES:
        try:
            err = check_case(*case)
            print(f"ok   p={case[0]} L={case[1]} D={case[2]} {case[3]}: {err:.1e}")
        except AssertionError as e:
            failures += 1
            print(f"FAIL p={case[0]} L={case[1]} D={case[2]} {case[3]}: {e}")
    for case in SPEC_BWD_CASES:
        try:
            err = check_backward_case(*case)
            print(f"ok   bwd p={case[0]} L={case[1]} D={case[2]} {case[3]}: {err:.1e}")
        except AssertionError as e:
            failures += 1
            print(f"FAIL bwd p={case[0]} L={case[1]} D={case[2]} {case[3]}: {e}")
    for name, check in (("dispatch", check_dispatch), ("variants", check_variants)):
        try:
            check()
            print(f"ok   {name}")
        except AssertionError as e:
            failures += 1
            print(f"FAIL {name}: {e}")
    print(f"{failures} failure(s) of {len(SPEC_CASES) + len(SPEC_BWD_CASES) + 2}")
    sys.exit(1 if failures else 0)
