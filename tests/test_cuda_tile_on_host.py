"""The CUDA kernels' per-tile code (csrc/cuda/fractal_tile.cuh), run on the host.

tests/cuda_host/tile_on_host.cpp compiles the same tile functions the CUDA kernels call, with a
thread block emulated by std::threads and a barrier, so that the kernels' indexing, head-dim
chunking, vector/scalar paths and synchronisation are tested against the float64 loop on a
machine without a GPU. (The CUDA launch itself is tested in test_cuda_backend.py on a GPU.)
"""
import math
import shutil
from pathlib import Path

import pytest
import torch

from float64_loop import fractal_attention_f64
from cuda_spec_configs import ITEMSIZE, SPEC_BWD_CASES, SPEC_CASES, SPEC_PLD, SpecConfig
from parity import SPEC_BOUND, rel_err

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tile_on_host(tmp_path_factory):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler to build the host emulation of the CUDA tiles")
    from torch.utils import cpp_extension
    return cpp_extension.load(
        name="mstr_tile_on_host", sources=[str(ROOT / "tests" / "cuda_host" / "tile_on_host.cpp")],
        extra_include_paths=[str(ROOT / "csrc")], extra_cflags=["-O1", "-std=c++20"],
        build_directory=str(tmp_path_factory.mktemp("tile_on_host")), verbose=False)


def exact(q, k, v, dout, lengths, p, levels, scale):
    """float64: the loop for the output, autograd of the reference for the gradients."""
    from mstr_kernels.ops.reference import fractal_attention_reference
    clean = [torch.nan_to_num(x.double(), nan=0.0) for x in (q, k, v, dout)]
    leaves = [x.requires_grad_() for x in clean[:3]]
    out = fractal_attention_reference(*leaves, lengths, p, levels, scale)
    out.backward(clean[3])
    loop = torch.from_numpy(fractal_attention_f64(*(x.detach() for x in clean[:3]), p, levels,
                                                  lengths, scale))
    assert rel_err(out.detach(), loop) < 1e-10
    return [loop] + [x.grad for x in leaves]


CASES = [
    # B, H, T, D, p, levels, dtype, lengths, smem budget KiB, threads, layout
    (2, 2, 200, 64, 3, 4, torch.bfloat16, [200, 120], 100, 256, "btshd"),   # main configuration
    (2, 2, 200, 64, 3, 4, torch.float32, [200, 81], 100, 256, "bhtd"),
    (2, 1, 100, 64, 3, 4, torch.float16, [0, 81], 30, 64, "bhtd"),          # chunked head dim
    (2, 2, 50, 20, 2, 3, torch.float32, [50, 13], 2, 33, "bhtd"),           # odd thread count
    (1, 1, 2, 8, 3, 2, torch.float32, None, 100, 32, "bhtd"),               # T < p
    (2, 1, 70, 24, 4, 3, torch.bfloat16, [70, 5], 10, 64, "bhtd"),          # scalar chunks
    (2, 2, 90, 7, 3, 4, torch.float16, [90, 44], 12, 50, "bhtd"),           # odd D
    (1, 2, 30, 33, 2, 4, torch.float32, [29], 3, 64, "bhtd"),
    (1, 1, 1100, 40, 2, 10, torch.bfloat16, [1050], 100, 256, "bhtd"),      # p**levels = 1024
    (2, 2, 90, 64, 3, 4, torch.float32, [90, 50], 20, 128, "padded"),       # no 16-byte path
]


