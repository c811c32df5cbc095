"""mstr-kernels: fused multi-scale fractal attention (MSTR) for PyTorch."""
from .ops import (available_backends, fractal_attention, fractal_attention_reference,
                  fractal_attention_varlen)
from .nn import MultiScaleAttention

__version__ = "0.1.0"
__all__ = ["MultiScaleAttention", "available_backends", "fractal_attention",
           "fractal_attention_reference", "fractal_attention_varlen", "__version__"]
