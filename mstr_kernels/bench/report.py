"""The run's environment, the table on screen, the PNG plots, and SPEC section 4's targets."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import List, Optional

import torch

# SPEC section 4 (the main GPU configuration and the CPU one).
GPU_MAIN = dict(dtype="bfloat16", B=32, H=16, D=64, T=4096, p=3, levels=4)
CPU_MAIN = dict(dtype="float32", B=8, H=16, D=64, T=1024, p=3, levels=4)
FUSED_GPU = ("cuda", "triton")


def _git_commit() -> Optional[str]:
    """The checkout's commit; MSTR_BENCH_COMMIT names it where the tree has no .git (a copy)."""
    if os.environ.get("MSTR_BENCH_COMMIT"):
        return os.environ["MSTR_BENCH_COMMIT"]
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                              capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             text=True, capture_output=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if gpu else _cpu_name(),
        "driver": _driver() if gpu else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "triton_tuning": _triton_tuning() if gpu else None,
    }


def _triton_tuning():
    """The Triton backend's launch knobs in effect (defaults or MSTR_KERNELS_TRITON_TUNING)."""
    try:
        from ..ops import triton_fractal
    except ImportError:
        return None
    return {kind: dict(knobs) for kind, knobs in triton_fractal.TUNING.items()}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_stem(env: dict) -> str:
    """`<device-name-slug>-<YYYY-MM-DD>`, the name of a committed results file."""
    return f"{slug(env['device_name'])}-{env['date'][:10]}"


def _fmt(x, spec):
    """`x` formatted by `spec` (e.g. "10.3f"), or a dash padded to the same width."""
    return "-".rjust(int(spec.split(".")[0])) if x is None else format(x, spec)


def table(rows: List[dict]) -> str:
    head = (f"{'contender':>18s} {'pass':7s} {'B':>3s} {'H':>3s} {'T':>6s} {'D':>4s} {'dtype':8s} "
            f"{'p':>2s} {'L':>2s} {'ms':>10s} {'GB/s':>8s} {'/floor':>8s} {'peakMB':>9s} "
            f"{'x ref':>7s} {'x comp':>7s} {'x sdpa':>7s} {'x flex':>7s}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['contender']:>18s} {r['pass']:7s} {r['B']:>3d} {r['H']:>3d} {r['T']:>6d} "
            f"{r['D']:>4d} {r['dtype']:8s} {r['p']:>2d} {r['levels']:>2d} "
            f"{_fmt(r['median_ms'], '10.3f')} {_fmt(r['gbs'], '8.1f')} "
            f"{_fmt(r['floor_ratio'], '8.2f')} {_fmt(r['peak_mem_mb'], '9.1f')} "
            f"{_fmt(r['speedup_vs_reference'], '7.2f')} "
            f"{_fmt(r['speedup_vs_compiled_reference'], '7.2f')} "
            f"{_fmt(r.get('speedup_vs_sdpa'), '7.2f')} {_fmt(r.get('speedup_vs_flex'), '7.2f')}  "
            f"{r.get('note') or ''}")  # the last column: never cut
    return "\n".join(lines)


def model_table(rows: List[dict]) -> str:
    """Wall ms per step beside busy ms (see the results' `busy_basis`)."""
    head = (f"{'model':>20s} {'mode':>26s} {'B':>3s} {'T':>6s} {'F':>5s} {'dtype':13s} "
            f"{'step ms':>10s} {'busy ms':>9s} {'peakMB':>9s} {'x ref':>6s}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:>20s} {r.get('mode', 'eager'):>26s} {r['B']:>3d} {r['T']:>6d} "
                     f"{r['F']:>5d} {r['dtype']:13s} {_fmt(r['step_ms'], '10.2f')} "
                     f"{_fmt(r.get('busy_ms'), '9.2f')} {_fmt(r['peak_mem_mb'], '9.1f')} "
                     f"{_fmt(r.get('speedup_vs_reference'), '6.2f')}  {r.get('note') or ''}")
    return "\n".join(lines)


