"""Params and FLOPs of the paper's Table 2, counted from the model objects (SPEC section 3).

The paper's convention (ViT-style counting), reproduced: the multiply-accumulates of `QK^T` and
`AV` over all T frames and all layers, plus the multiply-accumulates of every Linear layer for
ONE frame (its weight count). Pooling, upsampling, softmax, norms and biases are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from ..nn import MHAProjections, MultiScaleAttention
from .transformer import MSTRConfig, FullSelfAttention, build_model, count_params

# Table 2 of the paper: sequence length T, classes, and the printed Params / FLOPs.
# These are the figures our counts are compared with, not inputs to them.
PAPER_TABLE2 = {
    "iemocap": {"T": 326, "num_classes": 4,
                "vanilla": {"params": 27.0e6, "flops": 892.2e6},
                "mstr": {"params": 27.0e6, "flops": 33.5e6}},
    "meld": {"T": 224, "num_classes": 7,
             "vanilla": {"params": 25.3e6, "flops": 432.7e6},
             "mstr": {"params": 25.3e6, "flops": 29.8e6}},
    "crema-d": {"T": 150, "num_classes": 6,
                "vanilla": {"params": 24.1e6, "flops": 205.9e6},
                "mstr": {"params": 24.1e6, "flops": 27.16e6}},
}


def linear_macs_per_frame(model: nn.Module) -> int:
    """Multiply-accumulates of every Linear layer applied to one frame: its weight count (the
    attention's fused QKV projection, `in_proj_weight` as nn.MultiheadAttention holds it, is one
    such layer)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)) + \
        sum(m.in_proj_weight.numel() for m in model.modules() if isinstance(m, MHAProjections))


def attention_macs(model: nn.Module, T: int) -> float:
    """MACs of `QK^T` and `AV` over T frames, summed over every attention layer of the model.

    Full attention: 2*T*T*E per layer. Fractal attention: at level l the T/p**(l-1) pooled frames
    each attend to a window of p, so 2*(T/p**(l-1))*p*E per level (the paper's formula, with
    T/S unrounded as the paper counts it).
    """
    total = 0.0
    for m in model.modules():
        if isinstance(m, FullSelfAttention):
            total += 2.0 * T * T * m.embed_dim
        elif isinstance(m, MultiScaleAttention):
            total += sum(2.0 * (T / m.p ** (level - 1)) * m.p * m.embed_dim
                         for level in range(1, m.levels + 1))
    return total


@dataclass
class FlopsRecord:
    dataset: str
    model: str
    T: int
    params: int
    attention_macs: float
    linear_macs: int
    flops: float
    paper_params: float
    paper_flops: float

    @property
    def flops_rel_diff(self) -> float:
        return (self.flops - self.paper_flops) / self.paper_flops

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "T": self.T, "params": self.params,
                "flops": self.flops, "attention_macs": self.attention_macs,
                "linear_macs": self.linear_macs, "paper_params": self.paper_params,
                "paper_flops": self.paper_flops, "flops_rel_diff": self.flops_rel_diff}


def model_flops(model: nn.Module, T: int) -> Dict[str, float]:
    attn, linear = attention_macs(model, T), linear_macs_per_frame(model)
    return {"params": count_params(model), "attention_macs": attn, "linear_macs": linear,
            "flops": attn + linear}


def table2(feature_dim: int = 1024, num_layers: int = 4, num_heads: int = 16, p: int = 3,
           levels: int = 4) -> List[FlopsRecord]:
    """One record per dataset and model (baseline, MSTR) of the paper's Table 2, counted from
    models built on the meta device (no memory, no init cost)."""
    records = []
    for dataset, row in PAPER_TABLE2.items():
        config = MSTRConfig(feature_dim=feature_dim, num_classes=row["num_classes"],
                            num_layers=num_layers, num_heads=num_heads, p=p, levels=levels)
        for name in ("vanilla", "mstr"):
            with torch.device("meta"):
                model = build_model(name, config)
            counts = model_flops(model, row["T"])
            records.append(FlopsRecord(dataset=dataset, model=name, T=row["T"],
                                       params=counts["params"],
                                       attention_macs=counts["attention_macs"],
                                       linear_macs=counts["linear_macs"], flops=counts["flops"],
                                       paper_params=row[name]["params"],
                                       paper_flops=row[name]["flops"]))
    return records
