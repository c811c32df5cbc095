"""CREMA-D (`AudioWAV/`): 6 emotions; the paper's stratified random 80/20 split (seeded), or a
speaker-independent split by actor. Validation is carved from the training part the same way.

Clips are `{ActorID}_{Sentence}_{Emotion}_{Level}.wav`; a name that does not parse is reported
and skipped, as is a clip without audio (`1076_MTI_SAD_XX.wav`), found by the decoder.
"""
from __future__ import annotations

import os
import re

from ..base import DatasetBundle, Fold
from ..registry import register_dataset
from ..presets import PAPER_PRESETS
from .common import (CorpusLayoutError, FeatureDataset, Problem, ScanResult, Utterance,
                     group_split, list_dir, load_manifest, option_choice, stratified_split)

NAME = "cremad"
CLASS_NAMES = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
LABEL_MAP = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral",
             "SAD": "sad"}
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
FULL_CORPUS_UTTERANCES = 7442

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


def scan(root) -> ScanResult:
    root = os.fspath(root)
    audio_dir = os.path.join(root, "AudioWAV") if os.path.isdir(os.path.join(root, "AudioWAV")) \
        else root
    names = sorted(n for n in os.listdir(audio_dir) if n.lower().endswith(".wav")) \
        if os.path.isdir(audio_dir) else []
    if not any(_NAME.match(n) for n in names):
        raise CorpusLayoutError(
            f"root={root!r} is not CREMA-D's AudioWAV/: expected clips named "
            f"{{ActorID}}_{{Sentence}}_{{Emotion}}_{{Level}}.wav (e.g. 1001_DFA_ANG_XX.wav) in it "
            f"or in its AudioWAV/ sub-folder; found {list_dir(audio_dir)}")
    result = ScanResult(utterances=[])
    for name in names:
        match = _NAME.match(name)
        if not match or match.group(2) not in SENTENCES or match.group(4) not in LEVELS \
                or match.group(3) not in LABEL_MAP:
            if not name.startswith("."):  # AppleDouble "._x.wav" files are not clips
                result.problems.append(Problem(name, "name is not {ActorID}_{Sentence}_"
                                                     "{Emotion}_{Level}.wav with known codes"))
            continue
        actor, _, emotion, _ = match.groups()
        result.utterances.append(Utterance(
            id=name[:-4], path=os.path.join(audio_dir, name), label=LABEL_MAP[emotion],
            raw_label=emotion, speaker=actor))
    return result


@register_dataset(NAME)
def build(features_dir, split="random", test_fraction=0.2, valid_fraction=0.1, seed=0):
    """One fold. split="random": stratified by label (the paper's protocol); split="speaker":
    by actor, no actor on two sides. valid_fraction of the training part (of its utterances, or
    of its actors) is held out for validation the same way."""
    option_choice(split, "split", ("random", "speaker"))
    test_fraction, valid_fraction, seed = float(test_fraction), float(valid_fraction), int(seed)
    manifest = load_manifest(features_dir, NAME)
    entries = manifest["utterances"]
    everything = list(range(len(entries)))
    if split == "random":
        def cut(indices, fraction, what):
            return stratified_split(indices, [entries[i]["label"] for i in indices], fraction,
                                    seed, what)
    else:
        def cut(indices, fraction, what):
            return group_split(indices, [entries[i]["speaker"] for i in indices], fraction, seed,
                               what)
    rest, test = cut(everything, test_fraction, "test_fraction")
    train, held = cut(rest, valid_fraction, "valid_fraction")
    fold = Fold(name=f"{split}-seed{seed}",
                train=FeatureDataset(features_dir, [entries[i] for i in train], CLASS_NAMES),
                valid=FeatureDataset(features_dir, [entries[i] for i in held], CLASS_NAMES),
                test=FeatureDataset(features_dir, [entries[i] for i in test], CLASS_NAMES))
    return DatasetBundle(name=NAME, class_names=list(CLASS_NAMES),
                         feature_dim=int(manifest["extractor"]["feature_dim"]), folds=[fold],
                         extractor=manifest["extractor"], preset=dict(PAPER_PRESETS[NAME]))
