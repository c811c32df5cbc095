"""An independent float64 evaluation of SPEC section 1, written as plain loops.

It shares no code with mstr_kernels: numpy, math.erf and the formula, frame by frame. Slow on
purpose; tests keep their shapes small.
"""
import math

import numpy as np


def gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def fractal_attention_f64(q, k, v, p, levels, lengths=None, scale=None):
    """q, k, v: array-likes (B, H, T, D); returns a float64 numpy array (B, H, T, D)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = np.zeros((B, H, T, D))
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        for h in range(H):
            for level in range(1, levels + 1):
                S = p ** (level - 1)
                n_pooled = -(-n // S)  # ceil(n / S)
                pooled = {}
                for name, x in (("q", q), ("k", k), ("v", v)):
                    rows = []
                    for j in range(n_pooled):
                        group = range(j * S, min((j + 1) * S, n))
                        rows.append(sum(x[b, h, t] for t in group) / len(group))
                    pooled[name] = rows
                y = []
                for j in range(n_pooled):
                    w = j // p
                    window = range(w * p, min((w + 1) * p, n_pooled))
                    # Correctly rounded sums of the products: np.dot's order (and FMA use)
                    # varies between numpy builds and would break exact ties of scores that
                    # adversarial inputs (magnitudes of 1e18) create on purpose.
                    s = [scale * math.fsum(np.multiply(pooled["q"][j], pooled["k"][i]))
                         for i in window]
                    top = max(s)
                    e = [math.exp(si - top) for si in s]
                    z = sum(e)
                    y.append(sum((ei / z) * pooled["v"][i] for ei, i in zip(e, window)))
                for t in range(n):
                    out[b, h, t] += np.vectorize(gelu)(y[t // S])
    return out
