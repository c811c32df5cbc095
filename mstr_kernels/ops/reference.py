"""The readable definition of fractal attention, in plain vectorized PyTorch ops.

Autograd is PyTorch's own. Half-precision inputs are computed in float32 (SPEC section 1);
float64 stays float64. The only Python loop is over levels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .validation import as_output_layout


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
    return as_output_layout(out.to(q.dtype))


def drop_padding(x: torch.Tensor, m: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """x in the compute dtype, padded to m's T_pad frames, with exact zeros where m is False: a
    select, not a product, so NaN or Inf in padding frames cannot leak (NaN * 0 is NaN)."""
    return torch.where(m, F.pad(x.to(compute), (0, 0, 0, m.shape[2] - x.shape[2])), 0.0)


def window_softmax(scores: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, keys where key_valid is False excluded. A row whose keys are
    all excluded or all -inf (scores that overflowed float32) gets weights 0, as SDPA gives;
    +inf or NaN scores give NaN, as in SDPA. The max is detached: the softmax does not depend
    on it, so its gradient is exact."""
    scores = scores.masked_fill(~key_valid, float("-inf"))
    top = scores.amax(dim=-1, keepdim=True).detach()
    e = torch.exp(scores - torch.where(top == float("-inf"), 0.0, top))
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total == 0, 1.0, total)


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
        attn = window_softmax(scores, valid.view(B, 1, n_pooled // p, 1, p))
        y = (attn @ vw).view(B, H, n_pooled, D)
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
        attn = window_softmax(scores, valid.view(B, 1, n_pooled // p, 1, p))
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
    return tuple(as_output_layout(g.to(q.dtype)) for g in grads)
