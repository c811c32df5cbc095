"""What the fractal attention op accepts (SPEC section 1), in one place, and the checks.

`SPEC` is the supported range: validation, the backend registry (backends.py: each backend
declares only where it differs) and the C++ entry (csrc/fractal_range.h, checked against this copy
by tests/test_op_api.py) all read it. Every check raises with the argument's name, the value it
got and the range it allows. Nothing here casts, pads or copies an input.

No check here reads tensor data on the host: `check_lengths_range` runs inside the registered
ops, as a host check on CPU tensors (no device sync) and a device-side assertion on GPUs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SpecRange:
    p_min: int = 2
    p_max: int = 8
    max_tile: int = 1024  # p ** levels
    head_dim_min: int = 1
    head_dim_max: int = 256

    @property
    def max_levels(self) -> int:
        """Largest `levels` of any p in range (that of p_min)."""
        return max_levels(self.p_min, self.max_tile)


SPEC = SpecRange()
# Older names, kept for callers that import them.
P_RANGE = (SPEC.p_min, SPEC.p_max)
MAX_TILE = SPEC.max_tile
D_RANGE = (SPEC.head_dim_min, SPEC.head_dim_max)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# What torch.autocast casts for SDPA (and so for this op): floating inputs except float64.
AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int32, torch.int64)
# Integer dtypes of `lengths` that the op widens to int32 first (every value fits).
NARROW_INT_DTYPES = frozenset((torch.int8, torch.uint8, torch.int16))


def max_levels(p: int, max_tile: int = SPEC.max_tile) -> int:
    """Largest `levels` with p ** levels <= max_tile."""
    levels = 0
    while p ** (levels + 1) <= max_tile:
        levels += 1
    return levels


def check_params(p, levels) -> None:
    if isinstance(p, bool) or not isinstance(p, int):
        raise TypeError(f"p must be an int, got {type(p).__name__} {p!r}")
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels must be an int, got {type(levels).__name__} {levels!r}")
    if not SPEC.p_min <= p <= SPEC.p_max:
        raise ValueError(f"p={p} is out of range: p must satisfy {SPEC.p_min} <= p <= {SPEC.p_max}")
    if levels < 1 or p ** levels > SPEC.max_tile:
        raise ValueError(
            f"levels={levels} is out of range for p={p}: levels must satisfy 1 <= levels and "
            f"p**levels <= {SPEC.max_tile} (for p={p}: 1 <= levels <= {max_levels(p)})")


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
    if q.device.type == "meta":
        # Meta tensors have no data to compute on; torch.compile traces with fake tensors,
        # which carry the real device, so this never fires there.
        raise ValueError(f"q.device={q.device} is not supported: q, k, v must be on a device "
                         f"with data (cpu or cuda); meta tensors cannot be computed on")
    B, H, T, D = q.shape
    if B * H < 1:
        raise ValueError(f"B*H must be >= 1, got B={B}, H={H}")
    if T < 1:
        raise ValueError(f"T (q.shape[2]) must be >= 1, got T={T}")
    if not SPEC.head_dim_min <= D <= SPEC.head_dim_max:
        raise ValueError(f"head dim D (q.shape[3]) = {D} is out of range: "
                         f"{SPEC.head_dim_min} <= D <= {SPEC.head_dim_max}")


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
        raise TypeError(f"lengths.dtype={lengths.dtype} is not supported: allowed are int8, "
                        f"uint8, int16, int32, int64")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths.shape={tuple(lengths.shape)} must be (B,) = ({B},)")
    if lengths.device != q.device:
        raise ValueError(f"lengths.device={lengths.device} must equal q.device={q.device}")


_PARAMS_OK = frozenset((p, levels) for p in range(SPEC.p_min, SPEC.p_max + 1)
                       for levels in range(1, max_levels(p) + 1))
_FLOAT_SET = frozenset(FLOAT_DTYPES)
_INT_SET = frozenset(INT_DTYPES)


def check_call(q, k, v, p, levels, scale, lengths) -> None:
    """Every check of one call (the four below). A call that passes them all is recognised in
    one expression (the hot path); anything else runs the checks that name what is wrong."""
    if (type(p) is int and type(levels) is int and (p, levels) in _PARAMS_OK
            and (scale is None or (type(scale) in (int, float) and math.isfinite(scale)))
            and isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
            and isinstance(v, torch.Tensor) and q.dim() == 4 and q.dtype in _FLOAT_SET
            and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype
            and q.device == k.device == v.device and q.device.type != "meta"
            and q.shape[0] * q.shape[1] >= 1 and q.shape[2] >= 1
            and SPEC.head_dim_min <= q.shape[3] <= SPEC.head_dim_max
            and (lengths is None or (isinstance(lengths, torch.Tensor)
                                     and lengths.dtype in _INT_SET and lengths.dim() == 1
                                     and lengths.shape[0] == q.shape[0]
                                     and lengths.device == q.device))):
        return
    check_params(p, levels)
    check_qkv(q, k, v)
    check_scale(scale)
    check_lengths_meta(lengths, q)


def lengths_range_message(T: int, bad=None) -> str:
    """The refusal of an out-of-range `lengths` entry (the C++ entry writes the same words)."""
    found = f"lengths contains {bad}, out of range" if bad is not None else \
        "lengths has an entry out of range"
    return f"{found}: every entry must satisfy 0 <= lengths[b] <= T = {T}"


def check_lengths_range(lengths: Optional[torch.Tensor], T: int) -> None:
    """0 <= lengths[b] <= T, on the given values (int64 ones before any narrowing).

    CPU tensors: a host check on the values (no ATen op, no device sync) raising ValueError.
    Other devices: a device-side assertion (`torch._assert_async`), no host read. Called inside
    the registered ops, so eager and compiled calls refuse the same inputs.
    """
    if lengths is None or lengths.numel() == 0:
        return
    if lengths.device.type == "cpu":
        values = lengths.tolist()  # B Python ints: cheaper than any tensor op at these sizes
        lo, hi = min(values), max(values)
        if lo < 0 or hi > T:
            raise ValueError(lengths_range_message(T, lo if lo < 0 else hi))
        return
    torch._assert_async(((lengths >= 0) & (lengths <= T)).all(), lengths_range_message(T))


def default_scale(D: int, scale) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(D)


def empty_output(q: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A (B, H, T, D) tensor whose memory is laid out as (B, T, H, D): the layout of every
    backend's outputs (SPEC section 1), so `out.transpose(1, 2).reshape(B, T, H * D)` is free."""
    B, H, T, D = q.shape
    return q.new_empty((B, T, H, D), dtype=dtype or q.dtype).transpose(1, 2)


def as_output_layout(x: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) in the layout of `empty_output` (a copy unless it is laid out so)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)
