"""The readable definition of fractal attention, in plain vectorized PyTorch ops.

Autograd is PyTorch's own. Half-precision inputs are computed in float32 (SPEC section 1);
float64 stays float64. The only Python loop is over levels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def frame_mask(B: int, T: int, lengths: Optional[torch.Tensor], device) -> torch.Tensor:
    """(B, T) bool: True where frame t < lengths[b]."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    return torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]


def fractal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                lengths: Optional[torch.Tensor], p: int, levels: int,
                                scale: float) -> torch.Tensor:
    """(B, H, T, D) output whose memory is laid out as (B, T, H, D)."""
    with torch.autocast(q.device.type, enabled=False):
        out = _reference(q, k, v, lengths, p, levels, scale)
    return out.to(q.dtype).transpose(1, 2).contiguous().transpose(1, 2)


def drop_padding(x: torch.Tensor, m: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """x in the compute dtype, padded to m's T_pad frames, with exact zeros where m is False: a
    select, not a product, so NaN or Inf in padding frames cannot leak (NaN * 0 is NaN)."""
    return torch.where(m, F.pad(x.to(compute), (0, 0, 0, m.shape[2] - x.shape[2])), 0.0)


def _reference(q, k, v, lengths, p, levels, scale):
    B, H, T, D = q.shape
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    tile = p ** levels
    T_pad = math.ceil(T / tile) * tile  # whole tiles, so every level's view is exact
    mask = F.pad(frame_mask(B, T, lengths, q.device), (0, T_pad - T))  # (B, T_pad)
    m = mask[:, None, :, None]
    qs, ks, vs = (drop_padding(x, m, compute) for x in (q, k, v))

    out = torch.zeros(B, H, T_pad, D, dtype=compute, device=q.device)
    for level in range(levels):
        S = p ** level
        n_pooled = T_pad // S
        count = mask.view(B, n_pooled, S).sum(-1, dtype=compute)[:, None, :, None]  # valid frames per group
        valid = count > 0
        pooled = [x.view(B, H, n_pooled, S, D).sum(3) / count.clamp(min=1) for x in (qs, ks, vs)]
        qw, kw, vw = (x.view(B, H, n_pooled // p, p, D) for x in pooled)
        scores = (qw @ kw.transpose(-1, -2)) * scale  # (B, H, windows, p, p)
        key_valid = valid.view(B, 1, n_pooled // p, 1, p)
        # A finite fill keeps windows with no valid key finite; their queries are masked below.
        scores = scores.masked_fill(~key_valid, torch.finfo(compute).min)
        y = (torch.softmax(scores, dim=-1) @ vw).view(B, H, n_pooled, D)
        mixed = F.gelu(y) * valid
        out = out + mixed.repeat_interleave(S, dim=2)
    return torch.where(m, out, 0.0)[:, :, :T]


def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the exact (erf) GELU: Phi(x) + x * phi(x)."""
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + x * pdf


def fractal_attention_reference_backward(dout, q, k, v, lengths, p, levels, scale):
    """The backward written out level by level, the way fused kernels compute it: recompute the
    level, GELU', window-softmax backward, spread pooled gradients back to frames / counts.
    Returns (dq, dk, dv) in the compute dtype, shaped (B, H, T, D)."""
    B, H, T, D = q.shape
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    tile = p ** levels
    T_pad = math.ceil(T / tile) * tile
    mask = F.pad(frame_mask(B, T, lengths, q.device), (0, T_pad - T))
    m = mask[:, None, :, None]
    qs, ks, vs, douts = (drop_padding(x, m, compute) for x in (q, k, v, dout))
    grads = [torch.zeros(B, H, T_pad, D, dtype=compute, device=q.device) for _ in range(3)]
    for level in range(levels):
        S = p ** level
        n_pooled = T_pad // S
        count = mask.view(B, n_pooled, S).sum(-1, dtype=compute)[:, None, :, None]
        valid = count > 0
        qw, kw, vw = (x.view(B, H, n_pooled, S, D).sum(3).div(count.clamp(min=1))
                      .view(B, H, n_pooled // p, p, D) for x in (qs, ks, vs))
        scores = (qw @ kw.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~valid.view(B, 1, n_pooled // p, 1, p),
                                    torch.finfo(compute).min)
        attn = torch.softmax(scores, dim=-1)
        y = attn @ vw
        # out[t] gets GELU(y[t // S]) for valid t: the pooled gradient sums its frames' dout
        dmixed = douts.view(B, H, n_pooled, S, D).sum(3).view_as(y)
        dy = dmixed * gelu_grad(y) * valid.view(B, 1, n_pooled // p, p, 1)
        dattn = dy @ vw.transpose(-1, -2)
        dv_w = attn.transpose(-1, -2) @ dy
        dscores = attn * (dattn - (dattn * attn).sum(-1, keepdim=True)) * scale
        dq_w = dscores @ kw
        dk_w = dscores.transpose(-1, -2) @ qw
        for grad, dpooled in zip(grads, (dq_w, dk_w, dv_w)):
            per_frame = dpooled.reshape(B, H, n_pooled, D) / count.clamp(min=1)
            grad += per_frame.repeat_interleave(S, dim=2)
    return tuple(torch.where(m, g, 0.0)[:, :, :T] for g in grads)


# The fused-backend contract (backends.py), so the registered custom ops also run the
# reference: used by opcheck and as a template for new backends.
def fractal_attention_fwd(q, k, v, lengths, p, levels, scale):
    with torch.no_grad():
        return fractal_attention_reference(q, k, v, lengths, p, levels, scale)


def fractal_attention_bwd(dout, q, k, v, lengths, p, levels, scale):
    with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
        grads = fractal_attention_reference_backward(dout, q, k, v, lengths, p, levels, scale)
    return tuple(g.to(q.dtype).transpose(1, 2).contiguous().transpose(1, 2) for g in grads)
