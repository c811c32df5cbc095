"""Packed sequences (SPEC section 1b): `fractal_attention_varlen` against the padded op and the
independent float64 loop over random packings, every backend and `auto`, gradients, strides,
compile, refusals; the packed model against the padded model; packed training."""
import os
import subprocess
import sys

import pytest
import torch

import mstr_kernels
from mstr_kernels import fractal_attention, fractal_attention_varlen
from mstr_kernels.ops import available_backends, select_backend
from parity import SPEC_BOUND, f64_outputs, rel_err

CPU_BUILT = available_backends()["cpu"] is None
requires_cpu = pytest.mark.skipif(not CPU_BUILT, reason="mstr_kernels._C is not built")
CUDA_MISSING = available_backends()["cuda"]  # the reason, or None
requires_cuda_backend = pytest.mark.skipif(CUDA_MISSING is not None,
                                           reason=f"backend 'cuda': {CUDA_MISSING}")
TRITON = os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
FUSED = [pytest.param("cpu", marks=requires_cpu),
         pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="no triton device"))]


def cu_of(lengths, device="cpu"):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return cu.to(device)


def packed_qkv(total, H, D, dtype=torch.float32, layout="projection", generator=None,
               device="cpu"):
    """q, k, v (total, H, D) as a packed model makes them (views of a (total, 3, H, D)
    projection), contiguous, heads outermost ((H, total, D) storage), or every other channel."""
    if layout == "projection":
        base = torch.randn(total, 3, H, D, generator=generator, dtype=torch.float64)
        return tuple(base.to(device, dtype)[:, i] for i in range(3))
    if layout == "heads_outer":
        return tuple(torch.randn(H, total, D, generator=generator, dtype=torch.float64)
                     .to(device, dtype).transpose(0, 1) for _ in range(3))
    if layout == "strided_d":
        return tuple(torch.randn(total, H, 2 * D, generator=generator, dtype=torch.float64)
                     .to(device, dtype)[..., ::2] for _ in range(3))
    return tuple(torch.randn(total, H, D, generator=generator, dtype=torch.float64)
                 .to(device, dtype) for _ in range(3))


def random_packing(tile, p, generator, n=7, longest=None):
    """Lengths covering 0, 1, < p, tile - 1, tile, tile + 1, two tiles and a long one, shuffled,
    plus random ones."""
    longest = longest or 3 * tile + 2
    special = [0, 1, p - 1, tile - 1, tile, tile + 1, 2 * tile, longest, 0]
    extra = torch.randint(0, longest + 1, (n,), generator=generator).tolist()
    lengths = special + extra
    order = torch.randperm(len(lengths), generator=generator).tolist()
    return [lengths[i] for i in order]


def per_sequence(fn, x_list, lengths):
    """fn applied to each sequence alone, (1, H, n, D) tensors, results packed again."""
    cu = cu_of(lengths).tolist()
    parts = []
    for i, n in enumerate(lengths):
        if n:
            alone = [x[cu[i]:cu[i + 1]].transpose(0, 1)[None] for x in x_list]
            parts.append(fn(*alone)[0].transpose(0, 1))
    H, D = x_list[0].shape[1:]
    return torch.cat(parts) if parts else x_list[0].new_zeros(0, H, D)


@pytest.mark.parametrize("p,levels", [(3, 2), (2, 3)])
def test_reference_equals_float64_loop_per_sequence(p, levels):
    g = torch.Generator().manual_seed(10 + p)
    lengths = random_packing(p ** levels, p, g)
    q, k, v = packed_qkv(sum(lengths), 2, 3, torch.float64, generator=g)
    out = fractal_attention_varlen(q, k, v, cu_of(lengths), p=p, levels=levels,
                                   backend="reference")
    expected = per_sequence(lambda *x: f64_outputs(*x, p, levels), (q, k, v), lengths)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert rel_err(out, expected) < 1e-12


