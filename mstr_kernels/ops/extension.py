"""Loads the compiled extension `mstr_kernels._C` and explains in words why it is missing.

setup.py records the torch / CUDA versions and archs it built against in
`_build_info.json` next to the library; a mismatch at import is reported with both sides.
"""
from __future__ import annotations

import json
import re
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
        raise ImportError(_load_failure_reason(info, e)) from e
    _register_fakes()
    return _C


_fakes_registered = False


def _register_fakes() -> None:
    """Fake (meta) kernels of the C++ ops, for torch.compile and FakeTensorMode: outputs in the
    layout every backend returns (validation.empty_output)."""
    global _fakes_registered
    if _fakes_registered:
        return
    from .validation import empty_output

    @torch.library.register_fake("mstr_kernels::fractal_attention_ext_fwd")
    def _(q, k, v, lengths, p, levels, scale):
        return empty_output(q)

    @torch.library.register_fake("mstr_kernels::fractal_attention_ext_bwd")
    def _(dout, q, k, v, lengths, p, levels, scale):
        return empty_output(q), empty_output(q), empty_output(q)

    _fakes_registered = True


def _load_failure_reason(info: dict, error: Exception) -> str:
    built = info.get("torch_version")
    if built and built != torch.__version__:
        return (f"mstr_kernels._C was built against torch {built} but torch {torch.__version__} "
                f"is installed: reinstall mstr-kernels ({error})")
    built_cuda = info.get("torch_cuda_version")
    if info.get("with_cuda") and built_cuda != torch.version.cuda:
        return (f"mstr_kernels._C was built for CUDA {built_cuda} but this torch uses CUDA "
                f"{torch.version.cuda}: reinstall mstr-kernels ({error})")
    return f"mstr_kernels._C failed to load: {error}"


def _arch_list(text: str):
    """'8.0;9.0a;10.0f;9.0+PTX' -> [((8, 0), ''), ((9, 0), 'a'), ((10, 0), 'f'), ((9, 0), '')] and
    the PTX archs [(9, 0)]: each cubin arch with its suffix ('a': that exact GPU only, 'f': its
    family), and the archs that also carry PTX."""
    cubins, ptx = [], []
    for item in text.replace(",", ";").replace(" ", ";").split(";"):
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?([af]?)(\+PTX)?", item.strip())
        if not match:
            continue
        arch = (int(match[1]), int(match[2] or 0))
        cubins.append((arch, match[3]))
        if match[4]:
            ptx.append(arch)
    return cubins, ptx


def _cubin_runs_on(arch, suffix: str, capability) -> bool:
    """A cubin for sm_XY runs on X.Y' with Y' >= Y; sm_XYa only on X.Y itself."""
    if suffix == "a":
        return tuple(capability) == arch
    return arch[0] == capability[0] and arch[1] <= capability[1]


def cuda_arch_mismatch(info: dict, capability) -> str | None:
    """Why the CUDA kernels cannot run on a GPU of this compute capability (None if they can):
    a cubin for sm_XY runs on X.Y' with Y' >= Y (sm_XYa on X.Y only), PTX for X.Y on any later
    GPU."""
    arch_list = info.get("cuda_arch_list")
    if not arch_list:
        return None
    cubins, ptx = _arch_list(arch_list)
    major, minor = capability
    if (any(_cubin_runs_on(arch, suffix, (major, minor)) for arch, suffix in cubins)
            or any(a <= (major, minor) for a in ptx)):
        return None
    return (f"mstr_kernels._C was built for TORCH_CUDA_ARCH_LIST={arch_list!r}, which has no code "
            f"for this GPU (sm_{major}{minor}): rebuild with TORCH_CUDA_ARCH_LIST="
            f"\"{major}.{minor}\"")


def backend_module(device: str):
    """A namespace with fractal_attention_fwd / _bwd for the 'cpu' or 'cuda' backend."""
    _C = _import_extension()
    if device == "cuda" and not _C.cuda_built():
        info = build_info()
        raise ImportError("mstr_kernels._C was built without its CUDA part"
                          + (f" ({info['cuda_skip_reason']})" if info.get("cuda_skip_reason") else ""))
    if device == "cuda" and torch.cuda.is_available():
        why = cuda_arch_mismatch(build_info(), torch.cuda.get_device_capability())
        if why:
            raise ImportError(why)
    return types.SimpleNamespace(fractal_attention_fwd=_C.fractal_attention_fwd,
                                 fractal_attention_bwd=_C.fractal_attention_bwd)


def cpu_output_cache_stats() -> dict:
    """The `cpu` backend's cache of large output buffers (csrc/cpu/output_cache.h): limit_bytes
    (environment MSTR_KERNELS_CPU_CACHE_MB, default 1024 MiB, 0 = off), cached_bytes (freed
    buffers kept for reuse), live_bytes (buffers in use), hits and misses."""
    return dict(_import_extension().cpu_output_cache_stats())


def empty_cpu_output_cache() -> int:
    """Gives the cached (not the live) CPU output buffers back to the system; returns bytes freed."""
    return int(_import_extension().empty_cpu_output_cache())