@pytest.mark.parametrize("B,H,T,D,p,levels,dtype,lengths,budget_kib,threads,layout", CASES)
def test_tiles_match_float64(tile_on_host, B, H, T, D, p, levels, dtype, lengths, budget_kib,
                             threads, layout):
    g = torch.Generator().manual_seed(B * 1000 + T + D)
    if layout == "btshd":
        qkv = torch.randn(B, T, 3, H, D, generator=g).to(dtype)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    elif layout == "padded":  # rows with a gap of one element: scalar loads only
        q, k, v = (torch.randn(B, H, T, D + 1, generator=g).to(dtype)[..., :D] for _ in range(3))
    else:
        q, k, v = (torch.randn(B, H, T, D, generator=g).to(dtype) for _ in range(3))
    dout = torch.randn(B, H, T, D, generator=g).to(dtype)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    if lens is not None:  # padding must influence nothing
        for b, n in enumerate(lengths):
            for x in (q, k, v, dout):
                x[b, :, n:] = float("nan")
    scale = 1.0 / math.sqrt(D)
    budget = budget_kib * 1024
    out, chunk = tile_on_host.forward(q, k, v, lens, p, levels, scale, budget, threads)
    dq, dk, dv, chunk_bwd = tile_on_host.backward(dout, q, k, v, lens, p, levels, scale, budget,
                                                  threads)
    ref = exact(q, k, v, dout, lens, p, levels, scale)
    for name, x, r in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), ref):
        assert not torch.isnan(x).any(), f"{name} has NaN (a frame was not written or read padding)"
        err = rel_err(x, r)
        assert err < SPEC_BOUND[dtype], f"{name}: error {err:.2e} (chunks {chunk.item()}/{chunk_bwd.item()})"
        if lengths is not None:
            for b, n in enumerate(lengths):
                assert (x[b, :, n:] == 0).all(), f"{name} is not 0 on padding of item {b}"


def test_chunking_is_exercised(tile_on_host):
    q = torch.randn(1, 1, 100, 64)
    _, chunk = tile_on_host.forward(q, q, q, None, 3, 4, 0.125, 30 * 1024, 64)
    assert chunk.item() < 64  # a budget of 30 KiB cannot hold two pyramids of 64 columns


# ---- the forward specialised on (p, levels, D): csrc/cuda/fractal_spec_tile.cuh ----------------

def test_spec_mirror_matches_kernel(tile_on_host):
    """The report's SpecConfig (threads, shared memory, frames per item, stages) is what the
    compiled kernel code uses, for every configuration that fits and no other."""
    rows = {tuple(r[:5]): r[5:] for r in tile_on_host.spec_configs()}
    mirrored = {}
    for p, levels, D in SPEC_PLD:
        for itemsize in (2, 4):
            for pass_, kind in ((0, "fwd"), (1, "bwd")):
                c = SpecConfig(itemsize, p, levels, D, kind)
                if c.fits:
                    mirrored[(pass_, itemsize, p, levels, D)] = [c.threads, c.smem_bytes, c.F,
                                                                 c.stages, c.min_blocks]
    assert rows == mirrored


def _spec_inputs(B, H, T, D, dtype, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3, H, D, generator=g).to(dtype)  # views of one projection
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    if lengths is not None:  # padding must influence nothing
        for b, n in enumerate(lengths):
            qkv[b, n:] = float("nan")
    return q, k, v, lens


def _check_spec(tile_on_host, q, k, v, lens, p, levels, grid):
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    out, info = tile_on_host.spec_forward(q, k, v, lens, p, levels, scale, grid)
    clean = [torch.nan_to_num(x.double(), nan=0.0) for x in (q, k, v)]
    ref = torch.from_numpy(fractal_attention_f64(*clean, p, levels, lens, scale))
    assert not torch.isnan(out).any(), "out has NaN (a frame was not written or read padding)"
    err = rel_err(out, ref)
    assert err < SPEC_BOUND[q.dtype], f"error {err:.2e} (threads, smem, F, stages: {info.tolist()})"
    if lens is not None:
        for b, n in enumerate(lens.tolist()):
            assert (out[b, :, n:] == 0).all(), f"out is not 0 on padding of item {b}"
    return info


