"""The op layer: validation, the backend registry, dispatch and torch.library registration."""
from .backends import BACKENDS, BACKEND_ORDER, available_backends, get_backend, select_backend
from .fractal_attention import fractal_attention
from .reference import fractal_attention_reference

__all__ = ["BACKENDS", "BACKEND_ORDER", "available_backends", "fractal_attention",
           "fractal_attention_reference", "get_backend", "select_backend"]
