"""HuBERT features through transformers' `HubertModel`: one layer's hidden states, 50 frames/s.

Layer L (1-based) is the output of transformer layer L, as fairseq's
`extract_features(output_layer=L)` gives it (what the authors' code used) and as transformers 5
returns it in `hidden_states[L]`. It is taken with a forward hook on that layer rather than from
`hidden_states`, because transformers 4 applied the encoder's final LayerNorm of the
stable-layer-norm models (hubert-large) to the last entry of `hidden_states`: with the hook,
layer 24 means the same thing in every version. The layers above L are dropped before running.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..data.audio import TARGET_SAMPLE_RATE


class HubertFeatureExtractor:
    def __init__(self, model: str, layer: int, device: Optional[str] = None):
        from transformers import HubertModel, Wav2Vec2FeatureExtractor

        self.model_name = os.path.abspath(model) if os.path.isdir(model) else model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        hubert = HubertModel.from_pretrained(self.model_name)
        n_layers = hubert.config.num_hidden_layers
        if not 1 <= layer <= n_layers:
            raise ValueError(f"layer={layer} is out of range: {self.model_name} has layers "
                             f"1..{n_layers}")
        self.layer = layer
        hubert.encoder.layers = hubert.encoder.layers[:layer]
        self.model = hubert.eval().to(self.device)
        self._captured = None
        hubert.encoder.layers[layer - 1].register_forward_hook(self._capture)
        # "layer"-normed feature encoders (hubert-large) take padding with an attention mask;
        # "group"-normed ones (hubert-base) normalise over time, so padding would change the
        # features: those run one utterance at a time.
        self.supports_padding = hubert.config.feat_extract_norm == "layer"
        try:
            self.processor = Wav2Vec2FeatureExtractor.from_pretrained(self.model_name)
        except OSError:  # checkpoints saved without preprocessor_config.json
            self.processor = Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=TARGET_SAMPLE_RATE, padding_value=0.0,
                do_normalize=self.supports_padding, return_attention_mask=self.supports_padding)
        self.feature_dim = hubert.config.hidden_size
        self.min_samples = self._min_samples()

    def _capture(self, module, inputs, output):
        # transformers 4 layers return a tuple (hidden states, attention weights), 5 a tensor
        self._captured = output[0] if isinstance(output, tuple) else output

    @property
    def settings(self) -> dict:
        """What `mstr predict` needs to make the same features again; saved in the manifest."""
        return {"type": "hubert", "model": self.model_name, "layer": self.layer,
                "sample_rate": TARGET_SAMPLE_RATE, "frame_rate": 50,
                "feature_dim": self.feature_dim, "normalize": bool(self.processor.do_normalize),
                "dtype": "float16"}

    def _min_samples(self) -> int:
        n = 1
        while int(self.model._get_feat_extract_output_lengths(torch.tensor(n))) < 1:
            n += 1
        return n

    def num_frames(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)))

    @torch.inference_mode()
    def __call__(self, waveforms: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """Features (T_i, F) float32 on the CPU for a batch of 16 kHz mono waveforms."""
        if len(waveforms) > 1 and not self.supports_padding:
            return [f for w in waveforms for f in self([w])]
        inputs = self.processor(list(waveforms), sampling_rate=TARGET_SAMPLE_RATE, padding=True,
                                return_attention_mask=self.supports_padding, return_tensors="pt")
        kwargs = {"input_values": inputs["input_values"].to(self.device)}
        if self.supports_padding:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        self.model(**kwargs)
        hidden, self._captured = self._captured.float().cpu(), None
        return [hidden[i, :self.num_frames(len(w))] for i, w in enumerate(waveforms)]
