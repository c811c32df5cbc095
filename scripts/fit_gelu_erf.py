"""Fits the rational erf used by the CPU kernels' GELU (csrc/cpu/fractal_attention_cpu_kernel.h,
`erf_of_scaled`) and prints its coefficients and its error when evaluated in float32.

    erf(x / sqrt(2)) ~= x * P(x^2) / Q(x^2),  x clamped to [-C, C],  Q(0) = 1

P has 6 coefficients and Q 6 (degree 5 in x^2); C = 5.5, beyond which erf(x / sqrt(2)) rounds to
+-1 in float32. The fit is linearised least squares, reweighted towards the largest errors
(Lawson's iteration), which converges to a near-minimax fit in absolute error.

    python scripts/fit_gelu_erf.py
"""
from __future__ import annotations

import math

import numpy as np

C = 5.5
NUM_TERMS, DEN_TERMS = 6, 5  # P: s^0..s^5; Q: 1 + s^1..s^5


def target(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x / math.sqrt(2.0))


def fit(iterations: int = 120):
    # Dense near both ends of [0, C] (Chebyshev-like spacing) plus a uniform grid.
    x = np.sort(np.concatenate([np.linspace(0.0, C, 6000),
                                C * np.cos(np.linspace(0.0, np.pi / 2, 6000)) ** 2]))
    s, f = x * x, target(x)
    weights = np.ones_like(x)
    den = np.ones_like(x)
    best = None
    for _ in range(iterations):
        # x P(s) - f (Q(s) - 1) = f, each row divided by the current Q(s).
        columns = [x * s ** i for i in range(NUM_TERMS)] + [-f * s ** i for i in range(1, DEN_TERMS + 1)]
        a = np.stack(columns, 1) / den[:, None]
        root = np.sqrt(weights)
        sol, *_ = np.linalg.lstsq(a * root[:, None], f / den * root, rcond=None)
        p, q = sol[:NUM_TERMS], np.concatenate([[1.0], sol[NUM_TERMS:]])
        den = np.polyval(q[::-1], s)
        err = np.abs(x * np.polyval(p[::-1], s) / den - f)
        if best is None or err.max() < best[0]:
            best = (err.max(), p, q)
        weights = weights * err / err.mean()
        weights /= weights.sum()
    return best


def float32_error(p: np.ndarray, q: np.ndarray) -> float:
    """Max |approximation - erf(x / sqrt 2)| over [-8, 8], evaluated as the kernel does:
    float32 Horner steps and the clamp."""
    x = np.linspace(-8.0, 8.0, 400001)
    xc = np.clip(x.astype(np.float32), -np.float32(C), np.float32(C))
    s = xc * xc
    num, den = np.float32(p[-1]), np.float32(q[-1])
    for c in p[-2::-1]:
        num = (num * s + np.float32(c)).astype(np.float32)
    for c in q[-2::-1]:
        den = (den * s + np.float32(c)).astype(np.float32)
    return float(np.abs((xc * num / den).astype(np.float64) - target(x)).max())


def main() -> None:
    fit_error, p, q = fit()
    print(f"fit error (float64): {fit_error:.2e}; evaluated in float32: {float32_error(p, q):.2e}")
    print("P (s^0 .. s^5):", ", ".join(f"{np.float32(c)!r}f".replace("np.float32(", "").replace(")", "")
                                       for c in p))
    print("Q (s^0 .. s^5):", ", ".join(f"{np.float32(c)!r}f".replace("np.float32(", "").replace(")", "")
                                       for c in q))


if __name__ == "__main__":
    main()
