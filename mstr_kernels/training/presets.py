"""The paper's training presets (Table 1 and section 3.2), by dataset name.

A dataset's own `bundle.preset` entries take precedence over these; command-line flags over both.
Keys: epochs, lr, batch_size, fixed_length (the paper's pad/cut length, used by
`--fixed-length paper`), select_metric (validation metric for model selection), model
(MSTRConfig overrides, e.g. a small model for the synthetic data).
"""
from __future__ import annotations

from typing import Dict

# Adam, cross-entropy, batch 32, 4 blocks, 16 heads, p=3, levels=4 for all three (section 3.2);
# the selection metric is the paper's evaluation metric of Table 1 (UA where it reports WA & UA).
PAPER_PRESETS: Dict[str, dict] = {
    "iemocap": {"epochs": 150, "lr": 1e-4, "batch_size": 32, "fixed_length": 326,
                "select_metric": "UA"},
    "meld": {"epochs": 150, "lr": 5e-6, "batch_size": 32, "fixed_length": 224,
             "select_metric": "WF1"},
    "crema-d": {"epochs": 100, "lr": 5e-5, "batch_size": 32, "fixed_length": 150,
                "select_metric": "UA"},
}


def resolve_preset(bundle) -> dict:
    return {**PAPER_PRESETS.get(bundle.name.lower(), {}), **(bundle.preset or {})}
