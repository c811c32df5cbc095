"""The built-in dataset: sequences whose label needs patterns at two time scales. No download.

Each sequence is Gaussian noise (T, F) plus two planted signals; the label is their product:
- short scale: 3-frame bursts of motif A or motif B (fixed random directions) at random places;
- long scale: a slow wave along a fixed direction, a sine whose period is about the sequence
  length, held over aligned 3-frame blocks ("slow"), or the same blocks in random order
  ("shuffled").
Both long-scale variants have the same frames, only their order differs, and each 3-frame
window of the grid is one constant block in both. So a model that sees the frames as a bag
(attention without positions, then a mean) or only 3-frame windows (MSTR with levels=1) cannot
tell them apart: only pooling over longer spans (levels >= 2) can. Chance is 25%; a model that
only finds the motif gets at most 50%.

Items are generated on access from (seed, split, index): deterministic, no memory held.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import DatasetBundle, Fold
from .registry import register_dataset

CLASS_NAMES = ["A-slow", "A-shuffled", "B-slow", "B-shuffled"]
SPLITS = {"train": 0, "valid": 1, "test": 2}
BLOCK = 3


class SyntheticSequences(Dataset):
    def __init__(self, size: int, split: str, seed: int = 0, feature_dim: int = 64,
                 min_len: int = 60, max_len: int = 180, motif_amplitude: float = 2.0,
                 wave_amplitude: float = 1.5):
        if size < 1:
            raise ValueError(f"size={size} must be >= 1")
        if feature_dim < 2:
            raise ValueError(f"feature_dim={feature_dim} must be >= 2")
        if not BLOCK * 3 <= min_len <= max_len:
            raise ValueError(f"min_len={min_len}, max_len={max_len}: need "
                             f"{BLOCK * 3} <= min_len <= max_len")
        self.size, self.split, self.seed, self.feature_dim = size, split, seed, feature_dim
        self.motif_amplitude, self.wave_amplitude = motif_amplitude, wave_amplitude
        # fixed across splits: the motif and wave directions (unit vectors, mutually orthogonal)
        basis = np.linalg.qr(np.random.default_rng([seed, 99]).standard_normal(
            (feature_dim, 3)))[0].T
        self.motifs, self.wave_direction = basis[:2], basis[2]
        rng = np.random.default_rng([seed, SPLITS[split], 0])
        self.lengths = rng.integers(min_len, max_len + 1, size=size).tolist()
        self.labels = rng.integers(0, len(CLASS_NAMES), size=size).tolist()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(f"index={index} out of range [0, {self.size})")
        T, label = self.lengths[index], self.labels[index]
        motif, shuffled = divmod(label, 2)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], 1, index])
        x = rng.standard_normal((T, self.feature_dim))
        for start in rng.choice(T - BLOCK + 1, size=rng.integers(2, 5), replace=False):
            x[start:start + BLOCK] += self.motif_amplitude * self.motifs[motif]
        blocks = -(-T // BLOCK)
        period = rng.uniform(0.8, 1.5) * T
        centres = (np.arange(blocks) + 0.5) * BLOCK
        wave = np.sin(2 * np.pi * centres / period + rng.uniform(0, 2 * np.pi))
        if shuffled:
            wave = rng.permutation(wave)
        x += self.wave_amplitude * np.repeat(wave, BLOCK)[:T, None] * self.wave_direction
        return torch.from_numpy(x.astype(np.float32)), label


@register_dataset("synthetic")
def build_synthetic(features_dir: Optional[str] = None, *, seed: int = 0, num_train: int = 1000,
                    num_valid: int = 250, num_test: int = 250, feature_dim: int = 64,
                    min_len: int = 60, max_len: int = 180) -> DatasetBundle:
    if features_dir is not None:
        raise ValueError(f"features_dir={features_dir!r}: the synthetic dataset is generated, "
                         f"it reads no features; leave it unset")
    common = dict(seed=seed, feature_dim=feature_dim, min_len=min_len, max_len=max_len)
    fold = Fold("synthetic", SyntheticSequences(num_train, "train", **common),
                SyntheticSequences(num_valid, "valid", **common),
                SyntheticSequences(num_test, "test", **common))
    return DatasetBundle(
        name="synthetic", class_names=list(CLASS_NAMES), feature_dim=feature_dim, folds=[fold],
        extractor=None,
        preset={"epochs": 10, "lr": 1e-3, "batch_size": 32, "fixed_length": max_len,
                "select_metric": "UA",
                # a small model so that a 2-core CPU trains it in minutes
                "model": {"num_layers": 3, "num_heads": 4, "dropout": 0.1,
                          "classifier_dropout": 0.1}})
