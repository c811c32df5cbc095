"""A plain folder of audio files (any names, any sub-folders), with labels from an optional CSV.

`labels.csv` in the folder (or the file given to `mstr extract --labels`) has a header with the
columns `file` (path relative to the folder) and `label`, and optionally `speaker` and `split`
(train / valid / test). Without a labels file every audio file is extracted unlabelled (the
features serve `mstr predict`-style use, not training). With one, only its rows are extracted
and the audio files it does not list are counted.

Training (`mstr train --dataset folder --features-dir OUT`): the `split` column where every row
has one, else a random split stratified by label as for CREMA-D (test_fraction 0.2, then
valid_fraction 0.1 of the rest, seed 0).
"""
from __future__ import annotations

import csv
import os
from typing import Optional

from ..base import DatasetBundle, Fold
from ..presets import PAPER_PRESETS
from ..registry import register_dataset
from .common import (CorpusLayoutError, FeatureDataset, Problem, ScanResult, Utterance,
                     list_dir, load_manifest, stratified_split)

NAME = "folder"
LABELS_NAME = "labels.csv"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".mkv",
                    ".webm", ".aif", ".aiff", ".au", ".w64", ".caf")
SPLITS = ("train", "valid", "test")


def _audio_files(root):
    """Relative paths of the audio files under root, sorted; hidden files and folders skipped."""
    found = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return found


def _utterance_id(relpath):
    """'a/b/c.wav' -> 'a__b__c' (the feature file's name: one level, no separators)."""
    return os.path.splitext(relpath)[0].replace(os.sep, "__").replace("/", "__")


def scan(root, labels: Optional[str] = None) -> ScanResult:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise CorpusLayoutError(f"root={root!r} is not a folder")
    files = _audio_files(root)
    if labels is None and os.path.isfile(os.path.join(root, LABELS_NAME)):
        labels = os.path.join(root, LABELS_NAME)
    if not files:
        raise CorpusLayoutError(f"root={root!r} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"
                                f" in it or its sub-folders; found {list_dir(root)}")
    result = ScanResult(utterances=[])
    seen = {}

    def add(relpath, label, speaker=None, split=None):
        utt_id = _utterance_id(relpath)
        if utt_id in seen:
            result.problems.append(Problem(relpath, f"same name without extension as "
                                                    f"{seen[utt_id]}: rename one of them"))
            return
        seen[utt_id] = relpath
        result.utterances.append(Utterance(id=utt_id, path=os.path.join(root, relpath),
                                           label=label, raw_label=label, split=split,
                                           speaker=speaker))

    if labels is None:
        for relpath in files:
            add(relpath, None)
        return result
    with open(labels, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        absent = [c for c in ("file", "label") if c not in columns]
        if absent:
            raise CorpusLayoutError(f"labels={labels!r}: columns {absent} are missing (found "
                                    f"{columns}); it needs a header with file,label "
                                    f"[,speaker][,split]")
        listed = set()
        for line, row in enumerate(reader, start=2):
            relpath = os.path.normpath((row["file"] or "").strip())
            label = (row["label"] or "").strip()
            split = (row.get("split") or "").strip() or None
            if not label:
                result.problems.append(Problem(f"{relpath} (line {line})", "empty label"))
                continue
            if split is not None and split not in SPLITS:
                result.problems.append(Problem(f"{relpath} (line {line})",
                                               f"split {split!r} is not one of {SPLITS}"))
                continue
            if not os.path.isfile(os.path.join(root, relpath)):
                result.problems.append(Problem(relpath, "file not found"))
                continue
            listed.add(relpath)
            add(relpath, label, (row.get("speaker") or "").strip() or None, split)
    unlisted = sum(1 for relpath in files if relpath not in listed)
    if unlisted:
        result.ignored["(audio files without a row in the labels file)"] = unlisted
    return result


@register_dataset(NAME)
def build(features_dir, test_fraction=0.2, valid_fraction=0.1, seed=0):
    """One fold: the labels file's `split` column where every utterance has one, else a random
    split stratified by label."""
    test_fraction, valid_fraction, seed = float(test_fraction), float(valid_fraction), int(seed)
    manifest = load_manifest(features_dir, NAME)
    entries = [e for e in manifest["utterances"] if e.get("label")]
    if not entries:
        raise ValueError(f"features_dir={os.fspath(features_dir)!r} holds no labelled "
                         f"utterances: extract with a labels CSV (columns file,label; "
                         f"`mstr extract --corpus folder --labels FILE`)")
    class_names = sorted({e["label"] for e in entries})
    if len(class_names) < 2:
        raise ValueError(f"features_dir={os.fspath(features_dir)!r}: training needs at least 2 "
                         f"labels, found {class_names}")
    if all(e.get("split") for e in entries):
        parts = {s: [i for i, e in enumerate(entries) if e["split"] == s] for s in SPLITS}
        if not parts["valid"]:
            parts["train"], parts["valid"] = stratified_split(
                parts["train"], [entries[i]["label"] for i in parts["train"]], valid_fraction,
                seed, "valid_fraction")
        empty = [s for s in SPLITS if not parts[s]]
        if empty:
            raise ValueError(f"features_dir={os.fspath(features_dir)!r}: the labels' split "
                             f"column has no utterances for {empty}")
        fold_name = "split-column"
    else:
        everything = list(range(len(entries)))
        rest, test = stratified_split(everything, [entries[i]["label"] for i in everything],
                                      test_fraction, seed, "test_fraction")
        train, held = stratified_split(rest, [entries[i]["label"] for i in rest],
                                       valid_fraction, seed, "valid_fraction")
        parts = {"train": train, "valid": held, "test": test}
        fold_name = f"random-seed{seed}"
    fold = Fold(name=fold_name, **{s: FeatureDataset(features_dir, [entries[i] for i in parts[s]],
                                                     class_names) for s in SPLITS})
    # CREMA-D's Table 1 settings (the paper's corpus closest in size): a start, not tuned here
    preset = {k: v for k, v in PAPER_PRESETS["cremad"].items() if k != "fixed_length"}
    return DatasetBundle(name=NAME, class_names=class_names,
                         feature_dim=int(manifest["extractor"]["feature_dim"]), folds=[fold],
                         extractor=manifest["extractor"], preset=preset)
