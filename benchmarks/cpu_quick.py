"""Quick CPU timings of the fused `cpu` backend for tuning (the full benchmark is `mstr bench`).

Measures, on the same inputs and threads, after warm-up, in interleaved rounds (medians):
  - copy bandwidth (bytes read + written / time) of a 256 MiB copy_ into a preallocated buffer
    (what `mstr bench` uses), and of a 256 MiB clone(), which also pays the page faults of a fresh
    allocation, as every op that returns new tensors does;
  - the memory floor: bytes of q, k, v read + out written (forward), plus q, k, v, dout read and
    dq, dk, dv written (backward), at that round's bandwidth (both definitions);
  - the fused forward, and forward + backward, against the reference backend eager and
    `torch.compile`d (speedups are medians of the per-round ratios).

    PYTHONPATH=$PWD python benchmarks/cpu_quick.py [--B 8 --H 16 --T 1024 --D 64] [--no-compile]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from mstr_kernels.bench.timing import call_ms
from mstr_kernels.ops.fractal_attention import fractal_attention
from mstr_kernels.ops.reference import fractal_attention_reference

CPU = torch.device("cpu")


def seconds(fn) -> float:
    return call_ms(fn, CPU) * 1e-3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--p", type=int, default=3)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--layout", choices=("projection", "contiguous"), default="projection",
                    help="q, k, v as views of a (B, T, 3, H, D) projection, or contiguous (B, H, T, D)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, H, T, D, p, levels = args.B, args.H, args.T, args.D, args.p, args.levels
    torch.manual_seed(0)
    if args.layout == "projection":
        qkv = torch.randn(B, T, 3, H, D)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    else:
        q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    grad = torch.randn(B, H, T, D)
    scale = D ** -0.5
    tensor_bytes = B * H * T * D * q.element_size()

    big = torch.randn(64 * 1024 * 1024)  # 256 MiB of float32: beyond every cache
    big_dst = torch.empty_like(big)
    leaf = [x.detach().requires_grad_() for x in (q, k, v)]

    def fused_fwd():
        with torch.no_grad():
            fractal_attention(q, k, v, p=p, levels=levels, backend="cpu")

    def fwd_bwd(fn):
        # autograd.grad, not .backward(): accumulating into .grad of a strided leaf would add a
        # strided copy of each gradient (AccumulateGrad obeys the leaf's layout) to every backend.
        def run():
            torch.autograd.grad(fn(*leaf), leaf, grad)
        return run

    def fused(qq, kk, vv):
        return fractal_attention(qq, kk, vv, p=p, levels=levels, backend="cpu")

    def reference(qq, kk, vv):
        return fractal_attention_reference(qq, kk, vv, None, p, levels, scale)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, B={B} H={H} T={T} D={D} "
          f"p={p} levels={levels} float32 {args.layout}")
    runs = {"cpu fwd": fused_fwd, "cpu fwd+bwd": fwd_bwd(fused),
            "reference eager fwd+bwd": fwd_bwd(reference)}
    if not args.no_compile:
        compiled = torch.compile(fractal_attention_reference)
        runs["reference compiled fwd+bwd"] = fwd_bwd(
            lambda qq, kk, vv: compiled(qq, kk, vv, None, p, levels, scale))
    for fn in runs.values():  # warm-up (and compilation)
        for _ in range(args.warmup):
            fn()
    # Rounds that interleave a copy and every candidate: on a shared machine the load drifts, so
    # each round's ratios use that round's own copy bandwidth and timings.
    rounds = {name: [] for name in ("copy", "clone") + tuple(runs)}
    for _ in range(args.reps):
        rounds["copy"].append(seconds(lambda: big_dst.copy_(big)))
        rounds["clone"].append(seconds(big.clone))
        for name, fn in runs.items():
            rounds[name].append(seconds(fn))
    def med(values):
        return statistics.median(values)

    def ratio(a, b):
        return med([x / y for x, y in zip(a, b)])

    fused_fwd_times, fused_times = rounds["cpu fwd"], rounds["cpu fwd+bwd"]
    for copy in ("copy", "clone"):
        bandwidths = [2 * big.numel() * big.element_size() / t for t in rounds[copy]]
        floor_fwd = [4 * tensor_bytes / bw for bw in bandwidths]
        floor_fwd_bwd = [(4 + 7) * tensor_bytes / bw for bw in bandwidths]
        print(f"{copy:5s} bandwidth {med(bandwidths) / 1e9:6.2f} GB/s: floor fwd "
              f"{med(floor_fwd) * 1e3:6.2f} ms, fwd+bwd {med(floor_fwd_bwd) * 1e3:6.2f} ms; cpu fwd "
              f"{ratio(fused_fwd_times, floor_fwd):.2f}x floor, fwd+bwd "
              f"{ratio(fused_times, floor_fwd_bwd):.2f}x floor")
    print(f"cpu fwd      {med(fused_fwd_times) * 1e3:8.2f} ms (median of {args.reps} rounds)")
    print(f"cpu fwd+bwd  {med(fused_times) * 1e3:8.2f} ms")
    for name in runs:
        if name.startswith("reference"):
            print(f"{name} {med(rounds[name]) * 1e3:8.2f} ms  -> cpu fwd+bwd is "
                  f"{ratio(rounds[name], fused_times):.2f}x faster")


if __name__ == "__main__":
    main()
