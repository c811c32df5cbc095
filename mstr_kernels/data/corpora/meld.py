"""MELD (`MELD.Raw/`): the official train / dev / test split, 7 emotions, dev for validation.

Labels are the `Emotion` column of `{train,dev,test}_sent_emo.csv`; each row's clip is
`dia{Dialogue_ID}_utt{Utterance_ID}.mp4` in the split's folder (some test clips carry a
`final_videos_test` prefix). Known defects (train dia125_utt3 corrupt, dev dia110_utt7 missing)
are reported by the scan or by the decoder and skipped.
"""
from __future__ import annotations

import csv
import os

from ..base import DatasetBundle, Fold
from ..registry import register_dataset
from ..presets import PAPER_PRESETS
from .common import (CorpusLayoutError, FeatureDataset, Problem, ScanResult, Utterance,
                     list_dir, load_manifest)

NAME = "meld"
CLASS_NAMES = ["neutral", "joy", "anger", "surprise", "sadness", "disgust", "fear"]
SPLITS = {  # split -> (label file, media folder)
    "train": ("train_sent_emo.csv", os.path.join("train", "train_splits")),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
MEDIA_PREFIXES = ("", "final_videos_test")
REQUIRED_COLUMNS = ("Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def scan(root) -> ScanResult:
    root = os.fspath(root)
    missing = [csv_name for csv_name, _ in SPLITS.values()
               if not os.path.isfile(os.path.join(root, csv_name))]
    if len(missing) == len(SPLITS):
        raise CorpusLayoutError(
            f"root={root!r} is not MELD.Raw: expected train_sent_emo.csv, dev_sent_emo.csv, "
            f"test_sent_emo.csv and the clip folders train/train_splits/, dev_splits_complete/, "
            f"output_repeated_splits_test/; found {list_dir(root)}")
    result = ScanResult(utterances=[])
    for split, (csv_name, media_dir) in SPLITS.items():
        csv_path = os.path.join(root, csv_name)
        media_path = os.path.join(root, media_dir)
        if not os.path.isfile(csv_path):
            result.problems.append(Problem(csv_name, f"file not found: the {split} split is "
                                                     f"left out"))
            continue
        if not os.path.isdir(media_path):
            raise CorpusLayoutError(f"root={root!r}: {csv_name} is there but its clip folder "
                                    f"{media_dir}/ is not; found {list_dir(root)}")
        # the csv files hold a few non-UTF-8 bytes in the Utterance text, which we do not use
        with open(csv_path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            absent = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise CorpusLayoutError(f"{csv_path}: columns {absent} are missing; found "
                                        f"{reader.fieldnames}")
            for row in reader:
                clip = f"dia{row['Dialogue_ID'].strip()}_utt{row['Utterance_ID'].strip()}"
                emotion = row["Emotion"].strip().lower()
                if emotion not in CLASS_NAMES:
                    result.problems.append(Problem(f"{csv_name} {clip}",
                                                   f"unknown emotion {row['Emotion']!r}"))
                    continue
                path = _find_clip(media_path, clip)
                if path is None:
                    result.problems.append(Problem(os.path.join(media_dir, clip + ".mp4"),
                                                   "file not found"))
                    continue
                result.utterances.append(Utterance(
                    id=f"{split}_{clip}", path=path, label=emotion, raw_label=emotion,
                    split=split, session=f"dia{row['Dialogue_ID'].strip()}",
                    speaker=row["Speaker"].strip()))
    return result


def _find_clip(media_path, clip):
    for prefix in MEDIA_PREFIXES:
        path = os.path.join(media_path, f"{prefix}{clip}.mp4")
        if os.path.isfile(path):
            return path
    return None


@register_dataset(NAME)
def build(features_dir):
    """One fold: the official train, dev (validation) and test."""
    manifest = load_manifest(features_dir, NAME)
    parts = {split: [e for e in manifest["utterances"] if e["split"] == split] for split in SPLITS}
    empty = [split for split, entries in parts.items() if not entries]
    if empty:
        raise ValueError(f"features_dir={features_dir!r} has no utterances of split(s) {empty}")
    fold = Fold(name="official",
                **{role: FeatureDataset(features_dir, parts[split], CLASS_NAMES)
                   for role, split in (("train", "train"), ("valid", "dev"), ("test", "test"))})
    return DatasetBundle(name=NAME, class_names=list(CLASS_NAMES),
                         feature_dim=int(manifest["extractor"]["feature_dim"]), folds=[fold],
                         extractor=manifest["extractor"], preset=dict(PAPER_PRESETS[NAME]))
