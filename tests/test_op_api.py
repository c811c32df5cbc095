"""The public op: layout, padding semantics, registry and dispatch, torch.library, compile, autocast."""
import logging
import warnings

import pytest
import torch

import mstr_kernels
from mstr_kernels.ops import BACKENDS, available_backends, select_backend
from parity import qkv_views, random_lengths


def run(q, k, v, **kw):
    kw.setdefault("backend", "reference")
    return mstr_kernels.fractal_attention(q, k, v, **kw)


def test_output_layout_is_btHd():
    q, k, v = qkv_views(2, 3, 10, 4)
    out = run(q, k, v, p=3, levels=2)
    assert out.shape == (2, 3, 10, 4)
    assert out.transpose(1, 2).is_contiguous()
    flat = out.transpose(1, 2).reshape(2, 10, 12)
    assert flat.data_ptr() == out.data_ptr()  # free reshape: no copy


def test_padding_is_exactly_zero_in_outputs_and_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(3, 2, 17, 5, generator=g,
                                                           layout="contiguous"))
    lengths = torch.tensor([17, 0, 8])
    out = run(q, k, v, p=3, levels=2, lengths=lengths)
    out.backward(torch.randn(out.shape, generator=g))
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(out[b, :, n:] == 0)
        for x in (q, k, v):
            assert torch.all(x.grad[b, :, n:] == 0)
    assert torch.count_nonzero(out[2, :, :8]) > 0


def test_padded_batch_equals_each_sequence_alone():
    g = torch.Generator().manual_seed(1)
    T = 23
    q, k, v = qkv_views(3, 2, T, 4, torch.float64, generator=g)
    lengths = torch.tensor([23, 5, 14])
    out = run(q, k, v, p=2, levels=3, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = run(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], p=2, levels=3)
        assert torch.allclose(out[b:b + 1, :, :n], alone, atol=1e-12)
        # and what sits in the padding does not matter
    q2 = q.clone()
    q2[1, :, 5:] = 1e4
    assert torch.equal(run(q2, k, v, p=2, levels=3, lengths=lengths), out)


def test_lengths_int32_and_int64_agree():
    q, k, v = qkv_views(2, 1, 9, 3)
    a = run(q, k, v, p=3, levels=2, lengths=torch.tensor([9, 4], dtype=torch.int32))
    b = run(q, k, v, p=3, levels=2, lengths=torch.tensor([9, 4], dtype=torch.int64))
    assert torch.equal(a, b)


def test_large_magnitudes_stay_finite():
    q, k, v = qkv_views(1, 2, 12, 4)
    out = run(q * 1e4, k * 1e4, v, p=3, levels=2)
    assert torch.isfinite(out).all()


def test_registry_declares_support_as_data():
    for name, backend in BACKENDS.items():
        assert backend.devices and backend.dtypes and backend.max_head_dim >= 1
    ref = BACKENDS["reference"]
    assert torch.float64 in ref.dtypes and set(ref.devices) == {"cpu", "cuda"}
    assert available_backends()["reference"] is None


def test_auto_picks_first_that_fits_and_logs_why_others_were_passed_over(caplog, monkeypatch):
    import mstr_kernels.ops.backends as backends
    monkeypatch.setattr(backends, "_choices", {})  # logged when the choice is made, not per call
    q = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    with caplog.at_level(logging.DEBUG, logger="mstr_kernels"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning has its own test
        chosen = select_backend("auto", q, 3, 2)
    # A float64 CPU input: only the fused cpu backend and the reference run it (the cuda and
    # triton backends, even under TRITON_INTERPRET=1, are never auto-picked on CPU).
    assert chosen.name == ("cpu" if available_backends()["cpu"] is None else "reference")
    assert "passing over backend 'cuda'" in caplog.text


def test_forced_backend_raises_with_reasons():
    q = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run these inputs: device 'cpu'"):
        run(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="backend='nope' is unknown"):
        run(q, q, q, backend="nope")


def test_auto_warns_once_when_falling_back_to_reference(monkeypatch):
    import dataclasses

    import mstr_kernels.ops.backends as backends
    monkeypatch.setattr(backends, "_warned", set())
    # every fused backend refuses head dim 4 here, so auto must fall back, and say so once
    for name in ("cuda", "triton", "cpu"):
        monkeypatch.setitem(backends.BACKENDS, name,
                            dataclasses.replace(backends.BACKENDS[name], max_head_dim=2))
    q = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falls back to the slow 'reference'.*head dim 4 > 2"):
        assert select_backend("auto", q, 3, 2).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_backend("auto", q, 3, 2)  # once: no second warning


def test_registered_op_with_reference_backend_matches_autograd():
    g = torch.Generator().manual_seed(3)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 13, 4, torch.float64, generator=g))
    lengths = torch.tensor([13, 6], dtype=torch.int32)
    out = torch.ops.mstr_kernels.fractal_attention_fwd(q, k, v, lengths, 3, 2, 0.5, "reference")
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    out2 = run(q, k, v, p=3, levels=2, lengths=lengths, scale=0.5)
    grads2 = torch.autograd.grad(out2, (q, k, v), dout)
    assert torch.allclose(out, out2, atol=1e-13)
    for a, b in zip(grads, grads2):
        assert torch.allclose(a, b, atol=1e-12)


