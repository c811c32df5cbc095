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
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from .triton_fractal_bwd import BWD_REGIONS, fractal_bwd_kernel
from .triton_fractal_fwd import FWD_REGIONS, fractal_fwd_kernel
from .validation import empty_output

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Under the interpreter programs run one after another: a few exercise the persistent loop.
INTERPRET_PROGRAMS = 3
# Per kernel kind: elements of one [rows, BD] chunk tensor for attention on the frames (bounds
# registers per thread), for attention on the (short) pooled levels (small, so a level of 3 or
# 9 rows does not pay for 32), and for pooling; warps per program and the register cap given
# to ptxas (sets how many programs fit on an SM); the scratch of all programs of one launch
# stays below scratch_mb MiB, so it can stay in L2 (fewer programs otherwise).
# benchmarks/triton_tune.py sweeps these on a GPU; these values are its choice on an H100 at
# B=32 H=16 T=4096 D=64 bf16 p=3 levels=4 (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-24-2*:
# the sweep's times are there and in benchmarks/NOTES.md; fewer programs, from a smaller scratch
# bound, were always slower).
# fwd level1_first: 1 runs level 1 right after pooling each chunk of frames (see
# triton_fractal_fwd.py), 0 after the pooled levels.
TUNING = {
    "fwd": {"chunk": 1024, "level_chunk": 512, "pool_chunk": 1024, "num_warps": 4,
            "maxnreg": 168, "scratch_mb": 32, "level1_first": 0},
    "bwd": {"chunk": 512, "level_chunk": 512, "pool_chunk": 1024, "num_warps": 4,
            "maxnreg": 128, "scratch_mb": 64},
}
TUNING_ENV = "MSTR_KERNELS_TRITON_TUNING"
REGISTERS_PER_SM = 65536
MAX_PROGRAMS_PER_SM = 32


@dataclass(frozen=True)
class LaunchConfig:
    tile: int          # p ** levels frames per tile
    n_rows: int        # scratch rows per region: pooled rows of levels 2..levels
    row_stride: int    # floats between scratch rows: D rounded up to 16 (aligned vector access)
    program_stride: int  # floats of scratch per program, a multiple of 16
    block_r: int       # rows per attention chunk on the frames (level 1)
    block_r_level: int  # rows per attention chunk on pooled levels (they are short)
    block_r_pool: int  # rows per pooling chunk
    block_d: int       # D padded to a power of two
    num_warps: int
    maxnreg: Optional[int]
    level1_first: bool = False  # forward: level 1 inside the pooling pass (one more region)


def set_tuning(kind: str, **values) -> None:
    """Change TUNING[kind] (keys: chunk, level_chunk, pool_chunk, num_warps, maxnreg,
    scratch_mb) for later launches."""
    unknown = set(values) - set(TUNING[kind])
    if unknown:
        raise ValueError(f"unknown tuning keys {sorted(unknown)}: allowed are {sorted(TUNING[kind])}")
    TUNING[kind].update(values)
    launch_config.cache_clear()
    _PLAN_CACHE.clear()
    _SCRATCH.clear()


def tuning_from_env(text: Optional[str]) -> dict:
    """{kind: {knob: value}} from MSTR_KERNELS_TRITON_TUNING: a JSON object, inline or in a
    file (as benchmarks/triton_tune.py --json-out writes it), e.g. '{"fwd": {"scratch_mb": 16}}'.
    Unknown kinds or knobs are errors that name the variable and the allowed keys."""
    if not text:
        return {}
    try:
        source = text
        if not text.lstrip().startswith("{"):
            with open(text) as f:
                source = f.read()
        values = json.loads(source)
    except (OSError, ValueError) as e:
        raise ValueError(f"{TUNING_ENV}={text!r}: not a JSON object nor a readable JSON file "
                         f"({e})") from None
    if not isinstance(values, dict) or set(values) - set(TUNING):
        raise ValueError(f"{TUNING_ENV}={text!r}: expected a JSON object with keys among "
                         f"{sorted(TUNING)}")
    for kind, knobs in values.items():
        unknown = set(knobs) - set(TUNING[kind]) if isinstance(knobs, dict) else {knobs}
        if unknown:
            raise ValueError(f"{TUNING_ENV}: unknown {kind} tuning keys {sorted(map(str, unknown))}: "
                             f"allowed are {sorted(TUNING[kind])}")
    return values


