"""The one timing helper of the project's benchmarks (`mstr bench`, `pytest benchmarks`, the
scripts in benchmarks/): synchronized median timers in rounds with their spread, the load that
other processes put on the machine meanwhile, the copy bandwidth that defines the memory floor,
and peak memory.

GPU: `triton.testing.do_bench` (median, L2 flushed between calls) when Triton is there, else CUDA
events around each call. CPU: wall clock around each call (CPU ops are synchronous), cycling over
several input sets when one set would sit in cache, so the inputs come from memory as on a GPU.
The timed calls are split into rounds; a figure is the median over all of them, its spread the
lowest and highest round median. `noise_verdict` says when a figure is not to be trusted.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

# Input sets are rotated on CPU until they span this many bytes (beyond a server's L2 + L3 share).
CPU_ROTATE_BYTES = 64 * 2 ** 20
MAX_INPUT_SETS = 8
ROUNDS = 5
_CPU = torch.device("cpu")
# A figure is unreliable when its rounds' medians spread by more than this fraction of it...
SPREAD_LIMIT = 0.25
# ...or when other processes kept more than this many cores busy on average while it was timed
# (at least half a core, or a tenth of the machine's cores).
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


LOAD_LIMIT_CORES = max(0.5, 0.1 * _cores())


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` followed by a device synchronize, so that a wall clock around it (pytest-benchmark's)
    times the work and not its launch."""
    if device.type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize(device)
        return result
    return run


def call_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall milliseconds of one synchronized call (for scripts that interleave their own
    rounds; `measure` is the timer with warm-up, rounds and spread)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return 1e3 * (time.perf_counter() - start)


