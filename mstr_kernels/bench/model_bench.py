"""The model benchmark: one training step (forward, loss, backward, Adam step) of MSTR per
backend and of the vanilla Transformer (full attention by SDPA), each eager and compiled as
`mstr train` compiles it (`models.training_speed`), with the wall time per step beside the
device's busy time from the profiler (a wall time well above the busy time is a host-bound
step), and peak memory; and a sweep of T (eager) that shows MSTR's linear growth against the
vanilla model's quadratic one."""
from __future__ import annotations

import gc
import logging
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mstr_kernels.models import MSTR, MSTRConfig, VanillaTransformer
from mstr_kernels.models.training_speed import compile_model, default_compile_mode, make_adam

from . import timing

log = logging.getLogger("mstr_kernels.bench")

BUSY_BASIS = {
    "cuda": "GPU busy time per step: the union of the CUDA kernels' intervals (torch profiler) "
            "over a few steps, divided by the steps",
    "cpu": "n/a on the CPU: the host does the work itself, and the profiler's own cost per "
           "recorded op (a small step ran several times slower profiled) makes op time under "
           "it no measure of host overhead; the wall time is the figure",
}
PROFILED_STEPS = 3


def union_ms(intervals: Sequence[Tuple[float, float]]) -> float:
    """Total length (in the intervals' unit, microseconds from the profiler, divided by 1e3)
    covered by possibly overlapping (start, end) intervals: kernels on several streams count
    once."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total / 1e3


def busy_ms_per_step(step: Callable[[], object], device: torch.device,
                     steps: int = PROFILED_STEPS) -> Tuple[Optional[float], Optional[str]]:
    """(busy ms per step, None) on CUDA as BUSY_BASIS says, or (None, why not)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    if device.type != "cuda":
        return None, None  # n/a: BUSY_BASIS["cpu"]
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            timing.synchronize(device)
        events = prof.events()
    except Exception as e:  # the profiler is optional tooling: say why there is no figure
        return None, f"torch profiler failed: {type(e).__name__}: {e}"
    kernels = [(e.time_range.start, e.time_range.end) for e in events
               if e.device_type == DeviceType.CUDA]
    if not kernels:
        return None, "the torch profiler recorded no CUDA kernels"
    return union_ms(kernels) / steps, None


def _step_fn(model, x, lengths, labels, device, autocast_dtype):
    opt = make_adam(model.parameters(), 1e-4, device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x, lengths=lengths), labels)
        loss.backward()
        opt.step()
    return step


