"""Datasets: the interface training consumes (`base`), the registry of datasets by name
(`registry`), the synthetic default and the paper's corpora. A new dataset is a module with a
builder decorated by `register_dataset("name")`, imported below."""
from .base import DatasetBundle, Fold
from .registry import DATASET_BUILDERS, build_dataset, dataset_names, register_dataset
from . import corpora, synthetic  # noqa: E402,F401  (the built-in datasets register on import)

__all__ = ["DATASET_BUILDERS", "DatasetBundle", "Fold", "build_dataset", "dataset_names",
           "register_dataset"]
