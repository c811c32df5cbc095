"""Input checks for the fractal attention op (SPEC section 1).

Every check raises with the argument's name, the value it got and the range it allows.
Nothing here casts, pads or copies an input.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

P_RANGE = (2, 8)
MAX_TILE = 1024  # p ** levels
D_RANGE = (1, 256)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)


def max_levels(p: int) -> int:
    """Largest `levels` with p ** levels <= MAX_TILE."""
    return int(math.floor(math.log(MAX_TILE, p) + 1e-9))


def check_params(p, levels) -> None:
    if isinstance(p, bool) or not isinstance(p, int):
        raise TypeError(f"p must be an int, got {type(p).__name__} {p!r}")
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels must be an int, got {type(levels).__name__} {levels!r}")
    if not P_RANGE[0] <= p <= P_RANGE[1]:
        raise ValueError(f"p={p} is out of range: p must satisfy {P_RANGE[0]} <= p <= {P_RANGE[1]}")
    if levels < 1 or p ** levels > MAX_TILE:
        raise ValueError(
            f"levels={levels} is out of range for p={p}: levels must satisfy 1 <= levels and "
            f"p**levels <= {MAX_TILE} (for p={p}: 1 <= levels <= {max_levels(p)})")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (B, H, T, D), got {x.dim()} dimensions "
                f"with shape {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name}.dtype={x.dtype} is not supported: allowed are float32, float16, "
                f"bfloat16 (and float64 on CPU backends)")
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{name}.shape={tuple(x.shape)} must equal q.shape={tuple(q.shape)}")
        if x.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={x.dtype} must equal q.dtype={q.dtype} (no implicit casts)")
        if x.device != q.device:
            raise ValueError(f"{name}.device={x.device} must equal q.device={q.device}")
    B, H, T, D = q.shape
    if B * H < 1:
        raise ValueError(f"B*H must be >= 1, got B={B}, H={H}")
    if T < 1:
        raise ValueError(f"T (q.shape[2]) must be >= 1, got T={T}")
    if not D_RANGE[0] <= D <= D_RANGE[1]:
        raise ValueError(
            f"head dim D (q.shape[3]) = {D} is out of range: {D_RANGE[0]} <= D <= {D_RANGE[1]}")


def check_scale(scale) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale} must be a finite number")


def check_lengths_meta(lengths: Optional[torch.Tensor], q: torch.Tensor) -> None:
    """Shape, dtype and device of `lengths` (no data access: safe under torch.compile)."""
    if lengths is None:
        return
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be None or an integer torch.Tensor of shape (B,), "
                        f"got {type(lengths).__name__}")
    B = q.shape[0]
    if lengths.dtype not in INT_DTYPES:
        raise TypeError(f"lengths.dtype={lengths.dtype} is not supported: allowed are int32, int64")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths.shape={tuple(lengths.shape)} must be (B,) = ({B},)")
    if lengths.device != q.device:
        raise ValueError(f"lengths.device={lengths.device} must equal q.device={q.device}")


def check_lengths_values(lengths: Optional[torch.Tensor], T: int) -> None:
    """0 <= lengths[b] <= T. Reads the data (one host sync on CUDA)."""
    if lengths is None or lengths.numel() == 0:
        return
    lo, hi = torch.aminmax(lengths)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi > T:
        bad = lo if lo < 0 else hi
        raise ValueError(f"lengths contains {bad}, out of range: every entry must satisfy "
                         f"0 <= lengths[b] <= T = {T}")


def default_scale(D: int, scale) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(D)
