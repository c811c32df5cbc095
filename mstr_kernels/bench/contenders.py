"""What the op benchmark races: every available backend of the op, the torch.compile'd
reference, full attention by SDPA, and FlexAttention with a block-diagonal window mask per level.

A contender maps (q, k, v) of shape (B, H, T, D) to an output of the same shape; `build` returns
it or the reason it cannot run here. FlexAttention is checked to compute the same function as the
reference before it is timed (`check_same_function`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from mstr_kernels.ops import BACKENDS, available_backends, fractal_attention
from mstr_kernels.ops.reference import fractal_attention_reference

REFERENCE = "reference"
COMPILED_REFERENCE = "reference-compiled"
SDPA = "sdpa-full"
FLEX = "flex-window"
# Relative L2 error against the reference allowed for a contender claimed to compute the same
# function (SPEC section 1 bounds, doubled: both sides round in the input dtype).
SAME_FUNCTION_RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 4e-3,
                      torch.bfloat16: 2e-2}


@dataclass
class Shape:
    B: int
    H: int
    T: int
    D: int
    dtype: torch.dtype
    p: int
    levels: int

    def tensor(self, device, requires_grad=False, generator=None) -> torch.Tensor:
        x = torch.randn(self.B, self.H, self.T, self.D, device=device, dtype=self.dtype,
                        generator=generator)
        return x.requires_grad_(requires_grad)

    @property
    def numel(self) -> int:
        return self.B * self.H * self.T * self.D


@dataclass
class Contender:
    name: str
    kind: str  # "backend", "compiled-reference", "baseline"
    fn: Optional[Callable] = None  # (q, k, v) -> out
    unavailable: Optional[str] = None
    # Why this contender has no backward here (None: it has one).
    no_backward: Optional[str] = None
    # (shape, device) -> Contender: rebuilds this contender for another shape.
    maker: Optional[Callable] = None


def backend_contender(name: str, shape: Shape, device: torch.device) -> Contender:
    probe = torch.empty(1, 1, 1, shape.D, dtype=shape.dtype, device=device)
    why = BACKENDS[name].reasons(probe, shape.p, shape.levels)
    if why:
        return Contender(name, "backend", unavailable="; ".join(why))
    p, levels = shape.p, shape.levels
    return Contender(name, "backend",
                     lambda q, k, v: fractal_attention(q, k, v, p=p, levels=levels, backend=name))


_compiled_reference = None


def compiled_reference_contender(shape: Shape, device: torch.device) -> Contender:
    """`torch.compile(fractal_attention_reference)`; one compiled object for the whole run, so
    later shapes reuse its dynamic-shape graphs."""
    global _compiled_reference
    if _compiled_reference is None:
        import torch._dynamo
        # Every swept shape and pass may add a graph; the default limit would fall back to eager.
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 64))
        _compiled_reference = torch.compile(fractal_attention_reference)
    compiled, p, levels = _compiled_reference, shape.p, shape.levels
    scale = 1.0 / math.sqrt(shape.D)
    return Contender(COMPILED_REFERENCE, "compiled-reference",
                     lambda q, k, v: compiled(q, k, v, None, p, levels, scale))


def sdpa_contender(shape: Shape, device: torch.device) -> Contender:
    """Full (quadratic) attention by PyTorch's SDPA: what a user would run without windows."""
    return Contender(SDPA, "baseline", F.scaled_dot_product_attention)


