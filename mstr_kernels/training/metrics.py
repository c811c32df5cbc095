"""WA, UA and WF1 (SPEC section 3) by scikit-learn, and mean/std over runs."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

METRICS = ("WA", "UA", "WF1")


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           num_classes: int) -> Dict[str, float]:
    """WA = accuracy; UA = mean recall over the classes present in y_true; WF1 = F1 weighted by
    support. Percentages."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D of one length, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    present = np.unique(y_true)
    return {
        "WA": 100.0 * accuracy_score(y_true, y_pred),
        "UA": 100.0 * recall_score(y_true, y_pred, labels=present, average="macro",
                                   zero_division=0),
        "WF1": 100.0 * f1_score(y_true, y_pred, labels=np.arange(num_classes),
                                average="weighted", zero_division=0),
    }


def summarize(runs: List[Dict[str, float]], keys=METRICS) -> Dict[str, Dict[str, float]]:
    """Mean and sample standard deviation (n-1; 0 for one run) of each metric over runs."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in runs], dtype=np.float64)
        out[key] = {"mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "n": len(values)}
    return out