def input_sets_needed(device: torch.device, bytes_per_set: int) -> int:
    """How many input sets to cycle through so that timed calls read from memory, not cache."""
    if device.type == "cuda" or bytes_per_set <= 0:
        return 1  # do_bench / the event timer flush L2 themselves
    return max(1, min(MAX_INPUT_SETS, -(-CPU_ROTATE_BYTES // bytes_per_set)))


class OtherLoad:
    """Cores kept busy by other processes over a span of time: the machine's busy CPU time
    (/proc/stat) less this process's own (all its threads), over the wall time. Where there is
    no /proc/stat, the 1-minute load average less one (this process), at the end."""

    BASIS = ("cores busy with other processes while the figure was timed: /proc/stat busy time "
             "less this process's CPU time, over the wall time (else the load average less 1)")

    def __enter__(self):
        self._start = (time.perf_counter(), time.process_time(), _machine_busy_s())
        self.cores: Optional[float] = None
        return self

    def __exit__(self, *exc):
        wall0, own0, busy0 = self._start
        wall, own, busy = time.perf_counter() - wall0, time.process_time() - own0, _machine_busy_s()
        if busy is not None and busy0 is not None and wall > 0:
            self.cores = max(0.0, (busy - busy0 - own) / wall)
        elif hasattr(os, "getloadavg"):
            self.cores = max(0.0, os.getloadavg()[0] - 1.0)
        return False


def _machine_busy_s() -> Optional[float]:
    """Seconds of CPU time spent busy since boot by the cores this process may run on (Linux's
    per-core lines of /proc/stat), else None."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = None
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and ln[3:4].isdigit()]
    except OSError:
        return None
    busy = 0
    for name, *values in lines:
        if mine is not None and int(name[3:]) not in mine:
            continue
        # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
        fields = [int(x) for x in values[:8]]
        busy += sum(fields) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK") if lines else None


@dataclass
class Timing:
    """One figure: the median of all timed calls, the lowest and highest median of a round,
    how many rounds and calls, and the other processes' load meanwhile (cores, or None)."""
    median_ms: float
    min_ms: float
    max_ms: float
    rounds: int
    calls: int
    other_load_cores: Optional[float] = None

    @property
    def spread(self) -> float:
        """(highest - lowest round median) / median."""
        return (self.max_ms - self.min_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def noise_verdict(t: Timing, *, spread_limit: float = SPREAD_LIMIT,
                  load_limit: float = LOAD_LIMIT_CORES) -> Optional[str]:
    """None when the figure can be trusted, else why not (its spread, a co-running load)."""
    why = []
    if t.rounds > 1 and t.spread > spread_limit:
        why.append(f"rounds spread {100 * t.spread:.0f}% (round medians {t.min_ms:.4g} to "
                   f"{t.max_ms:.4g} ms, limit {100 * spread_limit:.0f}%)")
    if t.other_load_cores is not None and t.other_load_cores > load_limit:
        why.append(f"other processes kept {t.other_load_cores:.1f} of {_cores()} cores "
                   f"busy (limit {load_limit:.1f})")
    return "; ".join(why) or None


def noise_fields(t: Timing) -> dict:
    """A results row's spread (min/median/max ms over rounds), co-running load and verdict."""
    d = t.as_dict()
    return {"spread": {k: d[k] for k in ("min_ms", "median_ms", "max_ms", "rounds", "calls")},
            "other_load_cores": d["other_load_cores"], "unreliable": noise_verdict(t)}


def timing_from_rounds(rounds: Sequence[Sequence[float]], other_load_cores=None) -> Timing:
    """A Timing from per-call milliseconds grouped in rounds."""
    rounds = [list(r) for r in rounds if len(r)]
    every = [x for r in rounds for x in r]
    medians = [statistics.median(r) for r in rounds]
    return Timing(statistics.median(every), min(medians), max(medians), len(rounds), len(every),
                  other_load_cores)


def measure(fns: Sequence[Callable[[], object]], device: torch.device, *,
            budget_s: float = 0.5, min_reps: int = 5, max_reps: int = 200, warmup: int = 3,
            rounds: int = ROUNDS) -> Timing:
    """Time one call; `fns` are the same call on rotating input sets."""
    with OtherLoad() as load:
        if device.type == "cuda":
            per_round = _rounds_cuda(fns[0], budget_s, rounds)
        else:
            per_round = _rounds_cpu(fns, budget_s, min_reps, max_reps, warmup, rounds)
    return timing_from_rounds(per_round, load.cores)


def median_ms(fns: Sequence[Callable[[], object]], device: torch.device, **kwargs) -> float:
    """Median milliseconds of one call (`measure`, without the spread)."""
    return measure(fns, device, **kwargs).median_ms


def _rounds_cpu(fns, budget_s, min_reps, max_reps, warmup, rounds) -> List[List[float]]:
    for i in range(warmup):
        fns[i % len(fns)]()
    start = time.perf_counter()
    fns[0]()
    one = max(time.perf_counter() - start, 1e-6)
    reps = int(min(max_reps, max(min_reps, budget_s / one)))
    rounds = max(1, min(rounds, reps))
    times: List[List[float]] = [[] for _ in range(rounds)]
    for i in range(reps):
        times[i * rounds // reps].append(call_ms(fns[i % len(fns)], _CPU))
    return times


def _rounds_cuda(fn, budget_s, rounds) -> List[List[float]]:
    """One median per round (do_bench's), or per-call event times grouped in rounds."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    share = budget_s / rounds
    if do_bench is not None:
        return [[float(do_bench(fn, warmup=max(5, int(share * 250)), rep=max(1, int(share * 1000)),
                                return_mode="median"))] for _ in range(rounds)]
    # No Triton: CUDA events around each call, L2 flushed by a large write before each.
    flush = torch.empty(256 * 2 ** 20, dtype=torch.int8, device="cuda")
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        times: List[float] = []
        deadline = time.perf_counter() + share
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        out.append(times)
    return out


def copy_bandwidth_gbs(device: torch.device, nbytes: Optional[int] = None,
                       budget_s: float = 0.5) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 bytes), counting bytes read plus written."""
    return copy_bandwidth(device, nbytes, budget_s)[0]


def copy_bandwidth(device: torch.device, nbytes: Optional[int] = None,
                   budget_s: float = 0.5) -> Tuple[float, Timing]:
    """(GB/s, the copy's Timing): the bandwidth as `copy_bandwidth_gbs`, with its noise."""
    if nbytes is None:
        nbytes = 2 * 2 ** 30 if device.type == "cuda" else 256 * 2 ** 20
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timed = measure([lambda: dst.copy_(src)], device, budget_s=budget_s, min_reps=10)
    return 2 * src.numel() * 4 / (timed.median_ms * 1e-3) / 1e9, timed


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