def _pool(x: torch.Tensor, S: int) -> torch.Tensor:
    """Mean over groups of S frames along dim 2; a tail group averages only its valid frames."""
    if S == 1:
        return x
    B, H, T, D = x.shape
    n = -(-T // S)
    # Sums in float32 (as the reference does for half inputs), handed to FlexAttention in x.dtype.
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    summed = F.pad(x, (0, 0, 0, n * S - T)).view(B, H, n, S, D).sum(3, dtype=acc)
    counts = torch.full((n,), float(S), device=x.device, dtype=acc)
    counts[-1] = T - (n - 1) * S
    return (summed / counts[:, None]).to(x.dtype)


_compiled_flex = None


def flex_contender(shape: Shape, device: torch.device) -> Contender:
    """FlexAttention (compiled), one call per level on the pooled sequence with a block-diagonal
    mask of windows of p frames, then GELU, nearest upsampling and the sum over levels."""
    global _compiled_flex
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return Contender(FLEX, "baseline", unavailable=f"this torch has no FlexAttention: {e}")
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    flex = _compiled_flex
    p, levels, T = shape.p, shape.levels, shape.T
    masks = []
    try:
        for level in range(levels):
            n = -(-T // p ** level)
            same_window = lambda b, h, qi, ki: (qi // p) == (ki // p)  # noqa: E731
            masks.append(create_block_mask(same_window, None, None, n, n, device=str(device)))
    except Exception as e:
        return Contender(FLEX, "baseline",
                         unavailable=f"create_block_mask failed: {type(e).__name__}: {e}")

    def run(q, k, v):
        out = None
        for level in range(levels):
            S = p ** level
            y = flex(_pool(q, S), _pool(k, S), _pool(v, S), block_mask=masks[level])
            y = F.gelu(y.float())
            if S > 1:
                y = y.repeat_interleave(S, dim=2)[:, :, :T]
            out = y if out is None else out + y
        return out.to(q.dtype)

    return Contender(FLEX, "baseline", run, maker=flex_contender)


def check_same_function(contender: Contender, shape: Shape, device: torch.device,
                        grads: bool = True) -> Optional[str]:
    """None if `contender` matches the reference (forward, and gradients if `grads`) on a small
    input of this dtype, D, p and levels, else the mismatch in words."""
    small = Shape(B=1, H=2, T=min(shape.T, 2 * shape.p ** shape.levels + 5), D=shape.D,
                  dtype=shape.dtype, p=shape.p, levels=shape.levels)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (small.tensor(device, generator=gen) for _ in range(4))
    rtol = SAME_FUNCTION_RTOL[shape.dtype]
    scale = 1.0 / math.sqrt(shape.D)
    # The same contender built for the small shape (FlexAttention's masks depend on T).
    small_fn = contender.maker(small, device).fn if contender.maker else contender.fn
    results = []
    for fn in (lambda a, b, c: fractal_attention_reference(a, b, c, None, shape.p, shape.levels,
                                                           scale), small_fn):
        leaves = [x.detach().clone().requires_grad_(grads) for x in (q, k, v)]
        out = fn(*leaves)
        results.append([out.detach(), *(torch.autograd.grad(out, leaves, dout) if grads else ())])
    for name, ref, got in zip(("out", "dq", "dk", "dv"), *results):
        err = ((got.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
        if not err <= rtol:
            return f"{name} differs from the reference: relative L2 error {err:.2e} > {rtol:.0e}"
    return None


def verify(contender: Contender, shape: Shape, device: torch.device) -> None:
    """Check a contender that claims the reference's function; on a mismatch mark it unavailable
    with the reason, and where it has no backward here record why (forward still checked)."""
    try:
        mismatch = check_same_function(contender, shape, device, grads=True)
    except NotImplementedError as e:  # e.g. FlexAttention's backward on CPU
        contender.no_backward = f"{type(e).__name__}: {e}"
        try:
            mismatch = check_same_function(contender, shape, device, grads=False)
        except Exception as e2:
            mismatch = f"forward failed: {type(e2).__name__}: {e2}"
    except Exception as e:
        mismatch = f"failed: {type(e).__name__}: {e}"
    if mismatch:
        contender.fn, contender.unavailable = None, f"equality check against the reference: {mismatch}"


def build_contenders(shape: Shape, device: torch.device, wanted: Optional[List[str]] = None
                     ) -> List[Contender]:
    """Every contender for this shape, available or with its reason; `wanted` filters by name."""
    out = []
    for name, why in available_backends().items():
        if device.type not in BACKENDS[name].devices:
            continue  # a backend for another device is not a contender here
        out.append(backend_contender(name, shape, device) if why is None
                   else Contender(name, "backend", unavailable=why))
    makers: Dict[str, Callable] = {COMPILED_REFERENCE: compiled_reference_contender,
                                   SDPA: sdpa_contender, FLEX: flex_contender}
    for name, make in makers.items():
        if wanted is None or name in wanted:
            try:
                out.append(make(shape, device))
            except Exception as e:
                out.append(Contender(name, "baseline", unavailable=f"{type(e).__name__}: {e}"))
    return [c for c in out if wanted is None or c.name in wanted]


ALL_CONTENDER_NAMES = tuple(BACKENDS) + (COMPILED_REFERENCE, SDPA, FLEX)
