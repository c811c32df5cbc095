"""`mstr flops` reproduces the paper's Table 2 from the model objects (SPEC section 3)."""
import json

import pytest
import torch

from mstr_kernels.cli import main
from mstr_kernels.models import (MSTR, MSTRConfig, VanillaTransformer, attention_macs,
                                 count_params, linear_macs_per_frame, table2)

# Table 2 of the paper, typed in from reference/mstr_paper.txt: (dataset, T, model, FLOPs)
PAPER = [("iemocap", 326, "vanilla", 892.2e6), ("iemocap", 326, "mstr", 33.5e6),
         ("meld", 224, "vanilla", 432.7e6), ("meld", 224, "mstr", 29.8e6),
         ("crema-d", 150, "vanilla", 205.9e6), ("crema-d", 150, "mstr", 27.16e6)]


def test_json_reproduces_table2_within_half_percent(capsys):
    assert main(["flops", "--json"]) == 0
    records = {(r["dataset"], r["model"]): r for r in json.loads(capsys.readouterr().out)}
    assert len(records) == 6
    for dataset, T, model, flops in PAPER:
        r = records[(dataset, model)]
        assert r["T"] == T
        assert abs(r["flops"] - flops) / flops < 0.005, (dataset, model, r["flops"])
        assert round(r["params"] / 1e6, 2) == 21.67


def test_table_prints_every_row(capsys):
    assert main(["flops"]) == 0
    out = capsys.readouterr().out
    for dataset, _, model, _ in PAPER:
        assert any(line.startswith(dataset) and f" {model} " in line for line in out.splitlines())


def test_counts_follow_the_convention():
    F, layers, T = 1024, 4, 326
    with torch.device("meta"):
        mstr = MSTR(MSTRConfig(feature_dim=F, num_classes=4))
        vanilla = VanillaTransformer(MSTRConfig(feature_dim=F, num_classes=4))
    assert attention_macs(vanilla, T) == 2 * T * T * F * layers
    assert attention_macs(mstr, T) == pytest.approx(
        sum(2 * (T / 3 ** (l - 1)) * 3 * F * layers for l in range(1, 5)), rel=1e-12)
    # Linear MACs for one frame = the Linear weights = all parameters minus biases and LNs
    biases_and_norms = sum(p.numel() for n, p in mstr.named_parameters()
                           if n.endswith("bias") or "norm" in n)
    assert linear_macs_per_frame(mstr) == count_params(mstr) - biases_and_norms


def test_table_follows_model_config():
    small = {(r.dataset, r.model): r for r in table2(feature_dim=256, num_heads=4, levels=2)}
    big = {(r.dataset, r.model): r for r in table2()}
    assert small[("iemocap", "mstr")].flops < big[("iemocap", "mstr")].flops
    assert small[("iemocap", "vanilla")].attention_macs * 4 == big[("iemocap", "vanilla")].attention_macs
