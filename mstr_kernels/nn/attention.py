"""`MultiScaleAttention`: a drop-in for `nn.MultiheadAttention(batch_first=True)` self-attention
that runs the fused fractal attention op."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..ops import fractal_attention, fractal_attention_varlen, require_all


def lengths_from_key_padding_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool mask, True = padding, padding only at the end -> (B,) int64 lengths."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask.dtype={key_padding_mask.dtype} must be torch.bool "
                        f"(True marks padding)")
    if key_padding_mask.dim() != 2:
        raise ValueError(f"key_padding_mask must be (B, T), got shape {tuple(key_padding_mask.shape)}")
    lengths = (~key_padding_mask).sum(dim=1)
    T = key_padding_mask.shape[1]
    suffix = torch.arange(T, device=key_padding_mask.device)[None, :] >= lengths[:, None]
    # No host read on a GPU (a device-side assertion), the same refusal eagerly and compiled.
    return require_all(lengths, suffix == key_padding_mask,
                       "key_padding_mask must mark padding only at the end of each sequence "
                       "(True after the last valid frame): fractal attention pools "
                       "consecutive frames and takes lengths, not arbitrary holes")


class MultiScaleAttention(nn.Module):
    """Self-attention by multi-scale fractal attention (SPEC section 3).

    One fused QKV projection; the op reads q, k, v as strided views of its output (no copies);
    its output, laid out as (B, T, H, D), flattens to (B, T, E) for free before `out_proj`.
    """

    def __init__(self, embed_dim: int, num_heads: int, p: int = 3, levels: int = 4,
                 bias: bool = True, scale: Optional[float] = None, backend: str = "auto",
                 batch_first: bool = True, device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if not batch_first:
            raise ValueError("batch_first=False is not supported: inputs are (B, T, E)")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.p, self.levels, self.scale, self.backend = p, levels, scale, backend
        self.batch_first = True
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.in_proj.bias is not None:
            nn.init.zeros_(self.in_proj.bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None, key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[torch.Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False, *,
                lengths: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> Tuple[torch.Tensor, None]:
        """query: (B, T, E). Returns (output (B, T, E), None) like nn.MultiheadAttention.

        Packed sequences: query (total, E) and cu_seqlens (N+1,) int32, as for
        `fractal_attention_varlen` (max_seqlen optional); returns (output (total, E), None)."""
        for name, other in (("key", key), ("value", value)):
            if other is not None and other is not query:
                raise ValueError(f"MultiScaleAttention is self-attention: {name} must be None or "
                                 f"the query tensor itself")
        if need_weights:
            raise ValueError("need_weights=True is not supported: the fused op never forms "
                             "attention weights; pass need_weights=False")
        if attn_mask is not None or is_causal:
            raise ValueError("attn_mask and is_causal are not supported: fractal attention has "
                             "its own window structure; give padding as key_padding_mask or lengths")
        if cu_seqlens is not None:
            return self._forward_packed(query, key_padding_mask, lengths, cu_seqlens, max_seqlen)
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, T, embed_dim={self.embed_dim}), "
                             f"got shape {tuple(query.shape)}")
        if key_padding_mask is not None:
            if lengths is not None:
                raise ValueError("give padding as key_padding_mask or as lengths, not both")
            if tuple(key_padding_mask.shape) != tuple(query.shape[:2]):
                raise ValueError(f"key_padding_mask.shape={tuple(key_padding_mask.shape)} must be "
                                 f"(B, T) = {tuple(query.shape[:2])}, query's first two dims")
            lengths = lengths_from_key_padding_mask(key_padding_mask)
        B, T, E = query.shape
        H, D = self.num_heads, self.head_dim
        qkv = self.in_proj(query).view(B, T, 3, H, D)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D) views
        out = fractal_attention(q, k, v, p=self.p, levels=self.levels, lengths=lengths,
                                scale=self.scale, backend=self.backend)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, E)), None

    def _forward_packed(self, query, key_padding_mask, lengths, cu_seqlens, max_seqlen):
        if key_padding_mask is not None or lengths is not None:
            raise ValueError("packed input (cu_seqlens) has no padding: key_padding_mask and "
                             "lengths must be None")
        if query.dim() != 2 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"with cu_seqlens, query must be packed (total, embed_dim="
                             f"{self.embed_dim}), got shape {tuple(query.shape)}")
        total, E = query.shape
        qkv = self.in_proj(query).view(total, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(1)  # (total, H, D) views
        out = fractal_attention_varlen(q, k, v, cu_seqlens, max_seqlen=max_seqlen, p=self.p,
                                       levels=self.levels, scale=self.scale,
                                       backend=self.backend)
        return self.out_proj(out.reshape(total, E)), None

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, p={self.p}, "
                f"levels={self.levels}, backend={self.backend!r}")
