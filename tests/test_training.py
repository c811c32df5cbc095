"""Training: metrics, batching, checkpoints, kill-and-resume equality, DDP under torchrun,
the synthetic dataset and the CLI. Tiny models and data: every test runs in seconds."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from mstr_kernels.cli import main
from mstr_kernels.data import build_dataset
from mstr_kernels.models import MSTRConfig, build_model
from mstr_kernels.training import (TrainConfig, classification_metrics, load_checkpoint,
                                   load_model, save_checkpoint, summarize, train_run)
from mstr_kernels.training.batching import LengthBucketBatchSampler, PadCollate
from mstr_kernels.training.checkpoint import restore_optimizer
from mstr_kernels.training.seeding import parse_seeds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATA = dict(num_train=48, num_valid=16, num_test=16, feature_dim=16, min_len=12, max_len=40)
TINY_DATA_FLAGS = [f"--dataset-option={k}={v}" for k, v in TINY_DATA.items()]


def tiny_model_config(bundle, **kw):
    base = dict(feature_dim=bundle.feature_dim, num_classes=bundle.num_classes, num_layers=1,
                num_heads=2, levels=2, dropout=0.1, classifier_dropout=0.1)
    base.update(kw)
    return MSTRConfig(**base)


def test_metrics_by_hand():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 2, 1]
    m = classification_metrics(y_true, y_pred, num_classes=4)
    assert m["WA"] == pytest.approx(100 * 5 / 8)
    assert m["UA"] == pytest.approx(100 * (3 / 4 + 1 / 2 + 1 / 2) / 3)  # absent class 3 excluded
    f1 = {0: 2 * 3 / (2 * 3 + 1 + 1), 1: 2 * 1 / (2 * 1 + 2 + 1), 2: 2 * 1 / (2 * 1 + 0 + 1)}
    assert m["WF1"] == pytest.approx(100 * (4 * f1[0] + 2 * f1[1] + 2 * f1[2]) / 8)
    s = summarize([{"WA": 1.0, "UA": 2.0, "WF1": 3.0}, {"WA": 3.0, "UA": 2.0, "WF1": 5.0}])
    assert s["WA"] == {"mean": 2.0, "std": pytest.approx(np.sqrt(2.0)), "n": 2}
    assert s["UA"]["std"] == 0.0


def test_parse_seeds():
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("7") == [7]
    for bad in ("9-0", "a", "1,1", "-1"):
        with pytest.raises(ValueError, match="seeds="):
            parse_seeds(bad)


def test_length_buckets_cover_everything_and_shard_global_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=203).tolist()
    one = LengthBucketBatchSampler(lengths, 16, seed=3, pool_batches=4)
    one.set_epoch(2)
    batches = list(one)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert len(batches) == len(one) == 13
    # bucketed batches pad far less than random ones
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)  # noqa
                         for b in bs)
    plain = LengthBucketBatchSampler(lengths, 16, seed=3, bucket=False)
    plain.set_epoch(2)
    assert pad(batches) < 0.3 * pad(list(plain))
    # epochs differ; the same epoch repeats exactly (resume)
    one.set_epoch(3)
    assert list(one) != batches
    one.set_epoch(2, start_batch=5)
    assert list(one) == batches[5:] and len(one) == 8
    # two ranks split each global batch: together they are the one-process batch
    ranks = [LengthBucketBatchSampler(lengths, 16, seed=3, pool_batches=4, rank=r, world_size=2)
             for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    for whole, a, b in zip(batches, *ranks):
        assert sorted(a + b) == sorted(whole) and abs(len(a) - len(b)) <= 1
    # a last batch too small to give each rank an item joins the previous one
    three = [LengthBucketBatchSampler(lengths[:33], 16, seed=1, rank=r, world_size=3)
             for r in range(3)]
    assert len(three[0]) == 2 and all(len(b) > 0 for r in three for b in r)
    assert sorted(i for r in three for b in r for i in b) == list(range(33))
    with pytest.raises(ValueError, match="batch_size=1"):
        LengthBucketBatchSampler(lengths, 1, world_size=2)


def test_pad_collate_pads_and_cuts():
    items = [(torch.ones(5, 3), 1), (2 * torch.ones(2, 3), 0)]
    x, lengths, y = PadCollate()(items)
    assert x.shape == (2, 5, 3) and lengths.tolist() == [5, 2] and y.tolist() == [1, 0]
    assert torch.all(x[1, 2:] == 0) and torch.all(x[1, :2] == 2)
    x, lengths, _ = PadCollate(fixed_length=4)(items)
    assert x.shape == (2, 4, 3) and lengths.tolist() == [4, 2]


def test_unknown_dataset_option_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"dataset 'synthetic' has no option\(s\) \{'sede': 3\}: "
                                         r"allowed are \['seed', 'num_train'"):
        build_dataset("synthetic", sede=3)


def test_synthetic_is_deterministic_and_needs_long_context():
    a = build_dataset("synthetic", **TINY_DATA).folds[0]
    b = build_dataset("synthetic", **TINY_DATA).folds[0]
    c = build_dataset("synthetic", seed=1, **TINY_DATA).folds[0]
    x, y = a.train[5]
    x2, y2 = b.train[5]
    assert torch.equal(x, x2) and y == y2
    assert not torch.equal(c.train[5][0][:12], x[:12])
    assert all(a.test[i][0].shape == (a.test.lengths[i], 16) for i in range(len(a.test)))
    assert set(a.train.labels) == {0, 1, 2, 3}
    # the long-scale signal along its direction: constant over aligned 3-frame blocks; the
    # slow and shuffled variants hold the same block values, only their order differs
    ds = a.train
    big = build_dataset("synthetic", num_train=64, num_valid=1, num_test=1, feature_dim=16,
                        min_len=240, max_len=240).folds[0].train
    smooth = {0: [], 1: []}
    for i in range(len(big)):
        x, label = big[i]
        wave = (x.double().numpy() @ big.wave_direction)[:240].reshape(80, 3).mean(1)
        smooth[label % 2].append(np.abs(np.diff(wave)).mean())
    assert np.mean(smooth[0]) < 0.7 * np.mean(smooth[1])  # slow waves change little per block
    assert ds.feature_dim == 16


def test_checkpoint_round_trip_is_safetensors_and_atomic(tmp_path):
    torch.manual_seed(0)
    config = MSTRConfig(feature_dim=16, num_classes=3, num_layers=1, num_heads=2, levels=2)
    model = build_model("mstr", config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 9, 16)).sum().backward()
    opt.step()
    path = str(tmp_path / "ck.safetensors")
    meta = {"model": "mstr", "config": config.to_dict(), "class_names": ["a", "b", "c"],
            "extractor": {"model": "hubert-large", "layer": 24}, "dataset": "x"}
    save_checkpoint(path, model, meta, optimizer=opt)
    assert os.listdir(tmp_path) == ["ck.safetensors"]  # no temporary left behind
    with open(path, "rb") as f:  # safetensors: u64 header length, then a JSON header
        n = int.from_bytes(f.read(8), "little")
        assert json.loads(f.read(n))["__metadata__"]
    loaded, meta2 = load_model(path)
    assert not loaded.training and meta2["extractor"] == meta["extractor"]
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    tensors, meta3 = load_checkpoint(path)
    opt2 = torch.optim.Adam(build_model("mstr", config).parameters(), lr=1.0)
    restore_optimizer(opt2, tensors, meta3)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3
    for idx in s1["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s1["state"][idx][key], s2["state"][idx][key])
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not written by mstr-kernels"):
        load_checkpoint(str(bad))


class Crash(RuntimeError):
    pass


def test_killed_run_resumes_to_identical_weights(tmp_path):
    bundle = build_dataset("synthetic", **TINY_DATA)
    fold = bundle.folds[0]
    model_config = tiny_model_config(bundle)
    config = TrainConfig(epochs=2, lr=1e-3, batch_size=8, checkpoint_every=4, progress=False)
    whole = train_run("mstr", model_config, bundle, fold, config, seed=5,
                      run_dir=str(tmp_path / "whole"))

    def crash_at(step):
        if step == 10:  # epoch 2 (6 steps each), 2 steps after its mid-epoch checkpoint
            raise Crash()
    with pytest.raises(Crash):
        train_run("mstr", model_config, bundle, fold, config, seed=5,
                  run_dir=str(tmp_path / "killed"), step_hook=crash_at)
    _, meta = load_checkpoint(str(tmp_path / "killed" / "last.safetensors"))
    assert meta["position"] == {"epoch": 1, "batch": 2, "global_step": 8}
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG
    resumed = train_run("mstr", model_config, bundle, fold, config, seed=5,
                        run_dir=str(tmp_path / "killed"), resume=True)
    a, _ = load_checkpoint(str(tmp_path / "whole" / "last.safetensors"))
    b, _ = load_checkpoint(str(tmp_path / "killed" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model.", "optimizer.")):
            assert torch.equal(a[k], b[k]), k
    assert resumed.test == whole.test and resumed.best_epoch == whole.best_epoch
    assert [h["valid"] for h in resumed.history] == [h["valid"] for h in whole.history]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one(tmp_path):
    common = ["train", "--dataset", "synthetic", *TINY_DATA_FLAGS, "--layers", "1",
              "--heads", "2", "--levels", "2", "--dropout", "0", "--classifier-dropout", "0",
              "--epochs", "2",
              "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--device", "cpu",
              "--dataset-option=num_valid=15"]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "mstr_kernels.cli", *common, "--out", str(one)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                    "--nproc_per_node=2", f"--master_port={_free_port()}", "-m",
                    "mstr_kernels.cli", *common, "--out", str(two)],
                   check=True, env=env, cwd=REPO, capture_output=True, timeout=300)
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r1["world_size"] == 1 and r2["world_size"] == 2
    for k in ("WA", "UA", "WF1"):
        assert r2["runs"][0]["test"][k] == pytest.approx(r1["runs"][0]["test"][k])
        for h1, h2 in zip(r1["runs"][0]["history"], r2["runs"][0]["history"]):
            assert h2["valid"][k] == pytest.approx(h1["valid"][k])
    for h1, h2 in zip(r1["runs"][0]["history"], r2["runs"][0]["history"]):
        assert h2["valid"]["loss"] == pytest.approx(h1["valid"]["loss"], rel=1e-4)
    w1, _ = load_checkpoint(str(one / "seed0" / "synthetic" / "last.safetensors"))
    w2, _ = load_checkpoint(str(two / "seed0" / "synthetic" / "last.safetensors"))
    # Adam divides by sqrt(v): parameters with near-zero gradients move by up to ~lr on
    # summation-order noise, so weights agree to a fraction of lr (1e-3), not to float eps
    for k in w1:
        if k.startswith("model."):
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=5e-4)


def test_cli_train_then_evaluate_agree(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", *TINY_DATA_FLAGS, "--layers", "1", "--heads", "2",
            "--levels", "2", "--epochs", "2", "--batch-size", "8", "--seeds", "0,1",
            "--no-progress", "--out", str(out), "--fixed-length", "32"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["train_config"]["fixed_length"] == 32
    assert results["summary"]["UA"]["n"] == 2 and "mean" in printed and "std" in printed
    for run in results["runs"]:
        best = out / f"seed{run['seed']}" / "synthetic" / "best.safetensors"
        # seed 0: the dataset options recorded in the checkpoint; seed 1: given again as flags
        flags = TINY_DATA_FLAGS if run["seed"] else []
        assert main(["evaluate", str(best), *flags, "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        for k in ("WA", "UA", "WF1"):
            assert record[k] == pytest.approx(run["test"][k])
    # a finished experiment resumes to the same results without training again
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == results["summary"]


def test_paper_presets_and_flags():
    from mstr_kernels.cli import build_parser
    from mstr_kernels.commands.train import build_configs
    from mstr_kernels.data import DatasetBundle

    from mstr_kernels.data.presets import PAPER_PRESETS

    meld = DatasetBundle(name="meld", class_names=[str(i) for i in range(7)], feature_dim=1024,
                         folds=[], preset=PAPER_PRESETS["meld"])
    args = build_parser().parse_args(["train", "--dataset", "meld", "--fixed-length", "paper"])
    model_config, config = build_configs(args, meld)
    assert (config.epochs, config.lr, config.batch_size) == (150, 5e-6, 32)
    assert config.fixed_length == 224 and config.select_metric == "WF1"
    assert (model_config.num_layers, model_config.num_heads, model_config.p,
            model_config.levels, model_config.num_classes) == (4, 16, 3, 4, 7)
    args = build_parser().parse_args(["train", "--dataset", "iemocap", "--model", "vanilla",
                                      "--lr", "3e-4", "--amp", "bf16"])
    iemocap = DatasetBundle(name="iemocap", class_names=list("ahns"), feature_dim=1024,
                            folds=[], preset=PAPER_PRESETS["iemocap"])
    model_config, config = build_configs(args, iemocap)
    assert (config.epochs, config.lr, config.amp, config.fixed_length) == (150, 3e-4, "bf16", None)
    assert model_config.attention == "full"


def test_bf16_autocast_run_trains(tmp_path):
    bundle = build_dataset("synthetic", **TINY_DATA)
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=16, amp="bf16", progress=False)
    result = train_run("mstr", tiny_model_config(bundle), bundle, bundle.folds[0], config, seed=0,
                       run_dir=str(tmp_path))
    assert np.isfinite(result.valid["loss"]) and 0 <= result.test["WA"] <= 100


def test_cli_compare_trains_the_three_models(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["train", "--dataset", "synthetic", *TINY_DATA_FLAGS, "--layers", "1",
                 "--heads", "2", "--levels", "2", "--epochs", "1", "--batch-size", "16",
                 "--no-progress", "--out", str(out), "--compare"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "comparison.json").read_text())
    assert [(r["model"], r["config"]["levels"], r["config"]["attention"]) for r in rows] == \
        [("mstr", 2, "fractal"), ("mstr", 1, "fractal"), ("vanilla", 2, "full")]
    assert rows[0]["params"] == rows[1]["params"] == rows[2]["params"]
    for name in ("mstr-L2", "mstr-L1", "vanilla"):
        assert (out / name / "results.json").exists()
    assert "mstr levels=1" in printed and "vanilla" in printed


def test_sigkilled_cli_run_resumes_to_identical_weights(tmp_path):
    import signal
    import time

    args = [sys.executable, "-m", "mstr_kernels.cli", "train", "--dataset", "synthetic",
            *TINY_DATA_FLAGS, "--layers", "1", "--heads", "2", "--levels", "2", "--epochs", "6",
            "--batch-size", "8", "--checkpoint-every", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(args + ["--out", str(whole)], check=True, env=env, cwd=REPO,
                   capture_output=True, timeout=300)
    last = killed / "seed0" / "synthetic" / "last.safetensors"
    proc = subprocess.Popen(args + ["--out", str(killed)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-epoch 1: 36 steps remain
    finally:
        assert proc.wait(timeout=60) == -signal.SIGKILL
    _, meta = load_checkpoint(str(last))
    assert not meta["finished"] and meta["position"]["global_step"] < 36
    subprocess.run(args + ["--out", str(killed), "--resume"], check=True, env=env, cwd=REPO,
                   capture_output=True, timeout=300)
    a, meta_a = load_checkpoint(str(whole / "seed0" / "synthetic" / "last.safetensors"))
    b, meta_b = load_checkpoint(str(last))
    assert meta_b["finished"] and meta_b["result"]["test"] == meta_a["result"]["test"]
    for k in a:
        if k.startswith(("model.", "optimizer.")):
            assert torch.equal(a[k], b[k]), k


def test_length_buckets_are_few_fixed_multiples():
    from mstr_kernels.training.batching import length_buckets
    assert length_buckets(160, 81) == [81, 162]
    assert length_buckets(81, 81) == [81]
    assert length_buckets(1700, 81) == [81 * k for k in (1, 2, 3, 4, 6, 8, 12, 16, 21)]
    for longest, unit in ((1, 9), (100_000, 81), (5, 1)):
        b = length_buckets(longest, unit)
        assert b == sorted(set(b)) and b[-1] >= longest and all(n % unit == 0 for n in b)
        assert all(hi <= 2 * lo for lo, hi in zip(b, b[1:]))  # padding adds at most 2x
    collate = PadCollate(buckets=[9, 18, 27], rows=4)
    x, lengths, y = collate([(torch.ones(10, 2), 1), (torch.ones(3, 2), 0)])
    assert x.shape == (4, 18, 2) and lengths.tolist() == [10, 3, 0, 0]
    assert y.tolist() == [1, 0, -100, -100] and x[2:].abs().sum() == 0
    with pytest.raises(ValueError, match="longer than the longest bucket"):
        collate([(torch.ones(28, 2), 0)])


def test_compiled_training_compiles_once_per_length_bucket(tmp_path, monkeypatch):
    """An epoch of ragged batches (more distinct lengths than buckets) through the compiled
    model: one compilation per length bucket used by training, one per bucket used by
    evaluation (no_grad, eval mode), none per batch."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from mstr_kernels.training import trainer
    from mstr_kernels.training.batching import length_buckets
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    made = []

    def compile_counted(model, device, *, mode=None, graphs=8):
        made.append(graphs)
        return trainer.compile_model.__wrapped__(model, device, mode=mode, backend=counter,
                                                 graphs=graphs)
    compile_counted.__wrapped__ = trainer.compile_model
    monkeypatch.setattr(trainer, "compile_model", compile_counted)
    bundle = build_dataset("synthetic", **TINY_DATA)
    fold = bundle.folds[0]
    model_config = tiny_model_config(bundle)  # the default backend, "auto"; no eager call first
    assert model_config.backend == "auto"
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=8, compile=True, progress=False)
    result = train_run("mstr", model_config, bundle, fold, config, seed=0,
                       run_dir=str(tmp_path))
    assert np.isfinite(result.valid["loss"])
    unit = model_config.p ** model_config.levels
    lengths = {name: [int(n) for n in getattr(fold, name).lengths]
               for name in ("train", "valid", "test")}
    buckets = length_buckets(max(max(v) for v in lengths.values()), unit)
    sampler = LengthBucketBatchSampler(lengths["train"], 8, seed=0)
    batch_max = [max(lengths["train"][i] for i in b) for b in sampler.global_batches()]
    padded = {next(b for b in buckets if b >= n) for n in batch_max}
    eval_max = [max(sorted(v)[s:s + 16]) for v in (lengths["valid"], lengths["test"])
                for s in range(0, len(v), 16)]
    eval_padded = {next(b for b in buckets if b >= n) for n in eval_max}
    assert len(set(batch_max)) > len(padded) > 1  # ragged: without buckets, more compilations
    assert counter.frame_count == len(padded) + len(eval_padded), (counter.frame_count, padded,
                                                                   eval_padded)
    assert made == [2 * len(buckets) + 2]