def noise_warnings(result: dict) -> List[str]:
    """One WARNING line per figure flagged unreliable (its spread or a co-running load)."""
    out = []
    copy = result.get("copy_noise") or {}
    if copy.get("unreliable"):
        out.append(f"WARNING unreliable: the copy bandwidth (the memory floor of every /floor "
                   f"figure): {copy['unreliable']}")
    for r in result.get("rows", []):
        if r.get("unreliable"):
            out.append(f"WARNING unreliable: {r['contender']} {r['pass']} B={r['B']} H={r['H']} "
                       f"T={r['T']} D={r['D']} {r['dtype']}: {r['unreliable']}")
    for r in result.get("model_rows", []):
        if r.get("unreliable"):
            out.append(f"WARNING unreliable: {r['model']} {r.get('mode', 'eager')} B={r['B']} "
                       f"T={r['T']}: {r['unreliable']}")
    return out


def noise_summary(result: dict) -> dict:
    """The results' `noise` entry: how many figures are flagged, and the rule."""
    from . import timing
    flagged = [r for key in ("rows", "model_rows") for r in result.get(key, [])
               if r.get("unreliable")] + [1] * bool((result.get("copy_noise") or {}).get(
                   "unreliable"))
    return {"unreliable_figures": len(flagged), "spread_limit": timing.SPREAD_LIMIT,
            "load_limit_cores": timing.LOAD_LIMIT_CORES, "load_basis": timing.OtherLoad.BASIS,
            "spread_basis": "lowest and highest median of the timed rounds (spread.min_ms, "
                            "spread.max_ms) against the median of all calls"}


def _find(rows, contender, pass_, cfg):
    for r in rows:
        if (r["contender"] == contender and r["pass"] == pass_
                and all(r[k] == v for k, v in cfg.items())):
            return r
    return None


