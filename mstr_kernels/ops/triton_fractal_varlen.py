"""The `triton` backend's packed-sequence kernels: the padded forward and backward kernels with
VARLEN set, walking the work list of ops/varlen.py (one item per (tile, head): first row and
valid rows read from the list, computed on the device from cu_seqlens), over the persistent
grid of triton_fractal.py. The list's length is a host-side upper bound on the tiles, so the
launch reads nothing from the device; its unused entries have 0 rows and do nothing.
"""
from __future__ import annotations

import torch

from .triton_fractal import _launch, _meta, launch_config
from .triton_fractal_bwd import fractal_bwd_kernel
from .triton_fractal_fwd import fractal_fwd_kernel


def _as_batch_of_one(x: torch.Tensor) -> torch.Tensor:
    """(total, H, D) -> the kernels' (1, H, total, D) view."""
    return x.transpose(0, 1).unsqueeze(0)


def fractal_attention_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 tiles: torch.Tensor, p: int, levels: int,
                                 scale: float) -> torch.Tensor:
    total, H, D = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    tiles = tiles.contiguous()
    items = tiles.shape[1]
    q4, k4, v4, o4 = (_as_batch_of_one(x) for x in (q, k, v, out))
    cfg = launch_config(p, levels, D, "fwd")
    scalars = (*q4.stride(), *k4.stride(), *v4.stride(), *o4.stride(),
               H, total, D, items, H * items, float(scale))
    _launch(fractal_fwd_kernel, "fwd", (q4, k4, v4, o4, tiles), scalars,
            dict(_meta(cfg, "fwd", p, levels, True), VARLEN=True), H * items,
            cfg.program_stride, q.device, ("fwd-varlen", p, levels, cfg, q.dtype, q.device.index))
    return out


def fractal_attention_varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                 v: torch.Tensor, tiles: torch.Tensor, p: int, levels: int,
                                 scale: float):
    total, H, D = q.shape
    dq, dk, dv = (torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))
    if dout.dtype != q.dtype:  # autograd may hand a gradient of another dtype
        dout = dout.to(q.dtype)
    tiles = tiles.contiguous()
    items = tiles.shape[1]
    g4, q4, k4, v4, dq4, dk4, dv4 = (_as_batch_of_one(x) for x in (dout, q, k, v, dq, dk, dv))
    cfg = launch_config(p, levels, D, "bwd")
    scalars = (*g4.stride(), *q4.stride(), *k4.stride(), *v4.stride(), *dq4.stride(),
               H, total, D, items, H * items, float(scale))
    _launch(fractal_bwd_kernel, "bwd", (g4, q4, k4, v4, dq4, dk4, dv4, tiles), scalars,
            dict(_meta(cfg, "bwd", p, levels, True), VARLEN=True), H * items,
            cfg.program_stride, q.device, ("bwd-varlen", p, levels, cfg, q.dtype, q.device.index))
    return dq, dk, dv
