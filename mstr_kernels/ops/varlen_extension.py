"""The `cpu` and `cuda` backends' packed-sequence kernels (mstr_kernels._C): the padded kernels'
tile code run over the work list of ops/varlen.py, on the CPU one task per (item, head), on CUDA
one block item per (entry, head) of the specialised kernels (the general ones take each entry's
tiles). The C++ entry dispatches on the device; the backend's loader has already checked that
its part of the extension is built."""
from __future__ import annotations

from .extension import _import_extension

_C = _import_extension()


def fractal_attention_varlen_fwd(q, k, v, tiles, p, levels, scale):
    return _C.fractal_attention_varlen_fwd(q, k, v, tiles.contiguous(), p, levels, scale)


def fractal_attention_varlen_bwd(dout, q, k, v, tiles, p, levels, scale):
    if dout.dtype != q.dtype:  # autograd may hand a gradient of another dtype
        dout = dout.to(q.dtype)
    return tuple(_C.fractal_attention_varlen_bwd(dout, q, k, v, tiles.contiguous(), p, levels,
                                                 scale))
