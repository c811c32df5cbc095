"""The fused Triton backend against the independent float64 loop (tests/float64_loop.py).

Runs on CUDA when a GPU is visible, else on CPU tensors under TRITON_INTERPRET=1 (set it in the
environment before Python starts: `TRITON_INTERPRET=1 pytest tests/test_triton_backend.py`).
Shapes stay small so the interpreter keeps this file fast. Half precision is checked flash-
attention style: the kernel's error against float64 stays within a small multiple of the
error of the reference backend run in the same dtype, and within SPEC's bound.
"""
import os

import numpy as np
import pytest
import torch

from conftest import CUDA
from float64_loop import fractal_attention_f64
from parity import SPEC_BOUND, rel_err

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not (CUDA or INTERPRET),
    reason="the Triton backend needs a CUDA GPU or TRITON_INTERPRET=1 (neither is present)")

if CUDA or INTERPRET:
    import mstr_kernels

DEVICE = "cuda" if CUDA else "cpu"
HALF = (torch.float16, torch.bfloat16)
# Kernel error may exceed the same-dtype reference's error by this factor (different rounding
# order); SPEC's absolute bounds apply as well.
HALF_ERROR_FACTOR = 3.0

# (B, H, T, D, p, levels, lengths): tails (T not a multiple of p**levels), T < p, T < tile,
# lengths 0 / T / between, D not a power of two, p = 2..8, levels = 1 (no pooling).
CASES = [
    (2, 2, 20, 5, 3, 2, None),
    (2, 1, 7, 24, 2, 3, [0, 7]),
    (1, 2, 2, 8, 3, 2, None),
    (2, 1, 30, 80, 5, 2, [13, 30]),
    (1, 1, 70, 16, 8, 2, [65]),
    (2, 1, 40, 64, 3, 4, [40, 29]),
    (1, 2, 45, 3, 2, 5, [44]),
    (1, 1, 70, 1, 4, 3, None),
    (2, 1, 16, 12, 7, 1, [16, 9]),
    (1, 1, 40, 10, 6, 2, [1]),
]
CASE_IDS = [f"B{c[0]}H{c[1]}T{c[2]}D{c[3]}p{c[4]}L{c[5]}len{c[6]}" for c in CASES]


def make_inputs(B, H, T, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(DEVICE, dtype) for _ in range(3)]


def lengths_tensor(lengths):
    return None if lengths is None else torch.tensor(lengths, dtype=torch.int64, device=DEVICE)


def check_half(err_kernel, err_reference, dtype, what):
    bound = SPEC_BOUND[dtype]
    assert err_kernel <= bound, f"{what}: error {err_kernel:.3g} > SPEC bound {bound}"
    assert err_kernel <= HALF_ERROR_FACTOR * err_reference + 1e-7, (
        f"{what}: error {err_kernel:.3g} > {HALF_ERROR_FACTOR} x the reference backend's "
        f"{err_reference:.3g} in {dtype}")


def float64_grads(q, k, v, dout, p, levels, lengths):
    """Gradients in float64 by the reference backend, after checking its forward against the
    float64 loop (so the gradients are of the formula the loop evaluates)."""
    x64 = [x.detach().to(torch.float64).requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*x64, p=p, levels=levels, lengths=lengths,
                                         backend="reference")
    loop = fractal_attention_f64(*(x.detach().cpu() for x in x64), p, levels,
                                 None if lengths is None else lengths.cpu())
    assert rel_err(out, loop) < 1e-12
    out.backward(dout.to(torch.float64))
    return [x.grad for x in x64], loop


def run_backend(q, k, v, dout, p, levels, lengths, backend):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*xs, p=p, levels=levels, lengths=lengths,
                                         backend=backend)
    out.backward(dout)
    return out, [x.grad for x in xs]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_forward_and_gradients(case):
    B, H, T, D, p, levels, lengths = case
    q, k, v = make_inputs(B, H, T, D, torch.float32)
    lengths = lengths_tensor(lengths)
    dout = make_inputs(B, H, T, D, torch.float32, seed=1)[0]
    grads64, loop = float64_grads(q, k, v, dout, p, levels, lengths)
    out, grads = run_backend(q, k, v, dout, p, levels, lengths, "triton")
    assert out.shape == (B, H, T, D) and out.dtype == torch.float32
    assert out.transpose(1, 2).is_contiguous()  # memory laid out as (B, T, H, D)
    assert rel_err(out, loop) < 1e-5
    for name, g, g64 in zip("qkv", grads, grads64):
        assert rel_err(g, g64) < 1e-5, f"d{name}"
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            for x in [out] + grads:
                assert torch.all(x[b, :, n:] == 0)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 3, 5, 6)],
                         ids=[CASE_IDS[i] for i in (0, 3, 5, 6)])
