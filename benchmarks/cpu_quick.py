"""Quick CPU timings of the fused `cpu` backend for tuning (the full benchmark is `mstr bench`).

Measures, on the same inputs and threads, medians after warm-up:
  - copy bandwidth: a large tensor.clone() (bytes read + written / time);
  - the forward's memory floor: bytes of q, k, v read + out written, at that bandwidth;
  - the fused forward, and forward + backward, against the reference backend eager and
    `torch.compile`d.

    PYTHONPATH=$PWD python benchmarks/cpu_quick.py [--B 8 --H 16 --T 1024 --D 64] [--no-compile]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mstr_kernels.ops.fractal_attention import fractal_attention
from mstr_kernels.ops.reference import fractal_attention_reference


def median_seconds(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--p", type=int, default=3)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--reps", type=int, default=9)
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

    big = torch.randn(64 * 1024 * 1024 // 4 * 4)  # 256 MiB of float32: beyond every cache
    copy_s = median_seconds(big.clone, args.reps, args.warmup)
    bandwidth = 2 * big.numel() * big.element_size() / copy_s
    floor_fwd = 4 * tensor_bytes / bandwidth
    floor_fwd_bwd = (4 + 7) * tensor_bytes / bandwidth
    del big

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
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s; floor fwd {floor_fwd * 1e3:.2f} ms, "
          f"fwd+bwd {floor_fwd_bwd * 1e3:.2f} ms")
    t_fwd = median_seconds(fused_fwd, args.reps, args.warmup)
    t_fused = median_seconds(fwd_bwd(fused), args.reps, args.warmup)
    print(f"cpu fwd      {t_fwd * 1e3:8.2f} ms  = {t_fwd / floor_fwd:.2f}x floor")
    print(f"cpu fwd+bwd  {t_fused * 1e3:8.2f} ms  = {t_fused / floor_fwd_bwd:.2f}x floor")
    t_ref = median_seconds(fwd_bwd(reference), max(3, args.reps // 3), 1)
    print(f"reference eager fwd+bwd {t_ref * 1e3:8.2f} ms  -> cpu is {t_ref / t_fused:.2f}x faster")
    if not args.no_compile:
        compiled = torch.compile(fractal_attention_reference)

        def compiled_ref(qq, kk, vv):
            return compiled(qq, kk, vv, None, p, levels, scale)
        t_comp = median_seconds(fwd_bwd(compiled_ref), max(3, args.reps // 3), 2)
        print(f"reference compiled fwd+bwd {t_comp * 1e3:8.2f} ms  -> cpu is "
              f"{t_comp / t_fused:.2f}x faster")


if __name__ == "__main__":
    main()