def _check_against_padded(backend, lengths, p, levels, dtype, layout, g, H=2, D=4,
                          max_seqlen=None, scale=None, device="cpu"):
    """Output and gradients of `backend` against the float64 padded reference of each sequence
    alone (the padded op is itself tested against the float64 loop)."""
    q, k, v = (x.requires_grad_(True) for x in
               packed_qkv(sum(lengths), H, D, dtype, layout, generator=g, device=device))
    cu = cu_of(lengths, device)
    out = fractal_attention_varlen(q, k, v, cu, max_seqlen=max_seqlen, p=p, levels=levels,
                                   scale=scale, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device, dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    padded = per_sequence(lambda *x: fractal_attention(*x, p=p, levels=levels, scale=scale,
                                                       backend="reference"),
                          (q64, k64, v64), lengths)
    expected = torch.autograd.grad(padded, (q64, k64, v64), dout.double()) if padded.numel() \
        else (torch.zeros_like(q64),) * 3
    bound = SPEC_BOUND[dtype]
    if padded.numel():
        assert rel_err(out, padded) < bound
    for got, want in zip(grads, expected):
        assert got.dtype == dtype
        if want.norm() > 0:
            assert rel_err(got, want) < bound
        else:
            assert torch.count_nonzero(got) == 0


@pytest.mark.parametrize("backend", ["reference", "auto"] + [
    pytest.param("cpu", marks=requires_cpu)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_cpu_backends_match_padded_op(backend, dtype):
    g = torch.Generator().manual_seed(20)
    for layout, (p, levels) in (("projection", (3, 2)), ("heads_outer", (2, 3)),
                                ("strided_d", (3, 1)), ("contiguous", (3, 3))):
        lengths = random_packing(p ** levels, p, g, longest=40)
        _check_against_padded(backend, lengths, p, levels, dtype, layout, g, D=8)


@requires_cpu
@pytest.mark.parametrize("D", [1, 16, 64])
def test_cpu_backend_head_dims_and_max_seqlen(D):
    g = torch.Generator().manual_seed(21)
    lengths = [5, 0, 81, 83, 1]
    _check_against_padded("cpu", lengths, 3, 4, torch.float32, "projection", g, H=3, D=D,
                          max_seqlen=83, scale=0.3)
    short = [2, 7, 0, 9]  # every sequence shorter than a tile: max_seqlen bounds the work list
    _check_against_padded("cpu", short, 3, 4, torch.float32, "projection", g, D=D,
                          max_seqlen=9)


@pytest.mark.skipif(not TRITON, reason="no triton device")
def test_triton_backend_matches_padded_op():
    """Under the interpreter (slow): small packings, float32 and bfloat16."""
    g = torch.Generator().manual_seed(22)
    _check_against_padded("triton", [4, 0, 1, 9, 10, 2, 19], 3, 2, torch.float32,
                          "projection", g)
    _check_against_padded("triton", [8, 3, 0, 17], 2, 3, torch.bfloat16, "heads_outer", g,
                          max_seqlen=17)


@pytest.mark.parametrize("backend", FUSED)
def test_fused_backends_are_deterministic_and_ignore_the_work_list_tail(backend):
    g = torch.Generator().manual_seed(23)
    lengths = [3, 12, 0, 9]
    q, k, v = (x.requires_grad_(True) for x in packed_qkv(sum(lengths), 2, 4, generator=g))
    runs = []
    for max_seqlen in (None, 12, 40):  # work lists of different lengths, same tiles
        out = fractal_attention_varlen(q, k, v, cu_of(lengths), max_seqlen=max_seqlen, p=3,
                                       levels=2, backend=backend)
        runs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_work_list_covers_every_row_once():
    from mstr_kernels.ops.varlen import varlen_work_list, work_items
    g = torch.Generator().manual_seed(24)
    for tile in (1, 4, 9):
        lengths = random_packing(tile, 2, g)
        total = sum(lengths)
        items = work_items(total, len(lengths), tile, max(lengths))
        tiles = varlen_work_list(cu_of(lengths), total, tile, items, max(lengths))
        assert tiles.dtype == torch.int32 and tiles.shape == (2, items)
        starts, counts = tiles.long()
        cover = torch.zeros(total, dtype=torch.long)
        for s, n in zip(starts.tolist(), counts.tolist()):
            assert 0 <= n <= tile
            cover[s:s + n] += 1
        assert torch.equal(cover, torch.ones(total, dtype=torch.long))
        # each tile starts at its sequence's start plus a multiple of the tile
        cu = cu_of(lengths)
        used = counts > 0
        seq = torch.searchsorted(cu[1:].long(), starts[used], right=True)
        assert torch.all((starts[used] - cu[seq].long()) % tile == 0)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_empty_sequences_and_empty_batches(backend):
    H, D = 2, 4
    for lengths in ([], [0], [0, 0, 0]):
        q, k, v = packed_qkv(0, H, D)
        out = fractal_attention_varlen(q, k, v, cu_of(lengths), p=3, levels=2, backend=backend)
        assert out.shape == (0, H, D)
    g = torch.Generator().manual_seed(25)
    _check_against_padded(backend, [0, 5, 0], 3, 2, torch.float32, "projection", g)


def test_auto_picks_a_varlen_backend_and_the_registry_says_which():
    from mstr_kernels.ops import BACKENDS
    from mstr_kernels.ops.backends import FRACTAL_ATTENTION_VARLEN as VARLEN
    declared = {n for n, b in BACKENDS.items() if VARLEN in b.ops}
    assert declared >= {"cpu", "triton", "reference", "cuda"}
    assert all(BACKENDS[n].varlen_loader is not None for n in declared)
    q4 = torch.zeros(1, 2, 5, 4)
    assert select_backend("auto", q4, 3, 2, op=VARLEN).name == ("cpu" if CPU_BUILT
                                                                 else "reference")
    with pytest.raises(ValueError, match="backend='cuda'.*device 'cpu' not in"):
        select_backend("cuda", q4, 3, 2, op=VARLEN)


@requires_cpu
def test_cuda_work_list_entry_is_the_compiled_item():
    """ops/backends.py's mirror of the cuda backend's work-list entry (one item of the
    specialised kernels, csrc/cuda/fractal_spec_configs.h) for every p and levels in range."""
    from mstr_kernels.ops.backends import BACKENDS, cuda_varlen_item_frames
    from mstr_kernels.ops.extension import _import_extension
    from mstr_kernels.ops.validation import SPEC, max_levels
    _C = _import_extension()
    assert BACKENDS["cuda"].varlen_item_frames is cuda_varlen_item_frames
    pairs = [(p, levels) for p in range(SPEC.p_min, SPEC.p_max + 1)
             for levels in range(1, max_levels(p) + 1)]
    assert len(pairs) > 20
    for p, levels in pairs:
        assert _C.varlen_item_frames(p, levels) == cuda_varlen_item_frames(p, levels), (p, levels)
        assert cuda_varlen_item_frames(p, levels) % p ** levels == 0


# --- the cuda backend (and auto) on a GPU: the specialised kernels over the work list where they
# cover the inputs (D in {32, 64, 128}, 16-byte strides), the general kernels elsewhere --------

CUDA_PACKINGS = [  # layout, (p, levels), D: which kernels
    ("projection", (3, 4), 64),   # specialised, one tile per item
    ("heads_outer", (2, 5), 32),  # specialised, three tiles per item
    ("contiguous", (3, 2), 128),  # specialised, ten tiles per item
    ("strided_d", (3, 4), 64),    # general: no 16-byte path
    ("projection", (3, 3), 8),    # general: D not specialised, three tiles per entry
    ("projection", (5, 2), 16),   # general: (p, levels) not specialised
]


@requires_cuda_backend
@pytest.mark.parametrize("backend", ["cuda", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_backends_match_padded_op(backend, dtype):
    from mstr_kernels.ops.backends import BACKEND_ORDER, FRACTAL_ATTENTION_VARLEN
    chosen = select_backend(backend, torch.zeros(1, 2, 5, 64, device="cuda", dtype=dtype), 3, 4,
                            op=FRACTAL_ATTENTION_VARLEN).name
    # auto: the first in the registry's order that runs it (the cuda backend counts among them)
    assert chosen == backend or (backend == "auto" and
                                 BACKEND_ORDER.index(chosen) <= BACKEND_ORDER.index("cuda"))
    g = torch.Generator().manual_seed(28)
    for layout, (p, levels), D in CUDA_PACKINGS:
        tile = p ** levels
        lengths = random_packing(tile, p, g, n=4, longest=3 * tile + 2)
        _check_against_padded(backend, lengths, p, levels, dtype, layout, g, D=D, device="cuda")
    _check_against_padded(backend, [2, 7, 0, 9], 3, 4, dtype, "projection", g, D=64,
                          max_seqlen=9, device="cuda")  # max_seqlen bounds the work list


@requires_cuda_backend
def test_cuda_backend_is_deterministic_and_reads_nothing_on_the_host():
    g = torch.Generator().manual_seed(29)
    lengths = [3, 200, 0, 81, 82, 1]
    q, k, v = (x.requires_grad_(True) for x in
               packed_qkv(sum(lengths), 2, 64, torch.bfloat16, generator=g, device="cuda"))
    cu = cu_of(lengths, "cuda")
    runs = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host read of cu_seqlens would raise
    try:
        for max_seqlen in (None, 200, 400):
            out = fractal_attention_varlen(q, k, v, cu, max_seqlen=max_seqlen, p=3, levels=4,
                                           backend="cuda")
            runs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@requires_cuda_backend
def test_cuda_bad_cu_seqlens_is_a_device_side_assertion():
    """Refused on the GPU without a host read; the assertion ends the process's CUDA context,
    so it runs in a child process."""
    code = ("import torch, mstr_kernels\n"
            "q = torch.randn(10, 1, 64, device='cuda')\n"
            "cu = torch.tensor([0, 6, 4, 10], dtype=torch.int32, device='cuda')\n"
            "out = mstr_kernels.fractal_attention_varlen(q, q, q, cu, p=3, levels=4, "
            "backend='cuda')\n"
            "torch.cuda.synchronize()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "device-side assert" in done.stderr or "non-decreasing" in done.stderr, done.stderr


# Inductor on the path users get (auto: the fused cpu op); the reference's gathers and levels
# take minutes to compile with inductor on a small CPU, aot_eager traces the same graph.
@pytest.mark.parametrize("backend,compiler", [("auto", "inductor"), ("reference", "aot_eager")])
def test_torch_compile_fullgraph(backend, compiler):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(26)
    lengths = [4, 0, 11, 1, 9]
    cu = cu_of(lengths)
    q, k, v = (x.requires_grad_(True) for x in packed_qkv(sum(lengths), 2, 8, generator=g))

    def f(q, k, v, cu):
        return fractal_attention_varlen(q, k, v, cu, p=3, levels=2, backend=backend) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend=compiler)
    out, expected = compiled(q, k, v, cu), f(q, k, v, cu)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    dout = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), dout),
                    torch.autograd.grad(expected, (q, k, v), dout)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the data checks of cu_seqlens run inside the compiled graph too
    with pytest.raises(ValueError, match=r"cu_seqlens contains 25, past total = q.shape\[0\] = 24"):
        compiled(q[:-1], k[:-1], v[:-1], cu)
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\]=1 must be 0"):
        compiled(q, k, v, cu + 1)


@requires_cpu
def test_opcheck():
    g = torch.Generator().manual_seed(27)
    lengths = [3, 10, 0, 9]
    q, k, v = (x.requires_grad_(True) for x in packed_qkv(sum(lengths), 2, 4, generator=g))
    from mstr_kernels.ops.varlen import varlen_work_list, work_items
    items = work_items(sum(lengths), len(lengths), 9, None)
    torch.library.opcheck(torch.ops.mstr_kernels.varlen_work_list.default,
                          (cu_of(lengths), sum(lengths), 9, items, -1))
    tiles = varlen_work_list(cu_of(lengths), sum(lengths), 9, items, -1)
    for backend in ("cpu", "reference"):
        torch.library.opcheck(torch.ops.mstr_kernels.fractal_attention_varlen_fwd.default,
                              (q, k, v, tiles, 3, 2, 0.5, backend))


def test_autocast_runs_in_autocast_dtype():
    q, k, v = packed_qkv(12, 2, 4)
    cu = cu_of([5, 7])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fractal_attention_varlen(q, k, v, cu, p=3, levels=2)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fractal_attention_varlen(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                     cu, p=3, levels=2))


@requires_cpu
def test_default_instruction_set_variant():
    """The baseline (DEFAULT) build of the CPU kernels runs packed sequences right too."""
    code = ("import sys, torch; sys.path.insert(0, %r); import test_varlen as t\n"
            "t._check_against_padded('cpu', [5, 0, 27, 31], 3, 3, torch.float32, 'projection', "
            "torch.Generator().manual_seed(1), D=13)\n"
            "print(torch.backends.cpu.get_cpu_capability())" % os.path.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "DEFAULT"


# --- refusals --------------------------------------------------------------------------------

def _bad(cu, total=10, match="", exc=ValueError, **kw):
    q, k, v = packed_qkv(total, 1, 4)
    with pytest.raises(exc, match=match):
        fractal_attention_varlen(q, k, v, cu, p=3, levels=2, **kw)


@pytest.mark.parametrize("backend", ["reference", "auto"] + FUSED)
def test_bad_cu_seqlens_values_are_refused_by_name(backend):
    i32 = dict(dtype=torch.int32)
    _bad(torch.tensor([1, 4, 10], **i32), match=r"cu_seqlens\[0\]=1 must be 0", backend=backend)
    _bad(torch.tensor([0, 6, 4, 10], **i32),
         match=r"non-decreasing: cu_seqlens\[1\]=6 > cu_seqlens\[2\]=4", backend=backend)
    _bad(torch.tensor([0, 4, 12], **i32), match=r"cu_seqlens contains 12, past total",
         backend=backend)
    _bad(torch.tensor([0, 4, 8], **i32), match=r"cu_seqlens\[-1\]=8 must equal total = "
         r"q.shape\[0\] = 10", backend=backend)
    _bad(torch.tensor([0, 4, 10], **i32), match=r"max_seqlen=5 is smaller than the longest "
         r"sequence \(6 frames\)", max_seqlen=5, backend=backend)


def test_bad_cu_seqlens_meta_and_arguments_are_refused_by_name():
    _bad(torch.tensor([0, 4, 10]), match=r"cu_seqlens.dtype=torch.int64 .* torch.int32",
         exc=TypeError)
    _bad(torch.tensor([0.0, 10.0]), match=r"cu_seqlens.dtype=torch.float32", exc=TypeError)
    _bad([0, 10], match="cu_seqlens must be an int32 torch.Tensor", exc=TypeError)
    _bad(torch.tensor([[0, 10]], dtype=torch.int32), match=r"cu_seqlens.shape=\(1, 2\) must be "
         r"\(N\+1,\)")
    _bad(torch.zeros(0, dtype=torch.int32), match=r"cu_seqlens.shape=\(0,\)")
    _bad(torch.tensor([0, 10], dtype=torch.int32, device="meta"),
         match=r"cu_seqlens.device=meta must equal q.device=cpu")
    _bad(torch.tensor([0, 10], dtype=torch.int32), max_seqlen=-1, match="max_seqlen=-1")
    _bad(torch.tensor([0, 10], dtype=torch.int32), max_seqlen=2.5, match="max_seqlen must be",
         exc=TypeError)
    q, k, v = packed_qkv(10, 1, 4)
    cu = torch.tensor([0, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"q must have 3 dimensions \(total, H, D\)"):
        fractal_attention_varlen(q[None], k[None], v[None], cu)
    with pytest.raises(ValueError, match=r"k.shape=\(9, 1, 4\) must equal q.shape"):
        fractal_attention_varlen(q, k[:9], v, cu)
    with pytest.raises(TypeError, match="v.dtype=torch.float64 must equal q.dtype"):
        fractal_attention_varlen(q, k, v.double(), cu)
    with pytest.raises(ValueError, match="p=9 is out of range"):
        fractal_attention_varlen(q, k, v, cu, p=9)
    with pytest.raises(ValueError, match="backend='nope' is unknown"):
        fractal_attention_varlen(q, k, v, cu, backend="nope")


# --- the packed model ------------------------------------------------------------------------

def _packed_batch(lengths, F, generator):
    x = torch.randn(len(lengths), max(max(lengths), 1), F, generator=generator)
    packed = torch.cat([x[i, :n] for i, n in enumerate(lengths)])
    return x, torch.tensor(lengths), packed, cu_of(lengths)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_packed_attention_module_equals_padded(backend):
    from mstr_kernels.nn import MultiScaleAttention
    g = torch.Generator().manual_seed(30)
    torch.manual_seed(30)
    lengths = [5, 0, 27, 30, 1]
    module = MultiScaleAttention(16, 4, p=3, levels=3, backend=backend)
    x, lens, packed, cu = _packed_batch(lengths, 16, g)
    padded = module(x, lengths=lens)[0]
    out = module(packed, cu_seqlens=cu, max_seqlen=30)[0]
    assert out.shape == packed.shape
    expected = torch.cat([padded[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="with cu_seqlens, query must be packed"):
        module(x, cu_seqlens=cu)
    with pytest.raises(ValueError, match="lengths must be None"):
        module(packed, cu_seqlens=cu, lengths=lens)


def _tiny_mstr(backend="auto", **kw):
    from mstr_kernels.models import MSTRConfig, build_model
    config = MSTRConfig(feature_dim=16, num_classes=4, num_layers=2, num_heads=2, p=3,
                        levels=2, dropout=0.0, classifier_dropout=0.0, backend=backend, **kw)
    return build_model("mstr", config)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_packed_mstr_equals_padded_outputs_and_gradients(backend):
    g = torch.Generator().manual_seed(31)
    torch.manual_seed(31)
    model = _tiny_mstr(backend)
    lengths = [7, 0, 19, 9, 1, 33]
    x, lens, packed, cu = _packed_batch(lengths, 16, g)
    padded = model(x, lens)
    padded_grads = torch.autograd.grad(padded.square().sum(), list(model.parameters()))
    out = model(packed, cu_seqlens=cu)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert out.shape == (len(lengths), 4)
    torch.testing.assert_close(out, padded, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, padded_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    from mstr_kernels.models import MSTRConfig, build_model
    vanilla = build_model("vanilla", MSTRConfig(feature_dim=16, num_classes=4, num_layers=1,
                                                num_heads=2))
    with pytest.raises(ValueError, match="packed input .* needs fractal attention"):
        vanilla(packed, cu_seqlens=cu)


def test_packed_mstr_compiles_fullgraph_with_inductor():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(32)
    torch.manual_seed(32)
    model = _tiny_mstr()
    lengths = [7, 0, 19, 9]
    _, _, packed, cu = _packed_batch(lengths, 16, g)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(packed, cu_seqlens=cu), model(packed, cu_seqlens=cu),
                               rtol=1e-5, atol=1e-6)


# --- packed training -------------------------------------------------------------------------

def test_packed_batch_sampler_budget_coverage_and_ranks():
    from mstr_kernels.training.batching import PackedBatchSampler
    g = torch.Generator().manual_seed(33)
    lengths = torch.randint(1, 300, (200,), generator=g).tolist() + [900]
    sampler = PackedBatchSampler(lengths, 1000, seed=3)
    sampler.set_epoch(2)
    batches = sampler.global_batches()
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        frames = sum(lengths[i] for i in b)
        assert frames <= 1000 or len(b) == 1
    assert sum(sum(lengths[i] for i in b) for b in batches) / len(batches) > 700  # well filled
    again = PackedBatchSampler(lengths, 1000, seed=3)
    again.set_epoch(2)
    assert again.global_batches() == batches
    again.set_epoch(3)
    assert again.global_batches() != batches
    ranks = [PackedBatchSampler(lengths, 1000, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2, start_batch=1)
    shards = [list(r) for r in ranks]
    assert len(shards[0]) == len(ranks[0]) == len(ranks[0].global_batches()) - 1
    for whole, a, b in zip(ranks[0].global_batches()[1:], *shards):
        assert sorted(a + b) == sorted(whole) and a and b


def test_packed_training_matches_padded_metrics(tmp_path):
    from mstr_kernels.data import build_dataset
    from mstr_kernels.models import MSTRConfig
    from mstr_kernels.training import TrainConfig, train_run
    bundle = build_dataset("synthetic", num_train=48, num_valid=16, num_test=16, feature_dim=16,
                           min_len=9, max_len=60)
    fold = bundle.folds[0]
    model_config = MSTRConfig(feature_dim=16, num_classes=bundle.num_classes, num_layers=1,
                              num_heads=2, levels=2, dropout=0.0, classifier_dropout=0.0)
    results = {}
    for packed in (False, True):
        config = TrainConfig(epochs=2, lr=1e-3, batch_size=8, progress=False, packed=packed)
        results[packed] = train_run("mstr", model_config, bundle, fold, config, seed=1,
                                    run_dir=str(tmp_path / str(packed)))
    padded, packed = results[False], results[True]
    assert packed.best_epoch == padded.best_epoch
    for a, b in zip(padded.history, packed.history):
        assert b["valid"]["loss"] == pytest.approx(a["valid"]["loss"], rel=1e-4)
        for k in ("WA", "UA", "WF1"):
            assert b["valid"][k] == pytest.approx(a["valid"][k])
    for k in ("WA", "UA", "WF1"):
        assert packed.test[k] == pytest.approx(padded.test[k])
    assert (tmp_path / "True" / "best.safetensors").exists()


def test_cli_train_packed_with_a_frame_budget(tmp_path, capsys):
    import json

    from mstr_kernels.cli import main
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--dataset-option=num_train=40",
            "--dataset-option=num_valid=12", "--dataset-option=num_test=12",
            "--dataset-option=feature_dim=16", "--dataset-option=max_len=60", "--layers", "1",
            "--heads", "2", "--levels", "2", "--epochs", "1", "--lr", "1e-3", "--packed",
            "--batch-frames", "300", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert results["train_config"]["packed"] and results["train_config"]["batch_frames"] == 300
    assert (out / "seed0" / "synthetic" / "best.safetensors").exists()
    assert main(["evaluate", str(out / "seed0" / "synthetic" / "best.safetensors"),
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["UA"] == pytest.approx(results["runs"][0]["test"]["UA"])
    # a user error: one line naming it, exit code 2
    assert main(args[:-2] + ["--model", "vanilla", "--out", str(tmp_path / "v")]) == 2
    assert "packed batches need fractal attention" in capsys.readouterr().err


def test_packed_vs_padded_benchmark_runs(tmp_path):
    """The benchmark script end to end at a toy size (its figures come from real runs only)."""
    import json
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import packed_vs_padded
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    assert packed_vs_padded.main(["--utterances", "6", "--batch-size", "3", "--feature-dim",
                                  "8", "--heads", "2", "--layers", "1", "--repeats", "1",
                                  "--json", str(out)]) == 0
    torch.set_num_threads(threads)  # the script sets its own
    result = json.loads(out.read_text())
    rows = {r["batching"]: r for r in result["rows"]}
    assert set(rows) == {"padded", "bucketed", "packed", "packed-budget"}
    assert rows["packed"]["padding_fraction"] == 0 and rows["padded"]["padding_fraction"] > 0
    assert rows["packed"]["computed_frames"] == result["config"]["lengths"]["total"]
    assert set(result["ratios"]) == {"packed_over_padded", "packed_over_bucketed",
                                     "packed-budget_over_padded", "packed-budget_over_bucketed"}
