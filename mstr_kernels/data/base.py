"""The dataset interface that training consumes and every corpus plugs into (registered by
name in `registry.py`).

A corpus is a `DatasetBundle`: class names, feature size, and one or more `Fold`s, each with
train / valid / test parts. Model selection reads `valid` only, never `test` (SPEC section 3).
Each part is a torch `Dataset` of `(features (T, F) float tensor, label int)`. A part should also
have a `lengths` attribute (frame count of each item): length-bucketed batching reads it instead
of loading every item.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from torch.utils.data import Dataset


@dataclass
class Fold:
    name: str
    train: Dataset
    valid: Dataset
    test: Dataset


@dataclass
class DatasetBundle:
    name: str
    class_names: List[str]
    feature_dim: int
    folds: List[Fold]
    # Extractor settings the features were made with (model, layer, sample rate), saved into
    # checkpoints so that `mstr predict` rebuilds the same features; None for synthetic data.
    extractor: Optional[dict] = None
    # Defaults of the dataset's protocol (the corpora's come from data/presets.py), under flags:
    # epochs, lr, batch_size, fixed_length, select_metric ("WA"|"UA"|"WF1"), model (dict of
    # MSTRConfig overrides).
    preset: Dict[str, object] = field(default_factory=dict)
    # The options build_dataset was given, saved into checkpoints so that `mstr evaluate`
    # rebuilds the same data (e.g. the smaller synthetic set of `mstr train --quick`).
    options: Dict[str, object] = field(default_factory=dict)
    # The features folder it was read from (absolute; None for built-in data), saved into
    # checkpoints so that `mstr evaluate` finds it without --features-dir.
    features_dir: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
