"""MSTR (the paper's model) and its baseline, the same network with full attention (SPEC section 3).

Layer design of SpeechFormer, the authors' earlier public code: input LayerNorm, post-norm blocks
`x = LN(x + Dropout(Attn(x)))`, `x = LN(x + Dropout(FFN(x)))` with FFN F -> F/2 -> F, mean over
the valid frames, classifier F -> F/2 -> F/4 -> C. No positional encoding (the input features,
HuBERT states, already carry their context).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MHAProjections, MultiScaleAttention, check_attention_args, check_heads

ATTENTIONS = ("fractal", "full")


@dataclass
class MSTRConfig:
    feature_dim: int = 1024
    num_classes: int = 4
    num_layers: int = 4
    num_heads: int = 16
    p: int = 3
    levels: int = 4
    dropout: float = 0.1
    classifier_dropout: float = 0.5
    backend: str = "auto"
    # "fractal": MSTR; "full": the vanilla Transformer baseline (SDPA, p/levels/backend unused)
    attention: str = "fractal"

    def __post_init__(self):
        for name in ("feature_dim", "num_classes", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        if self.feature_dim % 4 != 0:
            raise ValueError(f"feature_dim={self.feature_dim} must be a multiple of 4 "
                             f"(the FFN and classifier use F/2 and F/4)")
        check_heads(self.feature_dim, self.num_heads, embed_name="feature_dim")
        for name in ("dropout", "classifier_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be a number in [0, 1)")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention={self.attention!r} must be one of {ATTENTIONS}")
        # checked for both attentions: one config builds either model (build_model)
        check_attention_args(p=self.p, levels=self.levels, backend=self.backend)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MSTRConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MSTRConfig got unknown fields {unknown}; known are {sorted(known)}")
        return cls(**data)


class FullSelfAttention(MHAProjections):
    """Full multi-head self-attention by SDPA with a key padding mask; the parameters of
    `MultiScaleAttention` (those of nn.MultiheadAttention), so both models have the same
    weights."""

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, E = x.shape
        H, D = self.num_heads, self.head_dim
        qkv = self.in_proj(x).view(B, T, 3, H, D)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        mask = None
        if lengths is not None:
            # True = attend. A sequence of length 0 would have no key and SDPA would return NaN:
            # let it attend everywhere; its frames are all padding and never read downstream.
            valid = torch.arange(T, device=x.device)[None, :] < lengths[:, None]
            mask = (valid | (lengths[:, None] == 0))[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, E))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, dropout: float):
        super().__init__(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(dim // 2, dim))


class PostNormBlock(nn.Module):
    def __init__(self, config: MSTRConfig):
        super().__init__()
        F_ = config.feature_dim
        if config.attention == "fractal":
            self.attention = MultiScaleAttention(F_, config.num_heads, p=config.p,
                                                 levels=config.levels, backend=config.backend)
        else:
            self.attention = FullSelfAttention(F_, config.num_heads)
        self.norm1 = nn.LayerNorm(F_)
        self.ffn = FeedForward(F_, config.dropout)
        self.norm2 = nn.LayerNorm(F_)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor],
                cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> torch.Tensor:
        if cu_seqlens is not None:  # packed (total, F); every other layer acts per frame
            attended = self.attention(x, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)[0]
        elif isinstance(self.attention, MultiScaleAttention):
            attended = self.attention(x, lengths=lengths)[0]
        else:
            attended = self.attention(x, lengths)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.ffn(x)))


class SpeechTransformerClassifier(nn.Module):
    """The shared network of MSTR and the baseline; `config.attention` picks the attention."""

    def __init__(self, config: MSTRConfig):
        super().__init__()
        self.config = config
        F_ = config.feature_dim
        self.input_norm = nn.LayerNorm(F_)
        self.blocks = nn.ModuleList(PostNormBlock(config) for _ in range(config.num_layers))
        d = config.classifier_dropout
        self.classifier = nn.Sequential(
            nn.Linear(F_, F_ // 2), nn.ReLU(), nn.Dropout(d),
            nn.Linear(F_ // 2, F_ // 4), nn.ReLU(), nn.Dropout(d),
            nn.Linear(F_ // 4, config.num_classes))
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MHAProjections):
                nn.init.xavier_uniform_(module.in_proj_weight)
                if module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *,
                cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> torch.Tensor:
        """x: (B, T, F) features; lengths: None (all T frames valid) or (B,) valid frame counts.
        Returns logits (B, num_classes).

        Packed sequences (MSTR only): x (total, F), the N sequences concatenated, and
        cu_seqlens int32 (N+1,) their cumulative lengths from 0 (see
        `fractal_attention_varlen`; max_seqlen optional); returns logits (N, num_classes),
        equal to the padded model's on the same sequences."""
        if cu_seqlens is not None:
            return self._forward_packed(x, lengths, cu_seqlens, max_seqlen)
        if x.dim() != 3 or x.shape[-1] != self.config.feature_dim:
            raise ValueError(f"x must be (B, T, feature_dim={self.config.feature_dim}), "
                             f"got shape {tuple(x.shape)}")
        if lengths is not None:
            if lengths.shape != (x.shape[0],):
                raise ValueError(f"lengths must be (B,)=({x.shape[0]},), got shape "
                                 f"{tuple(lengths.shape)}")
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        h = self.input_norm(x)
        for block in self.blocks:
            h = block(h, lengths)
        return self.classifier(self.pool(h, lengths))

    def _forward_packed(self, x, lengths, cu_seqlens, max_seqlen):
        if self.config.attention != "fractal":
            raise ValueError("packed input (cu_seqlens) needs fractal attention (MSTR); "
                             "the full-attention baseline takes padded (B, T, F) batches")
        if lengths is not None:
            raise ValueError("packed input (cu_seqlens) has no padding: lengths must be None")
        if x.dim() != 2 or x.shape[-1] != self.config.feature_dim:
            raise ValueError(f"with cu_seqlens, x must be packed (total, feature_dim="
                             f"{self.config.feature_dim}), got shape {tuple(x.shape)}")
        h = self.input_norm(x)
        for block in self.blocks:
            h = block(h, None, cu_seqlens, max_seqlen)
        return self.classifier(self.pool_packed(h, cu_seqlens))

    @staticmethod
    def pool_packed(h: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """(total, F) -> (N, F): the mean over each sequence's frames (0 for an empty one), a
        segment reduction (index_add over each frame's sequence index), no loop over sequences."""
        n_seqs = cu_seqlens.shape[0] - 1
        rows = torch.arange(h.shape[0], device=h.device)
        seq = torch.searchsorted(cu_seqlens[1:].to(h.device), rows.to(cu_seqlens.dtype),
                                 right=True)
        summed = h.new_zeros((n_seqs, h.shape[1])).index_add(0, seq, h)
        counts = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device=h.device, dtype=h.dtype)
        return summed / counts.clamp(min=1)[:, None]

    @staticmethod
    def pool(h: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean over the valid frames (all frames when lengths is None)."""
        if lengths is None:
            return h.mean(dim=1)
        valid = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]
        summed = (h * valid[..., None].to(h.dtype)).sum(dim=1)
        return summed / lengths.clamp(min=1)[:, None].to(h.dtype)


class MSTR(SpeechTransformerClassifier):
    """Multi-scale temporal transformer: blocks use multi-scale fractal attention."""

    def __init__(self, config: MSTRConfig):
        if config.attention != "fractal":
            raise ValueError(f"MSTR needs config.attention='fractal', got {config.attention!r}; "
                             f"use VanillaTransformer for full attention")
        super().__init__(config)


class VanillaTransformer(SpeechTransformerClassifier):
    """The paper's baseline: the same network with full attention through SDPA."""

    def __init__(self, config: MSTRConfig):
        if config.attention != "full":
            config = MSTRConfig.from_dict({**config.to_dict(), "attention": "full"})
        super().__init__(config)


MODEL_NAMES = ("mstr", "vanilla")


def build_model(name: str, config: MSTRConfig) -> SpeechTransformerClassifier:
    """`name` 'mstr' or 'vanilla' (the baseline) from one config."""
    if name == "mstr":
        return MSTR(MSTRConfig.from_dict({**config.to_dict(), "attention": "fractal"}))
    if name == "vanilla":
        return VanillaTransformer(config)
    raise ValueError(f"model={name!r} must be one of {MODEL_NAMES}")


def model_name(model: SpeechTransformerClassifier) -> str:
    return "mstr" if model.config.attention == "fractal" else "vanilla"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
