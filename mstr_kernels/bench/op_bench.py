"""The op benchmark: every contender, forward and forward+backward, over a sweep of shapes.

Each row is one (contender, pass, shape): the median time, the achieved GB/s of the op's
compulsory traffic, its ratio to the memory floor (that traffic at the copy bandwidth measured
in the same run, SPEC section 4), peak memory, and speedups against the reference (eager and
torch.compile'd) on the same shape and pass; the time's spread over rounds, the other processes'
load meanwhile, and `unreliable` (why the figure is not to be trusted, or None).
"""
from __future__ import annotations

import gc
import itertools
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from . import timing
from .contenders import (COMPILED_REFERENCE, FLEX, REFERENCE, SDPA, Contender, Shape,
                         build_contenders, verify)

log = logging.getLogger("mstr_kernels.bench")

PASSES = ("fwd", "fwd+bwd")
# Tensors of shape (B, H, T, D) the op must move at least once: fwd reads q, k, v and writes out;
# bwd reads q, k, v, dout and writes dq, dk, dv; fwd+bwd is the sum (SPEC section 4).
TENSORS_MOVED = {"fwd": 4, "bwd": 7, "fwd+bwd": 11}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64, "fp32": torch.float32, "fp16": torch.float16,
          "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def floor_bytes(shape: Shape, pass_: str) -> int:
    return TENSORS_MOVED[pass_] * shape.numel * torch.empty((), dtype=shape.dtype).element_size()


@dataclass
class Sweep:
    T: Sequence[int]
    B: Sequence[int]
    H: Sequence[int]
    D: Sequence[int]
    dtype: Sequence[str]
    p: Sequence[int]
    levels: Sequence[int]

    def shapes(self) -> List[Shape]:
        return [Shape(B, H, T, D, DTYPES[dt], p, lv) for dt, p, lv, B, H, D, T in
                itertools.product(self.dtype, self.p, self.levels, self.B, self.H, self.D, self.T)]


def _pass_callable(fn, pass_, q, k, v, dout):
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                return fn(q, k, v)
        return run

    def run_fwd_bwd():
        out = fn(q, k, v)
        return torch.autograd.grad(out, (q, k, v), dout)
    return run_fwd_bwd


