"""Every backend in the registry, and `auto`, held to SPEC section 1 by one suite.

The cases come from tests/parity.py, drawn from what each backend declares; nothing here names a
backend, so a backend added to `mstr_kernels.ops.backends` is in every test below. A backend that
cannot run on this machine has its cases generated and skipped with the reason it gives
(`unavailable_reason()`); on a GPU machine they run (scripts/gpu_parity.py).
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mstr_kernels
from mstr_kernels.ops.backends import CUSTOM_OP, select_backend
from parity import (Inputs, accept, cases, check_case, check_results, float64_truth,
                    registry, rel_err, run_inputs, run_op, single_cases, sweep_inputs)


def params(rows, id_of):
    out = []
    for row in rows:
        *values, why = row
        marks = [pytest.mark.skip(reason=why)] if why else []
        out.append(pytest.param(*values, marks=marks, id=id_of(*values)))
    return out


PARITY = params(cases(), lambda backend, inputs: f"{backend}-{inputs.id}")
SWEEP = params(cases(sweep_inputs), lambda backend, inputs: f"{backend}-{inputs.id}")
SINGLE = params(single_cases(), lambda backend, device, dtype: f"{backend}-{device}")
SINGLE_HALF = params(single_cases((torch.float32, torch.float16), first_only=False),
                     lambda backend, device, dtype: f"{backend}-{device}-{dtype}".replace("torch.", ""))
FLOAT64 = params(single_cases((torch.float64,)), lambda backend, device, dtype: f"{backend}-{device}")


@pytest.mark.parametrize("backend,inputs", PARITY)
def test_parity(backend, inputs):
    """Outputs and gradients against float64: shapes with tails, T < p, lengths 0 and T,
    projection views, contiguous and other strides, every declared dtype, p, levels and D."""
    check_case(backend, inputs)


@pytest.mark.parametrize("backend,inputs", SWEEP)
def test_magnitude_sweep(backend, inputs):
    """Inputs x 1e-4 .. 1e15, scale 0, negative and large: finite wherever every score is finite
    in float32, within SPEC's bound when well-conditioned, else within a small multiple of the
    reference's own error."""
    check_case(backend, inputs)


def small_inputs(device, dtype, layout="projection", seed=1, **kw):
    return Inputs(device, dtype, 2, 2, 14, 8, 3, 2, (14, 9), layout, seed=seed, **kw)


def skip_if(why):
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("backend,device,dtype", SINGLE)
def test_declares_what_it_runs(backend, device, dtype):
    """A backend's declared devices and dtypes are accepted by its reasons() on a shape inside
    the SPEC range, and the op then runs it (the parity cases then judge the numbers)."""
    if backend == "auto":
        pytest.skip("auto declares nothing: it is run in every parity case")
    b = registry()[0][backend]
    for dt in b.dtypes:
        probe = torch.empty(1, 1, 1, 64, dtype=dt, device=device)
        assert b.reasons(probe, 3, 4) == [], f"{backend} declares {dt} on {device} but refuses it"


@pytest.mark.parametrize("backend,device,dtype", SINGLE)
def test_torch_compile_fullgraph_inductor(backend, device, dtype):
    """`torch.compile(fullgraph=True)` with inductor, forward and backward: no graph break, the
    rule's accuracy, and for fused backends (one opaque node) bit-identical to eager."""
    torch._dynamo.reset()
    inputs = small_inputs(device, dtype, seed=6)
    q, k, v, dout, lengths = inputs.make()

    def f(q, k, v, lengths):
        return mstr_kernels.fractal_attention(q, k, v, p=inputs.p, levels=inputs.levels,
                                              lengths=lengths, backend=backend) * 2.0

    compiled = torch.compile(f, fullgraph=True)
    results = []
    for fn in (compiled, f):
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, lengths)
        results.append([out.detach() / 2] + [g / 2 for g in torch.autograd.grad(out, leaves, dout)])
    exact, well = float64_truth(inputs)
    ref = run_op("reference", q, k, v, dout, lengths, inputs.p, inputs.levels, inputs.scale)
    check_results(f"compiled backend={backend!r}", results[0], ref, exact, inputs, well,
                  layout=False)
    if select_backend(backend, q, inputs.p, inputs.levels).fused:
        for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
            assert torch.equal(a, b), f"compiled {name} differs from eager"


