"""IEMOCAP (`IEMOCAP_full_release/`): the 4-class task, 5-fold leave-one-session-out.

Labels come from `Session{s}/dialog/EmoEvaluation/<dialog>.txt` (only the .txt files directly in
that folder; its Attribute/, Categorical/, Self-evaluation/ sub-folders hold per-annotator data).
A label line is `[start - end]<TAB>utterance id<TAB>code<TAB>[v, a, d]`; the annotator lines that
follow it (`C-E2:`, `A-E3:`) are not labels. Excited is merged into happy (5,531 utterances).
"""
from __future__ import annotations

import os
import re

from ..base import DatasetBundle, Fold
from ..registry import register_dataset
from ..presets import PAPER_PRESETS
from .common import (CorpusLayoutError, FeatureDataset, Problem, ScanResult, Utterance,
                     list_dir, load_manifest, option_choice, stratified_split)

NAME = "iemocap"
CLASS_NAMES = ["angry", "happy", "neutral", "sad"]
LABEL_MAP = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}
SESSIONS = (1, 2, 3, 4, 5)
FULL_CORPUS_UTTERANCES = 5531  # labelled utterances of the 4-class task in the full release

_LABEL_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\t(\S+)\t(\S+)\t")


def parse_label_file(path):
    """Yield (utterance id, code) for each label line of an EmoEvaluation .txt file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _LABEL_LINE.match(line)
            if match:  # header, blank and annotator lines do not match
                yield match.group(3), match.group(4)


def scan(root) -> ScanResult:
    root = os.fspath(root)
    present = [s for s in SESSIONS
               if os.path.isdir(os.path.join(root, f"Session{s}", "dialog", "EmoEvaluation"))]
    if not present:
        raise CorpusLayoutError(
            f"root={root!r} is not IEMOCAP_full_release: expected Session1/ .. Session5/, each "
            f"with dialog/EmoEvaluation/<dialog>.txt and sentences/wav/<dialog>/<utt>.wav; "
            f"found {list_dir(root)}")
    result = ScanResult(utterances=[])
    for s in SESSIONS:
        if s not in present:
            result.problems.append(Problem(f"Session{s}", "folder or its dialog/EmoEvaluation "
                                           "is missing: the fold testing it is left out"))
    for s in present:
        eval_dir = os.path.join(root, f"Session{s}", "dialog", "EmoEvaluation")
        wav_dir = os.path.join(root, f"Session{s}", "sentences", "wav")
        for name in sorted(os.listdir(eval_dir)):
            label_path = os.path.join(eval_dir, name)
            # AppleDouble "._x.txt" files and sub-folders are not label files
            if not name.endswith(".txt") or name.startswith(".") or not os.path.isfile(label_path):
                continue
            for utt_id, code in parse_label_file(label_path):
                if code not in LABEL_MAP:
                    result.ignored[code] = result.ignored.get(code, 0) + 1
                    continue
                dialog = utt_id[:-5]
                wav = os.path.join(wav_dir, dialog, utt_id + ".wav")
                if not os.path.isfile(wav):
                    result.problems.append(Problem(os.path.relpath(wav, root), "file not found"))
                    continue
                result.utterances.append(Utterance(
                    id=utt_id, path=wav, label=LABEL_MAP[code], raw_label=code,
                    session=utt_id[4], speaker=utt_id[:5] + utt_id[-4]))
    return result


@register_dataset(NAME)
def build(features_dir, valid="random", valid_fraction=0.1, seed=0, sessions=None):
    """Five folds, fold f tests Session f.

    valid: "random" holds out `valid_fraction` of the training sessions' utterances, stratified by
    label (seeded); "session" holds out one whole training session (the next one, cyclically).
    Either way the test session is never in train or valid. sessions: test sessions to build
    folds for (e.g. "1,2" or [1]); default all present.
    """
    option_choice(valid, "valid", ("random", "session"))
    valid_fraction, seed = float(valid_fraction), int(seed)
    manifest = load_manifest(features_dir, NAME)
    entries = manifest["utterances"]
    present = sorted({e["session"] for e in entries})
    if len(present) < 2:
        raise ValueError(f"features_dir={features_dir!r} holds sessions {present}: "
                         f"leave-one-session-out needs at least 2")
    wanted = present if sessions is None else _parse_sessions(sessions, present)
    folds = []
    for test_session in wanted:
        test = [i for i, e in enumerate(entries) if e["session"] == test_session]
        rest = [i for i, e in enumerate(entries) if e["session"] != test_session]
        if valid == "session":
            others = [s for s in present if s != test_session]
            valid_session = next((s for s in others if s > test_session), others[0])
            train = [i for i in rest if entries[i]["session"] != valid_session]
            held = [i for i in rest if entries[i]["session"] == valid_session]
        else:
            train, held = stratified_split(rest, [entries[i]["label"] for i in rest],
                                           valid_fraction, seed, "valid_fraction")
        folds.append(Fold(
            name=f"session{test_session}",
            train=FeatureDataset(features_dir, [entries[i] for i in train], CLASS_NAMES),
            valid=FeatureDataset(features_dir, [entries[i] for i in held], CLASS_NAMES),
            test=FeatureDataset(features_dir, [entries[i] for i in test], CLASS_NAMES)))
    return DatasetBundle(name=NAME, class_names=list(CLASS_NAMES),
                         feature_dim=int(manifest["extractor"]["feature_dim"]), folds=folds,
                         extractor=manifest["extractor"], preset=dict(PAPER_PRESETS[NAME]))


def _parse_sessions(sessions, present):
    if isinstance(sessions, (str, int)):
        sessions = str(sessions).split(",")
    wanted = [str(s).strip() for s in sessions]
    for s in wanted:
        if s not in present:
            raise ValueError(f"sessions={s!r} is not available: the features hold sessions "
                             f"{present}")
    return wanted
