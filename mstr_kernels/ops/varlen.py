"""Packed variable-length sequences (SPEC section 1b): `fractal_attention_varlen`.

Sequences are concatenated along the first dimension and `cu_seqlens` marks where each
starts, as in flash-attention's `flash_attn_varlen_func`. The op never crosses a tile of
p**levels frames, so a packed batch only needs its tiles to restart at each sequence's first
frame: every backend runs a work list of (first row, valid rows) per tile (per item of whole
tiles where the backend's kernels take several: cuda), built on the
device from `cu_seqlens` by `varlen_work_list` (a registered op, so its checks of the data run
at run time under `torch.compile` too, and on a GPU as device-side assertions, never a host
read). The list has a fixed length known on the host: an upper bound on the tiles,
`total // tile + N`, or `N * ceil(max_seqlen / tile)` if that is smaller; unused entries hold
0 rows and cost an empty loop iteration.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from . import validation
from .backends import FRACTAL_ATTENTION_VARLEN, get_backend, select_backend
from .varlen_reference import fractal_attention_varlen_reference


# --- input checks -------------------------------------------------------------------------

def check_packed_qkv(q, k, v) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name} must have 3 dimensions (total, H, D) (packed sequences), "
                             f"got {x.dim()} dimensions with shape {tuple(x.shape)}")
        if x.dtype not in validation.FLOAT_DTYPES:
            raise TypeError(f"{name}.dtype={x.dtype} is not supported: allowed are float32, "
                            f"float16, bfloat16 (and float64 on CPU backends)")
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{name}.shape={tuple(x.shape)} must equal q.shape={tuple(q.shape)}")
        if x.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={x.dtype} must equal q.dtype={q.dtype} (no implicit casts)")
        if x.device != q.device:
            raise ValueError(f"{name}.device={x.device} must equal q.device={q.device}")
    if q.device.type == "meta":
        raise ValueError("q.device=meta is not supported: q, k, v must be tensors with data "
                         "(cpu or cuda); meta tensors cannot be computed on")
    total, H, D = q.shape
    if H < 1:
        raise ValueError(f"H (q.shape[1]) must be >= 1, got H={H}")
    lo, hi = validation.D_RANGE
    if not lo <= D <= hi:
        raise ValueError(f"head dim D (q.shape[2]) = {D} is out of range: {lo} <= D <= {hi}")


def check_cu_seqlens_meta(cu_seqlens, q: torch.Tensor) -> None:
    """Type, dtype, shape and device of `cu_seqlens` (no data access)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be an int32 torch.Tensor of shape (N+1,), got "
                        f"{type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens.dtype={cu_seqlens.dtype} is not supported: it must be "
                        f"torch.int32 (as flash-attention's)")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"cu_seqlens.shape={tuple(cu_seqlens.shape)} must be (N+1,) with N >= 0 "
                         f"sequences: cumulative lengths starting at 0")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens.device={cu_seqlens.device} must equal q.device={q.device}")


def check_max_seqlen(max_seqlen) -> None:
    if max_seqlen is None:
        return
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(f"max_seqlen must be None or an int, got {type(max_seqlen).__name__} "
                        f"{max_seqlen!r}")
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen={max_seqlen} must be >= 0 (the longest sequence's length)")


def _check_cu_seqlens_host(cu: torch.Tensor, total: int, max_seqlen: int) -> None:
    """The data checks where reading the data costs no device sync (CPU tensors)."""
    first = int(cu[0])
    if first != 0:
        raise ValueError(f"cu_seqlens[0]={first} must be 0: cu_seqlens holds cumulative sequence "
                         f"lengths starting at 0")
    lens = cu[1:] - cu[:-1]
    if lens.numel() and int(lens.min()) < 0:
        i = int(torch.nonzero(lens < 0)[0])
        raise ValueError(f"cu_seqlens must be non-decreasing: cu_seqlens[{i}]={int(cu[i])} > "
                         f"cu_seqlens[{i + 1}]={int(cu[i + 1])}")
    hi = int(cu.max())
    if hi > total:
        raise ValueError(f"cu_seqlens contains {hi}, past total = q.shape[0] = {total}: entries "
                         f"must satisfy 0 <= cu_seqlens[i] <= total")
    last = int(cu[-1])
    if last != total:
        raise ValueError(f"cu_seqlens[-1]={last} must equal total = q.shape[0] = {total}")
    if max_seqlen >= 0 and lens.numel() and int(lens.max()) > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest sequence "
                         f"({int(lens.max())} frames): pass max_seqlen >= every length, or None")


