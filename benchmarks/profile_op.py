"""Run one backend's forward or backward a few times, for a profiler to watch (GPU only).

    ncu -k regex:fractal --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        python benchmarks/profile_op.py --backend triton --kind fwd

Inputs are those of the benchmark (`mstr bench`): q, k, v are views of one (B, T, 3, H, D)
projection, dout a (B, T, H, D) tensor, random normal. Each call is synchronized; the script
prints the median time of the calls after the first two (with a profiler attached, that time
includes its replays and means nothing).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from mstr_kernels.ops import backends  # noqa: E402
from triton_tune import projection_inputs  # noqa: E402  (this folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=("cuda", "triton"))
    parser.add_argument("--kind", required=True, choices=("fwd", "bwd"))
    parser.add_argument("--calls", type=int, default=4)
    for name, default in (("B", 32), ("H", 16), ("T", 4096), ("D", 64), ("p", 3), ("levels", 4)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU visible")
        return 1
    dtype = getattr(torch, args.dtype)
    B, H, T, D = args.B, args.H, args.T, args.D
    q, k, v, dout = projection_inputs(B, H, T, D, dtype)
    module = backends.get_backend(args.backend).module()
    scale = D ** -0.5
    if args.kind == "fwd":
        def call():
            return module.fractal_attention_fwd(q, k, v, None, args.p, args.levels, scale)
    else:
        def call():
            return module.fractal_attention_bwd(dout, q, k, v, None, args.p, args.levels, scale)
    times = []
    for _ in range(args.calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"{args.backend} {args.kind}: median of calls 3..{args.calls}: "
          f"{statistics.median(times[2:]) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
