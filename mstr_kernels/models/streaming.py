"""Exact streaming inference of MSTR (SPEC section 3, Streaming).

Every layer of MSTR is local to tiles of p**levels frames: the input LayerNorm, the QKV and
output projections, the FFN and the blocks' LayerNorms act on each frame alone, and the fractal
attention op never crosses a tile (tiles start at frame 0, so a stream's tiles are the offline
sequence's tiles, and the op's last, partial tile depends only on its own frames). Only the mean
over frames and the classifier see the whole sequence, and the mean is a running sum divided by
the frame count. So `MSTRStream` runs each completed tile once, keeps the sum of its encoder
output, recomputes only the open (partial) tile, and its `logits()` equal
`model(frames_so_far[None])`.

Not streamable, and refused: the full-attention baseline (every frame attends to every frame),
and a model in training mode (dropout draws differ). The paper's fixed-length protocol (pad or
cut every utterance to a fixed frame count, zeros attended) is a property of how the features
are fed, not of the model: its output on a prefix is not the model on that prefix, so callers
refuse it (`mstr predict --stream` does).
"""
from __future__ import annotations

import math

import torch

from ..nn import MultiScaleAttention
from .transformer import SpeechTransformerClassifier


class MSTRStream:
    """Feed frames as they arrive; the estimate at any moment is the offline model's output on
    the frames so far.

        stream = MSTRStream(model.eval())
        for chunk in chunks:          # (t, F) tensors, any t >= 0
            stream.push(chunk)
            probs = stream.probs()    # == softmax(model(all_frames_so_far[None]))[0]

    State: at most one tile (p**levels frames) of input frames and one (F,) running sum, so
    memory is O(tile) whatever the stream's length. `tiles_per_call` completed tiles go through
    the encoder in one batch when a push brings many.
    """

    def __init__(self, model: SpeechTransformerClassifier, *, tiles_per_call: int = 32):
        if not isinstance(model, SpeechTransformerClassifier):
            raise TypeError(f"model must be an MSTR (mstr_kernels.models.MSTR), got "
                            f"{type(model).__name__} (pass the bare module, not a compiled or "
                            f"DDP wrapper)")
        if model.config.attention != "fractal":
            raise ValueError(f"model.config.attention={model.config.attention!r}: only MSTR "
                             f"(attention='fractal') is tile-local and streams exactly; full "
                             f"attention makes every frame depend on every other")
        if isinstance(tiles_per_call, bool) or not isinstance(tiles_per_call, int) \
                or tiles_per_call < 1:
            raise ValueError(f"tiles_per_call={tiles_per_call!r} must be a positive int")
        attentions = [block.attention for block in model.blocks]
        if not all(isinstance(a, MultiScaleAttention) for a in attentions):
            raise ValueError("every block of the model must use MultiScaleAttention to stream")
        # the op is local to tiles of p**levels frames; with several (p, levels) their lcm
        self.tile = math.lcm(*(a.p ** a.levels for a in attentions)) if attentions else 1
        self.model = model
        self.tiles_per_call = tiles_per_call
        weight = next(model.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.feature_dim = model.config.feature_dim
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new utterance."""
        self._open = torch.empty(0, self.feature_dim, device=self.device, dtype=self.dtype)
        # sum of the encoder output over the completed tiles, kept in float64 so that a long
        # stream loses nothing to rounding
        self._done_sum = torch.zeros(self.feature_dim, device=self.device, dtype=torch.float64)
        self._done_frames = 0
        self._open_sum = None  # the open tile's encoder output summed; None when stale
        self.tiles_run = 0  # completed tiles run through the encoder (each exactly once)

    @property
    def frames(self) -> int:
        """Frames pushed since the last reset."""
        return self._done_frames + self._open.shape[0]

    @property
    def open_frames(self) -> int:
        """Frames of the open (partial) tile, always < tile."""
        return self._open.shape[0]

    def _check_eval(self) -> None:
        if any(m.training for m in self.model.modules()):
            raise ValueError("the model is in training mode (dropout active): streaming is "
                             "exact only in eval mode; call model.eval()")

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """The model's layers before the mean, on (N, T, F) frames none of which is padding:
        the same modules in the same order as SpeechTransformerClassifier.forward."""
        h = self.model.input_norm(x)
        for block in self.model.blocks:
            h = block(h, None)
        return h

    @torch.inference_mode()
    def push(self, features: torch.Tensor) -> int:
        """Append (t, F) frames (any t >= 0, the model's dtype; moved to its device). Runs every
        tile they complete through the encoder; returns how many tiles were completed."""
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor (t, F), got "
                            f"{type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be (t, feature_dim={self.feature_dim}), got shape "
                             f"{tuple(features.shape)}")
        if features.dtype != self.dtype:
            raise TypeError(f"features.dtype={features.dtype} must equal the model's dtype "
                            f"{self.dtype} (the offline model takes that dtype too)")
        self._check_eval()
        if features.shape[0] == 0:
            return 0
        frames = torch.cat([self._open, features.to(self.device)])
        completed = frames.shape[0] // self.tile
        for first in range(0, completed, self.tiles_per_call):
            count = min(self.tiles_per_call, completed - first)
            tiles = frames[first * self.tile:(first + count) * self.tile]
            encoded = self._encode(tiles.reshape(count, self.tile, self.feature_dim))
            self._done_sum += encoded.sum(dim=(0, 1), dtype=torch.float64)
        self._done_frames += completed * self.tile
        self.tiles_run += completed
        # a copy, so that a long chunk is not kept alive through a view of its tail
        self._open = frames[completed * self.tile:].clone()
        self._open_sum = None
        return completed

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:
        """(C,) logits: model(frames_so_far[None])[0]."""
        if self.frames == 0:
            raise RuntimeError("MSTRStream.logits(): no frames pushed since the start or the "
                               "last reset (the model needs at least one frame)")
        self._check_eval()
        if self._open_sum is None:
            if self._open.shape[0]:
                encoded = self._encode(self._open[None])
                self._open_sum = encoded.sum(dim=(0, 1), dtype=torch.float64)
            else:
                self._open_sum = torch.zeros_like(self._done_sum)
        mean = ((self._done_sum + self._open_sum) / self.frames).to(self.dtype)
        return self.model.classifier(mean[None])[0]

    def probs(self) -> torch.Tensor:
        """(C,) class probabilities: softmax of `logits()`."""
        return torch.softmax(self.logits(), dim=-1)