def test_opcheck():
    g = torch.Generator().manual_seed(4)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 10, 4, generator=g))
    for lengths in (None, torch.tensor([10, 3], dtype=torch.int32)):
        torch.library.opcheck(torch.ops.mstr_kernels.fractal_attention_fwd.default,
                              (q, k, v, lengths, 3, 2, 0.5, "reference"))


def compile_cases():
    cases = ["reference"]
    if available_backends()["cpu"] is None:
        cases.append("cpu")
    return cases


@pytest.mark.parametrize("backend", compile_cases())
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 12, 4, generator=g))
    lengths = torch.tensor([12, 7])

    def f(q, k, v, lengths):
        return mstr_kernels.fractal_attention(q, k, v, p=3, levels=2, lengths=lengths,
                                              backend=backend).sum(dim=-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, lengths)
    expected = f(q, k, v, lengths)
    assert torch.allclose(out, expected, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    grads_eager = torch.autograd.grad(expected.sum(), (q, k, v))
    for a, b in zip(grads, grads_eager):
        assert torch.allclose(a, b, atol=1e-5)


def test_autocast_runs_in_autocast_dtype():
    q, k, v = qkv_views(1, 2, 9, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(q, k, v, p=3, levels=2)
    assert out.dtype == torch.bfloat16
    ref = run(q.bfloat16(), k.bfloat16(), v.bfloat16(), p=3, levels=2)
    assert torch.equal(out, ref)


def test_nan_in_padding_does_not_leak():
    g = torch.Generator().manual_seed(6)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(2, 2, 14, 4, generator=g))
    lengths = torch.tensor([14, 9])
    with torch.no_grad():
        for x in (q, k, v):
            x[1, :, 9:] = float("nan")
    out = run(q, k, v, p=3, levels=2, lengths=lengths)
    dout = torch.randn(out.shape, generator=g)
    dout[1, :, 9:] = float("nan")
    grads = torch.autograd.grad(out, (q, k, v), dout)
    assert torch.isfinite(out).all() and torch.all(out[1, :, 9:] == 0)
    for grad in grads:
        assert torch.isfinite(grad).all() and torch.all(grad[1, :, 9:] == 0)


def test_spec_range_has_one_source():
    """SPEC section 1's range: validation.SPEC (Python), read by the registry, and
    csrc/fractal_range.h (C++), compiled into the extension, agree."""
    import re
    from pathlib import Path

    from mstr_kernels.ops.validation import SPEC
    header = (Path(__file__).resolve().parent.parent / "csrc" / "fractal_range.h").read_text()
    values = {name: int(value) for name, value in
              re.findall(r"constexpr int64_t (k\w+) = (\d+);", header)}
    python = {"kMinP": SPEC.p_min, "kMaxP": SPEC.p_max, "kMaxTile": SPEC.max_tile,
              "kMinHeadDim": SPEC.head_dim_min, "kMaxHeadDim": SPEC.head_dim_max,
              "kMaxLevels": SPEC.max_levels}
    assert values == python
    for backend in BACKENDS.values():  # registry fields default to the SPEC range
        assert backend.p_range[0] >= SPEC.p_min and backend.p_range[1] <= SPEC.p_max
        assert backend.max_head_dim <= SPEC.head_dim_max and backend.max_tile <= SPEC.max_tile
    if available_backends()["cpu"] is None:
        from mstr_kernels import _C
        compiled = _C.spec_range()
        assert compiled == {"p_min": SPEC.p_min, "p_max": SPEC.p_max, "max_tile": SPEC.max_tile,
                            "head_dim_min": SPEC.head_dim_min, "head_dim_max": SPEC.head_dim_max,
                            "max_levels": SPEC.max_levels}


def test_a_backend_declares_only_where_it_differs_and_its_ops():
    import dataclasses

    from mstr_kernels.ops.backends import Backend
    from mstr_kernels.ops.validation import SPEC
    narrow = Backend("narrow", "test", ("cpu",), (torch.float32,), max_head_dim=8,
                     loader=lambda: None)
    assert narrow.p_range == (SPEC.p_min, SPEC.p_max) and narrow.max_tile == SPEC.max_tile
    q = torch.zeros(1, 1, 4, 16)
    assert narrow.reasons(q, 3, 2) == ["head dim 16 > 8"]
    assert "op 'fractal_attention_varlen' not implemented" in narrow.reasons(
        q[..., :4], 3, 2, op="fractal_attention_varlen")[0]
    packed = dataclasses.replace(narrow, ops=("fractal_attention", "fractal_attention_varlen"))
    assert packed.reasons(q[..., :4], 3, 2, op="fractal_attention_varlen") == []


def test_every_python_path_returns_the_output_layout():
    from mstr_kernels.ops.validation import as_output_layout, empty_output
    q = torch.randn(2, 3, 5, 4)
    for out in (empty_output(q), as_output_layout(q), empty_output(q, torch.float64)):
        assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()
