"""The reference backend against the independent float64 loop, the paper's form, and autograd."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import mstr_kernels
from parity import SPEC_BOUND, f64_outputs, qkv_views, random_lengths, rel_err


@st.composite
def op_cases(draw):
    p = draw(st.integers(2, 5))
    levels = draw(st.integers(1, 3 if p <= 3 else 2))
    tile = p ** levels
    T = draw(st.integers(1, 2 * tile + p))  # tails, T < p, several tiles
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 2))
    D = draw(st.integers(1, 9))
    use_lengths = draw(st.booleans())
    layout = draw(st.sampled_from(["projection", "contiguous"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, H, T, D, p, levels, use_lengths, layout, seed


@settings(max_examples=40, deadline=None)
@given(op_cases())
def test_reference_matches_float64_loop(case):
    B, H, T, D, p, levels, use_lengths, layout, seed = case
    g = torch.Generator().manual_seed(seed)
    q, k, v = qkv_views(B, H, T, D, torch.float64, generator=g, layout=layout)
    lengths = random_lengths(B, T, generator=g) if use_lengths else None
    out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, lengths=lengths,
                                         backend="reference")
    ref = f64_outputs(q, k, v, p, levels, lengths)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10 * max(1.0, float(ref.abs().max())))
    # float32 through the same path stays within SPEC's bound
    out32 = mstr_kernels.fractal_attention(q.float(), k.float(), v.float(), p=p, levels=levels,
                                           lengths=lengths, backend="reference")
    if ref.norm() > 0:
        assert rel_err(out32, ref) < SPEC_BOUND[torch.float32]
    else:
        assert torch.count_nonzero(out32) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_half_within_spec(dtype):
    g = torch.Generator().manual_seed(1)
    q, k, v = qkv_views(2, 2, 30, 8, dtype, generator=g)
    out = mstr_kernels.fractal_attention(q, k, v, p=3, levels=3, backend="reference")
    assert out.dtype == dtype
    assert rel_err(out, f64_outputs(q, k, v, 3, 3)) < SPEC_BOUND[dtype]


def test_custom_scale():
    g = torch.Generator().manual_seed(2)
    q, k, v = qkv_views(1, 2, 11, 4, torch.float64, generator=g)
    out = mstr_kernels.fractal_attention(q, k, v, p=2, levels=3, scale=0.37, backend="reference")
    assert torch.allclose(out, f64_outputs(q, k, v, 2, 3, scale=0.37), atol=1e-12)


def paper_form(q, k, v, p, levels, scale):
    """AvgPool1d, SDPA with a block-diagonal mask, nearest upsampling, GELU, sum (T % p**levels == 0)."""
    B, H, T, D = q.shape
    out = torch.zeros_like(q)
    for level in range(1, levels + 1):
        S = p ** (level - 1)
        pooled = [F.avg_pool1d(x.reshape(B * H, T, D).transpose(1, 2), S, S).transpose(1, 2)
                  .reshape(B, H, T // S, D) for x in (q, k, v)]
        n = T // S
        window = torch.arange(n) // p
        allowed = window[:, None] == window[None, :]
        y = F.scaled_dot_product_attention(*pooled, attn_mask=allowed, scale=scale)
        up = F.interpolate(F.gelu(y).reshape(B * H, n, D).transpose(1, 2), size=T, mode="nearest")
        out = out + up.transpose(1, 2).reshape(B, H, T, D)
    return out


@pytest.mark.parametrize("p,levels,tiles", [(3, 4, 1), (3, 2, 3), (2, 5, 2), (4, 2, 2), (8, 2, 1)])
def test_reference_equals_paper_form(p, levels, tiles):
    g = torch.Generator().manual_seed(p * 10 + levels)
    T = tiles * p ** levels
    q, k, v = qkv_views(2, 3, T, 6, torch.float64, generator=g)
    scale = 1 / math.sqrt(6)
    out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, backend="reference")
    assert torch.allclose(out, paper_form(q, k, v, p, levels, scale), rtol=0, atol=1e-10)


@pytest.mark.parametrize("p,levels,T", [(3, 2, 10), (2, 3, 13), (3, 3, 2)])
def test_reference_gradcheck(p, levels, T):
    g = torch.Generator().manual_seed(T)
    q, k, v = (x.detach().requires_grad_(True)
               for x in qkv_views(2, 2, T, 3, torch.float64, generator=g))
    lengths = torch.tensor([T, max(T - 4, 1)])
    assert torch.autograd.gradcheck(
        lambda q, k, v: mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels,
                                                       lengths=lengths, backend="reference"),
        (q, k, v))
