"""The `triton` backend: one fused Triton launch for the forward, one for the backward.

Implements the fused backend contract of backends.py: `fractal_attention_fwd(q, k, v, lengths,
p, levels, scale)` and `fractal_attention_bwd(dout, q, k, v, lengths, p, levels, scale)`.
Inputs are read in place through their strides (views of a (B, T, 3, H, D) projection need no
copy); outputs are (B, H, T, D) tensors laid out as (B, T, H, D).

The grid is persistent: a few programs per SM, each walking tiles and reusing its own fp32
scratch (pooled rows of every level), which then stays in L2. Under TRITON_INTERPRET=1 the
same kernels run on CPU tensors (how the tests run without a GPU).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from .triton_fractal_bwd import BWD_REGIONS, fractal_bwd_kernel
from .triton_fractal_fwd import FWD_REGIONS, fractal_fwd_kernel

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Programs per SM of the persistent grid (registers and scratch in L2 bound how many fit).
PROGRAMS_PER_SM = {"fwd": 4, "bwd": 4}
# Under the interpreter programs run one after another: a few exercise the persistent loop.
INTERPRET_PROGRAMS = 3
# Elements of one [BW, BP, BD] chunk tensor: bounds registers per thread.
CHUNK_ELEMENTS = {"fwd": 2048, "bwd": 1024}
# Scratch of all programs of one launch stays below this, so it can stay in L2.
MAX_SCRATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class LaunchConfig:
    tile: int        # p ** levels frames per tile
    n_rows: int      # scratch rows per region: pooled rows of levels 2..levels
    block_w: int     # windows per chunk
    block_p: int     # p padded to a power of two
    block_d: int     # D padded to a power of two
    num_warps: int


@functools.lru_cache(maxsize=None)
def launch_config(p: int, levels: int, D: int, kind: str) -> LaunchConfig:
    """Block sizes for one (p, levels, D) and kernel kind ('fwd' or 'bwd')."""
    tile = p ** levels
    block_p = triton.next_power_of_2(p)
    block_d = triton.next_power_of_2(D)
    block_w = max(1, CHUNK_ELEMENTS[kind] // (block_p * block_d))
    block_w = min(block_w, triton.next_power_of_2(tile // p))  # no more windows than a tile has
    chunk = block_w * block_p * block_d
    num_warps = 8 if chunk >= 4096 else 4
    n_rows = (tile - p) // (p - 1)  # p + p**2 + ... + p**(levels-1)
    return LaunchConfig(tile, n_rows, block_w, block_p, block_d, num_warps)


def _num_programs(total_tiles: int, scratch_per_program: int, device: torch.device,
                  kind: str) -> int:
    if INTERPRET or device.type != "cuda":
        wanted = INTERPRET_PROGRAMS
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        wanted = sms * PROGRAMS_PER_SM[kind]
    if scratch_per_program:
        wanted = min(wanted, max(1, MAX_SCRATCH_BYTES // scratch_per_program))
    return max(1, min(total_tiles, wanted))


def _scratch(n_programs: int, elements_per_program: int, device: torch.device) -> torch.Tensor:
    numel = max(1, n_programs * elements_per_program)
    if INTERPRET:
        # NaN-filled, so a read of a row the kernel never wrote shows up in the tests.
        return torch.full((numel,), float("nan"), dtype=torch.float32, device=device)
    return torch.empty(numel, dtype=torch.float32, device=device)


def _empty_out(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.new_empty((B, T, H, D)).transpose(1, 2)


def _lengths_arg(lengths: Optional[torch.Tensor], q: torch.Tensor):
    return (lengths, True) if lengths is not None else (q, False)  # q: an unused valid pointer


def fractal_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lengths: Optional[torch.Tensor], p: int, levels: int,
                          scale: float) -> torch.Tensor:
    B, H, T, D = q.shape
    out = _empty_out(q)
    cfg = launch_config(p, levels, D, "fwd")
    n_tiles = triton.cdiv(T, cfg.tile)
    total_tiles = B * H * n_tiles
    per_program = FWD_REGIONS.value * cfg.n_rows * D
    n_programs = _num_programs(total_tiles, per_program * 4, q.device, "fwd")
    scratch = _scratch(n_programs, per_program, q.device)
    lengths_ptr, has_lengths = _lengths_arg(lengths, q)
    fractal_fwd_kernel[(n_programs,)](
        q, k, v, out, lengths_ptr, scratch,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, T, D, n_tiles, total_tiles, float(scale),
        HAS_LENGTHS=has_lengths, P_WIN=p, LEVELS=levels, TILE=cfg.tile, N_ROWS=cfg.n_rows,
        BW=cfg.block_w, BP=cfg.block_p, BD=cfg.block_d, num_warps=cfg.num_warps)
    return out


def fractal_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                          v: torch.Tensor, lengths: Optional[torch.Tensor], p: int,
                          levels: int, scale: float):
    B, H, T, D = q.shape
    dq, dk, dv = _empty_out(q), _empty_out(q), _empty_out(q)
    cfg = launch_config(p, levels, D, "bwd")
    n_tiles = triton.cdiv(T, cfg.tile)
    total_tiles = B * H * n_tiles
    per_program = BWD_REGIONS.value * cfg.n_rows * D
    n_programs = _num_programs(total_tiles, per_program * 4, q.device, "bwd")
    scratch = _scratch(n_programs, per_program, q.device)
    lengths_ptr, has_lengths = _lengths_arg(lengths, q)
    if dout.dtype != q.dtype:  # autograd may hand a gradient of another dtype
        dout = dout.to(q.dtype)
    fractal_bwd_kernel[(n_programs,)](
        dout, q, k, v, dq, dk, dv, lengths_ptr, scratch,
        *dout.stride(), *q.stride(), *k.stride(), *v.stride(), *dq.stride(),
        H, T, D, n_tiles, total_tiles, float(scale),
        HAS_LENGTHS=has_lengths, P_WIN=p, LEVELS=levels, TILE=cfg.tile, N_ROWS=cfg.n_rows,
        BW=cfg.block_w, BP=cfg.block_p, BD=cfg.block_d, num_warps=cfg.num_warps)
    return dq, dk, dv
