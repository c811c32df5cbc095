"""The parity suite's cases, runner and acceptance rule, shared by every backend.

Cases are drawn from the registry (`mstr_kernels.ops.backends`): each backend gets the cases
whose device and dtype it declares and whose (p, levels, D) its `reasons()` accepts, from one
seeded pool per device, so adding a backend adds its cases with no test edits. Each case runs
through the backend and through `auto`; outputs and gradients are judged against float64 (the
independent loop in float64_loop.py for the forward, autograd of the float64 reference, checked
against the loop, for the gradients) by one rule, `accept`.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

from float64_loop import fractal_attention_f64

# SPEC section 1: relative error bounds against float64 for well-conditioned inputs.
SPEC_BOUND = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# A kernel's error may exceed the reference backend's own error on the same inputs (same dtype,
# against float64) by this factor: a different summation order, as flash-attention's tests allow.
REF_FACTOR = 3.0
# Below these an error is rounding noise of the dtype's accumulation, whatever the reference shows.
NOISE_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
# SPEC: well-conditioned means scores `scale * <q_i, k_j>` of order 1..10.
WELL_CONDITIONED_MAX_SCORE = 10.0
# The SPEC range every backend is held to unless its reasons() say otherwise (a copy of SPEC
# section 1, not of the package's constants: the tests check the package against the contract).
SPEC_P = (2, 8)
SPEC_MAX_TILE = 1024
SPEC_D = (1, 256)

DTYPE_NAMES = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16",
               torch.bfloat16: "bf16"}
SEED = 20240


def rel_err(x, ref) -> float:
    x = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    ref = torch.as_tensor(ref, dtype=torch.float64).detach().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def accept(err: float, ref_err: float, dtype: torch.dtype, well_conditioned: bool = True):
    """The acceptance rule for every backend: (passed, bound). The error may be REF_FACTOR times
    the reference backend's own error (at least the dtype's noise floor); for well-conditioned
    inputs it must also be within SPEC's bound."""
    bound = max(REF_FACTOR * ref_err, NOISE_FLOOR[dtype])
    if well_conditioned:
        bound = min(bound, SPEC_BOUND[dtype])
    return err <= bound, bound


# ---- inputs as users make them ------------------------------------------------------------

def qkv_views(B, H, T, D, dtype=torch.float32, device="cpu", generator=None, layout="projection"):
    """q, k, v as a model makes them: strided views of one (B, T, 3, H, D) projection
    (layout='projection'), or contiguous (B, H, T, D) tensors (layout='contiguous')."""
    if layout == "projection":
        qkv = torch.randn(B, T, 3, H, D, generator=generator, dtype=torch.float64)
        qkv = qkv.to(device=device, dtype=dtype)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    return tuple(torch.randn(B, H, T, D, generator=generator, dtype=torch.float64)
                 .to(device=device, dtype=dtype) for _ in range(3))


def random_lengths(B, T, generator=None, device="cpu"):
    """Lengths covering 0, T and values between (for B >= 3)."""
    lengths = torch.randint(0, T + 1, (B,), generator=generator)
    if B >= 2:
        lengths[0] = T
    if B >= 3:
        lengths[1] = 0
    return lengths.to(device)


def f64_outputs(q, k, v, p, levels, lengths=None, scale=None):
    """The independent loop's output as a float64 CPU tensor."""
    ls = None if lengths is None else lengths.tolist()
    return torch.from_numpy(fractal_attention_f64(q.double().cpu(), k.double().cpu(),
                                                  v.double().cpu(), p, levels, ls, scale))


def arrange(x64: torch.Tensor, layout: str, which: int, dtype, device) -> torch.Tensor:
    """x64 (B, H, T, D) in the memory layout `layout`, as `dtype` on `device`:
    'contiguous'; 'projection' (a view of a (B, T, 3, H, D) tensor); 'strided' (q: no stride 1
    anywhere near D's place, k: rows with a gap, v: every other frame of a longer tensor)."""
    B, H, T, D = x64.shape
    x = x64.to(dtype)
    if layout == "contiguous":
        return x.to(device).contiguous()
    if layout == "projection":
        buf = torch.zeros(B, T, 3, H, D, dtype=dtype)
        buf[:, :, which] = x.transpose(1, 2)
        return buf.to(device)[:, :, which].transpose(1, 2)
    if layout == "strided":
        if which == 0:
            return x.permute(3, 2, 1, 0).contiguous().to(device).permute(3, 2, 1, 0)
        if which == 1:
            buf = torch.zeros(B, T, H, D + 3, dtype=dtype)
            buf[..., :D] = x.transpose(1, 2)
            return buf.to(device)[..., :D].transpose(1, 2)
        buf = torch.zeros(B, H, 2 * T, D, dtype=dtype)
        buf[:, :, ::2] = x
        return buf.to(device)[:, :, ::2]
    raise ValueError(f"layout={layout!r}")


