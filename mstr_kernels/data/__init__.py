"""Datasets: the interface training consumes, the synthetic default and the paper's corpora."""
from .base import DATASET_BUILDERS, DatasetBundle, Fold, build_dataset, register_dataset

__all__ = ["DATASET_BUILDERS", "DatasetBundle", "Fold", "build_dataset", "register_dataset"]
