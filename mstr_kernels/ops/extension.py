"""Loads the compiled extension `mstr_kernels._C` and explains in words why it is missing.

setup.py records the torch / CUDA versions and archs it built against in
`_build_info.json` next to the library; a mismatch at import is reported with both sides.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import torch

BUILD_INFO_PATH = Path(__file__).resolve().parent.parent / "_build_info.json"


def build_info() -> dict:
    try:
        return json.loads(BUILD_INFO_PATH.read_text())
    except (OSError, ValueError):
        return {}


def _import_extension():
    info = build_info()
    try:
        from mstr_kernels import _C
    except ImportError as e:
        if not info:
            raise ImportError("the C++ extension mstr_kernels._C is not built (install without "
                              "MSTR_KERNELS_SKIP_EXT=1 and with a C++ compiler)") from e
        built = info.get("torch_version")
        if built and built != torch.__version__:
            raise ImportError(f"mstr_kernels._C was built against torch {built} but torch "
                              f"{torch.__version__} is installed: reinstall mstr-kernels") from e
        raise ImportError(f"mstr_kernels._C failed to load: {e}") from e
    return _C


def backend_module(device: str):
    """A namespace with fractal_attention_fwd / _bwd for the 'cpu' or 'cuda' backend."""
    _C = _import_extension()
    if device == "cuda" and not _C.cuda_built():
        info = build_info()
        raise ImportError("mstr_kernels._C was built without its CUDA part"
                          + (f" ({info['cuda_skip_reason']})" if info.get("cuda_skip_reason") else ""))
    return types.SimpleNamespace(fractal_attention_fwd=_C.fractal_attention_fwd,
                                 fractal_attention_bwd=_C.fractal_attention_bwd)
