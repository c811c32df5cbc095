"""Tune the Triton backend's launch knobs on a GPU (TUNING in mstr_kernels/ops/triton_fractal.py).

    python benchmarks/triton_tune.py [--B 32 --H 16 --T 4096 --D 64 --p 3 --levels 4]
        [--json-out tuning.json] [--budget-s 240]

q, k, v are views of one (B, T, 3, H, D) bf16 projection, as the model passes them. The memory
floor is SPEC section 4's: bytes that must move (forward: read q, k, v, write out; backward:
read q, k, v, dout, write dq, dk, dv) at the device-to-device copy bandwidth measured here.
Each knob is varied alone from the current best (a greedy sweep); every line prints the time,
the ratio to the floor and the persistent grid's programs per SM. Every trial's outputs are
compared with the starting configuration's (same inputs): a trial that changes them beyond
rounding is reported WRONG and never chosen. --json-out writes the best knobs in the
form MSTR_KERNELS_TRITON_TUNING reads (a path or the JSON itself), so a benchmark can run with
them before they are committed to TUNING.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from mstr_kernels.bench import timing  # noqa: E402
from mstr_kernels.ops import triton_fractal as tf  # noqa: E402

CUDA = torch.device("cuda")

# Greedy order: the knobs predicted to matter most first. The scratch bound sets how many
# programs run at once and so how much of L2 the scratch and the re-read input rows need
# (benchmarks/NOTES.md, "First H100 run", has what the forward moved at each bound).
CANDIDATES = {
    "level1_first": [0, 1],  # forward only
    "scratch_mb": [8, 12, 16, 24, 32, 64],
    "num_warps": [2, 4, 8],
    "maxnreg": [None, 64, 80, 96, 128, 168],
    "chunk": [512, 1024, 2048, 4096],
    "level_chunk": [256, 512, 1024, 2048],
    "pool_chunk": [512, 1024, 2048, 4096, 8192],
}


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a device-to-device copy (read + write counted; median time)."""
    return timing.copy_bandwidth_gbs(CUDA, nbytes, budget_s=0.2) * 1e9


def projection_inputs(B: int, H: int, T: int, D: int, dtype=torch.bfloat16):
    """q, k, v as (B, H, T, D) views of one random (B, T, 3, H, D) projection, as the model
    passes them, and dout laid out as (B, T, H, D): the benchmark's inputs."""
    qkv = torch.randn(B, T, 3, H, D, device="cuda", dtype=dtype)
    q, k, v = (x.transpose(1, 2) for x in qkv.unbind(2))
    dout = torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)
    return q, k, v, dout


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--B --H --T --D --p --levels, defaulting to the SPEC benchmark shape."""
    for name, default in (("B", 32), ("H", 16), ("T", 4096), ("D", 64), ("p", 3), ("levels", 4)):
        parser.add_argument(f"--{name}", type=int, default=default)


def parse_gpu_shape_args(parser: argparse.ArgumentParser, argv=None):
    """The parsed arguments with the shape ones added; None, after saying so, without a GPU."""
    add_shape_arguments(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU visible")
        return None
    return args


def shape_inputs(args):
    """q, k, v, dout (bf16 projection views), the scale, the bytes of one tensor and the copy
    bandwidth (bytes/s) for the shape in `args`: what every Triton timing script starts from."""
    q, k, v, dout = projection_inputs(args.B, args.H, args.T, args.D)
    tensor_bytes = args.B * args.H * args.T * args.D * 2
    return q, k, v, dout, args.D ** -0.5, tensor_bytes, copy_bandwidth(4 * tensor_bytes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--kinds", nargs="+", default=["fwd", "bwd"])
    parser.add_argument("--json-out", help="write the best knobs of every kind here")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="stop trying new values after this many seconds per kind")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to tune")
        return 1
    B, H, T, D, p, levels = args.B, args.H, args.T, args.D, args.p, args.levels
    q, k, v, dout, scale, tensor_bytes, bandwidth = shape_inputs(args)
    floors = {"fwd": 4 * tensor_bytes / bandwidth, "bwd": 7 * tensor_bytes / bandwidth}
    print(f"{torch.cuda.get_device_name()}, triton {triton.__version__}, B={B} H={H} T={T} "
          f"D={D} p={p} levels={levels} bf16; copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
          f"floors: fwd {floors['fwd'] * 1e6:.1f} us, bwd {floors['bwd'] * 1e6:.1f} us")
    calls = {"fwd": lambda: tf.fractal_attention_fwd(q, k, v, None, p, levels, scale),
             "bwd": lambda: tf.fractal_attention_bwd(dout, q, k, v, None, p, levels, scale)}

    def outputs(kind):
        result = calls[kind]()
        return [x.float() for x in (result if isinstance(result, tuple) else (result,))]

    def measure(kind, expected):
        try:
            got = outputs(kind)
            torch.cuda.synchronize()
        except Exception as e:  # a knob value that fails to compile or launch is reported
            return float("inf"), f"{type(e).__name__}: {str(e)[:120]}"
        if expected is not None:
            err = max(((g - e).norm() / e.norm()).item() for g, e in zip(got, expected))
            # Only fp32 summation order may differ, flipping the bf16 rounding of a few outputs
            # (~1e-4); a wrong index or mask gives errors of order 1.
            if not err < 1e-3:
                return float("inf"), f"WRONG: relative error {err:.2e} against the start"
        plans = list(tf._PLAN_CACHE.values())
        info = (f"{plans[-1][1]} programs/SM, cap {plans[-1][0].get('maxnreg', 'none')}"
                if plans else "")
        return timing.median_ms([calls[kind]], CUDA, budget_s=0.1, rounds=1) * 1e-3, info

    chosen = {}
    for kind in args.kinds:
        started = time.monotonic()
        best = dict(tf.TUNING[kind])
        tf.set_tuning(kind, **best)
        expected = outputs(kind)
        best_time, info = measure(kind, None)
        print(f"\n{kind}: start {best} -> {best_time * 1e6:.1f} us "
              f"({best_time / floors[kind]:.2f}x floor, {info})")
        for knob, values in CANDIDATES.items():
            if knob not in best:  # a knob of the other kernel
                continue
            for value in values:
                if value == best[knob] or time.monotonic() - started > args.budget_s:
                    continue
                trial = dict(best, **{knob: value})
                tf.set_tuning(kind, **trial)
                t, info = measure(kind, expected)
                print(f"  {knob}={value}: {t * 1e6:.1f} us ({t / floors[kind]:.2f}x, {info})",
                      flush=True)
                if t < best_time:
                    best, best_time = trial, t
            tf.set_tuning(kind, **best)
        print(f"{kind}: best {best} -> {best_time * 1e6:.1f} us "
              f"({best_time / floors[kind]:.2f}x floor)", flush=True)
        chosen[kind] = best
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(chosen, f, indent=1)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
