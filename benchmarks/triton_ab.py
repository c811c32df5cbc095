"""A/B of Triton launch configurations on a GPU, in alternating rounds (same inputs for all).

    python benchmarks/triton_ab.py --kind fwd \\
        --config '{"level1_first": 0}' --config '{"level1_first": 1, "maxnreg": 128}'

Each --config is a JSON object of knobs (TUNING keys of the kind) applied over the current
TUNING. Every round times each configuration once (mstr_kernels.bench.timing, do_bench's
median), so slow drifts of the machine hit all of them alike; the table gives each
configuration's median over rounds, its spread (max - min over rounds) and its ratio to the
memory floor. Outputs of every
configuration are compared with the first one's: a mismatch beyond rounding marks it WRONG.
q, k, v are views of one (B, T, 3, H, D) projection, as the model passes them.
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
from mstr_kernels.ops import triton_fractal as tf  # noqa: E402
from triton_tune import parse_gpu_shape_args, shape_inputs  # noqa: E402  (this folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("fwd", "bwd"), default="fwd")
    parser.add_argument("--config", action="append", required=True, type=json.loads)
    parser.add_argument("--rounds", type=int, default=5)
    args = parse_gpu_shape_args(parser, argv)
    if args is None:
        return 1
    B, H, T, D, p, levels = args.B, args.H, args.T, args.D, args.p, args.levels
    q, k, v, dout, scale, tensor_bytes, bandwidth = shape_inputs(args)
    floor = (4 if args.kind == "fwd" else 7) * tensor_bytes / bandwidth

    def call():
        if args.kind == "fwd":
            return (tf.fractal_attention_fwd(q, k, v, None, p, levels, scale),)
        return tf.fractal_attention_bwd(dout, q, k, v, None, p, levels, scale)

    base = dict(tf.TUNING[args.kind])
    configs = [dict(base, **c) for c in args.config]
    times = [[] for _ in configs]
    notes = [""] * len(configs)
    expected = None
    for rnd in range(args.rounds):
        for i, cfg in enumerate(configs):
            if notes[i].startswith(("WRONG", "failed")):
                continue
            tf.set_tuning(args.kind, **cfg)
            if rnd == 0:
                try:
                    got = [x.float() for x in call()]
                    torch.cuda.synchronize()
                except Exception as e:  # compile or launch failure of one configuration
                    notes[i] = f"failed: {type(e).__name__}: {str(e)[:100]}"
                    continue
                if expected is None:
                    expected = got
                else:
                    err = max(((g - e).norm() / e.norm()).item() for g, e in zip(got, expected))
                    if not err < 1e-3:
                        notes[i] = f"WRONG: relative error {err:.2e} against config 0"
                        continue
                    notes[i] = f"rel. diff {err:.1e} vs config 0"
                plan = list(tf._PLAN_CACHE.values())[-1]
                notes[i] = (f"{plan[1]} programs/SM, cap {plan[0].get('maxnreg', 'none')}; "
                            + notes[i]).rstrip("; ")
            times[i].append(timing.median_ms([call], torch.device("cuda"), budget_s=0.1,
                                             rounds=1) * 1e-3)
    tf.set_tuning(args.kind, **base)
    print(f"{torch.cuda.get_device_name()}, {args.kind}, B={B} H={H} T={T} D={D} p={p} "
          f"levels={levels} bf16; copy {bandwidth / 1e9:.0f} GB/s, floor {floor * 1e6:.1f} us; "
          f"{args.rounds} rounds")
    for i, (cfg, ts) in enumerate(zip(args.config, times)):
        if ts:
            med = statistics.median(ts)
            print(f"config {i} {json.dumps(cfg)}: {med * 1e6:.1f} us median, spread "
                  f"{(max(ts) - min(ts)) * 1e6:.1f} us, {med / floor:.2f}x floor ({notes[i]})")
        else:
            print(f"config {i} {json.dumps(cfg)}: {notes[i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
