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
    assert m.in_proj_weight.grad is not None and torch.isfinite(m.in_proj_weight.grad).all()


def test_state_dict_round_trip():
    a = MultiScaleAttention(8, 2, p=2, levels=2)
    b = MultiScaleAttention(8, 2, p=2, levels=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 8)
    assert torch.equal(a(x)[0], b(x)[0])


# ---- nn.MultiheadAttention weights -------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_state_dicts_load_both_ways_with_nn_multihead_attention(bias):
    torch.manual_seed(4)
    mha = torch.nn.MultiheadAttention(12, 3, bias=bias, batch_first=True)
    m = MultiScaleAttention(12, 3, p=2, levels=2, bias=bias)
    result = m.load_state_dict(mha.state_dict())  # strict
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in mha.state_dict().items():
        assert torch.equal(m.state_dict()[name], value), name
    torch.manual_seed(5)
    other = MultiScaleAttention(12, 3, p=2, levels=2, bias=bias)
    mha.load_state_dict(other.state_dict())
    for name, value in other.state_dict().items():
        assert torch.equal(mha.state_dict()[name], value), name


def test_earlier_layout_in_proj_linear_still_loads():
    """State dicts written before the parameters took nn.MultiheadAttention's names."""
    torch.manual_seed(6)
    m = MultiScaleAttention(8, 2, p=2, levels=2)
    old = {k.replace("in_proj_", "in_proj."): v for k, v in m.state_dict().items()}
    assert set(old) == {"in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"}
    loaded = MultiScaleAttention(8, 2, p=2, levels=2)
    loaded.load_state_dict(old)
    x = torch.randn(2, 5, 8)
    assert torch.equal(loaded(x)[0], m(x)[0])


def test_old_mstr_checkpoint_still_loads(tmp_path):
    """A checkpoint file whose attention weights use the earlier `in_proj.weight` names."""
    from mstr_kernels.models import MSTR, MSTRConfig
    from mstr_kernels.training.checkpoint import load_model, save_checkpoint
    torch.manual_seed(7)
    config = MSTRConfig(feature_dim=16, num_classes=3, num_layers=2, num_heads=2, levels=2)
    model = MSTR(config).eval()

    class OldLayout(torch.nn.Module):
        def state_dict(self):
            return {k.replace("attention.in_proj_", "attention.in_proj."): v
                    for k, v in model.state_dict().items()}

    assert any(".attention.in_proj.weight" in k for k in OldLayout().state_dict())
    path = str(tmp_path / "old.safetensors")
    save_checkpoint(path, OldLayout(), {"model": "mstr", "config": config.to_dict()})
    loaded, _ = load_model(path)
    x = torch.randn(1, 11, 16)
    assert torch.equal(loaded(x), model(x))


def _mha_attention_by_hand(mha, x):
    """nn.MultiheadAttention's own attention output before out_proj: the module run with an
    identity out_proj."""
    inner = torch.nn.MultiheadAttention(mha.embed_dim, mha.num_heads, batch_first=True,
                                        bias=mha.in_proj_bias is not None).to(x.dtype)
    inner.load_state_dict(mha.state_dict())
    with torch.no_grad():
        inner.out_proj.weight.copy_(torch.eye(mha.embed_dim))
        if inner.out_proj.bias is not None:
            inner.out_proj.bias.zero_()
    return inner(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("bias", [True, False])
def test_from_mha_keeps_the_q_k_v_and_head_layout(bias):
    """With levels=1 and T <= p the one window holds every frame: fractal attention is then
    GELU(full softmax attention), so the converted module must give
    out_proj(GELU(nn.MultiheadAttention's attention)): the same q/k/v rows, heads and scale."""
    torch.manual_seed(8)
    mha = torch.nn.MultiheadAttention(12, 3, bias=bias, batch_first=True).double()
    if bias:
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    m = MultiScaleAttention.from_mha(mha, p=5, levels=1, backend="reference")
    assert m.in_proj_weight.dtype == torch.float64 and (m.p, m.levels) == (5, 1)
    assert m.in_proj_weight.data_ptr() != mha.in_proj_weight.data_ptr()  # a copy
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    attention = _mha_attention_by_hand(mha, x)
    expected = mha.out_proj(torch.nn.functional.gelu(attention))
    torch.testing.assert_close(m(x)[0], expected, rtol=1e-12, atol=1e-12)
    # on longer inputs: the module computed by hand from mha's own weights
    x = torch.randn(2, 13, 12, dtype=torch.float64)
    m = MultiScaleAttention.from_mha(mha, p=2, levels=3)
    assert torch.allclose(m(x)[0], module_by_hand(m, x, None), atol=1e-12)
    assert torch.equal(m.in_proj(x), torch.nn.functional.linear(x, mha.in_proj_weight,
                                                                 mha.in_proj_bias))


def test_from_mha_keeps_training_mode_and_defaults():
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    m = MultiScaleAttention.from_mha(mha)
    assert (m.p, m.levels, m.backend, m.training) == (3, 4, "auto", False)


@pytest.mark.parametrize("kwargs, named", [
    (dict(kdim=4, vdim=4), "kdim=4, vdim=4 differ from embed_dim=8"),
    (dict(add_bias_kv=True), "add_bias_kv=True"),
    (dict(add_zero_attn=True), "add_zero_attn=True"),
    (dict(batch_first=False), "batch_first=False"),
    (dict(dropout=0.1), "dropout=0.1"),
])
def test_from_mha_refuses_what_it_cannot_convert(kwargs, named):
    mha = torch.nn.MultiheadAttention(8, 2, **{"batch_first": True, **kwargs})
    with pytest.raises(ValueError, match=f"cannot convert .*{named}"):
        MultiScaleAttention.from_mha(mha)
    with pytest.raises(TypeError, match="nn.MultiheadAttention, got Linear"):
        MultiScaleAttention.from_mha(torch.nn.Linear(8, 8))


@pytest.mark.parametrize("kwargs, key", [(dict(kdim=4, vdim=4), "q_proj_weight"),
                                         (dict(add_bias_kv=True), "bias_k")])
def test_load_of_unconvertible_mha_state_dict_names_the_key(kwargs, key):
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True, **kwargs)
    with pytest.raises(RuntimeError, match=f"{key} is in the state dict"):
        MultiScaleAttention(8, 2).load_state_dict(mha.state_dict())


