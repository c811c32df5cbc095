"""The model benchmark: one MSTR training step (forward, backward, Adam step) per backend and
for the vanilla Transformer (full attention by SDPA), time and peak memory; and a sweep of T
that shows MSTR's linear growth against the vanilla model's quadratic one."""
from __future__ import annotations

import gc
import logging
import statistics
import time
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mstr_kernels.models import MSTR, MSTRConfig, VanillaTransformer

from . import timing

log = logging.getLogger("mstr_kernels.bench")


def _step_ms(model, x, lengths, labels, device, autocast_dtype, steps, budget_s) -> Tuple[float, float]:
    """Median training-step time (ms) and peak memory (MiB) of forward, loss, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x, lengths=lengths), labels)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: kernels compiled and autotuned, Adam state allocated
        step()
    timing.synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < steps or (time.perf_counter() < deadline and len(times) < 10 * steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t0))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:  # above what was live before the step (model, Adam state and inputs excluded)
        peak, _ = timing.cpu_peak_memory_mb(step)
    return statistics.median(times), peak


def run_model_bench(device: torch.device, backends: Sequence[str], *, B: int, T: int,
                    F_dim: int, sweep_T: Sequence[int] = (), sweep_B: Optional[int] = None,
                    num_layers: int = 4, num_heads: int = 16, steps: int = 5,
                    budget_s: float = 2.0, progress=print, rows: Optional[List[dict]] = None,
                    on_row=None, include_main: bool = True) -> List[dict]:
    """Rows: model ("MSTR[<backend>]" or "vanilla"), B, T, F, dtype, step_ms, peak_mem_mb,
    speedup_vs_reference (MSTR on the reference op over this row), sweep (bool), note.
    Rows are appended to `rows` (a new list if None) and `on_row()` is called after each, so a
    caller can save partial results. `include_main=False` runs the T sweep only."""
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    dtype_label = "bf16-autocast" if autocast_dtype else "float32"
    contenders = ([(f"MSTR[{b}]", MSTR, b) for b in backends]
                  + [("vanilla", VanillaTransformer, "auto")])
    configs = [(B, T, False)] * include_main + [(sweep_B or B, t, True) for t in sweep_T]
    rows = [] if rows is None else rows
    for b, t, is_sweep in configs:
        for name, cls, backend in contenders:
            if is_sweep and name not in ("vanilla", f"MSTR[{backends[0]}]"):
                continue  # the sweep compares growth: the fastest MSTR against vanilla
            row = {"model": name, "backend": backend, "B": b, "T": t, "F": F_dim,
                   "dtype": dtype_label, "layers": num_layers, "heads": num_heads,
                   "step_ms": None, "peak_mem_mb": None, "speedup_vs_reference": None,
                   "sweep": is_sweep, "note": None}
            try:
                torch.manual_seed(0)
                cfg = MSTRConfig(feature_dim=F_dim, num_classes=4, num_layers=num_layers,
                                 num_heads=num_heads, p=3, levels=4, dropout=0.1, backend=backend)
                model = cls(cfg).to(device).train()
                x = torch.randn(b, t, F_dim, device=device)
                # Ragged batch as in training: lengths between half of T and T.
                lengths = torch.randint(max(1, t // 2), t + 1, (b,), device=device)
                lengths[0] = t
                labels = torch.randint(0, 4, (b,), device=device)
                row["step_ms"], row["peak_mem_mb"] = _step_ms(
                    model, x, lengths, labels, device, autocast_dtype, steps, budget_s)
            except Exception as e:
                row["note"] = ("out of memory" if timing.is_oom(e)
                               else f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            model = x = None
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
            rows.append(row)
            _add_speedups(rows)
            if on_row:
                on_row()
            progress(f"  {name:>20s} B={b} T={t} F={F_dim} {dtype_label}: "
                     + (f"{row['step_ms']:.2f} ms/step" if row["step_ms"] else row["note"]))
    return rows


def _add_speedups(rows: List[dict]) -> None:
    for r in rows:
        ref = next((x for x in rows if x["model"] == "MSTR[reference]" and x["B"] == r["B"]
                    and x["T"] == r["T"] and x["step_ms"]), None)
        if ref and r["step_ms"]:
            r["speedup_vs_reference"] = ref["step_ms"] / r["step_ms"]