def targets(result: dict) -> List[dict]:
    """Each SPEC section 4 target: what it asks, the measured figure, and met / not met /
    not measured (with why)."""
    rows, model_rows = result.get("rows", []), result.get("model_rows", [])
    on_gpu = result["env"]["device"] == "cuda"
    out = []

    def add(what, target, value, ok, why=None):
        out.append({"target": what, "device": "cpu" if what.startswith("CPU") else "cuda",
                    "wanted": target, "value": value,
                    "status": "not measured" if value is None else ("met" if ok else "not met"),
                    "why": why if value is None else None})

    gpu_why = None if on_gpu else "needs a CUDA GPU run"
    for backend in FUSED_GPU:
        label = f"{backend}, CUDA bf16 B=32 H=16 D=64 T=4096 p=3 L=4"
        fwd = _find(rows, backend, "fwd", GPU_MAIN) if on_gpu else None
        both = _find(rows, backend, "fwd+bwd", GPU_MAIN) if on_gpu else None
        why = gpu_why or "no row for this configuration"
        for what, r, field, bound, cmp in (
                ("forward time / floor", fwd, "floor_ratio", 1.25, "le"),
                ("forward+backward time / floor", both, "floor_ratio", 1.6, "le"),
                ("forward+backward speedup vs reference eager", both, "speedup_vs_reference", 15, "ge"),
                ("forward+backward speedup vs compiled reference", both,
                 "speedup_vs_compiled_reference", 3, "ge")):
            v = r[field] if r else None
            add(f"{label}: {what}", f"{'<=' if cmp == 'le' else '>='} {bound}", v,
                v is not None and (v <= bound if cmp == "le" else v >= bound),
                (r["note"] if r and r["note"] else why))
        held = both["held_for_backward_mb"] if both else None
        add(f"{label}: extra memory held between forward and backward (MiB)", "0", held,
            held is not None and held < 1.0, why)
    def paper_step(model, B=32, T=326, compiled=False):  # the paper's training step, measured
        return next((r for r in model_rows if r["model"] == model and r["B"] == B
                     and r["T"] == T and r["F"] == 1024 and r["step_ms"]
                     and bool(r.get("compiled")) == compiled), None) if on_gpu else None

    ref = paper_step("MSTR[reference]")
    for backend in FUSED_GPU:
        fused = paper_step(f"MSTR[{backend}]")
        v = ref["step_ms"] / fused["step_ms"] if fused and ref else None
        add(f"MSTR training step B=32 T=326 F=1024 bf16 autocast, {backend} vs reference op",
            ">= 1.5", v, v is not None and v >= 1.5, gpu_why or "no model rows for it")
    for B, T, bound in ((32, 326, 1.0), (8, 1024, 0.75)):
        vanilla = paper_step("vanilla", B, T, compiled=True)
        for backend in FUSED_GPU:
            fused = paper_step(f"MSTR[{backend}]", B, T, compiled=True)
            v = fused["step_ms"] / vanilla["step_ms"] if fused and vanilla else None
            add(f"compiled MSTR[{backend}] training step / compiled vanilla step, B={B} T={T} "
                f"F=1024 bf16 autocast", f"<= {bound}", v, v is not None and v <= bound,
                gpu_why or "no compiled model rows for it")
    # Issue 15: a step bound by the GPU, not the host, and one that scales with the work.
    for backend in FUSED_GPU:
        fused = paper_step(f"MSTR[{backend}]", compiled=True)
        busy = fused.get("busy_ms") if fused else None
        v = fused["step_ms"] / busy if busy else None
        add(f"compiled MSTR[{backend}] training step B=32 T=326 F=1024: wall / GPU busy time",
            "<= 1.3", v, v is not None and v <= 1.3,
            gpu_why or "no compiled model row with a busy time for it")
        small = paper_step(f"MSTR[{backend}]", 8, 326, compiled=True)
        v = small["step_ms"] / fused["step_ms"] if small and fused else None
        add(f"compiled MSTR[{backend}] training step B=8 / B=32, T=326 F=1024", "<= 0.5", v,
            v is not None and v <= 0.5, gpu_why or "no compiled model rows at B=8 and B=32")
    cpu = _find(rows, "cpu", "fwd+bwd", CPU_MAIN) if not on_gpu else None
    cpu_why = ("a CPU run covers it" if on_gpu else
               "no row for CPU float32 B=8 H=16 D=64 T=1024 p=3 L=4 (run without --quick)")
    for what, field, bound in (("vs reference eager", "speedup_vs_reference", 5),
                               ("vs compiled reference", "speedup_vs_compiled_reference", 1.5)):
        v = cpu[field] if cpu else None
        add(f"CPU backend float32 B=8 H=16 D=64 T=1024 forward+backward {what}", f">= {bound}", v,
            v is not None and v >= bound, (cpu["note"] if cpu and cpu["note"] else cpu_why))
    return out


def targets_text(items: List[dict], device: Optional[str] = None) -> str:
    """One line per target; only the targets of `device` when it is given."""
    lines = []
    for t in items:
        if device and t["device"] != device:
            continue
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  [{t['status']:>12s}] {t['target']}: {value} (target {t['wanted']})"
                     + (f" - {t['why']}" if t["why"] else ""))
    return "\n".join(lines)


# Contenders are told apart by colour, marker shape and size: the markers are hollow and each
# next contender's is smaller, so that equal values (one line on another) still show all of them.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
LINESTYLES = ("-", "--", "-.", ":")


def _style(i: int, color) -> dict:
    return dict(color=color, marker=MARKERS[i % len(MARKERS)],
                linestyle=LINESTYLES[i % len(LINESTYLES)], markersize=max(3.0, 11.0 - 1.5 * i),
                markerfacecolor="none", markeredgewidth=1.4, linewidth=1.4, zorder=2 + i)


