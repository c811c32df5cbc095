"""The `cuda` backend (csrc/cuda) through the public API, against the float64 loop.

Accuracy is judged flash-attention style: the kernel's error against float64 must be within a
small multiple of the error of the reference backend run in the same dtype, and within SPEC's
bounds. Gradients are compared with PyTorch autograd of the reference in float64.
"""
import math

import pytest
import torch

import mstr_kernels
from conftest import requires_cuda
from float64_loop import fractal_attention_f64
from parity import SPEC_BOUND, rel_err

# Below these an error is rounding noise of float32 accumulation, whatever the reference shows.
NOISE_FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
REF_MULTIPLE = 3.0

pytestmark = requires_cuda


def make_qkv(B, H, T, D, dtype, *, layout="bhtd", seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if layout == "btshd":  # views of a fused (B, T, 3, H, D) projection
        qkv = torch.randn(B, T, 3, H, D, device="cuda", generator=g).to(dtype)
        return tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))
    if layout == "btHd_padded":  # row stride with a gap, D not contiguous with the next row
        big = torch.randn(B, T, H, D + 3, device="cuda", generator=g).to(dtype)
        xs = [big[..., :D].transpose(1, 2)]
        xs += [torch.randn(B, H, T, D, device="cuda", generator=g).to(dtype) for _ in range(2)]
        return tuple(xs)
    return tuple(torch.randn(B, H, T, D, device="cuda", generator=g).to(dtype) for _ in range(3))


def lengths_tensor(lengths):
    return None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device="cuda")


def float64_grads(q, k, v, dout, lengths, p, levels, scale):
    """Forward (float64 loop) and gradients (autograd of the reference in float64)."""
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, p=p, levels=levels, lengths=lengths,
                                         scale=scale, backend="reference")
    out.backward(dout.double())
    loop = fractal_attention_f64(*(x.detach().double().cpu() for x in (q, k, v)), p, levels,
                                 None if lengths is None else lengths.cpu(), scale)
    loop = torch.from_numpy(loop).to(out.device)
    assert rel_err(out.detach(), loop) < 1e-10  # the two float64 definitions agree
    return [loop] + [x.grad for x in leaves]


def run_backend(backend, q, k, v, dout, lengths, p, levels, scale):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = mstr_kernels.fractal_attention(*leaves, p=p, levels=levels, lengths=lengths,
                                         scale=scale, backend=backend)
    out.backward(dout)
    return [out.detach()] + [x.grad for x in leaves]


def check_parity(B, H, T, D, p, levels, dtype, lengths=None, layout="bhtd", scale=None, seed=0):
    q, k, v = make_qkv(B, H, T, D, dtype, layout=layout, seed=seed)
    dout = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    lengths = lengths_tensor(lengths)
    scale_used = 1.0 / math.sqrt(D) if scale is None else scale
    exact = float64_grads(q, k, v, dout, lengths, p, levels, scale_used)
    got = run_backend("cuda", q, k, v, dout, lengths, p, levels, scale)
    ref_same_dtype = run_backend("reference", q, k, v, dout, lengths, p, levels, scale)
    assert got[0].dtype == dtype and got[0].shape == q.shape
    # memory of the output is (B, T, H, D)
    assert got[0].transpose(1, 2).is_contiguous()
    for name, x, r, e in zip(("out", "dq", "dk", "dv"), got, ref_same_dtype, exact):
        assert torch.isfinite(x).all(), f"{name} has NaN/Inf"
        err, ref_err = rel_err(x, e), rel_err(r, e)
        bound = min(SPEC_BOUND[dtype], max(REF_MULTIPLE * ref_err, NOISE_FLOOR[dtype]))
        assert err <= bound, (f"{name}: cuda error {err:.2e} > {bound:.2e} (reference in {dtype}: "
                              f"{ref_err:.2e}) for B={B} H={H} T={T} D={D} p={p} levels={levels}")
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            for name, x in zip(("out", "dq", "dk", "dv"), got):
                assert (x[b, :, n:] == 0).all(), f"{name} is not exactly 0 on padding of item {b}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p,levels,D", [(3, 4, 64), (2, 3, 24), (4, 2, 40), (3, 2, 37),
                                        (5, 3, 96), (8, 2, 128), (2, 5, 256)])
def test_parity_shapes_and_dtypes(p, levels, D, dtype):
    P = p ** levels
    check_parity(2, 3, 2 * P + P // 2 + 1, D, p, levels, dtype)  # a tail tile of odd length


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths_of", [lambda T: [T, 0], lambda T: [T // 2 + 1, T - 1],
                                        lambda T: [1, T]])
def test_lengths(lengths_of, dtype):
    T = 200
    check_parity(2, 2, T, 64, 3, 4, dtype, lengths=lengths_of(T))


@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_sequences_shorter_than_a_window(T):
    check_parity(2, 2, T, 16, 3, 4, torch.float32, lengths=[T, max(T - 1, 0)])


