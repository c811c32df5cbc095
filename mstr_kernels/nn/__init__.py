"""nn modules built on the op."""
from .attention import MultiScaleAttention, lengths_from_key_padding_mask

__all__ = ["MultiScaleAttention", "lengths_from_key_padding_mask"]