class RecordOps(TorchDispatchMode):
    """Records the calls of registered mstr_kernels ops (below autograd: forward and backward)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "mstr_kernels":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


@pytest.mark.parametrize("backend,device,dtype", SINGLE)
def test_opcheck(backend, device, dtype):
    """torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) of every
    registered op a call with this backend runs, forward and backward, with the arguments it
    ran them with."""
    inputs = small_inputs(device, dtype, seed=4)
    q, k, v, dout, lengths = inputs.make()
    forward, backward = RecordOps(), RecordOps()
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    with forward:
        out = mstr_kernels.fractal_attention(*leaves, p=inputs.p, levels=inputs.levels,
                                             lengths=lengths, backend=backend)
    with backward:
        torch.autograd.grad(out, leaves, dout)
    chosen = select_backend(backend, q, inputs.p, inputs.levels)
    if not forward.calls and not chosen.fused:
        pytest.skip(f"backend={backend!r} runs plain PyTorch ops: no registered op to check")
    if chosen.call == CUSTOM_OP:
        # Eager calls take FusedFunction; these are the ops torch.compile runs instead.
        assert not forward.calls and not backward.calls
        scale = inputs.scale if inputs.scale is not None else inputs.D ** -0.5
        params = (lengths, inputs.p, inputs.levels, scale, chosen.name)
        forward.calls = [(torch.ops.mstr_kernels.fractal_attention_fwd.default,
                          (*leaves, *params), {})]
        backward.calls = [(torch.ops.mstr_kernels.fractal_attention_bwd.default,
                           (dout, *leaves, *params), {})]
    assert forward.calls, f"backend={backend!r} is fused but ran no registered op"
    seen = set()
    # Forward ops are checked with inputs that require grad (their autograd registration);
    # the backward ops are not differentiable again.
    for recorder, grad in ((forward, True), (backward, False)):
        for func, args, kwargs in recorder.calls:
            if func in seen:
                continue
            seen.add(func)
            args = [a.detach().requires_grad_(grad and a.is_floating_point())
                    if isinstance(a, torch.Tensor) else a for a in args]
            torch.library.opcheck(func, args, kwargs)


@pytest.mark.parametrize("backend,device,dtype", params(
    single_cases((torch.bfloat16, torch.float32)), lambda backend, device, dtype: f"{backend}-{device}"))
def test_backward_bit_identical_across_runs_and_thread_counts(backend, device, dtype):
    """Two runs give bit-identical outputs and gradients (no atomics), and so do 1 and 2 host
    threads."""
    inputs = Inputs(device, dtype, 3, 1, 40, 16, 3, 3, (40, 31, 7), "projection", seed=3)
    q, k, v, dout, lengths = inputs.make()
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            results.append(run_inputs(backend, inputs))
    finally:
        torch.set_num_threads(previous)
    for other, what in ((results[1], "1 and 2 threads"), (results[2], "two runs")):
        for name, a, b in zip(("out", "dq", "dk", "dv"), results[0] if other is results[1]
                              else results[1], other):
            assert torch.equal(a, b), f"{name} differs between {what}"


@pytest.mark.parametrize("backend,device,dtype", SINGLE_HALF)
def test_nan_poisoned_memory_does_not_leak(backend, device, dtype):
    """q, k, v are views into a NaN-filled buffer, padding frames and dout's padding hold NaN,
    and on a GPU the allocator's free memory is NaN: outputs and gradients are finite, exactly
    0 on padding, and bit-identical to the same views of a zero-filled buffer."""
    B, H, T, D, p, levels = 3, 1, 29, 6, 3, 2
    lengths = (29, 0, 13)
    inputs = Inputs(device, dtype, B, H, T, D, p, levels, lengths, "contiguous", seed=5)
    q, k, v, dout, lens = inputs.make()

    def views_of(fill):
        buf = torch.full((B, T + 2, 4, H + 1, D + 3), fill, dtype=dtype, device=device)
        views = [buf[:, :T, i, :H, :D].transpose(1, 2) for i in range(3)]
        for view, x in zip(views, (q, k, v)):
            view.copy_(x)
            for b, n in enumerate(lengths):
                view[b, :, n:] = fill
        d = dout.clone()
        for b, n in enumerate(lengths):
            d[b, :, n:] = fill
        return views, d

    clean_views, clean_dout = views_of(0.0)
    poisoned_views, poisoned_dout = views_of(float("nan"))
    if device == "cuda":  # fresh outputs start in the allocator's NaN-filled free blocks
        torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")
    got = run_op(backend, *poisoned_views, poisoned_dout, lens, p, levels, None)
    clean = run_op(backend, *clean_views, clean_dout, lens, p, levels, None)
    exact, well = float64_truth(inputs)
    ref = run_op("reference", q, k, v, dout, lens, p, levels, None)
    check_results(f"backend={backend!r} on poisoned memory", got, ref, exact, inputs, well)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, clean):
        assert torch.equal(a, b), f"{name} depends on what the padding and the gaps hold"
    assert torch.count_nonzero(got[0][2, :, :13]) > 0


@pytest.mark.parametrize("backend,device,dtype", SINGLE)
def test_gradients_for_any_dout_strides(backend, device, dtype):
    """dout of stride 0 (the backward of `.sum()`) gives the gradients of a contiguous copy, bit
    for bit; a dout laid out as (B, T, H, D) passes the rule against float64."""
    inputs = small_inputs(device, dtype, layout="strided", seed=8)
    q, k, v, dout, lengths = inputs.make()
    exact, well = float64_truth(inputs)
    ones = torch.ones(1, 1, 1, 1, dtype=dtype, device=device)
    stride0 = run_op(backend, q, k, v, ones.expand_as(dout), lengths, inputs.p, inputs.levels, None)
    dense = run_op(backend, q, k, v, ones.expand_as(dout).contiguous(), lengths, inputs.p,
                   inputs.levels, None)
    for name, a, b in zip(("out", "dq", "dk", "dv"), stride0, dense):
        assert torch.equal(a, b), f"{name} for a dout of stride 0 differs from a contiguous one"
    transposed = dout.transpose(1, 2).contiguous().transpose(1, 2)  # as a (B, T, H*D) view gives
    got = run_op(backend, q, k, v, transposed, lengths, inputs.p, inputs.levels, None)
    ref = run_op("reference", q, k, v, dout, lengths, inputs.p, inputs.levels, None)
    check_results(f"backend={backend!r}, dout laid out as (B, T, H, D)", got, ref, exact, inputs,
                  well)


@pytest.mark.parametrize("backend,device,dtype", FLOAT64)
def test_gradcheck_float64(backend, device, dtype):
    """torch.autograd.gradcheck where the backend declares float64 (finite differences)."""
    inputs = Inputs(device, dtype, 2, 2, 11, 3, 2, 3, (11, 5), "projection", seed=7)
    q, k, v, _, lengths = inputs.make()
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: mstr_kernels.fractal_attention(q, k, v, p=2, levels=3, lengths=lengths,
                                                       backend=backend), leaves)


def test_acceptance_rule():
    """The rule itself: SPEC's bound caps well-conditioned errors; a multiple of the reference's
    own error, never below the noise floor, for the rest."""
    assert accept(1e-3, 1e-3, torch.float16)[0] and not accept(3e-3, 1e-3, torch.float16)[0]
    assert not accept(1.5e-3, 4e-4, torch.float16)[0]  # > 3x the reference's 4e-4
    assert accept(5e-7, 1e-9, torch.float32)[0]  # under the noise floor
    assert not accept(2e-5, 1e-5, torch.float32)[0]  # well-conditioned: SPEC's 1e-5
    assert accept(2e-5, 1e-5, torch.float32, well_conditioned=False)[0]
    assert rel_err(torch.ones(3), torch.ones(3)) == 0.0
