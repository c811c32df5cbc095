"""`mstr predict --stream` and the windowed HuBERT features, with a tiny random HuBERT."""
import io
import json
import sys

import numpy as np
import pytest
import torch

from fake_corpora import make_tiny_hubert, tone, write_wav
from mstr_kernels import cli

RATE = 16000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mstr_kernels.features.hubert import HubertFeatureExtractor
    root = tmp_path_factory.mktemp("stream")
    make_tiny_hubert(root / "hubert", layers=2, stable_layer_norm=True)
    extractor = HubertFeatureExtractor(str(root / "hubert"), 2, "cpu")
    rng = np.random.default_rng(0)
    # 2.3 s: 114 frames, 12 tiles of 9 frames and an open one; loudness and pitch change
    audio = np.concatenate([tone(0.23, freq=f, seed=i) * a for i, (f, a) in
                            enumerate(zip(rng.uniform(100, 400, 10), rng.uniform(0.2, 2, 10)))])
    wav = str(root / "utterance.wav")
    write_wav(wav, audio)
    return {"root": root, "extractor": extractor, "wav": wav}


def _checkpoint(setup, name, fixed_length=None, model_name="mstr", max_seconds=60.0):
    from mstr_kernels.models import MSTRConfig, build_model
    from mstr_kernels.training.checkpoint import save_checkpoint
    torch.manual_seed(0)
    config = MSTRConfig(feature_dim=32, num_classes=4, num_layers=1, num_heads=2, levels=2)
    model = build_model(model_name, config).eval()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(10)
    extractor = dict(setup["extractor"].settings, max_seconds=max_seconds)
    meta = {"model": model_name, "config": model.config.to_dict(),
            "class_names": ["angry", "happy", "neutral", "sad"], "extractor": extractor,
            "train_config": {"fixed_length": fixed_length}}
    path = str(setup["root"] / f"{name}.safetensors")
    save_checkpoint(path, model, meta)
    return path, model


def _json_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _offline_probs(setup, model, audio):
    from mstr_kernels.features.streaming import features_of
    with torch.inference_mode():
        logits = model(features_of(setup["extractor"], audio)[None])
    return torch.softmax(logits.float(), -1)[0]


def _probs(record):
    return torch.tensor([record["probabilities"][c] for c in ("angry", "happy", "neutral", "sad")])


def test_exact_stream_of_a_file(setup, capsys):
    from mstr_kernels.data.audio import load_audio
    checkpoint, model = _checkpoint(setup, "plain")
    assert cli.main(["predict", setup["wav"], "--checkpoint", checkpoint, "--json"]) == 0
    offline = json.loads(capsys.readouterr().out)[0]

    assert cli.main(["predict", "--stream", setup["wav"], "--checkpoint", checkpoint,
                     "--json"]) == 0
    records = _json_lines(capsys.readouterr().out)
    audio = load_audio(setup["wav"])
    total_frames = (len(audio) - 400) // 320 + 1
    *per_tile, final = records
    # one estimate per tile of 9 frames as the audio is read, the open tile at the end
    assert [r["frames"] for r in per_tile] == list(range(9, total_frames, 9)) + [total_frames]
    for record in per_tile[::4]:  # each one is the offline model on the audio read so far
        n = int(round(record["time_s"] * RATE))
        assert n == 400 + 320 * (record["frames"] - 1) or record["frames"] == total_frames
        torch.testing.assert_close(_probs(record), _offline_probs(setup, model, audio[:n]),
                                   rtol=0, atol=1e-6)
    # the end equals `mstr predict` on the whole file
    assert final["final"] and final["frames"] == total_frames and final["source"] == setup["wav"]
    assert final["prediction"] == offline["prediction"]
    torch.testing.assert_close(_probs(final), _probs(offline), rtol=0, atol=1e-6)
    assert final["real_time_factor"] > 0 and final["compute_s"] > 0


def test_table_output_reports_the_real_time_factor(setup, capsys):
    checkpoint, _ = _checkpoint(setup, "plain")
    assert cli.main(["predict", "--stream", setup["wav"], "--checkpoint", checkpoint]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"stream {setup['wav']}: exact")
    assert lines[1].split() == ["time_s", "frames", "prediction", "angry", "happy", "neutral",
                                "sad"]
    assert lines[-2].endswith("end")
    assert lines[-1].startswith("real-time factor ") and float(lines[-1].split()[2]) > 0


class _Stdin:
    def __init__(self, data):
        self.buffer = io.BytesIO(data)


@pytest.mark.parametrize("raw_format", ["f32le", "s16le"])
def test_stdin_raw_samples(setup, capsys, monkeypatch, raw_format):
    from mstr_kernels.data.audio import load_audio
    checkpoint, model = _checkpoint(setup, "plain")
    audio = load_audio(setup["wav"])
    if raw_format == "f32le":
        data, expected_audio = audio.astype("<f4").tobytes(), audio
    else:
        ints = np.round(audio * 32767).astype("<i2")
        data, expected_audio = ints.tobytes(), ints.astype(np.float32) / 32768
    monkeypatch.setattr(sys, "stdin", _Stdin(data + b"\x01"))  # a stray byte at the end
    assert cli.main(["predict", "--stream", "-", "--raw-format", raw_format,
                     "--checkpoint", checkpoint, "--json"]) == 0
    captured = capsys.readouterr()
    assert "ended inside a sample" in captured.err
    final = _json_lines(captured.out)[-1]
    assert final["final"] and abs(final["time_s"] - len(audio) / RATE) < 1e-3
    torch.testing.assert_close(_probs(final), _offline_probs(setup, model, expected_audio),
                               rtol=0, atol=1e-6)


