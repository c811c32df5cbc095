"""Corpus folder -> one feature file per utterance + `manifest.json`, resumable.

Layout of the output folder:
  extractor.json               the extractor settings; a rerun with other settings is refused
  features/<utterance>.safetensors   {"features": (T, F) float16}, written atomically
  manifest.json                corpus, extractor, utterances (id, file, length, label, split,
                               session, speaker, ...) and the skipped files with their reasons
A rerun skips every utterance whose feature file exists, so an interrupted run goes on.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.audio import TARGET_SAMPLE_RATE, AudioError, load_audio
from ..data.corpora import CORPORA, Problem, Utterance
from ..data.corpora.common import FEATURES_SUBDIR, MANIFEST_NAME, report_problems

EXTRACTOR_NAME = "extractor.json"


@dataclass
class ExtractSummary:
    extracted: int = 0
    reused: int = 0
    skipped: List[Problem] = field(default_factory=list)
    truncated: List[str] = field(default_factory=list)
    manifest_path: str = ""


class _DecodedAudio(Dataset):
    """Decodes in DataLoader workers so that the model is not kept waiting for FFmpeg."""

    def __init__(self, utterances: List[Utterance], max_samples: Optional[int]):
        self.utterances = utterances
        self.max_samples = max_samples

    def __len__(self):
        return len(self.utterances)

    def __getitem__(self, i):
        try:
            audio = load_audio(self.utterances[i].path, TARGET_SAMPLE_RATE)
        except AudioError as e:
            return i, None, e.reason, False
        cut = self.max_samples is not None and len(audio) > self.max_samples
        return i, audio[:self.max_samples] if cut else audio, None, cut


def extract_corpus(corpus: str, root, out, model: str, layer: int, *, device=None,
                   batch_size: int = 8, max_batch_seconds: float = 200.0,
                   max_seconds: Optional[float] = 60.0, num_workers: int = 2,
                   progress: bool = True, stream=None,
                   labels: Optional[str] = None) -> ExtractSummary:
    """Extract HuBERT layer `layer` features for every labelled utterance of a corpus folder.

    Clips longer than `max_seconds` (MELD has mis-cut test clips of minutes) are cut to it and
    reported; None keeps every sample. labels: the labels CSV of the "folder" corpus (default:
    its root's labels.csv, if any).
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    from .hubert import HubertFeatureExtractor

    stream = stream or sys.stderr
    if corpus not in CORPORA:
        raise ValueError(f"corpus={corpus!r} is unknown: allowed are {sorted(CORPORA)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is out of range: must be >= 1")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds={max_seconds} is out of range: must be > 0 (or None)")
    if labels is not None and corpus != "folder":
        raise ValueError(f"labels={labels!r}: only the 'folder' corpus takes a labels file; "
                         f"{corpus} has its own")
    scan = CORPORA[corpus].scan(root, labels) if labels else CORPORA[corpus].scan(root)
    extractor = HubertFeatureExtractor(model, layer, device)
    settings = dict(extractor.settings, max_seconds=max_seconds)

    out = os.fspath(out)
    feature_dir = os.path.join(out, FEATURES_SUBDIR)
    os.makedirs(feature_dir, exist_ok=True)
    _check_or_write_settings(out, corpus, settings)

    summary = ExtractSummary(skipped=list(scan.problems))
    lengths = {}
    todo = []
    for utt in scan.utterances:
        path = _feature_path(out, utt.id)
        stored = _stored_record(path)
        if stored is None:
            todo.append(utt)
        else:
            lengths[utt.id] = stored["length"]
            if stored["cut"]:
                summary.truncated.append(_shown(utt.path, root))
            summary.reused += 1

    max_samples = None if max_seconds is None else int(max_seconds * TARGET_SAMPLE_RATE)
    loader = DataLoader(_DecodedAudio(todo, max_samples), batch_size=None, shuffle=False,
                        num_workers=num_workers if todo else 0, collate_fn=_as_is)
    # disable=None: off when the stream is not a terminal (a log file)
    bar = tqdm(total=len(todo), desc=f"extract {corpus}", unit="utt",
               disable=None if progress else True, file=stream)
    # utterances are decoded in order, then run in batches of similar length to waste little
    # compute on padding
    pending = []

    def run_pending():
        pending.sort(key=lambda item: len(item[1]))
        while pending:
            batch = [pending.pop(0)]
            while pending and len(batch) < batch_size and \
                    len(pending[0][1]) * (len(batch) + 1) <= max_batch_seconds * TARGET_SAMPLE_RATE:
                batch.append(pending.pop(0))
            features = extractor([audio for _, audio in batch])
            for (utt, _), feats in zip(batch, features):
                path = _feature_path(out, utt.id)
                save_file({"features": feats.to(torch.float16).contiguous()}, path + ".tmp",
                          metadata={"id": utt.id, "length": str(feats.shape[0]),
                                    "cut": str(int(utt.id in cut_ids))})
                os.replace(path + ".tmp", path)
                lengths[utt.id] = feats.shape[0]
                summary.extracted += 1
            bar.update(len(batch))

    cut_ids = set()
    for i, audio, error, cut in loader:
        utt = todo[i]
        if error is None and len(audio) < extractor.min_samples:
            error = (f"{len(audio)} samples at 16 kHz is shorter than one feature frame "
                     f"({extractor.min_samples})")
        if error is not None:
            summary.skipped.append(Problem(_shown(utt.path, root), error))
            bar.update(1)
            continue
        if cut:
            summary.truncated.append(_shown(utt.path, root))
            cut_ids.add(utt.id)
        pending.append((utt, audio))
        if len(pending) >= 4 * batch_size:
            run_pending()
    run_pending()
    bar.close()

    summary.manifest_path = _write_manifest(out, corpus, root, settings, scan, lengths, summary)
    for name in summary.truncated:
        print(f"  cut to the first {max_seconds:g} s: {name}", file=stream)
    report_problems(summary.skipped, "files", stream)
    print(f"{corpus}: {summary.extracted} extracted, {summary.reused} already done, "
          f"{len(summary.skipped)} skipped, {len(summary.truncated)} cut; "
          f"{len(lengths)} in {summary.manifest_path}", file=stream)
    expected = getattr(CORPORA[corpus], "FULL_CORPUS_UTTERANCES", None)
    if expected is not None and len(scan.utterances) != expected:
        print(f"note: the full {corpus} corpus has {expected} utterances of the task, this "
              f"folder lists {len(scan.utterances)}", file=stream)
    if scan.ignored:
        print("labels outside the task (not extracted): " +
              ", ".join(f"{k} {v}" for k, v in sorted(scan.ignored.items())), file=stream)
    return summary


def _as_is(item):
    """Keeps the numpy waveforms as they are (the default collate makes tensors of them)."""
    return item


def _feature_path(out, utt_id):
    return os.path.join(out, FEATURES_SUBDIR, utt_id + ".safetensors")


def _stored_record(path) -> Optional[dict]:
    """Frames in a finished feature file and whether its audio was cut; None if there is no
    such file (or it cannot be read)."""
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            return {"length": int(meta["length"]), "cut": meta.get("cut") == "1"}
    except Exception:  # a damaged file is made again
        return None


def _shown(path, root):
    return os.path.relpath(path, os.fspath(root))


def _check_or_write_settings(out, corpus, settings):
    path = os.path.join(out, EXTRACTOR_NAME)
    record = {"corpus": corpus, "extractor": settings}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
        if existing != record:
            stored = dict(existing.get("extractor", {}), corpus=existing.get("corpus"))
            differences = {key: (stored.get(key), value)
                           for key, value in dict(settings, corpus=corpus).items()
                           if stored.get(key) != value}
            raise ValueError(f"out={out!r} holds features made with other settings "
                             f"(stored, asked): {differences}: choose another --out folder")
        return
    _write_json(path, record)


def _write_manifest(out, corpus, root, settings, scan, lengths, summary) -> str:
    utterances = []
    for utt in scan.utterances:
        if utt.id in lengths:
            utterances.append(dict(utt.metadata(), file=f"{FEATURES_SUBDIR}/{utt.id}.safetensors",
                                   length=int(lengths[utt.id]),
                                   source=_shown(utt.path, root)))
    manifest = {"corpus": corpus, "root": os.path.abspath(os.fspath(root)),
                "extractor": settings, "utterances": utterances,
                "skipped": [{"name": p.name, "reason": p.reason} for p in summary.skipped],
                "truncated": summary.truncated}
    path = os.path.join(out, MANIFEST_NAME)
    _write_json(path, manifest)
    return path


def _write_json(path, obj):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
