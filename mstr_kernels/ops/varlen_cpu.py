"""The `cpu` backend's packed-sequence kernels (mstr_kernels._C, csrc/cpu): the padded
kernels' tile code run over the work list of ops/varlen.py, one task per (item, head)."""
from __future__ import annotations

from .extension import backend_module, _import_extension

backend_module("cpu")  # ImportError with the reason if the extension is missing
_C = _import_extension()


def fractal_attention_varlen_fwd(q, k, v, tiles, p, levels, scale):
    return _C.fractal_attention_varlen_fwd(q, k, v, tiles.contiguous(), p, levels, scale)


def fractal_attention_varlen_bwd(dout, q, k, v, tiles, p, levels, scale):
    if dout.dtype != q.dtype:  # autograd may hand a gradient of another dtype
        dout = dout.to(q.dtype)
    return tuple(_C.fractal_attention_varlen_bwd(dout, q, k, v, tiles.contiguous(), p, levels,
                                                 scale))
