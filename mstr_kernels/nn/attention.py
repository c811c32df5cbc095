"""`MultiScaleAttention`: a drop-in for `nn.MultiheadAttention(batch_first=True)` self-attention
that runs the fused fractal attention op.

Its parameters are named as `nn.MultiheadAttention` names them (`in_proj_weight` (3E, E),
`in_proj_bias` (3E,), `out_proj.weight`, `out_proj.bias`), so state dicts load both ways.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import fractal_attention, fractal_attention_varlen, require_all


def check_attention_args(*, p, levels, backend, scale=None) -> None:
    """The op's own checks of p, levels, scale and the backend name, at construction time
    (the module and the model config would otherwise fail only at the first forward)."""
    from ..ops import validation
    from ..ops.backends import get_backend
    validation.check_params(p, levels)
    validation.check_scale(scale)
    if backend != "auto":
        get_backend(backend)  # raises naming the allowed backends


def check_heads(embed_dim, num_heads, *, embed_name="embed_dim") -> None:
    """embed_dim and num_heads positive ints, embed_dim divisible by num_heads, and the head dim
    in the op's range."""
    from ..ops import validation
    for name, value in ((embed_name, embed_dim), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    if embed_dim % num_heads != 0:
        raise ValueError(f"{embed_name}={embed_dim} must be divisible by num_heads={num_heads}")
    lo, hi = validation.D_RANGE
    head_dim = embed_dim // num_heads
    if not lo <= head_dim <= hi:
        raise ValueError(f"head dim {embed_name}/num_heads = {embed_dim}/{num_heads} = {head_dim} "
                         f"is out of range: {lo} <= {embed_name}/num_heads <= {hi}")


def padding_from_float_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """An additive float key_padding_mask as nn.MultiheadAttention takes it (0 keeps a frame,
    -inf pads it) -> the boolean mask, True = padding. Other values (a finite penalty such as
    -1e9 still lets the frame through a little) are refused."""
    padding = key_padding_mask == float("-inf")
    # like the hole check below: no host read on a GPU, the same refusal eagerly and compiled
    return require_all(padding, (key_padding_mask == 0) | padding,
                       f"key_padding_mask of dtype {key_padding_mask.dtype} (additive) must hold "
                       f"only 0 (keep) and -inf (pad): fractal attention takes padding, not "
                       f"score offsets")


def lengths_from_key_padding_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask, padding only at the end -> (B,) int64 lengths. Boolean: True = padding;
    float (additive, as nn.MultiheadAttention takes it): 0 keeps, -inf pads."""
    if key_padding_mask.is_floating_point():
        key_padding_mask = padding_from_float_mask(key_padding_mask)
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask.dtype={key_padding_mask.dtype} must be torch.bool "
                        f"(True marks padding) or a float dtype (0 keeps, -inf pads)")
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


class MHAProjections(nn.Module):
    """The parameters of `nn.MultiheadAttention` self-attention: `in_proj_weight` (3E, E) and
    `in_proj_bias` (3E,) (rows q, k, v), `out_proj` Linear(E, E); Xavier-uniform weights and
    zero biases as nn.MultiheadAttention initialises them.

    Earlier mstr-kernels state dicts (and checkpoints) named the fused projection
    `in_proj.weight` / `in_proj.bias` (an nn.Linear): they still load."""

    _OLD_NAMES = (("in_proj.weight", "in_proj_weight"), ("in_proj.bias", "in_proj_bias"))

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__()
        check_heads(embed_dim, num_heads)
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def in_proj(self, x: torch.Tensor) -> torch.Tensor:
        """The fused QKV projection: (..., E) -> (..., 3E), q, k, v in that order."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for old, new in self._OLD_NAMES:
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if strict:
            for key, why in (("q_proj_weight", "kdim/vdim different from embed_dim"),
                             ("bias_k", "add_bias_kv=True")):
                if prefix + key in state_dict:
                    error_msgs.append(
                        f"{prefix + key} is in the state dict: it comes from an "
                        f"nn.MultiheadAttention with {why}, which {type(self).__name__} "
                        f"(self-attention, one fused projection) cannot load")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class MultiScaleAttention(MHAProjections):
    """Self-attention by multi-scale fractal attention (SPEC section 3).

    One fused QKV projection; the op reads q, k, v as strided views of its output (no copies);
    its output, laid out as (B, T, H, D), flattens to (B, T, E) for free before `out_proj`.
    Loads `nn.MultiheadAttention` state dicts and gives ones that it loads; `from_mha` converts
    a module. Padding as `lengths` (B,) or `key_padding_mask` (B, T): boolean (True pads) or
    float (additive, as nn.MultiheadAttention takes it: 0 keeps, -inf pads), padding only at the
    end of each sequence.
    """

    def __init__(self, embed_dim: int, num_heads: int, p: int = 3, levels: int = 4,
                 bias: bool = True, scale: Optional[float] = None, backend: str = "auto",
                 batch_first: bool = True, device=None, dtype=None):
        if not batch_first:
            raise ValueError("batch_first=False is not supported: inputs are (B, T, E)")
        check_attention_args(p=p, levels=levels, backend=backend, scale=scale)
        super().__init__(embed_dim, num_heads, bias=bias, device=device, dtype=dtype)
        self.p, self.levels, self.scale, self.backend = p, levels, scale, backend
        self.batch_first = True

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention, *, p: int = 3, levels: int = 4,
                 scale: Optional[float] = None, backend: str = "auto") -> "MultiScaleAttention":
        """A MultiScaleAttention with the weights of `mha` (copied, on its device and dtype).
        `mha` must be batch_first self-attention as this module computes it: one fused
        projection (kdim = vdim = embed_dim), no bias_k/bias_v, no add_zero_attn, dropout 0."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
        refusals = []
        if mha.kdim != mha.embed_dim or mha.vdim != mha.embed_dim:
            refusals.append(f"kdim={mha.kdim}, vdim={mha.vdim} differ from "
                            f"embed_dim={mha.embed_dim} (cross-attention)")
        if mha.bias_k is not None or mha.bias_v is not None:
            refusals.append("add_bias_kv=True (bias_k, bias_v are extra keys)")
        if mha.add_zero_attn:
            refusals.append("add_zero_attn=True (an extra zero key)")
        if not mha.batch_first:
            refusals.append("batch_first=False (MultiScaleAttention takes (B, T, E))")
        if mha.dropout != 0.0:
            refusals.append(f"dropout={mha.dropout} (fractal attention has no attention-weight "
                            f"dropout; set mha.dropout = 0.0 to convert without it)")
        if refusals:
            raise ValueError("MultiScaleAttention.from_mha cannot convert this "
                             "nn.MultiheadAttention: " + "; ".join(refusals))
        weight = mha.in_proj_weight
        module = cls(mha.embed_dim, mha.num_heads, p=p, levels=levels,
                     bias=mha.in_proj_bias is not None, scale=scale, backend=backend,
                     device=weight.device, dtype=weight.dtype)
        module.load_state_dict(mha.state_dict())
        return module.train(mha.training)

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