@dataclass(frozen=True)
class Inputs:
    """Everything the inputs and their float64 truth depend on (not the backend)."""
    device: str
    dtype: torch.dtype
    B: int
    H: int
    T: int
    D: int
    p: int
    levels: int
    lengths: Optional[Tuple[int, ...]] = None
    layout: str = "projection"
    scale: Optional[float] = None
    magnitude: float = 1.0
    positive: bool = False  # |randn|: with a negative scale every score is negative
    lengths_dtype: torch.dtype = torch.int64
    seed: int = 0

    @property
    def id(self) -> str:
        parts = [self.device, DTYPE_NAMES[self.dtype],
                 f"B{self.B}H{self.H}T{self.T}D{self.D}p{self.p}L{self.levels}", self.layout]
        if self.lengths is not None:
            parts.append("len" + "_".join(map(str, self.lengths)))
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        if self.magnitude != 1.0:
            parts.append(f"x{self.magnitude:g}")
        if self.positive:
            parts.append("positive")
        return "-".join(parts)

    def scale_value(self) -> float:
        return 1.0 / math.sqrt(self.D) if self.scale is None else self.scale

    def make(self):
        """q, k, v, dout (laid out as `layout`, dout contiguous) and lengths on the device."""
        g = torch.Generator().manual_seed(self.seed)
        shape = (self.B, self.H, self.T, self.D)
        xs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]
        if self.positive:
            xs = [x.abs() for x in xs]
        xs = [x * self.magnitude for x in xs]
        q, k, v = (arrange(x, self.layout, i, self.dtype, self.device) for i, x in enumerate(xs))
        dout = torch.randn(shape, generator=g, dtype=torch.float64).to(self.dtype).to(self.device)
        lengths = (None if self.lengths is None else
                   torch.tensor(self.lengths, dtype=self.lengths_dtype, device=self.device))
        for name, x in (("q", q), ("k", k), ("v", v)):
            assert torch.isfinite(x).all(), f"test bug: {name} of {self.id} is not finite"
        return q, k, v, dout, lengths


# ---- float64 truth, runs, checks ----------------------------------------------------------