def _memory_label(result: dict) -> str:
    if result["env"]["device"] == "cuda":
        return "peak memory (MiB): torch.cuda.max_memory_allocated, inputs included"
    return ("peak CPU memory (MiB): a lower bound (torch profiler: allocations net of frees; "
            "temporaries freed inside one op unseen)")


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, right of the axes, so that it covers no line."""
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def plot_figures(result: dict) -> List[tuple]:
    """(figure, file name) pairs: time vs T (log-log, a line per contender, the memory floor
    dashed) and peak memory vs T, one pair per fixed (B, H, D, dtype, p, levels); plus the
    model's training step (wall and busy time) and peak memory vs T."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    rows = [r for r in result["rows"] if r["median_ms"]]
    groups = {}
    for r in rows:
        groups.setdefault((r["B"], r["H"], r["D"], r["dtype"], r["p"], r["levels"]), []).append(r)
    device = result["env"]["device_name"]
    gpu = result["env"]["device"] == "cuda"
    # One colour and marker per contender across every panel and file.
    names = sorted({r["contender"] for r in result["rows"]})
    style = {n: _style(i, plt.get_cmap("tab10")(i % 10)) for i, n in enumerate(names)}
    time_label = ("median time per call (ms): triton do_bench, L2 flushed" if gpu
                  else "median wall time per call (ms)")
    for (B, H, D, dtype, p, levels), group in groups.items():
        tag = f"B{B}-H{H}-D{D}-{dtype}-p{p}-L{levels}"
        for metric, ylabel, fname in (("median_ms", time_label, "time"),
                                      ("peak_mem_mb", _memory_label(result), "memory")):
            fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
            for ax, pass_ in zip(axes, ("fwd", "fwd+bwd")):
                for name in sorted({r["contender"] for r in group}):
                    pts = sorted((r["T"], r[metric]) for r in group
                                 if r["contender"] == name and r["pass"] == pass_ and r[metric])
                    if pts:
                        ax.plot(*zip(*pts), label=name, **style[name])
                if metric == "median_ms":
                    floor = sorted((r["T"], r["median_ms"] / r["floor_ratio"]) for r in group
                                   if r["pass"] == pass_ and r["contender"] == group[0]["contender"])
                    if floor:
                        ax.plot(*zip(*floor), "k--", label="memory floor", zorder=1)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("T (frames)")
                ax.set_ylabel(ylabel if len(ylabel) < 60 else ylabel.split(":")[0], fontsize=9)
                ax.set_title(f"{pass_}: B={B} H={H} D={D} {dtype} p={p} L={levels}", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
            _legend_outside(fig, axes)
            fig.suptitle(f"fractal attention on {device}: {ylabel}", fontsize=10)
            fig.tight_layout()
            figures.append((fig, f"op-{fname}-{tag}.png"))
    sweep = [r for r in result.get("model_rows", []) if r.get("sweep") and r["step_ms"]
             and not r.get("compiled")]
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        models = sorted({r["model"] for r in sweep})
        mstyle = {n: _style(i, plt.get_cmap("tab10")(i % 10)) for i, n in enumerate(models)}
        for ax, metric, ylabel in ((axes[0], "step_ms", "eager training step (ms)"),
                                   (axes[1], "peak_mem_mb", "peak memory (MiB)")):
            for name in models:
                pts = sorted((r["T"], r[metric]) for r in sweep if r["model"] == name and r[metric])
                if pts:
                    ax.plot(*zip(*pts), label=f"{name} wall" if metric == "step_ms" else name,
                            **mstyle[name])
                busy = sorted((r["T"], r["busy_ms"]) for r in sweep
                              if r["model"] == name and r.get("busy_ms"))
                if metric == "step_ms" and busy:
                    ax.plot(*zip(*busy), label=f"{name} busy",
                            **dict(mstyle[name], linestyle=":", linewidth=1.0))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T (frames)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        _legend_outside(fig, axes)
        fig.suptitle(f"model training step vs T on {device} (linear vs quadratic): wall time"
                     + (", busy = GPU kernels (profiler)" if gpu else "") + "; memory: "
                     + ("max_memory_allocated" if gpu else "profiler lower bound"), fontsize=10)
        fig.tight_layout()
        figures.append((fig, "model-step-vs-T.png"))
    return figures


def plots(result: dict, out_dir: Path) -> List[Path]:
    """The figures of `plot_figures`, written as PNG files into `out_dir`."""
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fig, name in plot_figures(result):
        path = out_dir / name
        fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": the legend right of the axes
        plt.close(fig)
        written.append(path)
    return written
