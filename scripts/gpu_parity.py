"""Parity of every available backend on CUDA, without pytest (the GPU suite's fallback when
the machine has no pytest). Forward against the independent float64 loop (tests/float64_loop.py),
gradients against the reference backend's autograd in float64; SPEC section 1's bounds.
Exit status 1 if any check fails. Usage: python scripts/gpu_parity.py [--device cuda]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from float64_loop import fractal_attention_f64  # noqa: E402

import mstr_kernels  # noqa: E402
from mstr_kernels.ops import BACKENDS, available_backends  # noqa: E402

BOUND = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}
# (B, H, T, D, p, levels, lengths): T not a multiple of p**levels, T < p, padding 0, T and between.
CASES = [(2, 3, 100, 16, 3, 4, [100, 37]), (1, 2, 2, 8, 3, 2, None), (2, 2, 70, 64, 2, 5, [0, 70]),
         (1, 1, 300, 32, 4, 3, [299])]


def rel(a, b):
    a, b = a.double().cpu(), torch.as_tensor(b, dtype=torch.float64).cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    failures = 0
    names = [n for n, why in available_backends().items()
             if why is None and device.type in BACKENDS[n].devices]
    for n, why in available_backends().items():
        if why is not None and device.type in BACKENDS[n].devices:
            print(f"FAIL unavailable backend {n}: {why}")  # the suite must run every backend
            failures += 1
    for backend in names:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for B, H, T, D, p, levels, lengths in CASES:
                gen = torch.Generator().manual_seed(T * D + p)
                # The fused-projection layout (B, T, 3, H, D): q, k, v are strided views.
                qkv = (torch.randn(B, T, 3, H, D, generator=gen, dtype=torch.float64)
                       .to(device=device, dtype=dtype).requires_grad_(True))
                lens = None if lengths is None else torch.tensor(lengths, device=device)
                q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
                out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, lengths=lens,
                                                     backend=backend)
                dout = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
                (g,) = torch.autograd.grad(out, qkv, dout.to(dtype))
                want = fractal_attention_f64(*(x.detach().double().cpu().numpy() for x in (q, k, v)),
                                             p, levels, lengths)
                ref_qkv = qkv.detach().double().requires_grad_(True)
                rq, rk, rv = (ref_qkv[:, :, i].transpose(1, 2) for i in range(3))
                ref = mstr_kernels.fractal_attention(rq, rk, rv, p=p, levels=levels, lengths=lens,
                                                     backend="reference")
                (want_g,) = torch.autograd.grad(ref, ref_qkv, dout)
                errs = {"out": rel(out, want), "grad": rel(g, want_g)}
                pad_ok = True
                if lengths is not None:
                    for b, n in enumerate(lengths):
                        pad_ok &= bool((out[b, :, n:] == 0).all()) and bool((g[b, n:] == 0).all())
                ok = all(e <= BOUND[dtype] for e in errs.values()) and pad_ok
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {backend:9s} {str(dtype):15s} B={B} H={H} T={T} "
                      f"D={D} p={p} L={levels} lengths={lengths}: out {errs['out']:.1e}, "
                      f"grad {errs['grad']:.1e} (bound {BOUND[dtype]:.0e}), padding zero {pad_ok}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
