"""Per-call host overhead of the op against SDPA's, in one run (issue 15, SPEC section 4 target:
at most 2x SDPA's).

Tiny inputs (B=1 H=1 T=9 D=4 by default), one thread, autograd on (inputs require grad), the op
with `lengths`: at that size the kernels take a few microseconds and the time per call is the host
path (validation, backend choice, dispatch, autograd). Times with the project's timing helper
(mstr_kernels.bench.timing.median_ms); writes JSON to benchmarks/results/.

    python benchmarks/host_overhead.py [--device cpu] [--backends auto cpu] [--json PATH]

On a GPU (--device cuda) the wall time of a call is the host's launch cost as well (the kernels
run asynchronously): that is the Triton launcher's figure; under TRITON_INTERPRET=1 it is not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mstr_kernels  # noqa: E402
from mstr_kernels.bench.report import environment, results_stem  # noqa: E402
from mstr_kernels.bench.timing import median_ms  # noqa: E402

TARGET_RATIO = 2.0  # SPEC section 4


def _median_us(fn, device, budget_s):
    # Host time per call: no synchronize, so a GPU's kernels overlap and only the launch counts.
    cpu = torch.device("cpu")
    return 1e3 * median_ms([fn], cpu if device.type == "cuda" else device, budget_s=budget_s,
                           min_reps=200, max_reps=20000, warmup=200)


def measure(device: torch.device, backends, B, H, T, D, p, levels, budget_s,
            rounds) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device).requires_grad_(True)
               for _ in range(3))
    lengths = torch.full((B,), max(1, T - 2), dtype=torch.int64, device=device)
    dout = torch.ones(B, H, T, D, device=device)
    calls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
    for name in backends:
        calls[name] = (lambda name=name: mstr_kernels.fractal_attention(
            q, k, v, p=p, levels=levels, lengths=lengths, backend=name))
    # Rounds alternate between the calls, and each call keeps its best round's median: on a
    # shared machine the load then weighs on SDPA and the op alike.
    rows = {name: {"forward_us": float("inf"), "forward_backward_us": float("inf")}
            for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            row = rows[name]
            row["forward_us"] = min(row["forward_us"], _median_us(call, device, budget_s))
            row["forward_backward_us"] = min(row["forward_backward_us"], _median_us(
                lambda: call().backward(dout), device, budget_s))
    for name in backends:
        rows[name]["forward_ratio_to_sdpa"] = rows[name]["forward_us"] / rows["sdpa"]["forward_us"]
        rows[name]["forward_backward_ratio_to_sdpa"] = (
            rows[name]["forward_backward_us"] / rows["sdpa"]["forward_backward_us"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: auto and every fused backend available on the device")
    parser.add_argument("--shape", nargs=4, type=int, default=(1, 1, 9, 4), metavar=("B", "H", "T", "D"))
    parser.add_argument("--p", type=int, default=3)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=0.3,
                        help="seconds per timed call and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/"
                        "<device>-<date>-host-overhead.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.backends is None:
        from mstr_kernels.ops import BACKENDS, available_backends
        args.backends = ["auto"] + [n for n, why in available_backends().items() if why is None
                                    and BACKENDS[n].fused and device.type in BACKENDS[n].devices
                                    and device.type in (BACKENDS[n].auto_devices or BACKENDS[n].devices)]
    B, H, T, D = args.shape
    rows = measure(device, args.backends, B, H, T, D, args.p, args.levels, args.budget,
                   args.rounds)
    env = environment(device)
    result = {"environment": env, "shape": dict(B=B, H=H, T=T, D=D, p=args.p, levels=args.levels),
              "lengths": True, "autograd": True, "rounds": args.rounds,
              "target_forward_ratio_to_sdpa": TARGET_RATIO, "rows": rows}
    print(f"per-call host time, {device.type}, B={B} H={H} T={T} D={D} p={args.p} "
          f"levels={args.levels}, {torch.get_num_threads()} thread(s), lengths, autograd on")
    print(f"{'call':>10} {'fwd us':>9} {'fwd+bwd us':>11} {'fwd / sdpa':>11} {'fwd+bwd / sdpa':>15}")
    for name, row in rows.items():
        ratio = row.get("forward_ratio_to_sdpa")
        both = row.get("forward_backward_ratio_to_sdpa")
        print(f"{name:>10} {row['forward_us']:9.1f} {row['forward_backward_us']:11.1f} "
              f"{'' if ratio is None else f'{ratio:.2f}':>11} {'' if both is None else f'{both:.2f}':>15}")
    from mstr_kernels.ops import BACKENDS
    # The target is the fused backends' (and auto's); the reference is shown for scale.
    held = [n for n in args.backends if n == "auto" or BACKENDS[n].fused]
    met = all(rows[n]["forward_ratio_to_sdpa"] <= TARGET_RATIO for n in held)
    print(f"target forward <= {TARGET_RATIO}x SDPA ({', '.join(held)}): "
          f"{'met' if met else 'NOT met'}")
    path = Path(args.json) if args.json else (
        ROOT / "benchmarks" / "results" / f"{results_stem(env)}-host-overhead.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
