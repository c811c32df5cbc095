"""What the three corpus modules share: the utterance record a scan produces, the report of
missing and corrupt files, the lazily loaded feature dataset and the split helpers."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

MANIFEST_NAME = "manifest.json"
FEATURES_SUBDIR = "features"


@dataclass
class Utterance:
    id: str            # unique in the corpus; also the feature file's name
    path: str          # audio file
    label: str         # class name of the task (after merges)
    raw_label: str     # the corpus's own code (e.g. IEMOCAP "exc")
    split: Optional[str] = None    # official split where the corpus has one (MELD)
    session: Optional[str] = None  # IEMOCAP session, MELD dialogue
    speaker: Optional[str] = None

    def metadata(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "path"}


@dataclass
class Problem:
    name: str    # the file or utterance concerned
    reason: str


@dataclass
class ScanResult:
    utterances: List[Utterance]
    problems: List[Problem] = field(default_factory=list)
    ignored: Dict[str, int] = field(default_factory=dict)  # labels outside the task -> count


class CorpusLayoutError(ValueError):
    """The root folder does not look like the corpus: says what was expected there."""


def report_problems(problems: Sequence[Problem], what: str, stream=None) -> None:
    """Print each problem by name, then the count, so nothing is skipped silently."""
    import sys
    stream = stream or sys.stderr
    for p in problems:
        print(f"  skipped {p.name}: {p.reason}", file=stream)
    if problems:
        print(f"{len(problems)} {what} skipped", file=stream)


def list_dir(path) -> str:
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return f"(cannot list: {e.strerror})"
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"[{shown}]" if names else "(empty)"


# ---- reading extracted features ---------------------------------------------------------------

def load_manifest(features_dir, corpus: str) -> dict:
    if features_dir is None:
        raise ValueError(f"dataset={corpus!r} needs features_dir: the --out folder of "
                         f"`mstr extract --corpus {corpus}`")
    path = os.path.join(os.fspath(features_dir), MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"features_dir={os.fspath(features_dir)!r} has no {MANIFEST_NAME}: "
                                f"run `mstr extract --corpus {corpus} --root CORPUS_DIR --out "
                                f"{os.fspath(features_dir)} ...` first")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("corpus") != corpus:
        raise ValueError(f"features_dir={os.fspath(features_dir)!r} holds features of corpus "
                         f"{manifest.get('corpus')!r}, not {corpus!r}")
    if not manifest.get("utterances"):
        raise ValueError(f"features_dir={os.fspath(features_dir)!r}: its manifest lists no "
                         f"utterances")
    return manifest


class FeatureDataset(Dataset):
    """(features (T, F) float32 tensor, label index) per utterance, read from its file on access."""

    def __init__(self, features_dir, entries: Sequence[dict], class_names: Sequence[str]):
        self.features_dir = os.fspath(features_dir)
        self.entries = list(entries)
        index = {name: i for i, name in enumerate(class_names)}
        self.labels = [index[e["label"]] for e in self.entries]
        self.lengths = [int(e["length"]) for e in self.entries]  # frames; for length bucketing
        self.ids = [e["id"] for e in self.entries]

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        from safetensors.torch import load_file
        tensors = load_file(os.path.join(self.features_dir, self.entries[i]["file"]))
        return tensors["features"].float(), self.labels[i]


# ---- splits -------------------------------------------------------------------------------------

def stratified_split(indices: Sequence[int], labels: Sequence[str], fraction: float, seed: int,
                     what: str):
    """Split `indices` into (kept, held_out) with `fraction` of each label held out."""
    from sklearn.model_selection import train_test_split
    check_fraction(fraction, what)
    try:
        kept, held = train_test_split(list(indices), test_size=fraction, random_state=seed,
                                      stratify=list(labels))
    except ValueError as e:  # too few utterances of a class for the fraction
        raise ValueError(f"{what}={fraction}: cannot split {len(indices)} utterances stratified "
                         f"by label ({e})") from e
    return sorted(kept), sorted(held)


def group_split(indices: Sequence[int], groups: Sequence[str], fraction: float, seed: int,
                what: str):
    """Split `indices` into (kept, held_out) by whole groups (speakers): no group on both sides."""
    from sklearn.model_selection import GroupShuffleSplit
    check_fraction(fraction, what)
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(f"{what}={fraction}: a split by speaker needs at least 2 speakers, "
                         f"found {n_groups}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(np.zeros(len(indices)), groups=list(groups)))
    indices = np.asarray(indices)
    return sorted(indices[kept].tolist()), sorted(indices[held].tolist())


def check_fraction(fraction, what):
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{what}={fraction} is out of range: must be in (0, 1)")


def option_choice(value, name, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: choose one of {list(allowed)}")
    return value
