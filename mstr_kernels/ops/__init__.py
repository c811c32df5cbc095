"""The op layer: validation, the backend registry, dispatch and torch.library registration."""
from .backends import BACKENDS, BACKEND_ORDER, available_backends, get_backend, select_backend
from .extension import cpu_output_cache_stats, empty_cpu_output_cache
from .fractal_attention import fractal_attention, require_all
from .reference import fractal_attention_reference
from .varlen import fractal_attention_varlen

__all__ = ["BACKENDS", "BACKEND_ORDER", "available_backends", "cpu_output_cache_stats",
           "empty_cpu_output_cache", "fractal_attention", "fractal_attention_reference",
           "fractal_attention_varlen",
           "get_backend", "require_all", "select_backend"]
