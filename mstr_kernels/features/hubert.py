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


class ModelNotAvailable(ValueError):
    """The HuBERT checkpoint can be neither found locally nor downloaded: says what to give."""


LOCAL_HINT = ("give a local folder with a transformers HubertModel checkpoint (config.json and "
              "the weights; HubertModel.from_pretrained(NAME).save_pretrained(DIR) writes one on a "
              "machine online)")


def _offline() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def locate_model(model: str):
    """(name or absolute folder, local_files_only) for `from_pretrained`, or ModelNotAvailable
    at once: a path that does not exist, a folder that is no checkpoint, a hub name neither in
    the local cache nor reachable (one quick probe instead of transformers' retries)."""
    if os.path.exists(model):
        if not os.path.isdir(model):
            raise ModelNotAvailable(f"{model!r} is a file, not a checkpoint folder: {LOCAL_HINT}")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ModelNotAvailable(f"{model!r} has no config.json, so it is no transformers "
                                    f"checkpoint: {LOCAL_HINT}")
        return os.path.abspath(model), True
    parts = model.replace("\\", "/").split("/")
    if model.startswith((".", "/", "~")) or len(parts) > 2 or not all(parts):
        raise ModelNotAvailable(f"{model!r}: no such folder (and not a hub name "
                                f"'namespace/name'): {LOCAL_HINT}")
    from transformers.utils import cached_file
    try:  # in the local cache: no network needed
        if cached_file(model, "config.json", local_files_only=True,
                       _raise_exceptions_for_missing_entries=False) is not None:
            return model, True
    except OSError:
        pass
    if _offline():
        raise ModelNotAvailable(f"{model!r} is not in the local model cache and HF_HUB_OFFLINE "
                                f"is set: {LOCAL_HINT}")
    import huggingface_hub
    try:
        huggingface_hub.model_info(model, timeout=10)
    except Exception as e:  # noqa: BLE001  (httpx / requests / hub errors, by version)
        not_found = type(e).__name__ in ("RepositoryNotFoundError", "GatedRepoError")
        what = ("is not a model on the hub" if not_found else
                f"is not in the local model cache and the model hub is unreachable "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        raise ModelNotAvailable(f"{model!r} {what}: {LOCAL_HINT}") from e
    return model, False


class HubertFeatureExtractor:
    def __init__(self, model: str, layer: int, device: Optional[str] = None):
        from transformers import HubertModel, Wav2Vec2FeatureExtractor

        self.model_name, local_only = locate_model(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        hubert = HubertModel.from_pretrained(self.model_name, local_files_only=local_only)
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
            self.processor = Wav2Vec2FeatureExtractor.from_pretrained(
                self.model_name, local_files_only=local_only)
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
