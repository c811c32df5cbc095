"""Synchronized median timers, the copy bandwidth that defines the memory floor, and peak memory.

GPU: `triton.testing.do_bench` (median, L2 flushed between calls) when Triton is there, else CUDA
events around each call. CPU: wall clock around each call (CPU ops are synchronous), cycling over
several input sets when one set would sit in cache, so the inputs come from memory as on a GPU.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence, Tuple

import torch

# Input sets are rotated on CPU until they span this many bytes (beyond a server's L2 + L3 share).
CPU_ROTATE_BYTES = 64 * 2 ** 20
MAX_INPUT_SETS = 8


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_sets_needed(device: torch.device, bytes_per_set: int) -> int:
    """How many input sets to cycle through so that timed calls read from memory, not cache."""
    if device.type == "cuda" or bytes_per_set <= 0:
        return 1  # do_bench / the event timer flush L2 themselves
    return max(1, min(MAX_INPUT_SETS, -(-CPU_ROTATE_BYTES // bytes_per_set)))


def median_ms(fns: Sequence[Callable[[], object]], device: torch.device, *,
              budget_s: float = 0.5, min_reps: int = 5, max_reps: int = 200,
              warmup: int = 3) -> float:
    """Median milliseconds of one call; `fns` are the same call on rotating input sets."""
    if device.type == "cuda":
        return _median_ms_cuda(fns, budget_s)
    for i in range(warmup):
        fns[i % len(fns)]()
    start = time.perf_counter()
    fns[0]()
    one = max(time.perf_counter() - start, 1e-6)
    reps = int(min(max_reps, max(min_reps, budget_s / one)))
    times = []
    for i in range(reps):
        fn = fns[i % len(fns)]
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _median_ms_cuda(fns, budget_s):
    fn = fns[0]
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return float(do_bench(fn, warmup=max(5, int(budget_s * 250)), rep=int(budget_s * 1000),
                              return_mode="median"))
    # No Triton: CUDA events around each call, L2 flushed by a large write before each.
    flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 10 or (time.perf_counter() < deadline and len(times) < 1000):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device, nbytes: Optional[int] = None,
                       budget_s: float = 0.5) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 bytes), counting bytes read plus written."""
    if nbytes is None:
        nbytes = 2 * 2 ** 30 if device.type == "cuda" else 256 * 2 ** 20
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = median_ms([lambda: dst.copy_(src)], device, budget_s=budget_s, min_reps=10)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Tuple[Optional[float], Optional[str]]:
    """Peak bytes allocated during `fn()` (inputs included), in MiB, or (None, reason)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 20, None
    return cpu_peak_memory_mb(fn)


def cpu_peak_memory_mb(fn) -> Tuple[Optional[float], Optional[str]]:
    """Peak of the CPU allocator during `fn()` above what was live before, in MiB: the running
    sum, in time order, of each profiled op's own allocations net of its own frees (frees outside
    any op are `[memory]` events). Temporaries an op allocates and frees inside itself are not
    seen, so this is a lower bound of the true peak."""
    from torch.profiler import ProfilerActivity, profile

    from .quiet import profiler_noise_filtered
    try:
        with profiler_noise_filtered():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
            events = prof.events()
    except Exception as e:  # the profiler is optional tooling: say why there is no figure
        return None, f"torch profiler failed: {type(e).__name__}: {e}"
    records = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in events
                     if e.self_cpu_memory_usage)
    if not records:
        return None, "the torch profiler recorded no CPU allocations"
    live = peak = 0
    for _, delta in records:
        live += delta
        peak = max(peak, live)
    return peak / 2 ** 20, None
