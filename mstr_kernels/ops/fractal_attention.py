"""The public op: validation, dispatch and its `torch.library` registration.

Fused backends run behind two registered custom ops (forward and backward), so
`torch.compile(fullgraph=True)` sees one opaque node each and autograd is registered on the
forward. The reference backend is plain PyTorch: it is traced and differentiated natively.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import validation
from .backends import get_backend, select_backend
from .reference import fractal_attention_reference


def _empty_like_out(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) tensor whose memory is (B, T, H, D), the layout every backend returns."""
    B, H, T, D = x.shape
    return x.new_empty((B, T, H, D)).transpose(1, 2)


@torch.library.custom_op("mstr_kernels::fractal_attention_fwd", mutates_args=())
def fractal_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lengths: Optional[torch.Tensor], p: int, levels: int, scale: float,
                          backend: str) -> torch.Tensor:
    validation.check_lengths_values(lengths, q.shape[2])
    return get_backend(backend).module().fractal_attention_fwd(q, k, v, lengths, p, levels, scale)


@fractal_attention_fwd.register_fake
def _(q, k, v, lengths, p, levels, scale, backend):
    return _empty_like_out(q)


@torch.library.custom_op("mstr_kernels::fractal_attention_bwd", mutates_args=())
def fractal_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lengths: Optional[torch.Tensor], p: int, levels: int, scale: float,
                          backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(get_backend(backend).module().fractal_attention_bwd(
        dout, q, k, v, lengths, p, levels, scale))


@fractal_attention_bwd.register_fake
def _(dout, q, k, v, lengths, p, levels, scale, backend):
    return _empty_like_out(q), _empty_like_out(q), _empty_like_out(q)


def _setup_context(ctx, inputs, output):
    q, k, v, lengths, p, levels, scale, backend = inputs
    ctx.save_for_backward(q, k, v, lengths)  # inputs only: the backward recomputes the rest
    ctx.params = (p, levels, scale, backend)


def _backward(ctx, dout):
    q, k, v, lengths = ctx.saved_tensors
    dq, dk, dv = fractal_attention_bwd(dout, q, k, v, lengths, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


fractal_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def fractal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, p: int = 3,
                      levels: int = 4, lengths: Optional[torch.Tensor] = None,
                      scale: Optional[float] = None, backend: str = "auto") -> torch.Tensor:
    """Multi-scale fractal attention (SPEC section 1).

    q, k, v: (B, H, T, D), any strides. lengths: None or integer (B,), frames t >= lengths[b]
    are padding (output and gradients exactly 0). Returns (B, H, T, D) laid out as (B, T, H, D).
    Under `torch.autocast`, q, k, v are cast to the autocast dtype, as SDPA's are.
    """
    validation.check_params(p, levels)
    validation.check_qkv(q, k, v)
    validation.check_scale(scale)
    validation.check_lengths_meta(lengths, q)
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    chosen = select_backend(backend, q, p, levels)
    scale = validation.default_scale(q.shape[-1], scale)
    if not chosen.fused:
        if not torch.compiler.is_compiling():
            validation.check_lengths_values(lengths, q.shape[2])
        return fractal_attention_reference(q, k, v, lengths, p, levels, scale)
    if lengths is not None:
        lengths = lengths.to(torch.int32).contiguous()
    return fractal_attention_fwd(q, k, v, lengths, p, levels, scale, chosen.name)
