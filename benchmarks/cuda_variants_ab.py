"""A/B of the specialised CUDA kernels' variants on a GPU, in alternating rounds (issue 14 item 5).

    python benchmarks/cuda_variants_ab.py [--kinds fwd bwd] [--rounds 3] [--json PATH]

Variants (same inputs for all; the headline configuration: bf16, D=64, p=3, levels=4):
  full        the specialised kernel `backend="cuda"` runs;
  memory      its copies in and its output rows out alone (MSTR_KERNELS_CUDA_VARIANT=memory:
              each output row its input row): the kernel's own memory floor;
  arithmetic  everything but the global copies and stores (=arithmetic): the issue-bound time;
  gelu-erf    the full kernel with the erf-form GELU instead of the tanh form;
  general     the general CUDA kernels (MSTR_KERNELS_CUDA_GENERAL=1);
  triton      the triton backend.
The variants are selected by environment variables that the extension reads at every call, so
one process alternates them: every round times each variant once (mstr_kernels.bench.timing),
and slow drifts of the machine hit all alike. The table gives each variant's median over rounds,
its spread and its ratio to the memory floor (the op's compulsory bytes at the measured copy
bandwidth). Outputs of full, gelu-erf, general and triton are compared with full's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from mstr_kernels.bench import timing  # noqa: E402
from mstr_kernels.ops import backends  # noqa: E402
from triton_tune import parse_gpu_shape_args, shape_inputs  # noqa: E402  (this folder)

VARIANTS = ("full", "memory", "arithmetic", "gelu-erf", "general", "triton")
CORRECT = ("full", "gelu-erf", "general", "triton")  # the others are wrong by design
# Per variant: (backend, MSTR_KERNELS_CUDA_VARIANT, MSTR_KERNELS_CUDA_GENERAL).
SETTINGS = {"full": ("cuda", "full", "0"), "memory": ("cuda", "memory", "0"),
            "arithmetic": ("cuda", "arithmetic", "0"), "gelu-erf": ("cuda", "gelu-erf", "0"),
            "general": ("cuda", "full", "1"), "triton": ("triton", "full", "0")}


def select(variant: str):
    """The module of the variant's backend, with the extension's variables set for it."""
    backend, kernel, general = SETTINGS[variant]
    os.environ["MSTR_KERNELS_CUDA_VARIANT"] = kernel
    os.environ["MSTR_KERNELS_CUDA_GENERAL"] = general
    return backends.get_backend(backend).module()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=("fwd", "bwd"), default=["fwd", "bwd"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per timing")
    parser.add_argument("--json", help="write the rows here")
    args = parse_gpu_shape_args(parser, argv)
    if args is None:
        return 1
    B, H, T, D, p, levels = args.B, args.H, args.T, args.D, args.p, args.levels
    q, k, v, dout, scale, tensor_bytes, bandwidth = shape_inputs(args)
    device = torch.device("cuda")
    rows = []
    for kind in args.kinds:
        floor_s = (4 if kind == "fwd" else 7) * tensor_bytes / bandwidth

        def call(module, kind=kind):
            if kind == "fwd":
                return (module.fractal_attention_fwd(q, k, v, None, p, levels, scale),)
            return tuple(module.fractal_attention_bwd(dout, q, k, v, None, p, levels, scale))

        times = {name: [] for name in args.variants}
        notes = {name: "" for name in args.variants}
        expected, expected_name = None, None
        for rnd in range(args.rounds):
            for name in args.variants:
                if notes[name].startswith("failed"):
                    continue
                try:
                    module = select(name)
                    if rnd == 0:
                        got = [x.float() for x in call(module)]
                        torch.cuda.synchronize()
                        if name in CORRECT:
                            if expected is None:
                                expected, expected_name = got, name
                            err = max(((g - e).norm() / e.norm()).item()
                                      for g, e in zip(got, expected))
                            notes[name] = (f"rel. diff {err:.1e} vs {expected_name}"
                                           + ("" if err < 2e-2 else ": WRONG"))
                        else:
                            notes[name] = "wrong by design"
                    times[name].append(timing.median_ms([lambda: call(module)], device,
                                                        budget_s=args.budget, rounds=1))
                except Exception as e:  # a variant that cannot run here: the others go on
                    notes[name] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        select("full")
        print(f"{torch.cuda.get_device_name()}, {kind}, B={B} H={H} T={T} D={D} p={p} "
              f"levels={levels} bf16; copy {bandwidth / 1e9:.0f} GB/s, floor "
              f"{floor_s * 1e6:.1f} us; {args.rounds} rounds")
        for name in args.variants:
            ts = times[name]
            row = {"kind": kind, "variant": name, "B": B, "H": H, "T": T, "D": D, "p": p,
                   "levels": levels, "dtype": "bfloat16", "copy_gbs": bandwidth / 1e9,
                   "floor_us": floor_s * 1e6, "median_us": None, "spread_us": None,
                   "floor_ratio": None, "rounds": len(ts), "note": notes[name]}
            if ts:
                med = statistics.median(ts) * 1e3
                row.update(median_us=med, spread_us=(max(ts) - min(ts)) * 1e3,
                           floor_ratio=med / (floor_s * 1e6))
                print(f"  {kind} {name:<10} {med:9.1f} us median, spread "
                      f"{row['spread_us']:6.1f} us, {row['floor_ratio']:.2f}x floor ({notes[name]})")
            else:
                print(f"  {kind} {name:<10} {notes[name]}")
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