for _kind, _knobs in tuning_from_env(os.environ.get(TUNING_ENV)).items():
    TUNING[_kind].update(_knobs)


@functools.lru_cache(maxsize=None)
def launch_config(p: int, levels: int, D: int, kind: str) -> LaunchConfig:
    """Block sizes for one (p, levels, D) and kernel kind ('fwd' or 'bwd')."""
    tune = TUNING[kind]
    tile = p ** levels
    block_d = triton.next_power_of_2(D)

    def fit(elements, per_item, most):  # a power of two, at least 1, at most `most`
        return min(triton.next_power_of_2(most), max(1, elements // per_item))

    # Each row of an attention chunk keeps per-key state (gathered row addresses, scores) for
    # its p partners: bound rows per chunk by p, or small D would mean many rows and spills.
    max_rows = 1 << (128 // p).bit_length() - 1

    n_rows = (tile - p) // (p - 1)  # p + p**2 + ... + p**(levels-1)
    row_stride = -(-D // 16) * 16
    level1_first = kind == "fwd" and bool(tune.get("level1_first")) and levels > 1
    if kind == "fwd":  # pooled q, k, v sums and the top-down sum Z (and GELU(Y_1))
        floats = (FWD_REGIONS.value * n_rows + (tile if level1_first else 0)) * row_stride
    else:  # pooled q, k, v, dout; top-down dq, dk, dv; dY of a level; its softmax statistics
        floats = (BWD_REGIONS.value * n_rows + tile) * row_stride + 3 * tile
    return LaunchConfig(tile, n_rows, row_stride, max(16, -(-floats // 16) * 16),
                        block_r=fit(tune["chunk"], block_d, min(tile, max_rows)),
                        block_r_level=fit(tune["level_chunk"], block_d,
                                          min(max(1, tile // p), max_rows)),
                        block_r_pool=fit(tune["pool_chunk"], block_d, max(1, tile // p)),
                        block_d=block_d, num_warps=tune["num_warps"],
                        maxnreg=tune["maxnreg"], level1_first=level1_first)


def _meta(cfg: LaunchConfig, kind: str, p: int, levels: int, has_lengths: bool) -> dict:
    meta = dict(HAS_LENGTHS=has_lengths, P_WIN=p, LEVELS=levels, TILE=cfg.tile,
                N_ROWS=cfg.n_rows, DS=cfg.row_stride, PROGRAM_STRIDE=cfg.program_stride,
                BR=cfg.block_r, BR_LEVEL=cfg.block_r_level, BR_POOL=cfg.block_r_pool, BD=cfg.block_d,
                num_warps=cfg.num_warps)
    if kind == "fwd":
        meta["LEVEL1_FIRST"] = cfg.level1_first
    if cfg.maxnreg and not INTERPRET:
        meta["maxnreg"] = cfg.maxnreg
    return meta


# Per (kernel kind, p, levels, D, lengths or not, dtype, device index): the launch options and
# programs per SM of the compiled kernel. Kept apart from the call path: a call builds one
# small key, reads no device properties and allocates nothing (scratch below).
_PLAN_CACHE: dict = {}
_SM_COUNT: dict = {}
# Per (device index, stream): one fp32 scratch buffer, grown as needed and reused by every
# launch on that stream (launches on one stream run one after another, so they never share it
# concurrently). Launches being captured into a CUDA graph get their own, from the graph's pool.
_SCRATCH: dict = {}


def _occupancy(compiled, device: torch.device) -> int:
    """Programs of a compiled kernel that fit on one SM at once (registers, shared memory,
    threads)."""
    props = torch.cuda.get_device_properties(device)
    num_warps = compiled.metadata.num_warps
    regs_per_warp = -(-max(compiled.n_regs, 1) * 32 // 256) * 256  # allocation unit 256
    by_regs = REGISTERS_PER_SM // (regs_per_warp * num_warps)
    smem = compiled.metadata.shared
    smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    by_smem = smem_per_sm // smem if smem else MAX_PROGRAMS_PER_SM
    by_threads = props.max_threads_per_multi_processor // (32 * num_warps)
    return max(1, min(by_regs, by_smem, by_threads, MAX_PROGRAMS_PER_SM))


def _plan(key, kernel, tensors, scalars, meta, device: torch.device):
    """(launch options, programs per SM) for the kernel compiled for these arguments. The
    register cap is dropped where it makes ptxas spill (a cap is tuned for the common shapes),
    and the persistent grid launches exactly as many programs per SM as fit, so none waits."""
    plan = _PLAN_CACHE.get(key)
    if plan is None:
        probe = torch.empty(1, dtype=torch.float32, device=device)  # stands in for the scratch
        args = (*tensors, probe, *scalars)
        compiled = kernel.warmup(*args, grid=(1,), **meta)
        compiled._init_handles()
        if compiled.n_spills and "maxnreg" in meta:
            meta = {k: v for k, v in meta.items() if k != "maxnreg"}
            compiled = kernel.warmup(*args, grid=(1,), **meta)
            compiled._init_handles()
        if device.index not in _SM_COUNT:
            _SM_COUNT[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
        plan = _PLAN_CACHE[key] = (meta, _occupancy(compiled, device) * _SM_COUNT[device.index])
    return plan


def _launch(kernel, kind, tensors, scalars, meta, total_tiles, scratch_per_program, device,
            plan_key):
    """Launch the persistent grid over `total_tiles` tiles with a scratch per program."""
    if INTERPRET or device.type != "cuda":
        n_programs = INTERPRET_PROGRAMS
    else:
        meta, n_programs = _plan(plan_key, kernel, tensors, scalars, meta, device)
    if scratch_per_program:
        max_bytes = TUNING[kind]["scratch_mb"] << 20
        n_programs = min(n_programs, max(1, max_bytes // (4 * scratch_per_program)))
    n_programs = max(1, min(total_tiles, n_programs))
    scratch = _scratch(n_programs * scratch_per_program, device)
    kernel[(n_programs,)](*tensors, scratch, *scalars, **meta)


def _scratch(numel: int, device: torch.device) -> torch.Tensor:
    numel = max(1, numel)
    if INTERPRET or device.type != "cuda":
        # NaN-filled, so a read of a row the kernel never wrote shows up in the tests.
        return torch.full((numel,), float("nan"), dtype=torch.float32, device=device)
    if torch.cuda.is_current_stream_capturing():
        return torch.empty(numel, dtype=torch.float32, device=device)
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = _SCRATCH[key] = torch.empty(numel, dtype=torch.float32, device=device)
    return buffer


def free_scratch() -> None:
    """Gives the kept scratch buffers back to PyTorch's allocator (they are made again when
    needed)."""
    _SCRATCH.clear()


def _lengths_arg(lengths: Optional[torch.Tensor], q: torch.Tensor):
    return (lengths, True) if lengths is not None else (q, False)  # q: an unused valid pointer


def fractal_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lengths: Optional[torch.Tensor], p: int, levels: int,
                          scale: float) -> torch.Tensor:
    B, H, T, D = q.shape
    out = empty_output(q)
    cfg = launch_config(p, levels, D, "fwd")
    n_tiles = triton.cdiv(T, cfg.tile)
    lengths_ptr, has_lengths = _lengths_arg(lengths, q)
    scalars = (*q.stride(), *k.stride(), *v.stride(), *out.stride(),
               H, T, D, n_tiles, B * H * n_tiles, float(scale))
    _launch(fractal_fwd_kernel, "fwd", (q, k, v, out, lengths_ptr), scalars,
            _meta(cfg, "fwd", p, levels, has_lengths), B * H * n_tiles,
            cfg.program_stride, q.device,
            ("fwd", p, levels, cfg, has_lengths, q.dtype, q.device.index))
    return out


def fractal_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                          v: torch.Tensor, lengths: Optional[torch.Tensor], p: int,
                          levels: int, scale: float):
    B, H, T, D = q.shape
    dq, dk, dv = empty_output(q), empty_output(q), empty_output(q)
    cfg = launch_config(p, levels, D, "bwd")
    n_tiles = triton.cdiv(T, cfg.tile)
    lengths_ptr, has_lengths = _lengths_arg(lengths, q)
    if dout.dtype != q.dtype:  # autograd may hand a gradient of another dtype
        dout = dout.to(q.dtype)
    scalars = (*dout.stride(), *q.stride(), *k.stride(), *v.stride(), *dq.stride(),
               H, T, D, n_tiles, B * H * n_tiles, float(scale))
    _launch(fractal_bwd_kernel, "bwd", (dout, q, k, v, dq, dk, dv, lengths_ptr), scalars,
            _meta(cfg, "bwd", p, levels, has_lengths), B * H * n_tiles,
            cfg.program_stride, q.device,
            ("bwd", p, levels, cfg, has_lengths, q.dtype, q.device.index))
    return dq, dk, dv