def _held_for_backward_mb(fn, q, k, v, device) -> Optional[float]:
    """Memory the autograd graph keeps between forward and backward beyond inputs and output."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = fn(q, k, v)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before - out.untyped_storage().nbytes()
    del out
    return max(held, 0) / 2 ** 20


def _row(contender: str, pass_: str, shape: Shape, **fields) -> dict:
    row = {"contender": contender, "pass": pass_, "B": shape.B, "H": shape.H, "T": shape.T,
           "D": shape.D, "dtype": dtype_name(shape.dtype), "p": shape.p, "levels": shape.levels,
           "median_ms": None, "gbs": None, "floor_ratio": None, "peak_mem_mb": None,
           "held_for_backward_mb": None, "speedup_vs_reference": None,
           "speedup_vs_compiled_reference": None, "speedup_vs_sdpa": None,
           "speedup_vs_flex": None, "spread": None, "other_load_cores": None,
           "unreliable": None, "note": None}
    row.update(fields)
    return row


def measure(contender: Contender, shape: Shape, pass_: str, device: torch.device,
            copy_gbs: float, budget_s: float) -> dict:
    """One row; an out-of-memory or a failure becomes the row's note, not a crash."""
    if contender.fn is None:
        return _row(contender.name, pass_, shape, note=f"unavailable: {contender.unavailable}")
    if pass_ != "fwd" and contender.no_backward:
        return _row(contender.name, pass_, shape, note=f"no backward: {contender.no_backward}")
    grad = pass_ != "fwd"
    nbytes = floor_bytes(shape, pass_)
    n_sets = timing.input_sets_needed(device, 4 * shape.numel * shape.dtype.itemsize)
    inputs, sets, note = [], [], None
    try:
        gen = torch.Generator(device=device).manual_seed(1)
        for _ in range(n_sets):
            inputs.append([shape.tensor(device, requires_grad=grad and i < 3, generator=gen)
                           for i in range(4)])
            sets.append(_pass_callable(contender.fn, pass_, *inputs[-1]))
        sets[0]()  # compiles where the contender compiles, before anything is timed
        timing.synchronize(device)
        timed = timing.measure(sets, device, budget_s=budget_s)
        ms = timed.median_ms
        peak = held = None
        try:  # a failure here (an OOM at the edge) keeps the time measured above
            peak, peak_why = timing.peak_memory_mb(sets[0], device)
            held = _held_for_backward_mb(contender.fn, *inputs[0][:3], device) if grad else None
        except Exception as e:
            peak_why = "out of memory" if timing.is_oom(e) else f"{type(e).__name__}: {e}"
    except Exception as e:
        note = ("out of memory" if timing.is_oom(e) else
                f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        log.warning("%s %s %s: %s", contender.name, pass_, shape, note)
    # Out of the handler, so that the traceback's frames no longer hold the inputs.
    del inputs, sets
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    if note:
        return _row(contender.name, pass_, shape, note=note)
    floor_ms = nbytes / (copy_gbs * 1e9) * 1e3
    return _row(contender.name, pass_, shape, median_ms=ms, gbs=nbytes / (ms * 1e-3) / 1e9,
                floor_ratio=ms / floor_ms, peak_mem_mb=peak, held_for_backward_mb=held,
                **timing.noise_fields(timed),
                note=None if peak is not None else f"peak memory not measured: {peak_why}")


SPEEDUP_FIELDS = ((REFERENCE, "speedup_vs_reference"),
                  (COMPILED_REFERENCE, "speedup_vs_compiled_reference"),
                  (SDPA, "speedup_vs_sdpa"), (FLEX, "speedup_vs_flex"))


def add_speedups(rows: List[dict]) -> None:
    """speedup_vs_X = contender X's median time over this row's, same shape and pass."""
    key = lambda r: (r["pass"], r["B"], r["H"], r["T"], r["D"], r["dtype"], r["p"], r["levels"])  # noqa: E731
    base: Dict[tuple, Dict[str, float]] = {}
    names = {name for name, _ in SPEEDUP_FIELDS}
    for r in rows:
        if r["contender"] in names and r["median_ms"]:
            base.setdefault(key(r), {})[r["contender"]] = r["median_ms"]
    for r in rows:
        b = base.get(key(r), {})
        if r["median_ms"]:
            for name, field in SPEEDUP_FIELDS:
                if name in b:
                    r[field] = b[name] / r["median_ms"]


def run_op_bench(sweep: Sweep, device: torch.device, copy_gbs: float, *,
                 contenders: Optional[Sequence[str]] = None, budget_s: float = 0.5,
                 progress=print, rows: Optional[List[dict]] = None, on_row=None) -> List[dict]:
    """Rows in sweep order, appended to `rows` (a new list if None); `on_row()` after each, so a
    caller can save partial results of a run that is cut short."""
    rows = [] if rows is None else rows
    verified: Dict[tuple, Contender] = {}
    for shape in sweep.shapes():
        for contender in build_contenders(shape, device, list(contenders) if contenders else None):
            if contender.name == FLEX and contender.fn is not None:
                # FlexAttention must compute the reference's function: checked once per
                # (dtype, D, p, levels) on a small input before it is timed.
                key = (shape.dtype, shape.D, shape.p, shape.levels)
                if key not in verified:
                    verify(contender, shape, device)
                    verified[key] = contender
                prior = verified[key]
                contender.unavailable, contender.no_backward = prior.unavailable, prior.no_backward
                if prior.unavailable:
                    contender.fn = None
            for pass_ in PASSES:
                row = measure(contender, shape, pass_, device, copy_gbs, budget_s)
                rows.append(row)
                add_speedups(rows)
                progress(_progress_line(row))
                if on_row:
                    on_row()
    return rows


def _progress_line(r: dict) -> str:
    what = (f"{r['median_ms']:.3f} ms, {r['floor_ratio']:.2f}x floor" if r["median_ms"]
            else r["note"])
    if r.get("unreliable"):
        what += f" (UNRELIABLE: {r['unreliable']})"
    return (f"  {r['contender']:>18s} {r['pass']:7s} B={r['B']} H={r['H']} T={r['T']} D={r['D']} "
            f"{r['dtype']} p={r['p']} L={r['levels']}: {what}")
