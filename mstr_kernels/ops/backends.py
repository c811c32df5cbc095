"""The backend registry: what each implementation supports, declared as data.

Each backend lists the devices and dtypes it runs and, only where it differs from the SPEC
range (`validation.SPEC`), the head dims, p and tile sizes; it returns its reasons in words when
it cannot run an input. `auto` takes the first backend in `BACKEND_ORDER` with no reasons; a
backend the user names raises with its reasons.

The choice is cached per (name, op, device, dtype, D, p, levels, stride class): a call costs a
dictionary lookup, and under torch.compile the choice is made once at trace time
(`assume_constant_result`), outside the traced code, where the lazy imports, the fallback
warning and the debug log of passed-over backends may run.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .validation import SPEC

log = logging.getLogger("mstr_kernels")

HALF = (torch.float16, torch.bfloat16)
FRACTAL_ATTENTION = "fractal_attention"  # the padded op of SPEC section 1
FRACTAL_ATTENTION_VARLEN = "fractal_attention_varlen"  # packed sequences, SPEC section 1b

# How `fractal_attention` calls a backend (Backend.call):
EXTENSION = "extension"  # the C++ op mstr_kernels::fractal_attention_ext_fwd, autograd in C++
CUSTOM_OP = "custom_op"  # the Python registered ops around the module's fwd / bwd
PLAIN = "plain"          # plain PyTorch ops (traced and differentiated by PyTorch)


@dataclass(frozen=True)
class Backend:
    """One implementation of the op and the inputs it accepts.

    `loader` imports the implementation module lazily and returns it, or raises ImportError
    with the reason it is missing. The module provides `fractal_attention_fwd(q, k, v,
    lengths, p, levels, scale)` and `fractal_attention_bwd(dout, q, k, v, lengths, p,
    levels, scale) -> (dq, dk, dv)` (fused backends), or `fractal_attention_reference`.
    `max_head_dim`, `p_range` and `max_tile` default to the SPEC range: a backend sets only
    what it narrows. `ops` names the ops it implements (a packed variant declares its own, e.g.
    "fractal_attention_varlen"); `reasons(..., op=...)` refuses the others.
    """
    name: str
    description: str
    devices: Tuple[str, ...]
    dtypes: Tuple[torch.dtype, ...]
    max_head_dim: int = SPEC.head_dim_max
    p_range: Tuple[int, int] = (SPEC.p_min, SPEC.p_max)
    max_tile: int = SPEC.max_tile
    fused: bool = True
    loader: Callable[[], object] = field(repr=False, compare=False, default=None)
    # Devices on which `auto` may pick this backend (default: all of `devices`).
    auto_devices: Optional[Tuple[str, ...]] = None
    ops: Tuple[str, ...] = (FRACTAL_ATTENTION,)
    call: str = CUSTOM_OP
    # With FRACTAL_ATTENTION_VARLEN in `ops`: loads the module with
    # `fractal_attention_varlen_fwd(q, k, v, tiles, p, levels, scale)` and `..._bwd(dout, q, k,
    # v, tiles, p, levels, scale)` (ops/varlen.py).
    varlen_loader: Optional[Callable[[], object]] = field(repr=False, compare=False, default=None)
    # Rows per entry of its packed-sequence work list for (p, levels), when not p**levels.
    varlen_item_frames: Optional[Callable[[int, int], int]] = field(repr=False, compare=False,
                                                                    default=None)

    def _load(self):
        # A plain memo, not functools.cached_property: Python <= 3.11's takes an RLock.
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            try:
                loaded = (self.loader(), None)
            except Exception as e:  # a missing build or dependency is a reason, not a crash
                loaded = (None, f"{type(e).__name__}: {e}")
            object.__setattr__(self, "_loaded", loaded)
        return loaded

    def module(self):
        mod, why = self._load()
        if mod is None:
            raise RuntimeError(f"backend {self.name!r} is not available: {why}")
        return mod

    def unavailable_reason(self) -> Optional[str]:
        """Why this install cannot run the backend at all (None if it can)."""
        if self.devices == ("cuda",) and not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
        return self._load()[1]

    def reasons(self, q: torch.Tensor, p: int, levels: int,
                op: str = FRACTAL_ATTENTION) -> List[str]:
        """Why this backend cannot run these inputs; empty if it can."""
        why = []
        if op not in self.ops:
            why.append(f"op {op!r} not implemented (implements {self.ops})")
        if q.device.type not in self.devices:
            why.append(f"device {q.device.type!r} not in {self.devices}")
        if q.dtype not in self.dtypes:
            why.append(f"dtype {q.dtype} not in {tuple(str(d) for d in self.dtypes)}")
        if q.shape[-1] > self.max_head_dim:
            why.append(f"head dim {q.shape[-1]} > {self.max_head_dim}")
        if not self.p_range[0] <= p <= self.p_range[1]:
            why.append(f"p={p} outside {self.p_range}")
        if p ** levels > self.max_tile:
            why.append(f"p**levels={p ** levels} > {self.max_tile}")
        if not why:
            missing = self.unavailable_reason()
            if missing:
                why.append(missing)
        return why


def _load_reference():
    from . import reference
    return reference


def _load_triton():
    from . import triton_fractal  # imports triton; ImportError says why it is missing
    return triton_fractal


def _load_varlen(module: str):
    def load():
        import importlib
        return importlib.import_module(f".{module}", __package__)
    return load


def _load_extension(device: str):
    def load():
        from . import extension
        return extension.backend_module(device)
    return load


def cuda_varlen_item_frames(p: int, levels: int) -> int:
    """The `cuda` backend's work-list entry: one item of its specialised kernels, whole tiles
    (csrc/cuda/fractal_spec_configs.h: tiles_per_item; _C.varlen_item_frames, tested equal)."""
    tile = p ** levels
    return tile * (1 if tile >= 64 else 96 // tile)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Under TRITON_INTERPRET=1 Triton runs its kernels on CPU tensors (how CI tests them); `auto`
# still never picks the interpreter for CPU inputs.
_TRITON_DEVICES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)
_BOTH = (FRACTAL_ATTENTION, FRACTAL_ATTENTION_VARLEN)

class Registry(dict):
    """The name -> Backend mapping, with a version that every change of an entry bumps, so that
    the cached choices (and `fractal_attention`'s call memo) follow a replaced entry."""

    version = 0

    def __setitem__(self, name, backend):
        super().__setitem__(name, backend)
        self.version += 1

    def __delitem__(self, name):
        super().__delitem__(name)
        self.version += 1

    def _changed(method):  # the other mutating methods: same bump
        def wrapped(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            self.version += 1
            return result
        return wrapped

    pop, popitem, clear, update, setdefault = map(
        _changed, (dict.pop, dict.popitem, dict.clear, dict.update, dict.setdefault))
    del _changed


BACKENDS: Registry = Registry({b.name: b for b in (
    Backend("cuda", "fused CUDA C++ kernels (csrc/, mstr_kernels._C)", ("cuda",), _FLOATS,
            loader=_load_extension("cuda"), call=EXTENSION, ops=_BOTH,
            varlen_loader=_load_varlen("varlen_extension"),
            varlen_item_frames=cuda_varlen_item_frames),
    Backend("triton", "fused Triton kernels, one launch forward and one backward",
            _TRITON_DEVICES, _FLOATS, loader=_load_triton, auto_devices=("cuda",), ops=_BOTH,
            varlen_loader=_load_varlen("triton_fractal_varlen")),
    Backend("cpu", "fused C++ CPU kernels with ATen parallel_for (csrc/)", ("cpu",),
            _FLOATS + (torch.float64,), loader=_load_extension("cpu"), call=EXTENSION, ops=_BOTH,
            varlen_loader=_load_varlen("varlen_extension")),
    Backend("reference", "plain PyTorch ops, autograd by PyTorch", ("cpu", "cuda"),
            _FLOATS + (torch.float64,), fused=False, loader=_load_reference, call=PLAIN,
            ops=_BOTH, varlen_loader=_load_varlen("varlen_reference")),
)})

# `auto` tries these in order, the fastest first (measured: benchmarks/results/*.json; the
# H100 runs put triton ahead of cuda at the benchmark shape).
BACKEND_ORDER = ("triton", "cuda", "cpu", "reference")
BACKEND_NAMES = ("auto",) + BACKEND_ORDER

_warned: set = set()
# (name, op, device, dtype, D, p, levels, stride class, registry version, order) -> backend
# name, or "!" and the error: replacing an entry or the order re-decides. fractal_attention
# keeps its memo of accepted calls here too (`remembered_call`), so that one reset clears both.
_choices: Dict[tuple, object] = {}
_MAX_REMEMBERED = 4096  # distinct call signatures kept; then the memo starts over


def remembered_call(signature: tuple):
    """What `remember_call` stored for this call signature, or None."""
    return _choices.get(signature)


def remember_call(signature: tuple, value) -> None:
    if len(_choices) >= _MAX_REMEMBERED:
        _choices.clear()
    _choices[signature] = value


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown: allowed are {BACKEND_NAMES}")
    return BACKENDS[name]


def select_backend(name: str, q: torch.Tensor, p: int, levels: int,
                   op: str = FRACTAL_ATTENTION) -> Backend:
    """The backend that runs these inputs: the named one, or the first that fits for 'auto'."""
    chosen = _choice(name, op, q.device, q.dtype, int(q.shape[-1]), p, levels,
                     q.stride(-1) == 1)
    if chosen.startswith("!"):
        raise ValueError(chosen[1:])
    return BACKENDS[chosen]


@torch.compiler.assume_constant_result
def _choice(name: str, op: str, device: torch.device, dtype: torch.dtype, head_dim: int, p: int,
            levels: int, unit_stride: bool) -> str:
    key = (name, op, device, dtype, head_dim, p, levels, unit_stride, BACKENDS.version,
           BACKEND_ORDER)
    chosen = _choices.get(key)
    if chosen is None:
        # A small tensor like the inputs (device, dtype, D, unit stride or not): what
        # `reasons` reads. Allocated on a cache miss only.
        probe = torch.empty_strided((1, 1, 1, head_dim), (head_dim, head_dim, head_dim,
                                                          1 if unit_stride else 2),
                                    dtype=dtype, device=device)
        try:
            chosen = _select_uncached(name, probe, p, levels, op).name
        except ValueError as e:
            chosen = "!" + str(e)
        _choices[key] = chosen
    return chosen


def _select_uncached(name, q, p, levels, op) -> Backend:
    if name != "auto":
        backend = get_backend(name)
        why = backend.reasons(q, p, levels, op=op)
        if why:
            raise ValueError(f"backend={name!r} cannot run these inputs: " + "; ".join(why))
        return backend
    passed_over = []
    for candidate in BACKEND_ORDER:
        backend = BACKENDS[candidate]
        why = backend.reasons(q, p, levels, op=op)
        if not why and q.device.type not in (backend.auto_devices or backend.devices):
            why = [f"not chosen by auto on device {q.device.type!r}"]
        if not why:
            if passed_over and not backend.fused:
                _warn_fallback(q, passed_over)
            return backend
        log.debug("auto: passing over backend %r: %s", candidate, "; ".join(why))
        if q.device.type in backend.devices:
            passed_over.append(f"{candidate} ({'; '.join(why)})")
    raise ValueError(f"no backend can run inputs on device {q.device} with dtype {q.dtype}"
                     + (f" for op {op!r}" if op != FRACTAL_ATTENTION else ""))


def _warn_fallback(q, passed_over):
    key = (q.device.type, q.dtype, tuple(passed_over))
    if key not in _warned:
        _warned.add(key)
        warnings.warn("mstr_kernels: backend='auto' falls back to the slow 'reference' backend "
                      "because " + ", ".join(passed_over), RuntimeWarning, stacklevel=6)


def available_backends() -> Dict[str, Optional[str]]:
    """Each backend's name mapped to None if this install can run it, else the reason."""
    return {name: BACKENDS[name].unavailable_reason() for name in BACKEND_ORDER}