# ---- float key_padding_mask --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_float_additive_mask_equals_bool_mask(dtype):
    torch.manual_seed(9)
    m = MultiScaleAttention(8, 2, p=3, levels=2)
    x = torch.randn(3, 10, 8)
    lengths = torch.tensor([10, 6, 0])
    padding = torch.arange(10)[None, :] >= lengths[:, None]
    additive = torch.zeros(3, 10, dtype=dtype).masked_fill(padding, float("-inf"))
    assert torch.equal(m(x, key_padding_mask=additive)[0], m(x, key_padding_mask=padding)[0])
    assert torch.equal(m(x, key_padding_mask=additive)[0], m(x, lengths=lengths)[0])


def test_float_mask_like_nn_multihead_attention():
    """The same float mask given to both modules marks the same frames: padded frames change
    neither output's valid frames."""
    torch.manual_seed(10)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    m = MultiScaleAttention.from_mha(mha, p=2, levels=2)
    x = torch.randn(2, 7, 8)
    mask = torch.zeros(2, 7)
    mask[1, 4:] = float("-inf")
    x2 = x.clone()
    x2[1, 4:] = 100.0
    for module in (mha, m):
        a = module(x, x, x, key_padding_mask=mask, need_weights=False)[0]
        b = module(x2, x2, x2, key_padding_mask=mask, need_weights=False)[0]
        torch.testing.assert_close(a[1, :4], b[1, :4])


def test_float_mask_refusals_name_the_argument():
    m = MultiScaleAttention(8, 2, p=2, levels=2)
    x = torch.randn(2, 6, 8)
    penalty = torch.zeros(2, 6)
    penalty[1, 4:] = -1e9
    with pytest.raises(ValueError, match="key_padding_mask of dtype torch.float32 .* only 0 "
                                         "\\(keep\\) and -inf \\(pad\\)"):
        m(x, key_padding_mask=penalty)
    hole = torch.zeros(2, 6)
    hole[0, 2] = float("-inf")
    with pytest.raises(ValueError, match="key_padding_mask must mark padding only at the end"):
        m(x, key_padding_mask=hole)
    with pytest.raises(TypeError, match="key_padding_mask.dtype=torch.int64"):
        m(x, key_padding_mask=torch.zeros(2, 6, dtype=torch.int64))


def test_float_mask_under_compile():
    torch.manual_seed(11)
    torch._dynamo.reset()
    m = MultiScaleAttention(8, 2, p=2, levels=2, backend="reference")
    x = torch.randn(2, 9, 8)
    mask = torch.zeros(2, 9)
    mask[1, 5:] = float("-inf")
    eager = m(x, key_padding_mask=mask)[0]
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, key_padding_mask=mask)[0], eager)
    mask[0, 3] = -5.0  # refused at run time inside the graph (a device-side assertion on a GPU)
    with pytest.raises(ValueError, match="only 0 \\(keep\\) and -inf \\(pad\\)"):
        compiled(x, key_padding_mask=mask)


# ---- constructor validation: the op's own errors -----------------------------------------------

def _op_error(**kw):
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises((ValueError, TypeError)) as info:
        mstr_kernels.fractal_attention(q, q, q, **kw)
    return info.type, str(info.value)


@pytest.mark.parametrize("kw", [dict(p=1), dict(p=9), dict(levels=20), dict(levels=0),
                                dict(p=4, levels=6), dict(p=2.0), dict(backend="cpp"),
                                dict(scale=float("nan"))])
def test_constructor_raises_the_op_errors(kw):
    error_type, message = _op_error(**kw)
    with pytest.raises(error_type) as info:
        MultiScaleAttention(8, 2, **kw)
    assert str(info.value) == message


@pytest.mark.parametrize("embed_dim, num_heads, match", [
    (10, 3, "embed_dim=10 must be divisible by num_heads=3"),
    (600, 2, "head dim embed_dim/num_heads = 600/2 = 300 is out of range: 1 <= "
             "embed_dim/num_heads <= 256"),
    (0, 1, "embed_dim=0 must be a positive int"),
    (8, 0, "num_heads=0 must be a positive int")])
def test_constructor_checks_heads(embed_dim, num_heads, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleAttention(embed_dim, num_heads)


def test_constructor_defaults_are_valid():
    m = MultiScaleAttention(16, 4)
    assert (m.p, m.levels, m.backend, m.scale) == (3, 4, "auto", None)
    assert m(torch.randn(1, 5, 16))[0].shape == (1, 5, 16)
