"""mstr-kernels: fused multi-scale fractal attention (MSTR) for PyTorch.

The public names below load on first use (PEP 562), so that `import mstr_kernels` and the
`mstr` console script's `--help` do not pay for importing torch. `import mstr_kernels.ops` (or
any use of the names below) registers the `torch.ops.mstr_kernels` custom ops.
"""
import importlib

__version__ = "0.1.0"

# public name -> the subpackage that defines it
_EXPORTS = {
    "fractal_attention": "ops",
    "fractal_attention_reference": "ops",
    "fractal_attention_varlen": "ops",
    "available_backends": "ops",
    "MultiScaleAttention": "nn",
}
_SUBPACKAGES = ("ops", "nn", "models", "data", "training", "features", "bench", "commands",
                "cli")

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
