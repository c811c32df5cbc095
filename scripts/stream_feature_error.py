"""How far windowed HuBERT features (`mstr predict --stream --context`) are from whole-file
features, on synthetic tones through the tiny random HuBERT that the tests make.

    PYTHONPATH=.:tests python scripts/stream_feature_error.py [--model DIR] [--seconds 10]

With --model, a saved transformers HubertModel folder is measured instead (e.g. hubert-large).
"""
import argparse
import tempfile

import numpy as np

from fake_corpora import make_tiny_hubert, tone
from mstr_kernels.features.hubert import HubertFeatureExtractor
from mstr_kernels.features.streaming import feature_window_error

# (context, lookahead) in frames of 20 ms
SETTINGS = ((0, 0), (81, 0), (250, 0), (1000, 0), (81, 25), (250, 50))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HubertModel folder (default: tiny random)")
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    audio = np.concatenate([tone(1.0, freq=f, seed=i) * a for i, (f, a) in enumerate(
        zip(rng.uniform(100, 400, args.seconds), rng.uniform(0.2, 1.5, args.seconds)))])
    with tempfile.TemporaryDirectory() as tmp:
        models = [(args.model, args.model, args.layer or 1)] if args.model else []
        if not models:
            for name, stable in (("tiny hubert-large layout", True),
                                 ("tiny hubert-base layout", False)):
                make_tiny_hubert(f"{tmp}/{stable}", layers=3, stable_layer_norm=stable)
                models += [(name, f"{tmp}/{stable}", layer) for layer in (1, 3)]
        for name, path, layer in models:
            extractor = HubertFeatureExtractor(path, layer)
            for context, lookahead in SETTINGS:
                error = feature_window_error(extractor, audio, context, lookahead, 81)
                print(f"{name} layer {layer}: context {context / 50:5.2f} s, lookahead "
                      f"{lookahead / 50:4.2f} s: relative {error['relative']:.4f}, "
                      f"max abs {error['max_abs']:.4f} over {error['frames']} frames")


if __name__ == "__main__":
    main()
