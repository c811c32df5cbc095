"""Corpus loaders on fake corpora laid out like the real ones: scans (label merges, ignored
files, missing and corrupt files, wrong roots) and the splits built from extracted features
(no leakage between parts, IEMOCAP sessions and CREMA-D actors kept apart)."""
import collections
import os

import pytest
import torch

from mstr_kernels.data import build_dataset
from mstr_kernels.data.corpora import CORPORA, CorpusLayoutError
from mstr_kernels.features.extract import extract_corpus


@pytest.fixture(scope="module")
def corpora(fake_corpora):
    """The session's fake corpora and their features (layer 2 of the tiny HuBERT)."""
    features = {}
    for name, corpus_root in fake_corpora["roots"].items():
        features[name] = corpus_root.parent / f"features_{name}"
        extract_corpus(name, corpus_root, features[name], str(fake_corpora["hubert"]), 2,
                       num_workers=0, progress=False, max_seconds=1.0)
    return dict(fake_corpora, features=features)


def test_iemocap_scan_merges_excited_and_reads_only_label_lines(corpora):
    scan = CORPORA["iemocap"].scan(corpora["roots"]["iemocap"])
    written = corpora["written"]["iemocap"]
    by_id = {u.id: u for u in scan.utterances}
    task = {u: c for u, c in written.items() if c in ("ang", "hap", "exc", "neu", "sad")}
    # every label line of the task is there except the one whose wav is missing; the
    # annotator lines and the files in EmoEvaluation's sub-folders added nothing
    assert set(by_id) == set(task) - {"Ses01F_impro01_M020"}
    assert not any(u.endswith("_F099") for u in by_id)
    for utt_id, u in by_id.items():
        assert u.raw_label == written[utt_id]
        assert u.label == {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral",
                           "sad": "sad"}[written[utt_id]]
        assert u.session == utt_id[4] and u.speaker == utt_id[:5] + utt_id[-4]
    assert scan.ignored == {"fru": 5, "xxx": 5}
    assert [p.name for p in scan.problems] == [
        os.path.join("Session1", "sentences", "wav", "Ses01F_impro01", "Ses01F_impro01_M020.wav")]


def test_meld_scan_finds_prefixed_test_clips_and_reports_missing(corpora):
    scan = CORPORA["meld"].scan(corpora["roots"]["meld"])
    ids = {u.id for u in scan.utterances}
    for split, rows in corpora["written"]["meld"].items():
        assert {f"{split}_dia{d}_utt{u}" for d, u, _ in rows} <= ids
    assert any(os.path.basename(u.path).startswith("final_videos_test") for u in scan.utterances
               if u.split == "test")
    assert [p.name for p in scan.problems] == [os.path.join("dev_splits_complete",
                                                            "dia1_utt99.mp4")]
    assert {u.label for u in scan.utterances} == set(CORPORA["meld"].CLASS_NAMES)


def test_cremad_scan_reports_foreign_names(corpora):
    scan = CORPORA["cremad"].scan(corpora["roots"]["cremad"])
    assert len(scan.utterances) == len(corpora["written"]["cremad"])
    assert [p.name for p in scan.problems] == ["notes_about_clips.wav"]
    first = next(u for u in scan.utterances if u.id == "1001_DFA_ANG_HI")
    assert (first.label, first.raw_label, first.speaker) == ("anger", "ANG", "1001")


@pytest.mark.parametrize("corpus, expected", [
    ("iemocap", "Session1/ .. Session5/"), ("meld", "train_sent_emo.csv"),
    ("cremad", "{ActorID}_{Sentence}_{Emotion}_{Level}.wav")])
def test_wrong_root_says_what_was_expected(tmp_path, corpus, expected):
    (tmp_path / "something_else.txt").write_text("x")
    with pytest.raises(CorpusLayoutError) as info:
        CORPORA[corpus].scan(tmp_path)
    assert expected in str(info.value) and "something_else.txt" in str(info.value)


def test_extraction_skips_corrupt_and_missing_with_names(corpora):
    skipped = {name: {entry["name"] for entry in
                      _manifest(corpora["features"][name])["skipped"]} for name in corpora["features"]}
    assert skipped["iemocap"] == {
        os.path.join("Session1", "sentences", "wav", "Ses01F_impro01", n)
        for n in ("Ses01F_impro01_M020.wav", "Ses01F_impro01_F021.wav")}
    assert skipped["meld"] == {os.path.join("train", "train_splits", "dia0_utt99.mp4"),
                               os.path.join("dev_splits_complete", "dia1_utt99.mp4")}
    assert skipped["cremad"] == {"notes_about_clips.wav",
                                 os.path.join("AudioWAV", "1076_MTI_SAD_XX.wav")}


def _manifest(features_dir):
    import json
    with open(os.path.join(features_dir, "manifest.json")) as f:
        return json.load(f)


def _ids(part):
    return set(part.ids)


