"""The parity suite follows the registry: a backend registered in `mstr_kernels.ops.backends`
is in every test of test_parity.py without a test edit, and one that declares a capability it
does not have fails the acceptance rule."""
import dataclasses
import types

import pytest
import torch

import test_parity
from mstr_kernels.ops import reference
from parity import cases, check_case, float64_truth, input_pool, single_cases, sweep_inputs


@pytest.fixture
def register(monkeypatch):
    """register(name, fwd, bwd, dtypes): a fused CPU backend in the registry for this test."""
    from mstr_kernels.ops import backends

    def add(name, fwd=reference.fractal_attention_fwd, bwd=reference.fractal_attention_bwd,
            dtypes=None):
        base = backends.BACKENDS["reference"]
        module = types.SimpleNamespace(fractal_attention_fwd=fwd, fractal_attention_bwd=bwd)
        backend = dataclasses.replace(base, name=name, description=f"test backend {name}",
                                      devices=("cpu",), dtypes=dtypes or base.dtypes, fused=True,
                                      call=backends.CUSTOM_OP, loader=lambda: module)
        monkeypatch.setitem(backends.BACKENDS, name, backend)
        monkeypatch.setattr(backends, "BACKEND_ORDER", tuple(backends.BACKEND_ORDER) + (name,))
        return backend
    return add


def own_cases(name, pool=input_pool):
    rows = [(inputs, why) for backend, inputs, why in cases(pool) if backend == name]
    assert all(why is None for _, why in rows)
    return [inputs for inputs, _ in rows]


def test_a_registered_backend_runs_through_every_test(register):
    """The reference's fused-contract functions registered as a new backend: the case generator
    gives it every declared dtype, tails, short sequences, lengths and layouts, and it passes the
    parity cases, the magnitude sweep and each test written once over the backends."""
    backend = register("wrapped_reference")
    parity, sweep = own_cases(backend.name), own_cases(backend.name, sweep_inputs)
    assert {x.dtype for x in parity} == set(backend.dtypes)
    assert {x.layout for x in parity} == {"projection", "contiguous", "strided"}
    assert any(x.T < x.p for x in parity) and any(x.T % x.p ** x.levels for x in parity)
    assert any(x.lengths and 0 in x.lengths for x in parity)
    assert any(x.lengths and x.T in x.lengths for x in parity)
    for inputs in parity + sweep:
        check_case(backend.name, inputs)
    singles = [row for row in single_cases() if row[0] == backend.name]
    assert [row[1:3] for row in singles] == [("cpu", torch.float32)]
    args = singles[0][:3]
    test_parity.test_declares_what_it_runs(*args)
    test_parity.test_opcheck(*args)
    test_parity.test_backward_bit_identical_across_runs_and_thread_counts(*args)
    test_parity.test_nan_poisoned_memory_does_not_leak(*args)
    test_parity.test_gradients_for_any_dout_strides(*args)
    test_parity.test_gradcheck_float64(backend.name, "cpu", torch.float64)
    test_parity.test_torch_compile_fullgraph_inductor(*args)


def through(dtype_used):
    """A forward that computes float16 inputs in `dtype_used` (a backend that gets them wrong)."""
    def fwd(q, k, v, lengths, p, levels, scale):
        if q.dtype != torch.float16:
            return reference.fractal_attention_fwd(q, k, v, lengths, p, levels, scale)
        xs = (x.to(dtype_used) for x in (q, k, v))
        return reference.fractal_attention_fwd(*xs, lengths, p, levels, scale).to(q.dtype)
    return fwd


def test_a_backend_that_gets_a_declared_dtype_wrong_fails(register):
    """Declaring float16 while computing it in bfloat16 fails the rule on every float16 case;
    the same backend passes the dtypes it computes right."""
    backend = register("sloppy_half", fwd=through(torch.bfloat16),
                       dtypes=(torch.float32, torch.float16))
    parity = own_cases(backend.name)
    # every float16 case with a frame to compute (all-padding cases are exact zeros either way)
    half = [x for x in parity if x.dtype == torch.float16 and float64_truth(x)[0][0].norm() > 0]
    assert len(half) >= 3 and len(half) < len(parity)
    for inputs in half:
        with pytest.raises(AssertionError, match="out error"):
            check_case(backend.name, inputs)
    for inputs in parity[:4]:
        if inputs.dtype == torch.float32:
            check_case(backend.name, inputs)


def test_a_backend_that_cannot_run_a_declared_dtype_fails(register):
    def refuses(q, *args):
        raise TypeError(f"{q.dtype} is not implemented")
    backend = register("float32_only", fwd=refuses, dtypes=(torch.float64,))
    (inputs, *_) = own_cases(backend.name)
    with pytest.raises(TypeError, match="not implemented"):
        check_case(backend.name, inputs)