def _check_cu_seqlens_device(cu: torch.Tensor, total: int, max_seqlen: int) -> None:
    """The same checks as device-side assertions: no host sync."""
    lens = cu[1:] - cu[:-1]
    torch._assert_async(cu[0] == 0, "cu_seqlens[0] must be 0")
    torch._assert_async(torch.all(lens >= 0), "cu_seqlens must be non-decreasing")
    torch._assert_async(torch.all(cu <= total), "cu_seqlens has an entry past total = q.shape[0]")
    torch._assert_async(cu[-1] == total, "cu_seqlens[-1] must equal total = q.shape[0]")
    if max_seqlen >= 0:
        torch._assert_async(torch.all(lens <= max_seqlen),
                            "max_seqlen is smaller than the longest sequence in cu_seqlens")


# --- the work list ------------------------------------------------------------------------

def work_items(total: int, n_seqs: int, tile: int, max_seqlen: Optional[int]) -> int:
    """An upper bound on the tiles of N sequences of `total` rows: sum ceil(n_i / tile) <=
    total // tile + N, and <= N * ceil(max_seqlen / tile)."""
    items = total // tile + n_seqs
    if max_seqlen is not None:
        items = min(items, n_seqs * -(-max_seqlen // tile))
    return items


@torch.library.custom_op("mstr_kernels::varlen_work_list", mutates_args=())
def varlen_work_list(cu_seqlens: torch.Tensor, total: int, tile: int, n_items: int,
                     max_seqlen: int) -> torch.Tensor:
    """Checks cu_seqlens (and max_seqlen >= every length, unless -1) and returns the (2, n_items)
    int32 work list: row 0 the first packed row of each tile, row 1 its valid rows (0 for the
    entries past the last tile). Tiles of a sequence are consecutive, sequences in order."""
    if cu_seqlens.is_cuda:
        _check_cu_seqlens_device(cu_seqlens, total, max_seqlen)
    else:
        _check_cu_seqlens_host(cu_seqlens, total, max_seqlen)
    n_seqs = cu_seqlens.shape[0] - 1
    if n_items == 0 or n_seqs == 0:
        return torch.zeros(2, n_items, dtype=torch.int32, device=cu_seqlens.device)
    cu = cu_seqlens.long()
    tiles_per_seq = (cu[1:] - cu[:-1]).clamp(min=0).add(tile - 1).div(tile, rounding_mode="floor")
    ends = tiles_per_seq.cumsum(0)  # one past each sequence's last tile
    item = torch.arange(n_items, device=cu.device)
    seq = torch.searchsorted(ends, item, right=True)
    used = seq < n_seqs
    seq = seq.clamp(max=n_seqs - 1)
    start = cu[seq] + (item - (ends[seq] - tiles_per_seq[seq])) * tile
    count = torch.where(used, (cu[seq + 1] - start).clamp(0, tile), 0)
    return torch.stack((torch.where(used, start, 0), count)).to(torch.int32)


@varlen_work_list.register_fake
def _(cu_seqlens, total, tile, n_items, max_seqlen):
    return cu_seqlens.new_empty((2, n_items))


# --- fused backends -----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def varlen_module(backend: str):
    """The backend's module with the varlen contract (backends.Backend.varlen_loader)."""
    get_backend(backend).module()  # raises with the reason if the backend itself is missing
    return get_backend(backend).varlen_loader()


@torch.library.custom_op("mstr_kernels::fractal_attention_varlen_fwd", mutates_args=())
def fractal_attention_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 tiles: torch.Tensor, p: int, levels: int, scale: float,
                                 backend: str) -> torch.Tensor:
    return varlen_module(backend).fractal_attention_varlen_fwd(q, k, v, tiles, p, levels, scale)


@fractal_attention_varlen_fwd.register_fake
def _(q, k, v, tiles, p, levels, scale, backend):
    return q.new_empty(q.shape)


@torch.library.custom_op("mstr_kernels::fractal_attention_varlen_bwd", mutates_args=())
def fractal_attention_varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                 v: torch.Tensor, tiles: torch.Tensor, p: int, levels: int,
                                 scale: float, backend: str
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(varlen_module(backend).fractal_attention_varlen_bwd(
        dout, q, k, v, tiles, p, levels, scale))


@fractal_attention_varlen_bwd.register_fake
def _(dout, q, k, v, tiles, p, levels, scale, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, tiles, p, levels, scale, backend = inputs
    ctx.save_for_backward(q, k, v, tiles)  # inputs only: the backward recomputes the rest
    ctx.params = (p, levels, scale, backend)


def _backward(ctx, dout):
    q, k, v, tiles = ctx.saved_tensors
    dq, dk, dv = fractal_attention_varlen_bwd(dout, q, k, v, tiles, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


fractal_attention_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


# --- the public op ------------------------------------------------------------------------

def fractal_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             cu_seqlens: torch.Tensor, *, max_seqlen: Optional[int] = None,
                             p: int = 3, levels: int = 4, scale: Optional[float] = None,
                             backend: str = "auto") -> torch.Tensor:
    """Fractal attention of packed sequences (SPEC section 1b).

    q, k, v: (total, H, D), any strides (e.g. views of a packed (total, 3, H, D) projection).
    cu_seqlens: int32 (N+1,), 0 = cu_seqlens[0] <= ... <= cu_seqlens[N] = total; sequence i is
    rows cu_seqlens[i] .. cu_seqlens[i+1]-1 (empty sequences allowed). Returns (total, H, D)
    (contiguous), each sequence's rows equal to `fractal_attention` of that sequence alone.

    max_seqlen: optional, the longest sequence's length (a host int the caller knows, as for
    flash-attention): it only bounds the work list more tightly when every sequence is short;
    no backend needs it, and a value smaller than a sequence is refused.
    """
    validation.check_params(p, levels)
    check_packed_qkv(q, k, v)
    validation.check_scale(scale)
    check_cu_seqlens_meta(cu_seqlens, q)
    check_max_seqlen(max_seqlen)
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type) and q.dtype in validation.AUTOCAST_DTYPES:
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    total = q.shape[0]
    # The registry's checks look at device, dtype and D: a (1, H, total, D) view of q serves.
    chosen = select_backend(backend, q.transpose(0, 1).unsqueeze(0), p, levels,
                            op=FRACTAL_ATTENTION_VARLEN)
    scale = validation.default_scale(q.shape[-1], scale)
    tile = p ** levels
    # Rows per work-list entry: a tile, or the backend's item of whole tiles (cuda).
    entry = chosen.varlen_item_frames(p, levels) if chosen.varlen_item_frames else tile
    n_items = work_items(total, cu_seqlens.shape[0] - 1, entry, max_seqlen)
    tiles = varlen_work_list(cu_seqlens, total, entry, n_items,
                             -1 if max_seqlen is None else max_seqlen)
    if total == 0 or n_items == 0:
        return q.new_zeros(q.shape)
    if not chosen.fused:
        tile_len = max(1, min(tile, total if max_seqlen is None else max_seqlen))
        return fractal_attention_varlen_reference(q, k, v, tiles, p, levels, scale, tile_len)
    return fractal_attention_varlen_fwd(q, k, v, tiles, p, levels, scale, chosen.name)