def test_compile_defaults_flags_and_fused_adam(tmp_path, monkeypatch):
    """`mstr train` compiles by default on CUDA only; --compile / --no-compile / --compile-mode
    reach the config; the CPU default trains eager (nothing compiled) with fused Adam."""
    from mstr_kernels.cli import build_parser
    from mstr_kernels.commands.train import build_configs
    from mstr_kernels.models import training_speed
    from mstr_kernels.training import trainer
    assert training_speed.compile_by_default(torch.device("cuda"))
    assert not training_speed.compile_by_default(torch.device("cpu"))
    assert training_speed.default_compile_mode(torch.device("cuda")) in training_speed.COMPILE_MODES
    bundle = build_dataset("synthetic", **TINY_DATA)
    parse = build_parser().parse_args
    for flags, compile_, mode in (([], None, None), (["--compile"], True, None),
                                  (["--no-compile"], False, None),
                                  (["--compile", "--compile-mode", "reduce-overhead"], True,
                                   "reduce-overhead")):
        _, config = build_configs(parse(["train", "--epochs", "1", "--lr", "1e-3", *flags]), bundle)
        assert (config.compile, config.compile_mode) == (compile_, mode), flags
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]
                   ._actions if a.dest == "compile_mode").choices
    assert tuple(choices) == training_speed.COMPILE_MODES
    with pytest.raises(ValueError, match="compile_mode='fast' must be one of"):
        TrainConfig(epochs=1, lr=1e-3, compile_mode="fast")
    compiled, adams = [], []
    monkeypatch.setattr(trainer, "compile_model", lambda *a, **k: compiled.append(a))
    real_adam = trainer.make_adam
    monkeypatch.setattr(trainer, "make_adam", lambda *a: adams.append(real_adam(*a)) or adams[-1])
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=16, progress=False, device="cpu")
    train_run("mstr", tiny_model_config(bundle), bundle, bundle.folds[0], config, seed=0,
              run_dir=str(tmp_path))
    assert compiled == [] and [a.defaults["fused"] for a in adams] == [True]


def test_compiled_training_with_default_compile_options_trains(tmp_path):
    """`mstr train --compile` as a user gets it on the CPU: inductor, the device's default mode,
    the default backend; one length (fixed_length), so one training and one evaluation graph."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    bundle = build_dataset("synthetic", num_train=16, num_valid=8, num_test=8, feature_dim=8,
                           min_len=9, max_len=12)
    model_config = MSTRConfig(feature_dim=8, num_classes=bundle.num_classes, num_layers=1,
                              num_heads=1, levels=2)
    config = TrainConfig(epochs=1, lr=1e-3, batch_size=8, compile=True, progress=False,
                         fixed_length=12)
    result = train_run("mstr", model_config, bundle, bundle.folds[0], config, seed=0,
                       run_dir=str(tmp_path))
    assert np.isfinite(result.valid["loss"]) and np.isfinite(result.test["loss"])
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
