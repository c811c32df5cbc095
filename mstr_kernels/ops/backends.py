"""The backend registry: what each implementation supports, declared as data.

Each backend lists the devices, dtypes, head dims, p and levels it runs, and returns its
reasons in words when it cannot run an input. `auto` takes the first backend in
`BACKEND_ORDER` with no reasons; a backend the user names raises with its reasons.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

log = logging.getLogger("mstr_kernels")

HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Backend:
    """One implementation of the op and the inputs it accepts.

    `loader` imports the implementation module lazily and returns it, or raises ImportError
    with the reason it is missing. The module provides `fractal_attention_fwd(q, k, v,
    lengths, p, levels, scale)` and `fractal_attention_bwd(dout, q, k, v, lengths, p,
    levels, scale) -> (dq, dk, dv)` (fused backends), or `fractal_attention_reference`.
    """
    name: str
    description: str
    devices: Tuple[str, ...]
    dtypes: Tuple[torch.dtype, ...]
    max_head_dim: int
    p_range: Tuple[int, int]
    max_tile: int
    fused: bool
    loader: Callable[[], object] = field(repr=False, compare=False, default=None)
    # Devices on which `auto` may pick this backend (default: all of `devices`).
    auto_devices: Optional[Tuple[str, ...]] = None

    @functools.cached_property
    def _load(self):
        try:
            return self.loader(), None
        except Exception as e:  # a missing build or dependency is a reason, not a crash
            return None, f"{type(e).__name__}: {e}"

    def module(self):
        mod, why = self._load
        if mod is None:
            raise RuntimeError(f"backend {self.name!r} is not available: {why}")
        return mod

    def unavailable_reason(self) -> Optional[str]:
        """Why this install cannot run the backend at all (None if it can)."""
        if self.devices == ("cuda",) and not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch (torch.cuda.is_available() is False)"
        return self._load[1]

    def reasons(self, q: torch.Tensor, p: int, levels: int) -> List[str]:
        """Why this backend cannot run these inputs; empty if it can."""
        why = []
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


def _load_extension(device: str):
    def load():
        from . import extension
        return extension.backend_module(device)
    return load


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Under TRITON_INTERPRET=1 Triton runs its kernels on CPU tensors (how CI tests them); `auto`
# still never picks the interpreter for CPU inputs.
_TRITON_DEVICES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)

BACKENDS: Dict[str, Backend] = {b.name: b for b in (
    Backend("cuda", "fused CUDA C++ kernels (csrc/, mstr_kernels._C)", ("cuda",), _FLOATS,
            256, (2, 8), 1024, True, _load_extension("cuda")),
    Backend("triton", "fused Triton kernels, one launch forward and one backward",
            _TRITON_DEVICES, _FLOATS, 256, (2, 8), 1024, True, _load_triton,
            auto_devices=("cuda",)),
    Backend("cpu", "fused C++ CPU kernels with ATen parallel_for (csrc/)", ("cpu",),
            _FLOATS + (torch.float64,), 256, (2, 8), 1024, True, _load_extension("cpu")),
    Backend("reference", "plain PyTorch ops, autograd by PyTorch", ("cpu", "cuda"),
            _FLOATS + (torch.float64,), 256, (2, 8), 1024, False, _load_reference),
)}

# `auto` tries these in order: the fastest first. On an H100 (benchmarks/results/nvidia-h100-*,
# B=32 H=16 T=4096 D=64 bf16 p=3 levels=4) triton ran forward 1.40 ms and forward+backward
# 6.21 ms, cuda 1.92 and 7.42 ms: triton goes first.
BACKEND_ORDER = ("triton", "cuda", "cpu", "reference")
BACKEND_NAMES = ("auto",) + BACKEND_ORDER

_warned: set = set()


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown: allowed are {BACKEND_NAMES}")
    return BACKENDS[name]


def select_backend(name: str, q: torch.Tensor, p: int, levels: int) -> Backend:
    """The backend that runs these inputs: the named one, or the first that fits for 'auto'."""
    if name != "auto":
        backend = get_backend(name)
        why = backend.reasons(q, p, levels)
        if why:
            raise ValueError(f"backend={name!r} cannot run these inputs: " + "; ".join(why))
        return backend
    passed_over = []
    for candidate in BACKEND_ORDER:
        backend = BACKENDS[candidate]
        why = backend.reasons(q, p, levels)
        if not why and q.device.type not in (backend.auto_devices or backend.devices):
            why = [f"not chosen by auto on device {q.device.type!r}"]
        if not why:
            if passed_over and backend.name == "reference":
                _warn_fallback(q, passed_over)
            return backend
        log.debug("auto: passing over backend %r: %s", candidate, "; ".join(why))
        if q.device.type in backend.devices:
            passed_over.append(f"{candidate} ({'; '.join(why)})")
    raise ValueError(f"no backend can run inputs on device {q.device} with dtype {q.dtype}")


def _warn_fallback(q, passed_over):
    key = (q.device.type, q.dtype, tuple(passed_over))
    if key not in _warned:
        _warned.add(key)
        warnings.warn("mstr_kernels: backend='auto' falls back to the slow 'reference' backend "
                      "because " + ", ".join(passed_over), RuntimeWarning, stacklevel=4)


def available_backends() -> Dict[str, Optional[str]]:
    """Each backend's name mapped to None if this install can run it, else the reason."""
    return {name: BACKENDS[name].unavailable_reason() for name in BACKEND_ORDER}