def _check_parts_partition(bundle, manifest):
    for fold in bundle.folds:
        train, valid, test = _ids(fold.train), _ids(fold.valid), _ids(fold.test)
        assert train and valid and test
        assert not (train & valid) and not (train & test) and not (valid & test)
        assert train | valid | test == {u["id"] for u in manifest["utterances"]}


@pytest.mark.parametrize("valid", ["random", "session"])
def test_iemocap_folds_leave_one_session_out(corpora, valid):
    features = corpora["features"]["iemocap"]
    bundle = build_dataset("iemocap", features, valid=valid)
    manifest = _manifest(features)
    session_of = {u["id"]: u["session"] for u in manifest["utterances"]}
    assert bundle.class_names == ["angry", "happy", "neutral", "sad"]
    assert [f.name for f in bundle.folds] == [f"session{s}" for s in range(1, 6)]
    _check_parts_partition(bundle, manifest)
    for s, fold in enumerate(bundle.folds, start=1):
        assert {session_of[i] for i in fold.test.ids} == {str(s)}
        assert str(s) not in {session_of[i] for i in fold.train.ids + fold.valid.ids}
        if valid == "session":
            assert len({session_of[i] for i in fold.valid.ids}) == 1
            assert not ({session_of[i] for i in fold.valid.ids} &
                        {session_of[i] for i in fold.train.ids})
    assert bundle.extractor == manifest["extractor"] and bundle.feature_dim == 32
    assert bundle.preset["fixed_length"] == 326


def test_iemocap_items_are_feature_tensors_with_merged_labels(corpora):
    features = corpora["features"]["iemocap"]
    fold = build_dataset("iemocap", features, sessions="2").folds[0]
    raw = {u["id"]: u["raw_label"] for u in _manifest(features)["utterances"]}
    excited = [i for i, utt in enumerate(fold.test.ids) if raw[utt] == "exc"]
    assert excited
    for i in range(len(fold.test)):
        x, label = fold.test[i]
        assert x.dtype == torch.float32 and x.shape == (fold.test.lengths[i], 32)
        assert isinstance(label, int)
    assert {fold.test[i][1] for i in excited} == {1}  # "happy"


def test_iemocap_options_are_checked(corpora):
    features = corpora["features"]["iemocap"]
    with pytest.raises(ValueError, match="valid='speakers'"):
        build_dataset("iemocap", features, valid="speakers")
    with pytest.raises(ValueError, match="sessions='7'"):
        build_dataset("iemocap", features, sessions="7")
    with pytest.raises(ValueError, match="valid_fraction=1.5"):
        build_dataset("iemocap", features, valid_fraction=1.5)


def test_meld_official_splits(corpora):
    features = corpora["features"]["meld"]
    bundle = build_dataset("meld", features)
    manifest = _manifest(features)
    (fold,) = bundle.folds
    _check_parts_partition(bundle, manifest)
    split_of = {u["id"]: u["split"] for u in manifest["utterances"]}
    for part, split in ((fold.train, "train"), (fold.valid, "dev"), (fold.test, "test")):
        assert {split_of[i] for i in part.ids} == {split}
    assert len(fold.train) == 14 and len(fold.valid) == 7 and len(fold.test) == 7
    assert bundle.num_classes == 7 and bundle.preset["metrics"] == ["WF1"]


def test_cremad_random_split_is_stratified_and_seeded(corpora):
    features = corpora["features"]["cremad"]
    manifest = _manifest(features)
    bundle = build_dataset("cremad", features)
    _check_parts_partition(bundle, manifest)
    (fold,) = bundle.folds
    test_counts = collections.Counter(fold.test.labels)
    total = collections.Counter(fold.train.labels + fold.valid.labels + fold.test.labels)
    for label, n in total.items():  # 20% of each class, within one utterance
        assert abs(test_counts[label] - 0.2 * n) <= 1
    again = build_dataset("cremad", features).folds[0]
    other = build_dataset("cremad", features, seed=1).folds[0]
    assert again.test.ids == fold.test.ids and again.valid.ids == fold.valid.ids
    assert other.test.ids != fold.test.ids


def test_cremad_speaker_split_keeps_actors_apart(corpora):
    features = corpora["features"]["cremad"]
    manifest = _manifest(features)
    bundle = build_dataset("cremad", features, split="speaker")
    _check_parts_partition(bundle, manifest)
    (fold,) = bundle.folds
    actor = {u["id"]: u["speaker"] for u in manifest["utterances"]}
    actors = [{actor[i] for i in part.ids} for part in (fold.train, fold.valid, fold.test)]
    assert all(actors)
    assert not (actors[0] & actors[1]) and not (actors[0] & actors[2]) \
        and not (actors[1] & actors[2])


def test_builders_refuse_wrong_features(corpora, tmp_path):
    with pytest.raises(ValueError, match="not 'meld'"):
        build_dataset("meld", corpora["features"]["cremad"])
    with pytest.raises(FileNotFoundError, match="mstr extract --corpus iemocap"):
        build_dataset("iemocap", tmp_path)
    with pytest.raises(ValueError, match="needs features_dir"):
        build_dataset("cremad", None)
