"""How a model trains fast, shared by `mstr train` and the model benchmark (`mstr bench`):
`torch.compile` with static shapes, and Adam with its fused kernel.

Compilation is on by default on CUDA, where a step of the eager model is bound by the host's
kernel launches (issue 15), and off on the CPU, where inductor's compile (tens of seconds per
input shape on a small machine) costs more than it saves over a short run; `mstr train
--compile` turns it on there. The default mode on CUDA, "max-autotune-no-cudagraphs", tunes the
matrix products once per shape and needs no CUDA-graph capture (which DDP's gradient hooks and
a new allocation in any backend would break); "reduce-overhead" (CUDA graphs) is the option to
measure against it: which one is faster on a GPU is still to be measured (benchmarks/NOTES.md).
Shapes are static (`dynamic=False`): the trainer pads batches to a few fixed lengths
(`training.batching.length_buckets`), one compilation each.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_COMPILE_MODE = {"cuda": "max-autotune-no-cudagraphs", "cpu": "default"}
COMPILE_BY_DEFAULT = {"cuda": True, "cpu": False}


def compile_by_default(device: torch.device) -> bool:
    return COMPILE_BY_DEFAULT.get(torch.device(device).type, False)


def default_compile_mode(device: torch.device) -> str:
    return DEFAULT_COMPILE_MODE.get(torch.device(device).type, "default")


def compile_model(model: torch.nn.Module, device: torch.device, *, mode: Optional[str] = None,
                  backend="inductor", graphs: int = 8):
    """`torch.compile(model, dynamic=False)` in `mode` (None: the device's default), allowing
    `graphs` compilations of its forward (one per input shape and grad mode) before dynamo would
    fall back to eager."""
    mode = mode or default_compile_mode(device)
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode={mode!r} must be one of {COMPILE_MODES}")
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older one
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), graphs))
            break
    # A mode selects inductor's settings: other backends (aot_eager in tests) take none.
    kwargs = {"mode": mode} if backend == "inductor" else {}
    return torch.compile(model, backend=backend, dynamic=False, **kwargs)


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, device: torch.device
              ) -> torch.optim.Adam:
    """Adam with the fused kernel (one launch per step on CUDA; also on the CPU, where torch has
    it), else torch's default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr)
