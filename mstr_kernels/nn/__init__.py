"""nn modules built on the op."""
from .attention import (MHAProjections, MultiScaleAttention, check_attention_args, check_heads,
                        lengths_from_key_padding_mask)

__all__ = ["MHAProjections", "MultiScaleAttention", "check_attention_args", "check_heads",
           "lengths_from_key_padding_mask"]
