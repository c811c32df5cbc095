"""Audio decoding, HuBERT extraction (layer choice, batching, resuming, refusals) and
`mstr predict`, with a tiny randomly initialised HuBERT and fake corpora."""
import json
import os

import numpy as np
import pytest
import torch

from fake_corpora import make_iemocap, make_meld, make_tiny_hubert, tone, write_corrupt, \
    write_mp4, write_wav
from mstr_kernels import cli
from mstr_kernels.data.audio import AudioError, load_audio
from mstr_kernels.features.extract import extract_corpus


def _peak_hz(audio, rate=16000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


@pytest.mark.parametrize("channels", [2, 6])
def test_mp4_48k_decodes_to_16k_mono(tmp_path, channels):
    path = str(tmp_path / "dia3_utt1.mp4")
    write_mp4(path, tone(0.5, rate=48000, freq=440.0, channels=channels))
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC adds up to two frames (2 x 1024 samples at 48 kHz) of encoder delay and padding
    assert 8000 <= len(audio) <= 8000 + 2 * 1024 // 3 + 1
    assert abs(_peak_hz(audio) - 440.0) < 5.0


def test_wav_44k_stereo_resampled(tmp_path):
    path = str(tmp_path / "a.wav")
    stereo = tone(0.5, rate=44100, freq=300.0, channels=2)
    write_wav(path, stereo, rate=44100)
    audio = load_audio(path)
    assert len(audio) == round(len(stereo) * 16000 / 44100)
    assert abs(_peak_hz(audio) - 300.0) < 5.0
    same_rate = str(tmp_path / "b.wav")
    write_wav(same_rate, stereo[:, 0], rate=16000)
    np.testing.assert_allclose(load_audio(same_rate), stereo[:, 0], atol=1e-4)  # 16-bit PCM


def test_audio_errors_name_the_file(tmp_path):
    corrupt, empty = str(tmp_path / "c.wav"), str(tmp_path / "e.wav")
    write_corrupt(corrupt)
    write_wav(empty, np.zeros(0, dtype=np.float32))
    for path, reason in ((str(tmp_path / "none.wav"), "file not found"),
                         (corrupt, "cannot be decoded"), (empty, "no audio samples"),
                         (str(tmp_path / "none.mp4"), "file not found")):
        with pytest.raises(AudioError, match=reason) as info:
            load_audio(path)
        assert info.value.path == path and path in str(info.value)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    make_iemocap(root / "IEMOCAP", sessions=(1, 2))
    make_tiny_hubert(root / "hubert_large_like", layers=3, stable_layer_norm=True)
    make_tiny_hubert(root / "hubert_base_like", layers=3, stable_layer_norm=False)
    return root


def _direct_features(model_dir, layer, audio, normalize):
    """hidden_states[layer] of the full, untruncated model on one unpadded waveform, and its
    last_hidden_state."""
    from transformers import HubertModel
    model = HubertModel.from_pretrained(model_dir).eval()
    x = audio.astype(np.float64)
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    with torch.inference_mode():
        out = model(torch.tensor(x, dtype=torch.float32)[None], output_hidden_states=True)
    return out.hidden_states[layer][0], out.last_hidden_state[0]


@pytest.mark.parametrize("model, layer", [("hubert_large_like", 1), ("hubert_large_like", 3),
                                          ("hubert_base_like", 2)])
def test_features_are_the_layer_of_the_full_model(setup, tmp_path, model, layer):
    from safetensors.torch import load_file
    out = tmp_path / "features"
    summary = extract_corpus("iemocap", setup / "IEMOCAP", out, str(setup / model), layer,
                             batch_size=5, num_workers=0, progress=False)
    assert summary.extracted == 24 and summary.reused == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extractor"]["layer"] == layer
    assert manifest["extractor"]["normalize"] == (model == "hubert_large_like")
    for entry in manifest["utterances"][::4]:
        stored = load_file(out / entry["file"])["features"]
        assert stored.dtype == torch.float16 and stored.shape == (entry["length"], 32)
        audio = load_audio(os.path.join(setup / "IEMOCAP", entry["source"]))
        direct, last = _direct_features(setup / model, layer, audio,
                                        manifest["extractor"]["normalize"])
        assert stored.shape == direct.shape
        torch.testing.assert_close(stored.float(), direct, atol=3e-3, rtol=3e-3)
        if layer == 3 and model == "hubert_large_like":
            # the last layer's output, not the encoder's final LayerNorm of it (fairseq's
            # output_layer meaning, which the authors' code used)
            assert (stored.float() - last).abs().max() > 0.1


def test_extraction_resumes_and_refuses_other_settings(setup, tmp_path, capsys):
    out = tmp_path / "features"
    model = str(setup / "hubert_large_like")
    first = extract_corpus("iemocap", setup / "IEMOCAP", out, model, 2, num_workers=2,
                           progress=False)
    files = sorted((out / "features").iterdir())
    assert first.extracted == len(files) == 24
    # the fake corpus has sessions 1 and 2 only
    assert {p.name for p in first.skipped} == {"Session3", "Session4", "Session5"} | {
        os.path.join("Session1", "sentences", "wav", "Ses01F_impro01", n)
        for n in ("Ses01F_impro01_M020.wav", "Ses01F_impro01_F021.wav")}
    err = capsys.readouterr().err
    assert "Ses01F_impro01_M020.wav: file not found" in err and "5 files skipped" in err
    before = {p.name: p.stat().st_mtime_ns for p in files}

    second = extract_corpus("iemocap", setup / "IEMOCAP", out, model, 2, num_workers=0,
                            progress=False)
    assert (second.extracted, second.reused) == (0, 24)
    assert {p.name: p.stat().st_mtime_ns for p in files} == before

    files[0].unlink()                              # interrupted before this one
    files[1].write_bytes(files[1].read_bytes()[:20])  # or while writing it
    third = extract_corpus("iemocap", setup / "IEMOCAP", out, model, 2, num_workers=0,
                           progress=False)
    assert (third.extracted, third.reused) == (2, 22)
    assert len(json.loads((out / "manifest.json").read_text())["utterances"]) == 24

    with pytest.raises(ValueError, match="'layer': \\(2, 3\\)"):
        extract_corpus("iemocap", setup / "IEMOCAP", out, model, 3, num_workers=0,
                       progress=False)
    with pytest.raises(ValueError, match="layer=4 is out of range"):
        extract_corpus("iemocap", setup / "IEMOCAP", tmp_path / "x", model, 4, progress=False)


def test_long_clips_are_cut_and_reported(setup, tmp_path, capsys):
    make_meld(tmp_path / "MELD.Raw", per_split={"train": 1, "dev": 1, "test": 1})
    out = tmp_path / "features"
    summary = extract_corpus("meld", tmp_path / "MELD.Raw", out,
                             str(setup / "hubert_large_like"), 1, max_seconds=1.0,
                             num_workers=0, progress=False)
    long_clip = os.path.join("output_repeated_splits_test", "dia0_utt0.mp4")
    assert summary.truncated == [long_clip]
    assert f"cut to the first 1 s: {long_clip}" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    lengths = {u["id"]: u["length"] for u in manifest["utterances"]}
    assert lengths["test_dia0_utt0"] == 49  # 1 s at 50 frames/s, less the conv's edge
    assert manifest["truncated"] == [long_clip]
    again = extract_corpus("meld", tmp_path / "MELD.Raw", out, str(setup / "hubert_large_like"),
                           1, max_seconds=1.0, num_workers=0, progress=False)
    assert again.truncated == [long_clip] and again.extracted == 0


def test_cli_extract(setup, tmp_path, capsys):
    out = tmp_path / "features"
    argv = ["extract", "--corpus", "iemocap", "--root", str(setup / "IEMOCAP"), "--out", str(out),
            "--model", str(setup / "hubert_large_like"), "--layer", "2", "--workers", "0",
            "--no-progress"]
    assert cli.main(argv) == 0
    assert "iemocap: 24 extracted, 0 already done, 5 skipped" in capsys.readouterr().err
    assert cli.main(argv[:4] + [str(tmp_path)] + argv[5:]) == 2
    assert "is not IEMOCAP_full_release: expected Session1/" in capsys.readouterr().err


# ---- predict -----------------------------------------------------------------------------------

def _tiny_trained_like_checkpoint(path, extractor, fixed_length):
    """A tiny MSTR saved the way `mstr train` saves its best model, with the extractor
    settings of the features; its last layer is scaled up so that no two classes nearly tie."""
    from mstr_kernels.models import MSTRConfig, build_model
    from mstr_kernels.training.checkpoint import save_checkpoint
    torch.manual_seed(0)
    config = MSTRConfig(feature_dim=extractor["feature_dim"], num_classes=4, num_layers=1,
                        num_heads=2, levels=2, backend="reference")
    model = build_model("mstr", config).eval()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(10)
    meta = {"model": "mstr", "config": config.to_dict(),
            "class_names": ["angry", "happy", "neutral", "sad"], "extractor": extractor,
            "train_config": {"fixed_length": fixed_length}}
    save_checkpoint(path, model, meta)
    return model, meta


@pytest.mark.parametrize("fixed_length", [None, 10])
def test_predict_gives_the_model_probabilities_on_the_training_features(
        setup, tmp_path, capsys, fixed_length):
    from safetensors.torch import load_file
    out = tmp_path / "features"
    extract_corpus("iemocap", setup / "IEMOCAP", out, str(setup / "hubert_large_like"), 2,
                   num_workers=0, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    checkpoint = str(tmp_path / "model.safetensors")
    model, meta = _tiny_trained_like_checkpoint(checkpoint, manifest["extractor"], fixed_length)

    entries = manifest["utterances"][:3]
    files = [os.path.join(setup / "IEMOCAP", e["source"]) for e in entries]
    missing = str(tmp_path / "missing.wav")
    assert cli.main(["predict", *files, missing, "--checkpoint", checkpoint, "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert f"skipped {missing}: file not found" in captured.err
    assert [r["file"] for r in results] == files
    for entry, result in zip(entries, results):
        x = load_file(out / entry["file"])["features"].float()
        if fixed_length:
            x = torch.nn.functional.pad(x[:fixed_length], (0, 0, 0, max(0, fixed_length - len(x))))
        with torch.inference_mode():
            expected = torch.softmax(model(x[None]), dim=-1)[0]
        got = torch.tensor([result["probabilities"][c] for c in meta["class_names"]])
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
        assert result["prediction"] == meta["class_names"][int(expected.argmax())]

    assert cli.main(["predict", files[0], "--checkpoint", checkpoint]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "prediction", *meta["class_names"]]
    assert table[1].split()[0] == files[0]
    assert cli.main(["predict", missing, "--checkpoint", checkpoint]) == 1