def max_abs_score(q, k, p, levels, lengths, scale) -> float:
    """The largest |scale * <Q_l[j], K_l[i]>| over every level's windows (float64): what decides
    whether the softmax is well-conditioned (SPEC section 1)."""
    q, k = q.detach().double().cpu(), k.detach().double().cpu()
    B, H, T, D = q.shape
    tile = p ** levels
    T_pad = -(-T // tile) * tile
    n = torch.full((B,), T) if lengths is None else lengths.cpu().long()
    valid = (torch.arange(T_pad)[None, :] < n[:, None]).double()[:, None, :, None]
    pad = (0, 0, 0, T_pad - T)
    qs, ks = (torch.nn.functional.pad(x, pad) * valid for x in (q, k))
    top = 0.0
    for level in range(levels):
        S = p ** level
        count = valid.reshape(B, 1, T_pad // S, S, 1).sum(3).clamp_min(1)
        Q, K = (x.reshape(B, H, T_pad // S, S, D).sum(3) / count for x in (qs, ks))
        Q, K = (x.reshape(B, H, T_pad // S // p, p, D) for x in (Q, K))
        scores = (Q @ K.transpose(-1, -2)).abs() * abs(scale)
        top = max(top, float(scores.max()))
    return top


@functools.lru_cache(maxsize=64)
def float64_truth(inputs: Inputs):
    """[out, dq, dk, dv] in float64 on the CPU for these inputs, and whether well-conditioned:
    the forward from the independent loop, the gradients from autograd of the reference backend
    in float64, whose forward must agree with the loop."""
    import mstr_kernels
    q, k, v, dout, lengths = inputs.make()
    lengths_cpu = None if lengths is None else lengths.cpu()
    scale = inputs.scale_value()
    leaves = [x.detach().double().cpu().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, p=inputs.p, levels=inputs.levels,
                                         lengths=lengths_cpu, scale=scale, backend="reference")
    grads = torch.autograd.grad(out, leaves, dout.double().cpu())
    loop = f64_outputs(*(x.detach() for x in leaves), inputs.p, inputs.levels, lengths_cpu, scale)
    assert rel_err(out, loop) < 1e-10, "the two float64 definitions disagree"
    score = max_abs_score(q, k, inputs.p, inputs.levels, lengths, scale)
    assert score < torch.finfo(torch.float32).max, (
        f"test bug: {inputs.id} has scores of {score:.3g}, beyond float32 (outside the contract)")
    return [loop] + [g.detach() for g in grads], score <= WELL_CONDITIONED_MAX_SCORE


def run_op(backend: str, q, k, v, dout, lengths, p, levels, scale):
    """[out, dq, dk, dv] of `fractal_attention(..., backend=backend)`, detached."""
    import mstr_kernels
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, p=p, levels=levels, lengths=lengths,
                                         scale=scale, backend=backend)
    grads = torch.autograd.grad(out, leaves, dout)
    return [out.detach()] + [g.detach() for g in grads]


def run_inputs(backend: str, inputs: Inputs):
    q, k, v, dout, lengths = inputs.make()
    return run_op(backend, q, k, v, dout, lengths, inputs.p, inputs.levels, inputs.scale)


NAMES = ("out", "dq", "dk", "dv")


def check_results(what: str, got, ref, exact, inputs: Inputs, well_conditioned: bool,
                  layout: bool = True):
    """Raise AssertionError unless `got` ([out, dq, dk, dv]) passes the acceptance rule against
    `exact` (float64) given the reference backend's `ref` on the same inputs; also dtype, shape,
    the output layout (B, T, H, D), finiteness and exact zeros on padding frames."""
    shape = (inputs.B, inputs.H, inputs.T, inputs.D)
    if layout:
        assert got[0].transpose(1, 2).is_contiguous(), f"{what}: out is not laid out as (B, T, H, D)"
    for name, x, r, e in zip(NAMES, got, ref, exact):
        assert x.dtype == inputs.dtype and tuple(x.shape) == shape, (
            f"{what}: {name} is {x.dtype} {tuple(x.shape)}, expected {inputs.dtype} {shape}")
        assert x.device.type == inputs.device, f"{what}: {name} on {x.device}"
        assert torch.isfinite(x).all(), f"{what}: {name} has NaN or Inf"
        err, ref_err = rel_err(x, e), rel_err(r, e)
        ok, bound = accept(err, ref_err, inputs.dtype, well_conditioned)
        assert ok, (f"{what}: {name} error {err:.3g} > bound {bound:.3g} (reference backend's own "
                    f"error {ref_err:.3g}, {'well' if well_conditioned else 'ill'}-conditioned)")
    if inputs.lengths is not None:
        for b, n in enumerate(inputs.lengths):
            for name, x in zip(NAMES, got):
                assert torch.all(x[b, :, n:] == 0), f"{what}: {name} not exactly 0 on padding of item {b}"


@functools.lru_cache(maxsize=64)
def _reference_and_auto(inputs: Inputs):
    return run_inputs("reference", inputs), run_inputs("auto", inputs)


def check_case(backend: str, inputs: Inputs):
    """Run the inputs through `backend` and through `auto`; both must pass the rule."""
    exact, well = float64_truth(inputs)
    ref, auto = _reference_and_auto(inputs)
    got = ref if backend == "reference" else run_inputs(backend, inputs)
    check_results(f"backend={backend!r} [{inputs.id}]", got, ref, exact, inputs, well)
    check_results(f"backend='auto' [{inputs.id}]", auto, ref, exact, inputs, well)


# ---- the cases, drawn from the registry ---------------------------------------------------

def registry():
    """(BACKENDS, BACKEND_ORDER) as they are now (tests may monkeypatch them)."""
    from mstr_kernels.ops import backends
    return backends.BACKENDS, backends.BACKEND_ORDER


def device_available(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def unavailable(backend: str, device: str) -> Optional[str]:
    """Why `backend` cannot run on `device` on this machine (None if it can)."""
    if backend == "auto":
        return None if device_available(device) else f"no {device} device on this machine"
    b = registry()[0][backend]
    why = b.unavailable_reason()
    if why is None and not device_available(device):
        why = f"no {device} device on this machine (torch.cuda.is_available() is False)"
    return why


def backend_devices(backend: str):
    """The devices to test `backend` on: those it declares (`auto`: every device here)."""
    if backend == "auto":
        return [d for d in ("cpu", "cuda") if device_available(d)]
    return list(registry()[0][backend].devices)


def supports(backend: str, inputs: Inputs) -> bool:
    """Whether the backend declares it runs these inputs (its dtypes, devices and reasons())."""
    if backend == "auto":
        return True
    b = registry()[0][backend]
    if inputs.device not in b.devices or inputs.dtype not in b.dtypes:
        return False
    if unavailable(backend, inputs.device):
        return True  # the case is generated and skipped with the reason it cannot run here
    probe = torch.empty(1, 1, 1, inputs.D, dtype=inputs.dtype, device=inputs.device)
    return not b.reasons(probe, inputs.p, inputs.levels)


def _levels_up_to(p: int, max_tile: int) -> int:
    levels = 1
    while p ** (levels + 1) <= max_tile:
        levels += 1
    return levels


# Shapes kept small on the CPU (the float64 loop and the Triton interpreter are slow there).
POOL_SIZE = 20
MAX_ELEMENTS = {"cpu": 6000, "cuda": 200_000}
MAX_RANDOM_TILE = {"cpu": 81, "cuda": 256}
T_KINDS = ("tail", "short", "within_tile", "tail", "tiles")
LENGTHS_KINDS = ("none", "0_and_T", "between", "none", "all_zero", "between")
LAYOUTS = ("projection", "contiguous", "strided")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _lengths(kind, B, T, rng):
    if kind == "none":
        return None
    if kind == "all_zero":
        return (0,) * B
    lengths = [rng.randint(1, T) for _ in range(B)]
    if kind == "0_and_T":
        lengths[0] = T
        if B > 1:
            lengths[1] = 0
    return tuple(lengths)


def _draw(device: str, i: int, rng: random.Random) -> Inputs:
    dtype = DTYPES[i % len(DTYPES)]
    p = rng.randint(*SPEC_P)
    levels = rng.randint(1, _levels_up_to(p, MAX_RANDOM_TILE[device]))
    tile = p ** levels
    kind = T_KINDS[i % len(T_KINDS)]
    if kind == "short":  # T < p
        T = rng.randint(1, p - 1)
    elif kind == "within_tile":
        T = rng.randint(p, max(p, tile - 1))
    elif kind == "tiles":
        T = tile * rng.randint(1, 2)
    else:  # a tail: T not a multiple of p**levels
        T = tile * rng.randint(0, 1) + rng.randint(1, tile - 1) if tile > 1 else 1
    B, H = rng.randint(1, 3), rng.randint(1, 2)
    D = rng.choice((1, 3, 5, 8, 12, 16, 24, 31, 32, 40, 64, 80))
    while B * H * T * D > MAX_ELEMENTS[device] and D > 1:
        D = max(1, D // 2)
    lengths_kind = LENGTHS_KINDS[(i // 2) % len(LENGTHS_KINDS)]
    if lengths_kind in ("0_and_T",) and B == 1:
        B = 2
    scale = (None, None, None, 0.7, -0.5)[i % 5]
    return Inputs(device, dtype, B, H, T, D, p, levels, _lengths(lengths_kind, B, T, rng),
                  LAYOUTS[i % len(LAYOUTS)], scale,
                  lengths_dtype=(torch.int64, torch.int32)[i % 2], seed=rng.randrange(2**31))


def _extremes(device: str):
    """The corners of the SPEC range (p**levels = 1024, D = 256, p = 8, D = 1) and the default
    p=3, levels=4, each with a tail tile and a length mid-tile."""
    out = []
    for j, (B, H, p, levels, D, T, dtypes) in enumerate(EXTREMES[device]):
        lengths = (T, p ** levels - 2) if B == 2 else (T - 1,)
        for dtype in dtypes:
            out.append(Inputs(device, dtype, B, H, T, D, p, levels, lengths,
                              LAYOUTS[j % len(LAYOUTS)], seed=SEED + 31 * j))
    return out


F32_F64, F32_BF16 = (torch.float32, torch.float64), (torch.float32, torch.bfloat16)
# (B, H, p, levels, D, T, dtypes). On the CPU the slowest (tile 512, tile 1024 with D=256) only
# in float64, which the Triton backend (interpreted there, slow) does not declare.
EXTREMES = {
    "cpu": [(1, 1, 2, 10, 3, 1029, F32_F64), (2, 1, 8, 3, 1, 515, (torch.float64,)),
            (2, 1, 8, 2, 1, 67, (torch.float32,)), (2, 1, 3, 3, 256, 31, F32_F64),
            (2, 1, 5, 2, 17, 31, F32_F64), (1, 1, 3, 4, 64, 85, F32_BF16),
            (2, 1, 4, 5, 256, 1029, (torch.float64,))],
    "cuda": [(1, 1, 2, 10, 256, 1100, F32_BF16), (1, 2, 3, 6, 200, 800, F32_BF16),
             (2, 3, 2, 5, 256, 81, F32_BF16), (2, 3, 8, 2, 128, 161, F32_BF16),
             (2, 3, 5, 3, 96, 313, F32_BF16), (2, 3, 3, 4, 64, 203, F32_BF16)],
}


@functools.lru_cache(maxsize=None)
def input_pool(device: str):
    """The seeded pool of inputs on a device that every backend draws its cases from."""
    rng = random.Random(f"{SEED}:{device}")
    return tuple(_draw(device, i, rng) for i in range(POOL_SIZE)) + tuple(_extremes(device))


# The magnitude sweep (issue 18 item 7): inputs x 1e-4 .. 1e15, scale 0, negative, large.
# (dtype, magnitude, scale, positive). Positive inputs with a negative scale put every score
# of a window below -1e30 (a window whose scores are all very negative still gets its softmax).
SWEEP = [
    (torch.float32, 1e-4, None, False), (torch.float32, 1e4, None, False),
    (torch.float32, 1e8, None, False), (torch.float32, 1e15, None, False),
    (torch.float32, 1.0, 0.0, False), (torch.float32, 1e15, -0.5, True),
    (torch.float32, 1.0, -1e31, True), (torch.float32, 1.0, 1e3, False),
    (torch.bfloat16, 1e15, None, False), (torch.bfloat16, 1e-4, 0.0, False),
    (torch.float16, 10.0, -0.5, True),
]


@functools.lru_cache(maxsize=None)
def sweep_inputs(device: str):
    return tuple(Inputs(device, dtype, 2, 1, 23, 8, 3, 2, (23, 11), LAYOUTS[i % len(LAYOUTS)],
                        scale, magnitude, positive, seed=SEED + i)
                 for i, (dtype, magnitude, scale, positive) in enumerate(SWEEP))


def cases(pool=input_pool):
    """(backend, inputs, why-not-here) for every backend in the registry and every input of
    `pool(device)` it declares support for; why-not-here is None where it runs here."""
    _, order = registry()
    for backend in order:
        for device in backend_devices(backend):
            why = unavailable(backend, device)
            for inputs in pool(device):
                if supports(backend, inputs):
                    yield backend, inputs, why


def single_cases(dtypes=(torch.float32,), first_only=True):
    """(backend, device, dtype, why-not-here) for the tests written once over every backend
    and `auto`: the first of `dtypes` the backend declares (or each, with first_only=False), on
    each device it declares."""
    backends, order = registry()
    for backend in tuple(order) + ("auto",):
        for device in backend_devices(backend):
            declared = DTYPES if backend == "auto" else backends[backend].dtypes
            for dtype in dtypes:
                if dtype in declared:
                    yield backend, device, dtype, unavailable(backend, device)
                    if first_only:
                        break


def with_dtype(inputs: Inputs, dtype) -> Inputs:
    return replace(inputs, dtype=dtype)