def test_half_forward_and_gradients(case, dtype):
    B, H, T, D, p, levels, lengths = case
    q, k, v = make_inputs(B, H, T, D, dtype)
    lengths = lengths_tensor(lengths)
    dout = make_inputs(B, H, T, D, dtype, seed=1)[0]
    grads64, loop = float64_grads(q, k, v, dout, p, levels, lengths)
    out, grads = run_backend(q, k, v, dout, p, levels, lengths, "triton")
    out_ref, grads_ref = run_backend(q, k, v, dout, p, levels, lengths, "reference")
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    check_half(rel_err(out, loop), rel_err(out_ref, loop), dtype, "out")
    for name, g, g_ref, g64 in zip("qkv", grads, grads_ref, grads64):
        check_half(rel_err(g, g64), rel_err(g_ref, g64), dtype, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_strided_views_of_fused_projection(dtype):
    """q, k, v as views of one (B, T, 3, H, D) tensor, read in place; dout of stride 0."""
    B, H, T, D, p, levels = 2, 3, 25, 24, 3, 2
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, T, 3, H, D, generator=g).to(DEVICE, dtype).requires_grad_()
    q, k, v = qkv.unbind(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    assert not q.is_contiguous()
    lengths = lengths_tensor([25, 11])
    out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, lengths=lengths,
                                         backend="triton")
    out.float().sum().backward()  # the op's dout is an expanded (stride 0) ones tensor
    qkv64 = qkv.detach().to(torch.float64).requires_grad_()
    q64, k64, v64 = (x.transpose(1, 2) for x in qkv64.unbind(2))
    out64 = mstr_kernels.fractal_attention(q64, k64, v64, p=p, levels=levels, lengths=lengths,
                                           backend="reference")
    loop = fractal_attention_f64(q64.detach().cpu(), k64.detach().cpu(), v64.detach().cpu(),
                                 p, levels, lengths.cpu())
    assert rel_err(out64, loop) < 1e-12
    out64.sum().backward()
    bound = SPEC_BOUND[dtype]
    assert rel_err(out, loop) < bound
    assert rel_err(qkv.grad, qkv64.grad) < bound


def test_backward_is_deterministic():
    B, H, T, D, p, levels = 2, 2, 50, 24, 3, 3
    q, k, v = make_inputs(B, H, T, D, torch.bfloat16, seed=3)
    dout = make_inputs(B, H, T, D, torch.bfloat16, seed=4)[0]
    lengths = lengths_tensor([50, 31])
    first = run_backend(q, k, v, dout, p, levels, lengths, "triton")
    second = run_backend(q, k, v, dout, p, levels, lengths, "triton")
    assert torch.equal(first[0], second[0])
    for g1, g2 in zip(first[1], second[1]):
        assert torch.equal(g1, g2)


def test_poisoned_memory_does_not_leak():
    """q, k, v are slices of a NaN-filled buffer, padded frames (t >= lengths) hold NaN, and
    dout is NaN on padded frames: nothing of it reaches outputs or gradients."""
    B, H, T, D, p, levels = 2, 2, 22, 10, 3, 2
    lengths = [22, 14]
    g = torch.Generator().manual_seed(5)
    buf = torch.full((B, T + 4, 3, H + 1, D + 3), float("nan"))
    clean = torch.randn(B, T, 3, H, D, generator=g)
    buf[:, :T, :, :H, :D] = clean
    for b, n in enumerate(lengths):
        buf[b, n:T] = float("nan")
        clean[b, n:] = 0.0
    buf = buf.to(DEVICE)
    q, k, v = (buf[:, :T, i, :H, :D].transpose(1, 2) for i in range(3))
    dout = torch.randn(B, H, T, D, generator=g)
    for b, n in enumerate(lengths):
        dout[b, :, n:] = float("nan")
    lens = lengths_tensor(lengths)
    out, grads = run_backend(q, k, v, dout.to(DEVICE), p, levels, lens, "triton")
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in grads)
    for b, n in enumerate(lengths):
        for x in [out] + grads:
            assert torch.all(x[b, :, n:] == 0)
    q0, k0, v0 = (clean[:, :, i].transpose(1, 2) for i in range(3))
    assert rel_err(out, fractal_attention_f64(q0, k0, v0, p, levels, lengths)) < 1e-5
    grads64, _ = float64_grads(q0, k0, v0, torch.nan_to_num(dout, nan=0.0), p, levels,
                               lens.cpu())
    for name, x, x64 in zip("qkv", grads, grads64):
        assert rel_err(x, x64) < 1e-5, f"d{name}"


