"""MSTR and the vanilla baseline against SPEC section 3, written out independently here."""
import math

import numpy as np
import pytest
import torch

import mstr_kernels
from float64_loop import fractal_attention_f64
from mstr_kernels.models import (MSTR, MSTRConfig, VanillaTransformer, build_model,
                                 count_params)


def spec_param_count(F, C, layers):
    """SPEC section 3 by hand: input LN; per block fused QKV + W_O, 2 LNs, FFN F->F/2->F;
    classifier F->F/2->F/4->C. Weights plus biases."""
    linear = lambda i, o: i * o + o  # noqa: E731
    block = linear(F, 3 * F) + linear(F, F) + 2 * (2 * F) + linear(F, F // 2) + linear(F // 2, F)
    classifier = linear(F, F // 2) + linear(F // 2, F // 4) + linear(F // 4, C)
    return 2 * F + layers * block + classifier


@pytest.mark.parametrize("cls", [MSTR, VanillaTransformer])
def test_paper_parameter_count(cls):
    with torch.device("meta"):
        model = cls(MSTRConfig(feature_dim=1024, num_classes=4))
    n = count_params(model)
    assert n == spec_param_count(1024, 4, 4)
    assert round(n / 1e6, 2) == 21.67


def small_config(**kw):
    base = dict(feature_dim=16, num_classes=3, num_layers=2, num_heads=2, p=3, levels=2,
                dropout=0.0, classifier_dropout=0.0)
    base.update(kw)
    return MSTRConfig(**base)


def spec_forward_f64(model, x, lengths, attention):
    """The model's forward as SPEC section 3 states it, in float64 numpy, from its weights."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    F, H = cfg.feature_dim, cfg.num_heads
    D = F // H

    def ln(h, prefix):
        mu = h.mean(-1, keepdims=True)
        var = h.var(-1, keepdims=True)
        return (h - mu) / np.sqrt(var + 1e-5) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def lin(h, prefix):
        return h @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]

    x = x.double().numpy()
    B, T, _ = x.shape
    logits = []
    for b in range(B):
        n = int(lengths[b])
        h = ln(x[b], "input_norm")
        for i in range(cfg.num_layers):
            pre = f"blocks.{i}"
            # the fused projection named as nn.MultiheadAttention names it
            qkv = (h @ sd[pre + ".attention.in_proj_weight"].T
                   + sd[pre + ".attention.in_proj_bias"]).reshape(T, 3, H, D)
            q, k, v = (qkv[:, j].transpose(1, 0, 2)[None] for j in range(3))  # (1, H, T, D)
            if attention == "fractal":
                a = fractal_attention_f64(q, k, v, cfg.p, cfg.levels, lengths=[n])[0]
            else:
                s = np.einsum("htd,hsd->hts", q[0], k[0]) / math.sqrt(D)
                s[:, :, n:] = -np.inf
                w = np.exp(s - s.max(-1, keepdims=True))
                a = np.einsum("hts,hsd->htd", w / w.sum(-1, keepdims=True), v[0])
            a = lin(a.transpose(1, 0, 2).reshape(T, F), pre + ".attention.out_proj")
            h = ln(h + a, pre + ".norm1")
            ffn = lin(np.maximum(lin(h, pre + ".ffn.0"), 0), pre + ".ffn.3")
            h = ln(h + ffn, pre + ".norm2")
        z = h[:n].mean(0)
        z = np.maximum(lin(z, "classifier.0"), 0)
        z = np.maximum(lin(z, "classifier.3"), 0)
        logits.append(lin(z, "classifier.6"))
    return np.stack(logits)


@pytest.mark.parametrize("name", ["mstr", "vanilla"])
def test_forward_matches_spec_float64(name):
    torch.manual_seed(0)
    model = build_model(name, small_config(backend="reference")).double().eval()
    x = torch.randn(3, 22, 16, dtype=torch.float64)
    lengths = torch.tensor([22, 13, 2])
    got = model(x, lengths).detach().numpy()
    want = spec_forward_f64(model, x, lengths, model.config.attention)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["mstr", "vanilla"])
def test_padding_content_is_ignored(name):
    torch.manual_seed(1)
    model = build_model(name, small_config()).eval()
    x = torch.randn(2, 30, 16)
    lengths = torch.tensor([30, 11])
    base = model(x, lengths)
    x2 = x.clone()
    x2[1, 11:] = 1e3 * torch.randn(19, 16)
    torch.testing.assert_close(model(x2, lengths), base)
    # the short item alone, unpadded, gives the same logits
    torch.testing.assert_close(model(x[1:, :11], None), base[1:], rtol=1e-5, atol=1e-5)
    # lengths=None means every frame is valid
    torch.testing.assert_close(model(x, None), model(x, torch.tensor([30, 30])))


@pytest.mark.parametrize("name", ["mstr", "vanilla"])
def test_gradients_finite_with_empty_sequence(name):
    torch.manual_seed(2)
    model = build_model(name, small_config(dropout=0.1, classifier_dropout=0.5)).train()
    x = torch.randn(3, 10, 16)
    logits = model(x, torch.tensor([10, 4, 0]))
    logits.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_xavier_uniform_init():
    torch.manual_seed(3)
    model = MSTR(small_config(feature_dim=64, num_heads=4))
    # every Linear and the attention's fused QKV projection (nn.MultiheadAttention's layout)
    layers = [(name, m.weight, m.bias) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)]
    layers += [(name, m.in_proj_weight, m.in_proj_bias) for name, m in model.named_modules()
               if hasattr(m, "in_proj_weight")]
    assert len(layers) == 2 * 4 + 3  # per block in_proj, out_proj, 2 FFN; 3 in the classifier
    for name, weight, bias in layers:
        fan_out, fan_in = weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert weight.abs().max() <= bound, name
        assert weight.abs().max() > 0.9 * bound, name  # uniform fills its range
        assert torch.count_nonzero(bias) == 0, name


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_heads=3"):
        MSTRConfig(feature_dim=64, num_heads=3)
    with pytest.raises(ValueError, match="attention='local'"):
        MSTRConfig(attention="local")
    with pytest.raises(ValueError, match="dropout=1.5"):
        MSTRConfig(dropout=1.5)
    with pytest.raises(ValueError, match="unknown fields"):
        MSTRConfig.from_dict({"feature_dim": 64, "layers": 2})
    with pytest.raises(ValueError, match="MSTR needs config.attention='fractal'"):
        MSTR(MSTRConfig(attention="full"))
    model = MSTR(small_config())
    with pytest.raises(ValueError, match="feature_dim=16"):
        model(torch.randn(2, 5, 8))


def test_config_round_trip_and_baseline_has_same_weights():
    config = small_config(levels=3)
    assert MSTRConfig.from_dict(config.to_dict()) == config
    mstr, vanilla = MSTR(config), VanillaTransformer(config)
    assert vanilla.config.attention == "full"
    assert {k: v.shape for k, v in mstr.state_dict().items()} == \
        {k: v.shape for k, v in vanilla.state_dict().items()}


@pytest.mark.parametrize("kw", [dict(p=1), dict(levels=20), dict(p=4, levels=6),
                                dict(backend="cpp"), dict(p=3.0)])
@pytest.mark.parametrize("attention", ["fractal", "full"])
def test_config_raises_the_op_errors(kw, attention):
    """p, levels and backend are checked when the config is made (for either attention: one
    config builds both models), with the op's own message."""
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises((ValueError, TypeError)) as op_error:
        mstr_kernels.fractal_attention(q, q, q, **kw)
    with pytest.raises(op_error.type) as info:
        MSTRConfig(attention=attention, **kw)
    assert str(info.value) == str(op_error.value)


@pytest.mark.parametrize("kw, match", [
    (dict(feature_dim=1024, num_heads=2), "head dim feature_dim/num_heads = 1024/2 = 512 is out "
                                          "of range: 1 <= feature_dim/num_heads <= 256"),
    (dict(num_layers=True), "num_layers=True must be a positive int"),
    (dict(classifier_dropout="0.5"), "classifier_dropout='0.5' must be a number in \\[0, 1\\)")])
def test_config_checks_heads_and_types(kw, match):
    with pytest.raises(ValueError, match=match):
        MSTRConfig(**kw)


def test_default_config_is_valid():
    config = MSTRConfig()
    assert (config.p, config.levels, config.backend) == (3, 4, "auto")
