"""HuBERT features of a stream of audio, for `mstr predict --stream`.

What is exact and what is not:
- Given features, streaming MSTR is exact (`mstr_kernels.models.MSTRStream`).
- HuBERT is not local: its transformer layers attend over the whole input, its convolutional
  positional embedding spans 128 frames, the processor normalises the waveform over the whole
  input (hubert-large's `do_normalize`), and hubert-base's first conv layer normalises over
  time (group norm). So a frame's features change as later audio arrives, and features made
  from a window of the audio differ from those of the whole file.
- `mstr predict --stream` therefore has two modes. Exact (the default): after each tile of
  frames, features of the whole audio so far, then the model on them: every estimate is what
  `mstr predict` gives on the audio read so far, and the last one is `mstr predict` on the file;
  the work grows with the square of the length. Windowed (`--context`): `WindowedFeatures`
  below makes each frame once, from a window of audio around it, and the frames go through
  `MSTRStream`: linear work and O(window) memory, the estimate differs from the whole-file one
  by the features' window error (measured by `feature_window_error`).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch


def frame_geometry(extractor) -> Tuple[int, int]:
    """(hop, receptive field) in samples of the extractor's conv feature encoder: frame i is
    computed from samples [hop * i, hop * i + receptive). HuBERT: (320, 400)."""
    config = extractor.model.config
    hop = math.prod(config.conv_stride)
    receptive = 1
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        receptive = (receptive - 1) * stride + kernel
    return hop, receptive


def samples_for_frames(frames: int, hop: int, receptive: int) -> int:
    """Fewest samples that give `frames` >= 1 feature frames."""
    return hop * (frames - 1) + receptive


def features_of(extractor, audio: np.ndarray) -> torch.Tensor:
    """(T, F) float32 features of one waveform, rounded through float16 as the stored training
    features are (what `mstr predict` does)."""
    return extractor([audio])[0].to(torch.float16).float()


class WindowedFeatures:
    """Features of a growing waveform, each frame made once and final.

    Frame i is taken from a run of the extractor on audio that covers at least
    `context` frames before it and `lookahead` frames after it (clipped at the start and at the
    end of the stream); frames are made in batches, so most see more. Holding at most the
    context, one batch and the lookahead of audio.
    """

    def __init__(self, extractor, context_frames: int, lookahead_frames: int = 0):
        for name, value in (("context_frames", context_frames),
                            ("lookahead_frames", lookahead_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an int >= 0")
        self.extractor = extractor
        self.context, self.lookahead = context_frames, lookahead_frames
        self.hop, self.receptive = frame_geometry(extractor)
        self.reset()

    def reset(self) -> None:
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # stream sample index of self._audio[0]
        self._samples = 0      # samples pushed
        self.frames_made = 0

    def _frames_available(self, final: bool) -> int:
        """Frames whose lookahead is in (all frames of the audio at the end of the stream)."""
        if self._samples < self.receptive:
            return 0
        total = (self._samples - self.receptive) // self.hop + 1
        return total if final else max(0, total - self.lookahead)

    def push(self, samples: np.ndarray, final: bool = False) -> torch.Tensor:
        """Append 16 kHz mono float32 samples; returns the (t, F) frames made final by them
        (t may be 0). `final=True` marks the end of the stream: every remaining frame is made."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._audio = np.concatenate([self._audio, samples])
        self._samples += samples.size
        first, end = self.frames_made, self._frames_available(final)
        if end <= first:
            return torch.zeros(0, self.extractor.feature_dim)
        start_frame = max(0, first - self.context)
        start = start_frame * self.hop
        stop = min(self._samples, samples_for_frames(end + self.lookahead, self.hop,
                                                     self.receptive))
        window = self._audio[start - self._audio_start:stop - self._audio_start]
        features = features_of(self.extractor, window)[first - start_frame:end - start_frame]
        self.frames_made = end
        # keep what later frames need: from their context on
        keep_from = max(0, end - self.context) * self.hop
        self._audio = self._audio[keep_from - self._audio_start:]
        self._audio_start = keep_from
        return features

    def finish(self) -> torch.Tensor:
        """The frames left at the end of the stream."""
        return self.push(np.zeros(0, dtype=np.float32), final=True)


def feature_window_error(extractor, audio: np.ndarray, context_frames: int,
                         lookahead_frames: int, block_frames: int) -> dict:
    """How far windowed features are from the whole-file features on `audio`, pushed in blocks
    of `block_frames` frames: max and relative (Frobenius) difference."""
    hop, receptive = frame_geometry(extractor)
    whole = features_of(extractor, audio)
    stream = WindowedFeatures(extractor, context_frames, lookahead_frames)
    parts, pushed = [], 0
    first_block = samples_for_frames(block_frames, hop, receptive)
    while pushed < len(audio):
        step = first_block if pushed == 0 else block_frames * hop
        parts.append(stream.push(audio[pushed:pushed + step]))
        pushed += step
    parts.append(stream.finish())
    windowed = torch.cat(parts)
    assert windowed.shape == whole.shape, (windowed.shape, whole.shape)
    diff = windowed - whole
    return {"frames": int(whole.shape[0]), "max_abs": float(diff.abs().max()),
            "relative": float(diff.norm() / whole.norm())}