def test_all_lengths_zero():
    q, k, v = make_inputs(2, 1, 9, 4, torch.float32)
    out, grads = run_backend(q, k, v, torch.ones(2, 1, 9, 4, device=DEVICE), 3, 2,
                             lengths_tensor([0, 0]), "triton")
    for x in [out] + grads:
        assert torch.all(x == 0)


def test_torch_compile_fullgraph():
    """The registered op is one opaque node: fullgraph compiles around it, forward and backward."""
    torch._dynamo.reset()
    B, H, T, D, p, levels = 1, 2, 12, 8, 3, 2
    q, k, v = make_inputs(B, H, T, D, torch.float32, seed=6)
    lengths = lengths_tensor([10])

    def f(q, k, v, lengths):
        return mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, lengths=lengths,
                                              backend="triton") * 2.0

    compiled = torch.compile(f, fullgraph=True)
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*xs, lengths)
    out.sum().backward()
    eager = [x.clone().requires_grad_() for x in (q, k, v)]
    out_eager = f(*eager, lengths)
    out_eager.sum().backward()
    assert torch.equal(out, out_eager)
    for a, b in zip(xs, eager):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.skipif(not CUDA, reason="64-bit offsets need > 2**31 elements: a GPU run only")
def test_offsets_beyond_int32(whole_gpu):
    """Tiles far beyond 2**31 elements match the same frames computed on a small copy."""
    free, _ = torch.cuda.mem_get_info()
    H, D, p, levels = 16, 64, 3, 4
    tile = p ** levels
    T = (2 ** 31 // (H * D) // tile + 2) * tile  # the out tensor passes 2**31 elements
    need = 8 * T * H * D * 2  # qkv (3), out, dq, dk, dv, dout in bf16
    if free < need * 1.2:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} free")
    qkv = torch.randn(1, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (x.transpose(1, 2).requires_grad_() for x in qkv.unbind(2))
    out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, backend="triton")
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    tail = slice(T - 2 * tile, T)
    small = [x[:, :, tail].detach().clone().requires_grad_() for x in (q, k, v)]
    out_small = mstr_kernels.fractal_attention(*small, p=p, levels=levels, backend="triton")
    grads_small = torch.autograd.grad(out_small, small, dout[:, :, tail].contiguous())
    assert torch.equal(out[:, :, tail], out_small)
    for g, gs in zip((dq, dk, dv), grads_small):
        assert torch.equal(g[:, :, tail], gs)


def test_tuning_from_environment(tmp_path):
    """MSTR_KERNELS_TRITON_TUNING (inline JSON or a file, as triton_tune.py --json-out writes
    it) overrides launch knobs; a bad value is an error naming the variable."""
    from mstr_kernels.ops.triton_fractal import TUNING_ENV, tuning_from_env
    assert tuning_from_env(None) == {}
    assert tuning_from_env('{"fwd": {"scratch_mb": 16}}') == {"fwd": {"scratch_mb": 16}}
    path = tmp_path / "tuning.json"
    path.write_text('{"bwd": {"num_warps": 8, "chunk": 1024}}')
    assert tuning_from_env(str(path)) == {"bwd": {"num_warps": 8, "chunk": 1024}}
    for bad in ('{"fwd": {"warps": 8}}', '{"side": {}}', "[1]", str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match=TUNING_ENV):
            tuning_from_env(bad)


def test_other_launch_knobs_give_the_same_outputs():
    """The knobs triton_tune.py sweeps change block sizes and the grid, never the result."""
    from mstr_kernels.ops import triton_fractal as tf
    B, H, T, D, p, levels = 2, 2, 60, 24, 3, 3
    q, k, v = make_inputs(B, H, T, D, torch.float32, seed=5)
    lengths = lengths_tensor([60, 41])
    dout = make_inputs(B, H, T, D, torch.float32, seed=6)[0]
    saved = {kind: dict(knobs) for kind, knobs in tf.TUNING.items()}
    results = []
    try:
        for knobs in ({"level1_first": 0}, {"level1_first": 1},
                      {"chunk": 512, "level_chunk": 256, "pool_chunk": 512, "num_warps": 2,
                       "scratch_mb": 8, "level1_first": 1},
                      {"chunk": 4096, "level_chunk": 2048, "pool_chunk": 8192, "num_warps": 8}):
            for kind in ("fwd", "bwd"):
                tf.set_tuning(kind, **{k: v for k, v in dict(saved[kind], **knobs).items()
                                       if k in saved[kind]})
            out = tf.fractal_attention_fwd(q, k, v, lengths, p, levels, D ** -0.5)
            grads = tf.fractal_attention_bwd(dout, q, k, v, lengths, p, levels, D ** -0.5)
            results.append((out, *grads))
    finally:
        for kind in ("fwd", "bwd"):
            tf.set_tuning(kind, **saved[kind])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
