"""Audio decoding to what HuBERT takes: 16 kHz mono float32.

WAV/FLAC/OGG go through soundfile (libsndfile); containers libsndfile cannot read (MELD's mp4
clips with 48 kHz AAC in 2 or 6 channels) go through PyAV (FFmpeg). Channels are averaged and
the rate is converted with soxr. A file that cannot be decoded, or holds no samples, raises
`AudioError` naming the file, so that corpus extraction can report it and go on.
"""
from __future__ import annotations

import os

import numpy as np

TARGET_SAMPLE_RATE = 16000

# extensions libsndfile reads; everything else is handed to FFmpeg through PyAV
_SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".w64", ".caf"}


class AudioError(RuntimeError):
    """A file that cannot be turned into audio samples (missing, corrupt, or empty)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_audio(path, sample_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to a 1-D float32 array at `sample_rate`, channels averaged."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, "file not found")
    ext = os.path.splitext(path)[1].lower()
    samples, rate = _decode_soundfile(path) if ext in _SOUNDFILE_EXTENSIONS else _decode_av(path)
    if samples.ndim == 2:  # (samples, channels)
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise AudioError(path, "no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(path, "non-finite samples")
    if rate != sample_rate:
        import soxr
        samples = soxr.resample(samples, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode_soundfile(path):
    import soundfile
    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=False)
    except Exception as e:  # libsndfile reports corrupt headers/data as several error types
        raise AudioError(path, f"cannot be decoded by soundfile ({e})") from e
    return samples, rate


def _decode_av(path):
    import av
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise AudioError(path, "has no audio stream")
            stream = container.streams.audio[0]
            # planar float keeps every channel; the channel mean below is the downmix
            to_float = av.AudioResampler(format="fltp")
            chunks, rate = [], stream.codec_context.sample_rate
            for frame in container.decode(stream):
                rate = frame.sample_rate
                for converted in to_float.resample(frame):
                    chunks.append(converted.to_ndarray())  # (channels, samples)
            for converted in to_float.resample(None):  # flush
                chunks.append(converted.to_ndarray())
    except AudioError:
        raise
    except Exception as e:  # FFmpeg errors (invalid data, truncated file) come as av.error.*
        raise AudioError(path, f"cannot be decoded by FFmpeg ({e})") from e
    if not chunks:
        raise AudioError(path, "no audio samples")
    return np.concatenate(chunks, axis=1).T, rate