@pytest.mark.parametrize("p,levels,D,dtype", SPEC_CASES)
def test_spec_forward_matches_float64(tile_on_host, p, levels, D, dtype):
    """Every specialised configuration: a partial last item, a length inside the first item,
    two emulated blocks walking the items (the persistent stride and both copy stages)."""
    F = SpecConfig(ITEMSIZE[dtype], p, levels, D).F
    T = F + F // 2 + 1
    lengths = [T, max(1, F // 3)]
    q, k, v, lens = _spec_inputs(2, 2, T, D, dtype, lengths, seed=p * 100 + levels * 10 + D)
    _check_spec(tile_on_host, q, k, v, lens, p, levels, grid=2)


@pytest.mark.parametrize("T,lengths,grid", [
    (2, None, 1),               # T < p
    (81, [0, 81], 1),           # exactly one tile; a sequence of length 0
    (500, [500, 244, 81], 3),   # several items per block, tails inside a tile
    (163, None, 5),             # more blocks than items for some
])
def test_spec_forward_edges(tile_on_host, T, lengths, grid):
    B = 1 if lengths is None else len(lengths)
    q, k, v, lens = _spec_inputs(B, 2, T, 64, torch.bfloat16, lengths, seed=T)
    _check_spec(tile_on_host, q, k, v, lens, 3, 4, grid)


@pytest.mark.parametrize("p,levels,D,dtype", SPEC_BWD_CASES)
def test_spec_backward_matches_float64(tile_on_host, p, levels, D, dtype):
    """Every specialised backward against float64 autograd of the reference: a partial last
    item, a length inside the first item, two emulated blocks, NaN-poisoned memory."""
    F = SpecConfig(ITEMSIZE[dtype], p, levels, D, "bwd").F
    T = F + F // 2 + 1
    lengths = [T, max(1, F // 3)]
    q, k, v, lens = _spec_inputs(2, 2, T, D, dtype, lengths, seed=p * 100 + levels * 10 + D + 1)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(T)).to(dtype)
    dout[1, :, lengths[1]:] = float("nan")  # gradient of padding: influences nothing
    _check_spec_backward(tile_on_host, dout, q, k, v, lens, p, levels, grid=2)


def _check_spec_backward(tile_on_host, dout, q, k, v, lens, p, levels, grid):
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq, dk, dv, info = tile_on_host.spec_backward(dout, q, k, v, lens, p, levels, scale, grid)
    ref = exact(q, k, v, dout, lens, p, levels, scale)[1:]
    for name, x, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
        assert not torch.isnan(x).any(), f"{name} has NaN"
        err = rel_err(x, r)
        assert err < SPEC_BOUND[q.dtype], f"{name}: error {err:.2e} ({info.tolist()})"
        if lens is not None:
            for b, n in enumerate(lens.tolist()):
                assert (x[b, :, n:] == 0).all(), f"{name} is not 0 on padding of item {b}"


@pytest.mark.parametrize("T,lengths,grid",
                         [(2, None, 1), (81, [0, 81], 1), (500, [500, 244, 81], 3)])
def test_spec_backward_edges(tile_on_host, T, lengths, grid):
    B = 1 if lengths is None else len(lengths)
    q, k, v, lens = _spec_inputs(B, 2, T, 64, torch.bfloat16, lengths, seed=T + 1)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(T)).to(torch.bfloat16)
    _check_spec_backward(tile_on_host, dout, q, k, v, lens, 3, 4, grid)


def test_item_division_by_a_constant(tile_on_host):
    """The kernels divide item indices (< 2**31) by H and the tiles per sequence with a
    multiplier set on the host (UDivisor): exact at the edges of every divisor's range."""
    g = torch.Generator().manual_seed(3)
    top = 2 ** 31 - 1
    divisors = [1, 2, 3, 5, 7, 12, 16, 81, 641, 1000, 65535, 65536, 65537, 2 ** 30 - 1, 2 ** 30,
                2 ** 30 + 1, 3 * 2 ** 29, top]
    divisors += torch.randint(1, top, (40,), generator=g).tolist()
    for d in divisors:
        n = [0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, top, top - 1]
        n += [m * d + r for m in (3, 1000, top // d) for r in (-1, 0, 1)]
        n += torch.randint(0, top, (200,), generator=g).tolist()
        n = torch.tensor([x for x in n if 0 <= x <= top], dtype=torch.long)
        assert torch.equal(tile_on_host.udiv(n, d), n // d), f"d={d}"


@pytest.mark.parametrize("B,H,T,lengths", [(3, 3, 200, [200, 0, 97]), (5, 5, 90, None)])
def test_spec_item_order_odd_heads(tile_on_host, B, H, T, lengths):
    """Items (b, tile, h) with H and the tiles per sequence not powers of two, both passes."""
    q, k, v, lens = _spec_inputs(B, H, T, 64, torch.bfloat16, lengths, seed=B * H)
    _check_spec(tile_on_host, q, k, v, lens, 3, 4, grid=4)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(H)).to(torch.bfloat16)
    _check_spec_backward(tile_on_host, dout, q, k, v, lens, 3, 4, grid=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_spec_gelu_form_where_its_derivative_is_small(tile_on_host, dtype):
    """q = k = 0, v = -0.673 (GELU' = 0.036 there): the tanh form's GELU' error would be 7e-3
    of dv, 10x float16's own; float16 and float32 kernels must keep the erf form (flash-
    attention rule: within 3x the reference backend's error). bfloat16 takes the tanh form."""
    import mstr_kernels
    from parity import accept
    B, H, T, p, levels = 1, 2, 90, 3, 4
    q = torch.zeros(B, H, T, 64, dtype=dtype)
    v = torch.full_like(q, -0.67334)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    scale = 0.125
    out, _ = tile_on_host.spec_forward(q, q, v, None, p, levels, scale, 1)
    dv = tile_on_host.spec_backward(dout, q, q, v, None, p, levels, scale, 1)[2]
    x = [t.clone().requires_grad_(True) for t in (q, q, v)]
    ref_out = mstr_kernels.fractal_attention(*x, p=p, levels=levels, scale=scale,
                                             backend="reference")
    ref_dv = torch.autograd.grad(ref_out, x[2], dout)[0]
    exact_out, _, _, exact_dv = exact(q, q, v, dout, None, p, levels, scale)
    for what, got, ref, want in (("out", out, ref_out, exact_out), ("dv", dv, ref_dv, exact_dv)):
        err = rel_err(got, want)
        ok, bound = accept(err, rel_err(ref, want), dtype)
        assert ok, f"{what}: error {err:.2e} > bound {bound:.2e}"


# The A/B variants of the headline kernels (specialised::Variant), which the GPU window times
# (benchmarks/cuda_variants_ab.py): each does what its timing is taken to mean.
FULL, MEMORY, ARITHMETIC, GELU_ERF = range(4)


@pytest.mark.parametrize("backward", [False, True])
def test_spec_variants_do_what_they_measure(tile_on_host, backward):
    T, lengths = 200, [200, 97]
    q, k, v, lens = _spec_inputs(2, 2, T, 64, torch.bfloat16, lengths, seed=11 + backward)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    scale = 0.125

    def run(variant):
        return tile_on_host.spec_variant(backward, variant, dout, q, k, v, lens, scale, 2)[:-1]

    full = run(FULL)
    expected = exact(q, k, v, dout, lens, 3, 4, scale)
    expected = expected[1:] if backward else expected[:1]
    for got, ref in zip(full, expected):
        assert rel_err(got, ref) < SPEC_BOUND[torch.bfloat16]
    # gelu-erf: the erf form is correct too (within float32's bound, at bf16 inputs).
    for got, ref in zip(run(GELU_ERF), expected):
        assert rel_err(got, ref) < SPEC_BOUND[torch.bfloat16]
    # memory: the loads and stores alone, each output row its input row (zero on padding).
    for got, src in zip(run(MEMORY), (q, k, v)):
        want = torch.nan_to_num(src.float(), nan=0.0)
        for b, n in enumerate(lengths):
            want[b, :, n:] = 0
        assert torch.equal(got.float(), want)
    # arithmetic: no global stores at all (the outputs keep their NaN poison).
    for got in run(ARITHMETIC):
        assert torch.isnan(got).all()


def test_spec_forward_is_deterministic(tile_on_host):
    q, k, v, lens = _spec_inputs(2, 2, 200, 64, torch.float32, [200, 120], seed=7)
    a, _ = tile_on_host.spec_forward(q, k, v, lens, 3, 4, 0.125, 2)
    b, _ = tile_on_host.spec_forward(q, k, v, lens, 3, 4, 0.125, 3)
    assert torch.equal(a, b)


# ---- packed sequences: the `cuda` backend's work list (fractal_attention_varlen) -------------

def _packing(p, levels, seed):
    """Lengths 0, 1, < p, tile - 1, tile, tile + 1, an item, a sequence longer than an item,
    and random ones, shuffled; the work list built by the op's own code for the cuda backend
    (entries of one specialised item: BACKENDS["cuda"].varlen_item_frames)."""
    from mstr_kernels.ops import BACKENDS
    from mstr_kernels.ops.varlen import varlen_work_list, work_items
    g = torch.Generator().manual_seed(seed)
    P, F = p ** levels, BACKENDS["cuda"].varlen_item_frames(p, levels)
    lengths = [0, 1, p - 1, P - 1, P, P + 1, F, F + 1, 2 * F + 3, 0]
    lengths += torch.randint(0, F + P, (3,), generator=g).tolist()
    lengths = [lengths[i] for i in torch.randperm(len(lengths), generator=g).tolist()]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    total = sum(lengths)
    tiles = varlen_work_list(cu, total, F, work_items(total, len(lengths), F, None), -1)
    return lengths, cu.tolist(), tiles, g


def _per_sequence_float64(q, k, v, dout, lengths, cu, p, levels, scale):
    """[out, dq, dk, dv] (total, H, D) float64: each sequence alone through `exact`."""
    parts = [[] for _ in range(4)]
    for i, n in enumerate(lengths):
        if n:
            alone = [x[cu[i]:cu[i + 1]].transpose(0, 1)[None] for x in (q, k, v, dout)]
            for part, r in zip(parts, exact(*alone, None, p, levels, scale)):
                part.append(r[0].transpose(0, 1))
    return [torch.cat(part) for part in parts]


VARLEN_CASES = [
    # p, levels, D, dtype, spec (the specialised kernels, else the general ones), budget KiB
    (3, 4, 64, torch.bfloat16, True, 0),    # main configuration: one tile per item
    (2, 5, 32, torch.float32, True, 0),     # three tiles per item
    (3, 2, 32, torch.float16, True, 0),     # ten tiles per item
    (3, 4, 64, torch.float32, False, 100),
    (2, 5, 20, torch.float32, False, 3),    # chunked head dim, three tiles per entry
    (3, 2, 7, torch.float16, False, 12),    # odd D, ten tiles per entry
]


@pytest.mark.parametrize("p,levels,D,dtype,spec,budget_kib", VARLEN_CASES)
def test_varlen_work_list_matches_each_sequence_alone(tile_on_host, p, levels, D, dtype, spec,
                                                      budget_kib):
    """The specialised and general kernels' tile code over the packed work list of the cuda
    backend: every sequence's output and gradients equal its own float64 fractal attention
    (rows of other sequences read nowhere, every row written once: outputs start as NaN)."""
    lengths, cu, tiles, g = _packing(p, levels, seed=p * 100 + levels * 10 + D)
    total, H = sum(lengths), 2
    qkv = torch.randn(total, 3, H, D, generator=g).to(dtype)  # views of one projection
    q, k, v = qkv.unbind(1)
    dout = torch.randn(total, H, D, generator=g).to(dtype)
    scale = 1.0 / math.sqrt(D)
    kw = dict(p=p, levels=levels, scale=scale, budget=budget_kib * 1024, grid=3)
    out, = tile_on_host.varlen(False, spec, dout, q, k, v, tiles, **kw)
    dq, dk, dv = tile_on_host.varlen(True, spec, dout, q, k, v, tiles, **kw)
    ref = _per_sequence_float64(q, k, v, dout, lengths, cu, p, levels, scale)
    for name, x, r in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), ref):
        assert x.shape == (total, H, D)
        assert not torch.isnan(x).any(), f"{name} has NaN (a row was not written)"
        err = rel_err(x, r)
        assert err < SPEC_BOUND[dtype], f"{name}: error {err:.2e}"