def _measure_step(step, device, steps, budget_s) -> dict:
    """Wall time per step (synchronized; spread over rounds), busy time, peak memory, and the
    seconds of the first steps (a compiled model compiles there)."""
    t0 = time.perf_counter()
    for _ in range(3):  # warm-up: compiled, kernels autotuned, Adam state allocated
        step()
    timing.synchronize(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: List[float] = []
    with timing.OtherLoad() as load:
        deadline = time.perf_counter() + budget_s
        while len(times) < steps or (time.perf_counter() < deadline and len(times) < 10 * steps):
            t = time.perf_counter()
            step()
            timing.synchronize(device)
            times.append(1e3 * (time.perf_counter() - t))
    rounds = min(timing.ROUNDS, len(times))
    timed = timing.timing_from_rounds([times[i::rounds] for i in range(rounds)], load.cores)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:  # above what was live before the step (model, Adam state and inputs excluded)
        peak, _ = timing.cpu_peak_memory_mb(step)
    busy, busy_why = busy_ms_per_step(step, device)
    return {"step_ms": timed.median_ms, "busy_ms": busy, "peak_mem_mb": peak,
            "warmup_s": warmup_s, **timing.noise_fields(timed),
            "note": f"busy time not measured: {busy_why}" if busy_why else None}


def run_model_bench(device: torch.device, backends: Sequence[str], *, B: int, T: int,
                    F_dim: int, sweep_T: Sequence[int] = (), sweep_B: Optional[int] = None,
                    num_layers: int = 4, num_heads: int = 16, steps: int = 5,
                    budget_s: float = 2.0, progress=print, rows: Optional[List[dict]] = None,
                    on_row=None, include_main: bool = True, compiled: Sequence[str] = None,
                    compiled_sweep_T: Sequence[int] = (), compile_mode: Optional[str] = None
                    ) -> List[dict]:
    """Rows: model ("MSTR[<backend>]" or "vanilla"), compiled (bool), mode ("eager" or the
    compile mode), B, T, F, dtype, step_ms (wall, median), busy_ms (BUSY_BASIS), spread,
    peak_mem_mb, warmup_s, speedup_vs_reference (MSTR on the reference op, eager, over this
    row), sweep (bool), note. `compiled`: the models ("MSTR[<backend>]", "vanilla") that also
    get a compiled row at the main configuration (None: all) and at the sweep's T in
    `compiled_sweep_T`. Rows are appended to `rows`
    (a new list if None) and `on_row()` is called after each, so a caller can save partial
    results. `include_main=False` runs the T sweep only."""
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    dtype_label = "bf16-autocast" if autocast_dtype else "float32"
    mode = compile_mode or default_compile_mode(device)
    contenders = ([(f"MSTR[{b}]", MSTR, b) for b in backends]
                  + [("vanilla", VanillaTransformer, "auto")])
    configs = [(B, T, False)] * include_main + [(sweep_B or B, t, True) for t in sweep_T]
    rows = [] if rows is None else rows
    for b, t, is_sweep in configs:
        for name, cls, backend in contenders:
            if is_sweep and name not in ("vanilla", f"MSTR[{backends[0]}]"):
                continue  # the sweep compares growth: the fastest MSTR against vanilla
            # The sweep is eager but at `compiled_sweep_T`: a compilation per T costs more
            # than the sweep.
            with_compiled = ((not is_sweep or t in compiled_sweep_T)
                             and (compiled is None or name in compiled))
            variants = [False] + [True] * with_compiled
            for is_compiled in variants:
                row = _run_one(name, cls, backend, device, b, t, F_dim, num_layers, num_heads,
                               autocast_dtype, steps, budget_s, is_compiled and mode)
                row.update(sweep=is_sweep, dtype=dtype_label)
                rows.append(row)
                _add_speedups(rows)
                if on_row:
                    on_row()
                what = (f"{row['step_ms']:.2f} ms/step" if row["step_ms"] else row["note"])
                if row["step_ms"] and row["busy_ms"] is not None:
                    what += f", busy {row['busy_ms']:.2f} ms"
                if row.get("unreliable"):
                    what += f" (UNRELIABLE: {row['unreliable']})"
                progress(f"  {name:>20s} {row['mode']:>26s} B={b} T={t} F={F_dim} "
                         f"{dtype_label}: {what}")
    return rows


def _run_one(name, cls, backend, device, b, t, F_dim, num_layers, num_heads, autocast_dtype,
             steps, budget_s, mode) -> dict:
    row = {"model": name, "backend": backend, "compiled": bool(mode), "mode": mode or "eager",
           "B": b, "T": t, "F": F_dim, "layers": num_layers, "heads": num_heads,
           "step_ms": None, "busy_ms": None, "peak_mem_mb": None, "warmup_s": None,
           "spread": None, "other_load_cores": None, "unreliable": None,
           "speedup_vs_reference": None, "note": None}
    model = x = None
    try:
        torch.manual_seed(0)
        cfg = MSTRConfig(feature_dim=F_dim, num_classes=4, num_layers=num_layers,
                         num_heads=num_heads, p=3, levels=4, dropout=0.1, backend=backend)
        model = cls(cfg).to(device).train()
        net = compile_model(model, device, mode=mode) if mode else model
        x = torch.randn(b, t, F_dim, device=device)
        # Ragged batch as in training: lengths between half of T and T.
        lengths = torch.randint(max(1, t // 2), t + 1, (b,), device=device)
        lengths[0] = t
        labels = torch.randint(0, 4, (b,), device=device)
        step = _step_fn(net, x, lengths, labels, device, autocast_dtype)
        row.update(_measure_step(step, device, steps, budget_s))
    except Exception as e:
        row["note"] = ("out of memory" if timing.is_oom(e)
                       else f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    model = x = None
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return row


def _add_speedups(rows: List[dict]) -> None:
    for r in rows:
        ref = next((x for x in rows if x["model"] == "MSTR[reference]" and not x["compiled"]
                    and x["B"] == r["B"] and x["T"] == r["T"] and x["step_ms"]), None)
        if ref and r["step_ms"]:
            r["speedup_vs_reference"] = ref["step_ms"] / r["step_ms"]