@pytest.mark.parametrize("layout", ["btshd", "btHd_padded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_views(layout, dtype):
    check_parity(2, 4, 170, 64, 3, 4, dtype, lengths=[170, 99], layout=layout)


def test_odd_head_dim_uses_scalar_path():
    check_parity(1, 2, 100, 7, 3, 3, torch.float16, lengths=[91])


def test_big_tiles_chunk_the_head_dim():
    # p**levels = 1024: shared memory holds only a chunk of D; scores span all chunks.
    check_parity(1, 1, 1100, 256, 2, 10, torch.float32, lengths=[1050])
    check_parity(1, 2, 800, 200, 3, 6, torch.bfloat16)


def test_custom_scale():
    check_parity(1, 2, 90, 32, 3, 3, torch.float32, scale=0.7)


def test_dout_with_zero_strides():
    q, k, v = (x.requires_grad_() for x in make_qkv(2, 2, 50, 16, torch.float32))
    out = mstr_kernels.fractal_attention(q, k, v, p=3, levels=3, backend="cuda")
    out.sum().backward()  # dout is an expand of a scalar: every stride 0
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    mstr_kernels.fractal_attention(qr, kr, vr, p=3, levels=3, backend="reference").sum().backward()
    for x, r in ((q, qr), (k, kr), (v, vr)):
        assert rel_err(x.grad, r.grad) < SPEC_BOUND[torch.float32]


def test_deterministic_bitwise():
    q, k, v = make_qkv(4, 4, 500, 64, torch.bfloat16, layout="btshd")
    dout = torch.randn_like(q)
    lengths = lengths_tensor([500, 321, 81, 7])
    first = run_backend("cuda", q, k, v, dout, lengths, 3, 4, None)
    for _ in range(3):
        again = run_backend("cuda", q, k, v, dout, lengths, 3, 4, None)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_poisoned_padding_and_memory_give_no_nan():
    B, H, T, D = 3, 2, 150, 64
    q, k, v = make_qkv(B, H, T, D, torch.float16)
    dout = torch.randn_like(q)
    lengths = [150, 60, 0]
    for b, n in enumerate(lengths):
        for x in (q, k, v, dout):
            x[b, :, n:] = float("nan")  # padding must influence nothing
    # Fill the caching allocator's free blocks with NaN so that fresh outputs start poisoned.
    torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")
    got = run_backend("cuda", q, k, v, dout, lengths_tensor(lengths), 3, 4, None)
    for name, x in zip(("out", "dq", "dk", "dv"), got):
        assert not torch.isnan(x).any(), f"{name} has NaN"
    clean = [torch.nan_to_num(x, nan=0.0) for x in (q, k, v, dout)]
    exact = float64_grads(*clean, lengths_tensor(lengths), 3, 4, 1 / math.sqrt(D))
    for x, e in zip(got, exact):
        assert rel_err(x, e) < SPEC_BOUND[torch.float16]


def test_large_magnitudes_stay_finite():
    q, k, v = make_qkv(1, 2, 81, 64, torch.float16)
    got = run_backend("cuda", q * 200, k * 200, v, torch.ones_like(q), None, 3, 4, None)
    for x in got:
        assert torch.isfinite(x).all()


def test_torch_compile_fullgraph():
    q, k, v = make_qkv(2, 2, 100, 32, torch.bfloat16)
    lengths = lengths_tensor([100, 40])

    def f(q, k, v, lengths):
        return mstr_kernels.fractal_attention(q, k, v, lengths=lengths, backend="cuda") * 2

    compiled = torch.compile(f, fullgraph=True)
    leaves_c = [x.detach().requires_grad_() for x in (q, k, v)]
    leaves_e = [x.detach().requires_grad_() for x in (q, k, v)]
    out_c, out_e = compiled(*leaves_c, lengths), f(*leaves_e, lengths)
    assert torch.equal(out_c, out_e)
    out_c.float().square().sum().backward()
    out_e.float().square().sum().backward()
    for a, b in zip(leaves_c, leaves_e):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-2, atol=1e-3)


def test_autocast_runs_in_bfloat16():
    q, k, v = make_qkv(1, 2, 90, 64, torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = mstr_kernels.fractal_attention(q, k, v, backend="cuda")
    assert out.dtype == torch.bfloat16
    ref = fractal_attention_f64(*(x.bfloat16().double().cpu() for x in (q, k, v)), 3, 4)
    assert rel_err(out, torch.from_numpy(ref).cuda()) < SPEC_BOUND[torch.bfloat16]


def test_offsets_beyond_int32(whole_gpu):
    # q, k, v views of one (1, T, 3, 1, D) tensor with B*H*T*D > 2**31; tiles are independent,
    # so the last tiles are checked against the reference on just those frames.
    D, P = 64, 81
    T = (2 ** 31) // D + 5 * P + 17
    need = 4 * T * D * 2 + (1 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    qkv = torch.empty(1, T, 3, 1, D, device="cuda", dtype=torch.bfloat16)
    tail_start = (T // P - 1) * P
    qkv[:, :tail_start].zero_()
    qkv[:, tail_start:].normal_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out = mstr_kernels.fractal_attention(q, k, v, p=3, levels=4, backend="cuda")
    tail = [x[:, :, tail_start:] for x in (q, k, v)]
    ref = fractal_attention_f64(*(x.double().cpu() for x in tail), 3, 4)
    assert rel_err(out[:, :, tail_start:], torch.from_numpy(ref).cuda()) < SPEC_BOUND[torch.bfloat16]
    assert (out[:, :, :tail_start:P * 1000] == 0).all()  # zero inputs: zero output (GELU(0)=0)
