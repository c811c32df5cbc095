"""MultiScaleAttention as a drop-in for nn.MultiheadAttention(batch_first=True) self-attention."""
import pytest
import torch

import mstr_kernels
from mstr_kernels import MultiScaleAttention


def module_by_hand(m, x, lengths):
    """The module's math with explicit (copied) q, k, v: projection, op, output projection."""
    B, T, E = x.shape
    H, D = m.num_heads, m.head_dim
    q, k, v = (m.in_proj(x)[..., i * E:(i + 1) * E].reshape(B, T, H, D).transpose(1, 2).contiguous()
               for i in range(3))
    out = mstr_kernels.fractal_attention(q, k, v, p=m.p, levels=m.levels, lengths=lengths,
                                         backend="reference")
    return m.out_proj(out.transpose(1, 2).reshape(B, T, E))


def test_matches_explicit_computation_and_mask_equals_lengths():
    torch.manual_seed(0)
    m = MultiScaleAttention(16, 4, p=3, levels=2, backend="reference").double()
    x = torch.randn(3, 11, 16, dtype=torch.float64)
    lengths = torch.tensor([11, 4, 0])
    out, weights = m(x, lengths=lengths)
    assert weights is None and out.shape == x.shape
    assert torch.allclose(out, module_by_hand(m, x, lengths), atol=1e-12)
    mask = torch.arange(11)[None, :] >= lengths[:, None]
    out_mask, _ = m(x, x, x, key_padding_mask=mask)
    assert torch.equal(out, out_mask)


def test_qkv_are_views_of_the_projection(monkeypatch):
    seen = {}

    def spy(q, k, v, **kw):
        seen["ptrs"] = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        seen["contiguous"] = q.is_contiguous()
        return mstr_kernels.ops.fractal_attention(q, k, v, **kw)

    import mstr_kernels.nn.attention as attention
    monkeypatch.setattr(attention, "fractal_attention", spy)
    m = MultiScaleAttention(8, 2, p=2, levels=2, backend="reference")
    m(torch.randn(2, 6, 8))
    qp, kp, vp = seen["ptrs"]
    assert kp - qp == vp - kp == 8 * 4  # E floats apart in one (B, T, 3, H, D) buffer
    assert not seen["contiguous"]


def test_module_compiles_fullgraph_and_trains():
    torch.manual_seed(1)
    torch._dynamo.reset()
    m = MultiScaleAttention(8, 2, p=2, levels=2, backend="reference")
    x = torch.randn(2, 9, 8)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 5:] = True
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out, _ = compiled(x, key_padding_mask=mask)
    assert torch.allclose(out, m(x, key_padding_mask=mask)[0], atol=1e-5)
    out.sum().backward()
    assert m.in_proj.weight.grad is not None and torch.isfinite(m.in_proj.weight.grad).all()


def test_state_dict_round_trip():
    a = MultiScaleAttention(8, 2, p=2, levels=2)
    b = MultiScaleAttention(8, 2, p=2, levels=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 8)
    assert torch.equal(a(x)[0], b(x)[0])