def test_windowed_stream_is_the_model_on_windowed_features(setup, capsys):
    from mstr_kernels.data.audio import load_audio
    from mstr_kernels.features.streaming import WindowedFeatures
    checkpoint, model = _checkpoint(setup, "plain")
    assert cli.main(["predict", "--stream", setup["wav"], "--checkpoint", checkpoint, "--json",
                     "--context", "0.5", "--lookahead", "0.1"]) == 0
    records = _json_lines(capsys.readouterr().out)
    audio = load_audio(setup["wav"])
    # the CLI's pushes: the audio of the first tile of 9 frames, then 9 frames' hops at a time
    windowed = WindowedFeatures(setup["extractor"], 25, 5)
    first = 400 + 320 * 8
    parts = [windowed.push(audio[:first])]
    parts += [windowed.push(audio[start:start + 9 * 320])
              for start in range(first, len(audio), 9 * 320)]
    frames = torch.cat(parts + [windowed.finish()])
    assert records[-1]["frames"] == len(frames)
    with torch.inference_mode():
        expected = torch.softmax(model(frames[None]), -1)[0]
    torch.testing.assert_close(_probs(records[-1]), expected, rtol=0, atol=1e-5)
    # not the whole-file estimate: the features of a window are not those of the file
    whole = _offline_probs(setup, model, audio)
    assert (expected.log() - whole.log()).abs().max() > 1e-3
    # frames are final once made: the per-tile estimates lag by the lookahead
    assert all(r["frames"] <= round(r["time_s"] * 50) for r in records)


def test_windowed_features_frame_count_and_exact_limit(setup):
    """Every frame is made once, whatever the push sizes; with a window covering all the
    audio the features are exact; with a short one they are not (HuBERT is not local)."""
    from mstr_kernels.data.audio import load_audio
    from mstr_kernels.features.streaming import WindowedFeatures, feature_window_error, \
        features_of
    extractor = setup["extractor"]
    audio = load_audio(setup["wav"])
    whole = features_of(extractor, audio)
    rng = np.random.default_rng(1)
    for context, lookahead in ((0, 0), (30, 7), (10 ** 6, 10 ** 6)):
        stream = WindowedFeatures(extractor, context, lookahead)
        parts, pushed = [], 0
        while pushed < len(audio):
            size = int(rng.choice([0, 1, 700, 5000, 9000]))
            parts.append(stream.push(audio[pushed:pushed + size]))
            pushed += size
        parts.append(stream.finish())
        frames = torch.cat(parts)
        assert frames.shape == whole.shape
        if context == 10 ** 6:
            assert torch.equal(frames, whole)
    error = feature_window_error(extractor, audio, 25, 0, 9)
    assert error["frames"] == len(whole) and error["relative"] > 0
    with pytest.raises(ValueError, match="context_frames=-1 must be an int >= 0"):
        WindowedFeatures(extractor, -1)


def _refused(capsys, argv, match):
    """A user error: one line on stderr naming it, exit code 2 (the CLI's convention)."""
    import re
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    # transformers may draw its weight-loading bar before the error: the error is the last line
    line = err.splitlines()[-1]
    assert "Traceback" not in err and line.startswith("mstr predict: error: "), err
    assert re.search(match, line), err


def test_stream_refusals(setup, capsys, tmp_path):
    fixed, _ = _checkpoint(setup, "fixed", fixed_length=50)
    _refused(capsys, ["predict", "--stream", setup["wav"], "--checkpoint", fixed],
             "fixed-length protocol \\(fixed_length=50.*streaming is refused")
    plain, _ = _checkpoint(setup, "plain")
    _refused(capsys, ["predict", setup["wav"], "--stream", setup["wav"], "--checkpoint", plain],
             "not both")
    _refused(capsys, ["predict", "--checkpoint", plain],
             "no input: give audio FILEs, or --stream SOURCE")
    _refused(capsys, ["predict", "--stream", setup["wav"], "--checkpoint", plain, "--context", "-1"],
             "--context=-1.0 must be >= 0 seconds")
    vanilla, _ = _checkpoint(setup, "vanilla", model_name="vanilla")
    _refused(capsys, ["predict", "--stream", setup["wav"], "--checkpoint", vanilla, "--context", "1"],
             "only MSTR")
    short = str(tmp_path / "short.wav")
    write_wav(short, tone(0.02))
    assert cli.main(["predict", "--stream", short, "--checkpoint", plain]) == 1
    assert "shorter than one feature frame (320 samples" in capsys.readouterr().err
    assert cli.main(["predict", "--stream", str(tmp_path / "none.wav"),
                     "--checkpoint", plain]) == 1
    assert "file not found" in capsys.readouterr().err


def test_exact_stream_stops_at_max_seconds_like_predict(setup, capsys):
    checkpoint, _ = _checkpoint(setup, "cut", max_seconds=1.0)
    assert cli.main(["predict", setup["wav"], "--checkpoint", checkpoint, "--json"]) == 0
    offline = json.loads(capsys.readouterr().out)[0]
    assert cli.main(["predict", "--stream", setup["wav"], "--checkpoint", checkpoint,
                     "--json"]) == 0
    captured = capsys.readouterr()
    final = _json_lines(captured.out)[-1]
    assert final["time_s"] == 1.0 and "read the first 1 s only" in captured.err
    torch.testing.assert_close(_probs(final), _probs(offline), rtol=0, atol=1e-6)
