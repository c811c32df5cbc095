"""Every bad input a new user might try raises an error naming the argument, value and range."""
import pytest
import torch

import mstr_kernels
from mstr_kernels import MultiScaleAttention


def qkv(shape=(2, 2, 8, 4), dtype=torch.float32):
    return tuple(torch.randn(shape).to(dtype) for _ in range(3))


def call(q, k, v, **kw):
    kw.setdefault("backend", "reference")
    return mstr_kernels.fractal_attention(q, k, v, **kw)


@pytest.mark.parametrize("kw,exc,pattern", [
    (dict(p=1), ValueError, r"p=1 is out of range: p must satisfy 2 <= p <= 8"),
    (dict(p=9), ValueError, r"p=9 is out of range"),
    (dict(p=3.0), TypeError, r"p must be an int, got float"),
    (dict(levels=0), ValueError, r"levels=0 is out of range for p=3: .*1 <= levels <= 6"),
    (dict(p=2, levels=11), ValueError, r"levels=11 .* p\*\*levels <= 1024 .*1 <= levels <= 10"),
    (dict(p=8, levels=4), ValueError, r"levels=4 is out of range for p=8"),
    (dict(scale=float("nan")), ValueError, r"scale=nan must be a finite number"),
    (dict(scale="big"), TypeError, r"scale must be a float or None, got str"),
])
def test_bad_parameters(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(*qkv(), **kw)


def test_bad_tensors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must have 4 dimensions \(B, H, T, D\), got 3"):
        call(q[0], k[0], v[0])
    with pytest.raises(ValueError, match=r"k.shape=\(2, 2, 7, 4\) must equal q.shape=\(2, 2, 8, 4\)"):
        call(q, k[:, :, :7], v)
    with pytest.raises(TypeError, match=r"v.dtype=torch.float16 must equal q.dtype=torch.float32"):
        call(q, k, v.half())
    with pytest.raises(TypeError, match=r"q.dtype=torch.int64 is not supported: allowed are float32"):
        call(*(x.long() for x in (q, k, v)))
    with pytest.raises(ValueError, match=r"head dim D \(q.shape\[3\]\) = 257 is out of range: 1 <= D <= 256"):
        call(*qkv((1, 1, 4, 257)))
    with pytest.raises(ValueError, match=r"T \(q.shape\[2\]\) must be >= 1, got T=0"):
        call(*qkv((1, 1, 0, 4)))
    with pytest.raises(ValueError, match=r"B\*H must be >= 1, got B=0, H=2"):
        call(*qkv((0, 2, 4, 4)))
    with pytest.raises(TypeError, match=r"q must be a torch.Tensor, got list"):
        call([1.0], k, v)


def test_float64_refused_by_gpu_backends_in_words():
    q, k, v = qkv(dtype=torch.float64)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run these inputs: .*dtype torch.float64 not in"):
        call(q, k, v, backend="triton")


def test_bad_lengths():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"lengths contains 9, out of range: every entry must satisfy 0 <= lengths\[b\] <= T = 8"):
        call(q, k, v, lengths=torch.tensor([9, 2]))
    with pytest.raises(ValueError, match=r"lengths contains -1, out of range"):
        call(q, k, v, lengths=torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match=r"lengths.dtype=torch.float32 is not supported: allowed are int8, uint8, int16, int32, int64"):
        call(q, k, v, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths.shape=\(3,\) must be \(B,\) = \(2,\)"):
        call(q, k, v, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match=r"lengths must be None or an integer torch.Tensor of shape \(B,\), got list"):
        call(q, k, v, lengths=[1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to put tensors on two devices")
def test_mismatched_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"k.device=cuda:0 must equal q.device=cpu"):
        call(q, k.cuda(), v)
    with pytest.raises(ValueError, match=r"lengths.device=cuda:0 must equal q.device=cpu"):
        call(q, k, v, lengths=torch.tensor([1, 2], device="cuda"))


def test_module_errors():
    with pytest.raises(ValueError, match=r"embed_dim=10 must be divisible by num_heads=3"):
        MultiScaleAttention(10, 3)
    m = MultiScaleAttention(8, 2, p=2, levels=2, backend="reference")
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"need_weights=True is not supported"):
        m(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match=r"self-attention: key must be None or the query tensor itself"):
        m(x, x.clone(), x)
    with pytest.raises(ValueError, match=r"query must be \(B, T, embed_dim=8\), got shape \(2, 5, 6\)"):
        m(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask must mark padding only at the end"):
        m(x, key_padding_mask=torch.tensor([[False, True, False, False, False]] * 2))
    with pytest.raises(TypeError, match=r"key_padding_mask.dtype=torch.int64 must be torch.bool"):
        m(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"key_padding_mask.shape=\(2, 7\) must be \(B, T\) = \(2, 5\)"):
        m(x, key_padding_mask=torch.zeros(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask and is_causal are not supported"):
        m(x, attn_mask=torch.zeros(5, 5))
