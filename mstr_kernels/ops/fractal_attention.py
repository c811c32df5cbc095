"""The public op: validation, dispatch and its `torch.library` registration.

Three ways to a backend (`Backend.call`), each one opaque node (or plain ops) to torch.compile:
- `extension` (cpu, cuda): the C++ op `mstr_kernels::fractal_attention_ext_fwd`, registered with
  the dispatcher in csrc/fractal_attention.cpp with its autograd in C++, so an eager call pays
  one dispatcher hop and no Python layer (that layer alone cost more than SDPA's whole call);
- `custom_op` (triton, any Python fused backend): two Python custom ops (forward, backward),
  with autograd registered on the forward, what torch.compile traces; an eager call takes
  `FusedFunction`, the same bodies as an autograd.Function, without the custom-op layer's cost;
- `plain` (reference): plain PyTorch, traced and differentiated natively.
Every path checks `lengths` values inside the op (the C++ entry, `fractal_attention_fwd/bwd` and
`FusedFunction`, or `checked_lengths` for the reference), before any narrowing: the same inputs
are refused eagerly and compiled, without a host read on a GPU. An eager call seen before skips
the argument checks and the backend choice (`_call_signature`), not the `lengths` check.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import backends, validation
from .backends import EXTENSION, PLAIN, get_backend, select_backend
from .reference import fractal_attention_reference


def _int32(lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if lengths is None else lengths.to(torch.int32).contiguous()


@torch.library.custom_op("mstr_kernels::fractal_attention_fwd", mutates_args=())
def fractal_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lengths: Optional[torch.Tensor], p: int, levels: int, scale: float,
                          backend: str) -> torch.Tensor:
    validation.check_lengths_range(lengths, q.shape[2])
    return get_backend(backend).module().fractal_attention_fwd(q, k, v, _int32(lengths), p,
                                                               levels, scale)


@fractal_attention_fwd.register_fake
def _(q, k, v, lengths, p, levels, scale, backend):
    return validation.empty_output(q)


@torch.library.custom_op("mstr_kernels::fractal_attention_bwd", mutates_args=())
def fractal_attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          lengths: Optional[torch.Tensor], p: int, levels: int, scale: float,
                          backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    validation.check_lengths_range(lengths, q.shape[2])
    return tuple(get_backend(backend).module().fractal_attention_bwd(
        dout, q, k, v, _int32(lengths), p, levels, scale))


@fractal_attention_bwd.register_fake
def _(dout, q, k, v, lengths, p, levels, scale, backend):
    return validation.empty_output(q), validation.empty_output(q), validation.empty_output(q)


def _setup_context(ctx, inputs, output):
    q, k, v, lengths, p, levels, scale, backend = inputs
    ctx.save_for_backward(q, k, v, lengths)  # inputs only: the backward recomputes the rest
    ctx.params = (p, levels, scale, backend)


def _backward(ctx, dout):
    q, k, v, lengths = ctx.saved_tensors
    dq, dk, dv = fractal_attention_bwd(dout, q, k, v, lengths, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


fractal_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("mstr_kernels::checked_lengths", mutates_args=())
def checked_lengths(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """A copy of `lengths` once 0 <= lengths[b] <= T holds (the reference path's check: an op,
    so it runs at run time under torch.compile too)."""
    validation.check_lengths_range(lengths, T)
    return lengths.clone()


@checked_lengths.register_fake
def _(lengths, T):
    return torch.empty_like(lengths)


@torch.library.custom_op("mstr_kernels::require_all", mutates_args=())
def require_all(x: torch.Tensor, ok: torch.Tensor, message: str) -> torch.Tensor:
    """A copy of `x` once every element of the bool tensor `ok` is True: otherwise ValueError
    (message) on the CPU (read on the host: no device sync) and a device-side assertion on a GPU
    (no host read). An op, so the check runs at run time under torch.compile too; use its
    result, so that the check is not dropped as dead code."""
    if ok.device.type == "cpu":
        if not ok.numpy().all():
            raise ValueError(message)
    else:
        torch._assert_async(ok.all(), message)
    return x.clone()


@require_all.register_fake
def _(x, ok, message):
    return torch.empty_like(x)


# Whether any autocast is on (one C call; older torch: ask per device).
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def _call_signature(q, k, v, p, levels, lengths, scale, backend) -> Optional[tuple]:
    """Everything the checks and the backend choice read, as a dictionary key (None if an
    argument is not a tensor where one must be: the full checks name it)."""
    try:
        return (backend, p, levels, scale, type(p), type(levels), type(scale),
                q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype,
                q.device, k.device, v.device, q.stride(-1) == 1,
                None if lengths is None else (lengths.dtype, lengths.shape, lengths.device,
                                              type(lengths)),
                type(q), type(k), type(v), backends.BACKENDS.version, backends.BACKEND_ORDER)
    except AttributeError:
        return None


def _run(chosen, q, k, v, lengths, p: int, levels: int, scale: float) -> torch.Tensor:
    if chosen.call == EXTENSION:
        return torch.ops.mstr_kernels.fractal_attention_ext_fwd.default(q, k, v, lengths, p,
                                                                        levels, scale)
    if chosen.call == PLAIN:
        if lengths is not None:
            lengths = checked_lengths(lengths, q.shape[2])
        return fractal_attention_reference(q, k, v, lengths, p, levels, scale)
    if torch.compiler.is_compiling() or not _plain(q, k, v, lengths):
        # traced, or tensor subclasses (fake tensors run the ops' fake implementations)
        return fractal_attention_fwd(q, k, v, lengths, p, levels, scale, chosen.name)
    return FusedFunction.apply(q, k, v, lengths, p, levels, scale, chosen.name)


def _plain(q, k, v, lengths) -> bool:
    return (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
            and (lengths is None or type(lengths) is torch.Tensor))


class FusedFunction(torch.autograd.Function):
    """The eager form of the registered pair fractal_attention_fwd / _bwd: the same checks and
    backend calls without the custom-op layer, whose per-call cost is several times the
    kernels' launch at speech lengths. torch.compile traces the registered ops instead."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, p, levels, scale, backend):
        validation.check_lengths_range(lengths, q.shape[2])
        lengths = _int32(lengths)
        module = get_backend(backend).module()
        ctx.save_for_backward(q, k, v, lengths)  # inputs only: the backward recomputes the rest
        ctx.params = (module, p, levels, scale)
        return module.fractal_attention_fwd(q, k, v, lengths, p, levels, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, lengths = ctx.saved_tensors  # lengths checked by the forward
        module, p, levels, scale = ctx.params
        dq, dk, dv = module.fractal_attention_bwd(dout, q, k, v, lengths, p, levels, scale)
        return dq, dk, dv, None, None, None, None, None


_EXTENSION_FWD = []


def _extension_fwd():
    """The C++ op's dispatcher entry (what OpOverload.__call__ calls; eager only: dynamo traces
    the overload), looked up once: the extension registers the op when a backend that uses it is
    loaded, before its first call."""
    if not _EXTENSION_FWD:
        overload = torch.ops.mstr_kernels.fractal_attention_ext_fwd.default
        _EXTENSION_FWD.append(getattr(overload, "_op", overload))
    return _EXTENSION_FWD[0]


def fractal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, p: int = 3,
                      levels: int = 4, lengths: Optional[torch.Tensor] = None,
                      scale: Optional[float] = None, backend: str = "auto") -> torch.Tensor:
    """Multi-scale fractal attention (SPEC section 1).

    q, k, v: (B, H, T, D), any strides. lengths: None or integer (B,), frames t >= lengths[b]
    are padding (output and gradients exactly 0). Returns (B, H, T, D) laid out as (B, T, H, D).
    Under `torch.autocast`, float32 / float16 / bfloat16 q, k, v are cast to the autocast dtype
    and float64 stays float64, as SDPA's inputs are.
    """
    if isinstance(lengths, torch.Tensor) and lengths.dtype in validation.NARROW_INT_DTYPES:
        lengths = lengths.to(torch.int32)  # SPEC: any integer tensor; these always fit int32
    # The hot path (eager, no autocast): a call whose signature was accepted before skips the
    # checks and the backend choice; its `lengths` values are still checked inside the op.
    hot = not torch.compiler.is_compiling() and not _any_autocast()
    if hot:
        signature = _call_signature(q, k, v, p, levels, lengths, scale, backend)
        remembered = backends.remembered_call(signature)
        if remembered is not None:
            chosen, scale = remembered
            if chosen.call == EXTENSION:  # eager: the dispatcher entry itself
                return _extension_fwd()(q, k, v, lengths, p, levels, scale)
            return _run(chosen, q, k, v, lengths, p, levels, scale)
    validation.check_call(q, k, v, p, levels, scale, lengths)
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type) and q.dtype in validation.AUTOCAST_DTYPES:
        dtype = torch.get_autocast_dtype(device_type)
        if q.dtype != dtype:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    chosen = select_backend(backend, q, p, levels)
    scale = validation.default_scale(q.shape[-1], scale)
    if hot and signature is not None:
        backends.remember_call(signature, (chosen, scale))
    return _run(chosen, q, k, v, lengths, p, levels, scale)
