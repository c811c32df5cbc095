"""`mstr extract --corpus folder`: any audio files with an optional labels CSV, then training on
them; and the HuBERT model refusals (missing folder, hub unreachable) as one line."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("soundfile")

from fake_corpora import make_tiny_hubert, tone, write_wav  # noqa: E402
from mstr_kernels import cli  # noqa: E402
from mstr_kernels.data import build_dataset  # noqa: E402
from mstr_kernels.data.corpora import CORPORA, CorpusLayoutError  # noqa: E402


@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    path = tmp_path_factory.mktemp("hubert") / "tiny"
    make_tiny_hubert(path, layers=2)
    return str(path)


def _folder(root, n_per_label=5, labels=("calm", "loud"), csv=True, split_column=False):
    rows = ["file,label,speaker" + (",split" if split_column else "")]
    for li, label in enumerate(labels):
        for i in range(n_per_label):
            rel = os.path.join(f"take{i % 2}", f"{label}-{i}.wav")  # sub-folders, any names
            write_wav(str(root / rel), tone(0.3 + 0.05 * i, freq=200.0 + 300 * li, seed=i))
            split = ("train", "train", "valid", "test")[i % 4] if split_column else None
            rows.append(f"{rel},{label},spk{i % 3}" + (f",{split}" if split else ""))
    write_wav(str(root / "notes" / "unlisted.flac"), tone(0.3))
    (root / "readme.txt").write_text("not audio")
    if csv:
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_scan_finds_audio_files_and_reads_the_labels(tmp_path):
    root = _folder(tmp_path / "clips")
    scan = CORPORA["folder"].scan(root)
    assert len(scan.utterances) == 10 and not scan.problems
    first = scan.utterances[0]
    assert first.id == "take0__calm-0" and first.label == "calm" and first.speaker == "spk0"
    assert scan.ignored == {"(audio files without a row in the labels file)": 1}
    (root / "labels.csv").unlink()
    unlabelled = CORPORA["folder"].scan(root)
    assert len(unlabelled.utterances) == 11 and {u.label for u in unlabelled.utterances} == {None}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(CorpusLayoutError, match="no audio files.*a.txt"):
        CORPORA["folder"].scan(tmp_path / "empty")


def test_extract_and_train_on_a_plain_folder(tmp_path, hubert, capsys):
    root = _folder(tmp_path / "clips")
    (root / "labels.csv").rename(tmp_path / "my-labels.csv")
    out = tmp_path / "features"
    assert cli.main(["extract", "--corpus", "folder", "--root", str(root), "--labels",
                     str(tmp_path / "my-labels.csv"), "--out", str(out), "--model", hubert,
                     "--layer", "2", "--workers", "0", "--no-progress"]) == 0
    assert "folder: 10 extracted" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {u["label"] for u in manifest["utterances"]} == {"calm", "loud"}
    bundle = build_dataset("folder", str(out), test_fraction=0.2, valid_fraction=0.25)
    fold = bundle.folds[0]
    assert bundle.class_names == ["calm", "loud"] and bundle.feature_dim == 32
    assert (len(fold.train), len(fold.valid), len(fold.test)) == (6, 2, 2)
    features, label = fold.train[0]
    assert features.shape[1] == 32 and label in (0, 1)
    assert cli.main(["train", "--dataset", "folder", "--features-dir", str(out), "--epochs", "1",
                     "--lr", "1e-3", "--layers", "1", "--heads", "2", "--backend", "reference",
                     "--dataset-option", "valid_fraction=0.25", "--workers", "0", "--quiet",
                     "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "results.json").is_file()


def test_split_column_is_used_when_every_row_has_one(tmp_path, hubert):
    root = _folder(tmp_path / "clips", n_per_label=4, split_column=True)
    out = tmp_path / "features"
    assert cli.main(["extract", "--corpus", "folder", "--root", str(root), "--out", str(out),
                     "--model", hubert, "--layer", "1", "--workers", "0", "--no-progress"]) == 0
    fold = build_dataset("folder", str(out)).folds[0]
    assert fold.name == "split-column"
    assert (len(fold.train), len(fold.valid), len(fold.test)) == (4, 2, 2)


def test_unlabelled_folder_extracts_but_does_not_train(tmp_path, hubert, capsys):
    root = _folder(tmp_path / "clips", n_per_label=1, csv=False)
    out = tmp_path / "features"
    assert cli.main(["extract", "--corpus", "folder", "--root", str(root), "--out", str(out),
                     "--model", hubert, "--layer", "1", "--workers", "0", "--no-progress"]) == 0
    assert cli.main(["train", "--dataset", "folder", "--features-dir", str(out), "--epochs", "1",
                     "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no labelled utterances" in err and "--labels" in err


def _one_line_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_local_model_is_one_line_suggesting_a_local_folder(tmp_path, capsys):
    root = _folder(tmp_path / "clips", n_per_label=1)
    for model, expected in ((str(tmp_path / "no" / "such" / "hubert"), "no such folder"),
                            (str(root), "has no config.json"),
                            ("./hubert-large", "no such folder")):
        assert cli.main(["extract", "--corpus", "folder", "--root", str(root), "--out",
                         str(tmp_path / "out"), "--model", model]) == 2
        line = _one_line_error(capsys)
        assert line.startswith("mstr extract: error: --model ") and expected in line
        assert "local folder with a transformers HubertModel checkpoint" in line


def test_offline_hub_fails_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    root = _folder(tmp_path / "clips", n_per_label=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["extract", "--corpus", "folder", "--root", str(root), "--out",
                     str(tmp_path / "o"), "--model", "nobody-here/no-such-hubert"]) == 2
    line = _one_line_error(capsys)
    assert "not in the local model cache and HF_HUB_OFFLINE is set" in line
    assert "local folder" in line


def test_unreachable_hub_fails_after_one_probe_in_one_line(tmp_path):
    """A hub that refuses connections (transformers alone retries, then prints a long
    traceback); a subprocess, as huggingface_hub reads HF_ENDPOINT when imported."""
    root = _folder(tmp_path / "clips", n_per_label=1)
    argv = ["extract", "--corpus", "folder", "--root", str(root), "--out", str(tmp_path / "o"),
            "--model", "nobody-here/no-such-hubert"]
    code = f"import sys; from mstr_kernels.cli import main; sys.exit(main({argv!r}))"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "the model hub is unreachable" in lines[0] and "local folder" in lines[0], lines[0]
