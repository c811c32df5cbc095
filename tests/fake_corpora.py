"""Small fake corpora laid out exactly like the real ones (see shared reference datasets.md),
with short synthetic audio, and a tiny randomly initialised HuBERT saved to a folder."""
from __future__ import annotations

import os

import numpy as np

SR = 16000


def tone(seconds, rate=SR, freq=220.0, channels=1, seed=0):
    """A tone plus a little noise, (samples,) or (samples, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (0.5 + 0.5 * c / channels)
                                             for c in range(channels)], axis=1)


def write_wav(path, audio, rate=SR):
    import soundfile
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, audio, rate)


def write_mp4(path, audio, rate=48000):
    """Audio-only mp4 with AAC, like MELD's clips (their video track is not read)."""
    import av
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    planar = np.ascontiguousarray(audio.reshape(len(audio), -1).T, dtype=np.float32)
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_corrupt(path, data=b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---- IEMOCAP -----------------------------------------------------------------------------------

IEMOCAP_CODES = ["ang", "hap", "exc", "neu", "sad", "ang", "exc", "neu", "sad", "hap", "neu",
                 "sad", "fru", "xxx"]  # per session: 12 in the 4-class task, 2 outside it


def make_iemocap(root, sessions=(1, 2, 3, 4, 5)):
    """Per session two dialogs, label files with annotator lines, the EmoEvaluation sub-folders.
    Session 1 also lists one utterance without a wav and holds one corrupt wav.
    Returns {utterance id: code} of every label line written."""
    labels = {}
    for s in sessions:
        dialogs = [f"Ses0{s}F_impro0{s}", f"Ses0{s}M_script01_1"]
        eval_dir = os.path.join(root, f"Session{s}", "dialog", "EmoEvaluation")
        for sub in ("Attribute", "Categorical", "Self-evaluation"):
            os.makedirs(os.path.join(eval_dir, sub), exist_ok=True)
        for d, dialog in enumerate(dialogs):
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            codes = IEMOCAP_CODES[d * 7:(d + 1) * 7]
            for n, code in enumerate(codes):
                utt = f"{dialog}_{'FM'[n % 2]}{n:03d}"
                labels[utt] = code
                start = 1.5 * n
                lines += [f"[{start:.4f} - {start + 1.2:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.0000]",
                          "C-E2:\tNeutral;\t()", "C-E3:\tAnger;\t(irritated)",
                          "A-E3:\tval 3; act 2; dom  2;\t()", ""]
                write_wav(os.path.join(root, f"Session{s}", "sentences", "wav", dialog,
                                       utt + ".wav"),
                          tone(0.25 + 0.05 * n, freq=150 + 40 * n, seed=s * 100 + d * 10 + n))
            with open(os.path.join(eval_dir, dialog + ".txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
            # files in the sub-folders look like label files but must not be read
            with open(os.path.join(eval_dir, "Categorical", dialog + "_e1_cat.txt"), "w") as f:
                f.write(f"[1.0000 - 2.0000]\t{dialog}_F099\tang\t[1.0, 1.0, 1.0]\n")
    if 1 in sessions:
        eval_dir = os.path.join(root, "Session1", "dialog", "EmoEvaluation")
        with open(os.path.join(eval_dir, "Ses01F_impro01.txt"), "a") as f:
            f.write("[20.0000 - 21.0000]\tSes01F_impro01_M020\tsad\t[2.0, 2.0, 2.0]\n"
                    "[22.0000 - 23.0000]\tSes01F_impro01_F021\tang\t[2.0, 2.0, 2.0]\n")
        labels["Ses01F_impro01_M020"] = "sad"  # its wav is missing
        labels["Ses01F_impro01_F021"] = "ang"  # its wav is corrupt
        write_corrupt(os.path.join(root, "Session1", "sentences", "wav", "Ses01F_impro01",
                                   "Ses01F_impro01_F021.wav"))
    return labels


# ---- MELD --------------------------------------------------------------------------------------

MELD_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
                "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]
MELD_EMOTIONS = ["neutral", "joy", "anger", "surprise", "sadness", "disgust", "fear"]


def make_meld(root, per_split=None):
    """Rows for every emotion in each split; defects: train dia0_utt99 corrupt, dev dia1_utt99
    missing, test clips with the final_videos_test prefix, 6-channel and long clips.
    Returns {split: [(dialogue, utterance, emotion)]} of the rows written."""
    import csv
    per_split = per_split or {"train": 2, "dev": 1, "test": 1}
    folders = {"train": os.path.join("train", "train_splits"), "dev": "dev_splits_complete",
               "test": "output_repeated_splits_test"}
    rows_written = {}
    for split, repeat in per_split.items():
        rows = [(d, u, MELD_EMOTIONS[(d + u) % 7]) for d in range(repeat) for u in range(7)]
        rows_written[split] = list(rows)
        folder = os.path.join(root, folders[split])
        os.makedirs(folder, exist_ok=True)
        for n, (d, u, _) in enumerate(rows):
            prefix = "final_videos_test" if split == "test" and n % 2 else ""
            channels = 6 if n % 3 == 2 else 2
            seconds = 2.5 if (split, n) == ("test", 0) else 0.3
            write_mp4(os.path.join(folder, f"{prefix}dia{d}_utt{u}.mp4"),
                      tone(seconds, rate=48000, freq=200 + 30 * u, channels=channels, seed=n))
        if split == "train":
            rows.append((0, 99, "anger"))
            write_corrupt(os.path.join(folder, "dia0_utt99.mp4"), b"\x00\x00\x00\x18ftypmp42bad")
        if split == "dev":
            rows.append((1, 99, "joy"))  # no clip
        with open(os.path.join(root, f"{split}_sent_emo.csv"), "w", newline="",
                  encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(MELD_COLUMNS)
            for n, (d, u, emotion) in enumerate(rows):
                writer.writerow([n + 1, "Oh my God, you\u2019re here!", f"Speaker{d}",
                                 emotion, "neutral", d, u, 1, 1, "00:00:01,000",
                                 "00:00:02,000"])
    return rows_written


# ---- CREMA-D -----------------------------------------------------------------------------------

CREMAD_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def make_cremad(root, actors=range(1001, 1009), sentences=("DFA", "IEO")):
    """Every actor x emotion x sentence, plus 1076_MTI_SAD_XX.wav without audio and a file
    whose name is not a CREMA-D name. Returns the clip names written (valid ones)."""
    folder = os.path.join(root, "AudioWAV")
    names = []
    for a in actors:
        for e, emotion in enumerate(CREMAD_EMOTIONS):
            for s, sentence in enumerate(sentences):
                name = f"{a}_{sentence}_{emotion}_{'XX' if s else 'HI'}.wav"
                write_wav(os.path.join(folder, name),
                          tone(0.2 + 0.02 * e, freq=180 + 20 * e, seed=a * 10 + e + s))
                names.append(name)
    write_wav(os.path.join(folder, "1076_MTI_SAD_XX.wav"), np.zeros(0, dtype=np.float32))
    names.append("1076_MTI_SAD_XX.wav")
    write_wav(os.path.join(folder, "notes_about_clips.wav"), tone(0.2))
    return names


# ---- a tiny HuBERT -----------------------------------------------------------------------------

def make_tiny_hubert(path, layers=3, stable_layer_norm=True, seed=0):
    """A randomly initialised HubertModel with hubert-large's layout (layer-normed conv
    encoder, stable layer norm) or hubert-base's (group norm), small enough for CPU tests."""
    import torch
    from transformers import HubertConfig, HubertModel
    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer" if stable_layer_norm else "group",
        do_stable_layer_norm=stable_layer_norm, conv_bias=stable_layer_norm)
    model = HubertModel(config).eval()
    model.save_pretrained(path)
    return model
