"""The whole chain through the `mstr` command line on fake corpora of each layout: extract
features with a tiny HuBERT, train a tiny MSTR, evaluate its checkpoint, predict audio files."""
import json
import os

import pytest
import torch

from mstr_kernels import cli
from mstr_kernels.data.corpora import CORPORA
from mstr_kernels.training.checkpoint import load_model

TINY_MODEL = ["--layers", "1", "--heads", "2", "--levels", "2", "--epochs", "2",
              "--batch-size", "8", "--no-progress"]


@pytest.mark.parametrize("corpus, fold, train_flags", [
    ("iemocap", "session1", ["--folds", "session1"]),  # one of the five leave-one-session-out folds
    ("meld", "official", []),
    ("cremad", "random-seed0", ["--fixed-length", "paper"]),  # the paper's pad/cut protocol
])
def test_extract_train_evaluate_predict(fake_corpora, tmp_path, capsys, corpus, fold,
                                        train_flags):
    from safetensors.torch import load_file
    features, runs = tmp_path / "features", tmp_path / "runs"
    assert cli.main(["extract", "--corpus", corpus, "--root", str(fake_corpora["roots"][corpus]),
                     "--out", str(features), "--model", str(fake_corpora["hubert"]),
                     "--layer", "2", "--max-seconds", "1", "--workers", "0",
                     "--no-progress"]) == 0
    manifest = json.loads((features / "manifest.json").read_text())

    assert cli.main(["train", "--dataset", corpus, "--features-dir", str(features),
                     "--out", str(runs), *TINY_MODEL, *train_flags]) == 0
    assert f"results: {runs / 'results.json'}" in capsys.readouterr().out
    results = json.loads((runs / "results.json").read_text())
    (run,) = results["runs"]
    assert (results["dataset"], run["fold"]) == (corpus, fold)
    best = runs / "seed0" / fold / "best.safetensors"

    # the evaluation batches of training (twice the training batch size) give the same figures;
    # the checkpoint knows its features folder (--features-dir only overrides it)
    assert cli.main(["evaluate", str(best), "--batch-size", "16", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert (evaluated["dataset"], evaluated["fold"], evaluated["split"]) == (corpus, fold, "test")
    assert set(run["test"]) == {"WA", "UA", "WF1", "loss"}
    assert {k: evaluated[k] for k in ("WA", "UA", "WF1")} == \
        {k: run["test"][k] for k in ("WA", "UA", "WF1")}
    # same batches; a margin only for a GPU library that sums in another order between calls
    assert evaluated["loss"] == pytest.approx(run["test"]["loss"], rel=1e-6)

    # two utterances and the longest (MELD's is cut to --max-seconds at extraction)
    entries = manifest["utterances"][:2] + [max(manifest["utterances"],
                                                key=lambda e: e["length"])]
    files = [os.path.join(fake_corpora["roots"][corpus], e["source"]) for e in entries]
    assert cli.main(["predict", *files, "--checkpoint", str(best), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in predictions] == files

    model, meta = load_model(str(best))
    class_names = CORPORA[corpus].CLASS_NAMES
    assert meta["class_names"] == class_names
    assert meta["extractor"] == manifest["extractor"]
    fixed_length = results["train_config"]["fixed_length"]
    assert (fixed_length is not None) == ("--fixed-length" in train_flags)
    for entry, prediction in zip(entries, predictions):
        probabilities = prediction["probabilities"]
        assert list(probabilities) == class_names
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["prediction"] == max(probabilities, key=probabilities.get)
        # what the trained model says on the stored training features of the same file
        x = load_file(features / entry["file"])["features"].float()
        if fixed_length:
            x = torch.nn.functional.pad(x[:fixed_length],
                                        (0, 0, 0, max(0, fixed_length - len(x))))
        with torch.inference_mode():
            expected = torch.softmax(model(x[None]), dim=-1)[0]
        torch.testing.assert_close(torch.tensor(list(probabilities.values())), expected,
                                   atol=2e-3, rtol=0)

    # features moved: the recorded folder is gone, the error says so; --features-dir finds them
    moved = tmp_path / "features-moved"
    features.rename(moved)
    assert cli.main(["evaluate", str(best), "--json"]) == 2  # one line, exit code 2
    assert "does not exist here: pass --features-dir" in capsys.readouterr().err
    assert cli.main(["evaluate", str(best), "--features-dir", str(moved), "--batch-size", "16",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["WA"] == evaluated["WA"]
