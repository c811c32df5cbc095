"""The dataset interface that training consumes and every corpus plugs into.

A corpus is a `DatasetBundle`: class names, feature size, and one or more `Fold`s, each with
train / valid / test parts. Model selection reads `valid` only, never `test` (SPEC section 3).
Each part is a torch `Dataset` of `(features (T, F) float tensor, label int)`. A part should also
have a `lengths` attribute (frame count of each item): length-bucketed batching reads it instead
of loading every item.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

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


# name -> builder(features_dir: Optional[str], **options) -> DatasetBundle
DATASET_BUILDERS: Dict[str, Callable[..., DatasetBundle]] = {}


def register_dataset(name: str):
    def wrap(builder):
        DATASET_BUILDERS[name] = builder
        return builder
    return wrap


def build_dataset(name: str, features_dir: Optional[str] = None, **options) -> DatasetBundle:
    _import_builtin_datasets()
    if name not in DATASET_BUILDERS:
        raise ValueError(f"dataset={name!r} is unknown: allowed are {sorted(DATASET_BUILDERS)}")
    builder = DATASET_BUILDERS[name]
    params = list(inspect.signature(builder).parameters.values())[1:]  # after features_dir
    allowed = [p.name for p in params if p.kind != p.VAR_KEYWORD]
    unknown = {k: v for k, v in options.items() if k not in allowed}
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params):
        raise ValueError(f"dataset {name!r} has no option(s) {unknown}: allowed are {allowed}")
    bundle = builder(features_dir, **options)
    bundle.options = dict(options)
    bundle.features_dir = os.path.abspath(features_dir) if features_dir else None
    return bundle


def _import_builtin_datasets():
    """The built-in datasets register themselves on import (here, not at the top: they import
    this module)."""
    from . import corpora, synthetic  # noqa: F401
