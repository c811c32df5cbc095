"""The `mstr` console script: subcommands, help, and user errors as one line with exit code 2."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mstr_kernels.cli import build_parser, main, missing_extra_message
from mstr_kernels.commands.checks import UsageError

CUDA = torch.cuda.is_available()
TINY_TRAIN = ["train", "--dataset", "synthetic", "--dataset-option", "num_train=24",
              "--dataset-option", "num_valid=8", "--dataset-option", "num_test=8",
              "--dataset-option", "max_len=30", "--dataset-option", "min_len=20",
              "--dataset-option", "feature_dim=8", "--layers", "1", "--heads", "2",
              "--batch-size", "8", "--backend", "reference", "--workers", "0"]


def test_info_lists_every_backend_with_status(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for name in ("cuda", "triton", "cpu", "reference"):
        assert f"  {name} " in text
    assert "reference  available" in text
    assert "2 <= p <= 8" in text and "p in (" not in text


def test_demo_compares_backends(capsys):
    assert main(["demo", "--shape", "1,2,20,4", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "reference" in text and "rel err out" in text


def test_console_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "mstr_kernels.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "info" in result.stdout
    assert build_parser().prog == "mstr"


def test_help_does_not_import_torch():
    """`mstr --help` and every subcommand's parser are built without importing torch (its import
    is most of the command's start-up time)."""
    code = ("import sys; import mstr_kernels.cli as c; p = c.build_parser(); "
            "[s.format_help() for s in p._subparsers._group_actions[0].choices.values()]; "
            "print(sorted(m for m in ('torch', 'numpy', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_option_and_command_has_help_text():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0]
    helped = {a.dest for a in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert name in helped and sub.description, name
        for action in sub._actions:
            if action.dest not in ("help",):
                assert action.help, f"mstr {name} {action.option_strings or action.dest}"


# ---- user errors: one line naming the option, exit code 2 -----------------------------------

def _checkpoint(path, extractor=None, backend="reference"):
    """A tiny MSTR checkpoint as `mstr train` writes its best model (no training needed)."""
    from mstr_kernels.models import MSTRConfig, build_model
    from mstr_kernels.training.checkpoint import save_checkpoint
    config = MSTRConfig(feature_dim=8, num_classes=4, num_layers=1, num_heads=2, levels=2,
                        backend=backend)
    meta = {"model": "mstr", "config": config.to_dict(), "extractor": extractor,
            "class_names": ["A-slow", "A-shuffled", "B-slow", "B-shuffled"],
            "dataset": "synthetic", "dataset_options": {"feature_dim": 8, "num_train": 8,
                                                         "num_valid": 8, "num_test": 8},
            "features_dir": None, "fold": "synthetic", "train_config": {"fixed_length": None}}
    save_checkpoint(str(path), build_model("mstr", config), meta)
    return str(path)


def _tiny_cremad_features(folder, n=3):
    """A CREMA-D manifest of n utterances of n labels: too small for its 80/20 split."""
    os.makedirs(folder, exist_ok=True)
    labels = ["anger", "disgust", "fear", "happy", "neutral", "sad"][:n]
    manifest = {"corpus": "cremad", "extractor": {"type": "hubert", "feature_dim": 8},
                "utterances": [{"id": f"u{i}", "file": f"features/u{i}.safetensors",
                                "length": 5, "label": label, "speaker": str(1001 + i)}
                               for i, label in enumerate(labels)]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return str(folder)


def _error_cases(tmp_path):
    synthetic = _checkpoint(tmp_path / "synthetic.safetensors")
    not_a_checkpoint = tmp_path / "notes.safetensors"
    not_a_checkpoint.write_text("hello")
    no_gpu_device = "cuda:99" if CUDA else "cuda"
    return [
        (["train", "--quick", "--backend", "trition"], ["--backend 'trition'", "allowed are auto"]),
        (["train", "--quick", "--device", no_gpu_device], ["--device", "allowed"]),
        (["train", "--quick", "--device", "gpu0"], ["--device 'gpu0'", "cuda:N"]),
        (["train", "--dataset", "foo"], ["--dataset 'foo'", "synthetic"]),
        (["train", "--quick", "--seeds", "3-1"], ["--seeds '3-1'", "LOW <= HIGH"]),
        (["train", "--quick", "--folds", "nope"], ["--folds 'nope'", "allowed are synthetic"]),
        (["train", "--quick", "--fixed-length", "x"], ["--fixed-length 'x'", "'paper'"]),
        (["train", "--dataset-option", "colour=red"],
         ["--dataset-option colour", "'synthetic'", "allowed are seed, num_train"]),
        (["train", "--dataset", "cremad", "--features-dir", str(tmp_path / "missing")],
         ["--features-dir", "no such folder"]),
        (["train", "--dataset", "cremad", "--features-dir",
          _tiny_cremad_features(tmp_path / "tiny")], ["--dataset cremad", "test_fraction=0.2"]),
        (["evaluate", synthetic, "--device", "cpu", "--backend", "cuda"],
         ["--backend 'cuda'", "not cpu", "allowed on cpu here are auto"]),
        (["evaluate", str(tmp_path / "nope.safetensors")], ["checkpoint", "no such file"]),
        (["evaluate", str(not_a_checkpoint)], ["not a safetensors file"]),
        (["evaluate", synthetic, "--fold", "f9"], ["--fold 'f9'", "allowed are synthetic"]),
        (["predict", "x.wav", "--checkpoint", "nope.safetensors"],
         ["--checkpoint 'nope.safetensors': no such file"]),
        (["predict", "x.wav", "--checkpoint", synthetic],
         ["--checkpoint", "synthetic", "no audio feature extractor", "mstr extract"]),
        (["extract", "--corpus", "cremad", "--root", str(tmp_path / "nowhere"), "--out",
          str(tmp_path / "o")], ["--root", "no such folder"]),
        (["extract", "--corpus", "cremad", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
          "--labels", "x.csv"], ["--labels is for --corpus folder only"]),
        (["demo", "--shape", "1,2,3"], ["--shape '1,2,3'", "B,H,T,D"]),
        (["train", "--quick", "--levels", "20"], ["--levels: levels=20", "1 <= levels <= 6"]),
        (["train", "--quick", "--p", "1"], ["--p: p=1", "2 <= p <= 8"]),
        (["train", "--quick", "--epochs", "0"], ["--epochs 0: must be >= 1"]),
        (["flops", "--p", "9"], ["--p: p=9", "2 <= p <= 8"]),
        (["flops", "--heads", "3"], ["--feature-dim 1024 must be a multiple of --heads 3"]),
    ]


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    for argv, expected in _error_cases(tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (argv, captured.err)
        assert lines[0].startswith(f"mstr {argv[0]}: error: "), lines
        for text in expected:
            assert text in lines[0], (argv, lines[0])
        assert "Traceback" not in captured.err + captured.out


def test_argparse_errors_are_one_line_with_exit_code_2(capsys):
    for argv, expected in ((["train", "--model", "gpt"], "argument --model: invalid choice"),
                           (["train", "--epochs", "two"], "argument --epochs: invalid int"),
                           (["nonsense"], "argument COMMAND: invalid choice"),
                           ([], "required: COMMAND")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


def test_debug_flag_and_environment_show_the_traceback(monkeypatch, capsys):
    for argv in (["--debug", "train", "--dataset", "foo"], ["train", "--dataset", "foo", "--debug"]):
        with pytest.raises(UsageError, match="--dataset 'foo'"):
            main(argv)
    monkeypatch.setenv("MSTR_DEBUG", "1")
    with pytest.raises(UsageError):
        main(["train", "--dataset", "foo"])
    monkeypatch.setenv("MSTR_DEBUG", "0")
    assert main(["train", "--dataset", "foo"]) == 2


def test_missing_extra_names_the_extra():
    error = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    text = missing_extra_message(error)
    assert "pip install scikit-learn tqdm safetensors" in text and "the [train] extra" in text
    assert "pip install --no-build-isolation -e '.[train]'" in text
    assert "the [audio] extra" in missing_extra_message(
        ModuleNotFoundError("x", name="transformers.models"))
    assert missing_extra_message(ModuleNotFoundError("x", name="numpy_not_ours")) is None


def test_train_without_the_train_extra_says_which_to_install(tmp_path):
    """A real run of the command with scikit-learn, tqdm and safetensors made unimportable."""
    code = ("import sys\nfor m in ('sklearn', 'tqdm', 'safetensors'): sys.modules[m] = None\n"
            "from mstr_kernels.cli import main\n"
            f"sys.exit(main({TINY_TRAIN + ['--epochs', '1', '--out', str(tmp_path)]!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "mstr train: error: needs " in lines[0], lines
    assert "[train] extra" in lines[0]


# ---- train output: --no-progress, --quiet, --resume ----------------------------------------

def test_no_progress_keeps_the_epoch_lines_and_quiet_prints_nothing(tmp_path, capsys):
    assert main(TINY_TRAIN + ["--epochs", "2", "--no-progress", "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "synthetic epoch 1/2: valid WA" in text and "synthetic epoch 2/2: valid WA" in text
    assert "results: " in captured.out
    assert main(TINY_TRAIN + ["--epochs", "2", "--quiet", "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "b" / "results.json").is_file()


def test_resume_says_where_it_resumed(tmp_path, capsys, monkeypatch):
    from mstr_kernels.training import experiment, trainer

    class Kill(BaseException):
        pass

    def killed_at_step_5(*args, **kwargs):
        def hook(step):
            if step == 5:
                raise Kill()
        return trainer.train_run(*args, **kwargs, step_hook=hook)

    argv = TINY_TRAIN + ["--epochs", "2", "--checkpoint-every", "2", "--no-progress",
                         "--out", str(tmp_path)]
    monkeypatch.setattr(experiment, "train_run", killed_at_step_5)
    with pytest.raises(Kill):  # 3 steps per epoch: killed in epoch 2, after the step-4 save
        main(argv)
    monkeypatch.undo()
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    text = "".join(capsys.readouterr())
    assert "resumed from" in text and "at epoch 2/2, batch 1, step 4" in text, text
    assert main(argv + ["--resume"]) == 0
    assert "finished before, result kept" in "".join(capsys.readouterr())


# ---- output hygiene -------------------------------------------------------------------------

def test_profiler_noise_is_dropped_and_other_stderr_kept(capfd):
    from mstr_kernels.bench.quiet import profiler_noise_filtered
    from mstr_kernels.bench.timing import cpu_peak_memory_mb
    with profiler_noise_filtered():
        os.write(2, b"USDT:2026-12-02 06:44:29 1:1 SyncActivityProfilerHandler.cpp:39] "
                    b"profiler_start\n")
        os.write(2, b"ERROR:2026-12-02 06:44:29 1:1 DeviceProperties.cpp:56] gpuGetDeviceCount "
                    b"failed with code 35\n")
        os.write(2, b"a real problem\n")
    before = torch.randn(300, 300)

    def frees_a_tensor_from_before():
        nonlocal before
        before = None  # c10 notes that this block was allocated before profiling started
        return torch.randn(1000)
    peak, why = cpu_peak_memory_mb(frees_a_tensor_from_before)
    assert why is None and peak > 0
    err = capfd.readouterr().err
    assert err == "a real problem\n", err


def test_no_cuda_runtime_notice_is_dropped(caplog):
    import logging
    main(["info"])  # installs the filter
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
