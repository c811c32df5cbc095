"""The dataset registry: dataset name -> builder, and `build_dataset`, which `mstr train` and
`mstr evaluate` call by name.

A dataset registers itself where it is defined (`@register_dataset("name")` on its builder, as
`synthetic.py` and `corpora/*.py` do); `mstr_kernels/data/__init__.py` imports those modules once.
Imports run one way only: the datasets import this module and `base`, never the reverse.

A builder is `builder(features_dir: Optional[str], **options) -> DatasetBundle`; its keyword
parameters are the dataset's options (`--dataset-option KEY=VALUE`).
"""
from __future__ import annotations

import inspect
import os
from typing import Callable, Dict, List, Optional

from .base import DatasetBundle

DATASET_BUILDERS: Dict[str, Callable[..., DatasetBundle]] = {}


def register_dataset(name: str):
    """Decorator: `builder` becomes the dataset `name`."""
    def wrap(builder):
        existing = DATASET_BUILDERS.get(name)
        if existing is not None and existing is not builder:
            raise ValueError(f"dataset name {name!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        DATASET_BUILDERS[name] = builder
        return builder
    return wrap


def dataset_names() -> List[str]:
    return sorted(DATASET_BUILDERS)


def dataset_options(name: str) -> Optional[List[str]]:
    """The option names the builder of `name` takes (its keyword parameters after
    features_dir); None when it takes any (**options)."""
    params = list(inspect.signature(DATASET_BUILDERS[name]).parameters.values())[1:]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


def build_dataset(name: str, features_dir: Optional[str] = None, **options) -> DatasetBundle:
    if name not in DATASET_BUILDERS:
        raise ValueError(f"dataset={name!r} is unknown: allowed are {dataset_names()}")
    builder = DATASET_BUILDERS[name]
    allowed = dataset_options(name)
    unknown = {k: v for k, v in options.items() if allowed is not None and k not in allowed}
    if unknown:
        raise ValueError(f"dataset {name!r} has no option(s) {unknown}: allowed are {allowed}")
    bundle = builder(features_dir, **options)
    bundle.options = dict(options)
    bundle.features_dir = os.path.abspath(features_dir) if features_dir else None
    return bundle
