"""How often the tanh-form GELU (the GPU kernels' bfloat16 path) would fail tests/parity.py's
accept rule: emulated in float64 (the kernels' fp32 arithmetic is far finer), outputs rounded to
the dtype like a GPU store, against the reference backend's own error (README, "Backends").
    PYTHONPATH=$PWD python benchmarks/gelu_form_check.py bf16|f16 SEED CASES
"""
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from parity import accept, rel_err  # noqa: E402

import mstr_kernels  # noqa: E402


def loop(q, k, v, p, L, scale, approx):
    B, H, T, D = q.shape; out = torch.zeros_like(q)
    for l in range(1, L + 1):
        S = p ** (l - 1); m = -(-T // S)
        pool = lambda X: torch.stack([X[:, :, j*S:min((j+1)*S, T)].mean(2) for j in range(m)], 2)
        Q, K, V = pool(q), pool(k), pool(v); Ys = []
        for w in range(-(-m // p)):
            s, e = w*p, min(w*p+p, m)
            a = torch.softmax(scale * Q[:, :, s:e] @ K[:, :, s:e].transpose(-1, -2), -1)
            Ys.append(a @ V[:, :, s:e])
        Y = torch.cat(Ys, 2)
        out = out + F.gelu(Y, approximate=approx)[:, :, torch.arange(T) // S]
    return out


dt = {"bf16": torch.bfloat16, "f16": torch.float16}[sys.argv[1]]
g = torch.Generator().manual_seed(int(sys.argv[2]))
fails = {}; n = 0
for case in range(int(sys.argv[3])):
    p = int(torch.randint(2, 9, (1,), generator=g)); L = int(torch.randint(1, 4, (1,), generator=g))
    while p ** L > 1024: L -= 1
    T = int(torch.randint(1, 40, (1,), generator=g)); D = int(torch.randint(1, 9, (1,), generator=g))
    scale = 1 / math.sqrt(D)
    qkv = [torch.randn(1, 2, T, D, generator=g).to(dt) for _ in range(3)]
    do = torch.randn(1, 2, T, D, generator=g).to(dt)
    x64 = [t.double().requires_grad_() for t in qkv]
    truth = [loop(*x64, p, L, scale, "none")]; truth += list(torch.autograd.grad(truth[0], x64, do.double()))
    em = [loop(*x64, p, L, scale, "tanh")]; em += list(torch.autograd.grad(em[0], x64, do.double()))
    xr = [t.clone().requires_grad_() for t in qkv]
    ref = [mstr_kernels.fractal_attention(*xr, p=p, levels=L, backend="reference")]
    ref += list(torch.autograd.grad(ref[0], xr, do))
    for nm, a, r, t in zip(("out", "dq", "dk", "dv"), em, ref, truth):
        ke = rel_err(a.detach().to(dt), t); re_ = rel_err(r, t); n += 1
        ok, bound = accept(ke, re_, dt)
        if not ok: fails.setdefault(nm, []).append((T, D, p, L, f"{ke:.2e}", f"{re_:.2e}", f"{bound:.2e}"))
print(sys.argv[1], "checks", n, "failures", {k: len(v) for k, v in fails.items()})
for k, v in fails.items(): print(k, v[:6])
