"""`mstr predict`: emotion probabilities of audio files with a trained checkpoint.

The checkpoint carries the class names and the extractor settings its training features were
made with (HuBERT model, layer, sample rate), so the same features are made here."""
from __future__ import annotations

import json
import sys


def register(sub):
    parser = sub.add_parser("predict", help="emotion probabilities of audio files",
                            description="Decode each file to 16 kHz mono, extract the features "
                                        "the checkpoint was trained on, and print the "
                                        "probability of each emotion.")
    parser.add_argument("files", nargs="*", metavar="FILE", help="audio files (wav, flac, mp4, ...)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by `mstr train`")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if visible)")
    parser.add_argument("--backend", default="auto",
                        help="fractal attention backend (default auto: the checkpoint's training "
                             "backend may not exist on this machine)")
    parser.add_argument("--hubert", default=None,
                        help="HuBERT checkpoint to use instead of the one recorded in the "
                             "checkpoint (same model, another place)")
    from .predict_stream import add_stream_arguments
    add_stream_arguments(parser)
    parser.set_defaults(func=run)


def make_extractor(meta, device=None, hubert=None):
    """The HuBERT extractor that made the checkpoint's training features (or `hubert`, the same
    model elsewhere)."""
    from mstr_kernels.features.hubert import HubertFeatureExtractor

    settings = meta["extractor"]
    if not settings or settings.get("type") != "hubert":
        raise ValueError(f"the checkpoint's extractor={settings!r} is not a HuBERT extractor: "
                         f"it was not trained on `mstr extract` features")
    extractor = HubertFeatureExtractor(hubert or settings["model"], int(settings["layer"]), device)
    if extractor.feature_dim != settings["feature_dim"]:
        raise ValueError(f"hubert={hubert!r} gives {extractor.feature_dim}-dim features, the "
                         f"checkpoint was trained on {settings['feature_dim']}")
    return extractor


def predict_files(files, model, meta, device=None, hubert=None):
    """[{file, prediction, probabilities: {class: p}}] and [(file, reason)] for failures.
    meta: a checkpoint's, with "class_names", "extractor" and "train_config" (its
    "fixed_length" is set when trained on the fixed-length protocol)."""
    import torch

    from mstr_kernels.data.audio import AudioError, load_audio

    settings = meta["extractor"]
    extractor = make_extractor(meta, device, hubert)
    model = model.to(extractor.device).eval()
    max_seconds = settings.get("max_seconds")
    # where `mstr train` records it, and `mstr evaluate` reads it
    fixed_length = meta.get("train_config", {}).get("fixed_length")
    class_names = list(meta["class_names"])
    results, failures = [], []
    for path in files:
        try:
            audio = load_audio(path, int(settings["sample_rate"]))
        except AudioError as e:
            failures.append((path, e.reason))
            continue
        if max_seconds:
            audio = audio[:int(max_seconds * settings["sample_rate"])]
        if len(audio) < extractor.min_samples:
            failures.append((path, f"shorter than one feature frame ({len(audio)} samples)"))
            continue
        # round through float16 like the stored training features
        features = extractor([audio])[0].to(torch.float16).float()
        if fixed_length:
            features = torch.nn.functional.pad(features[:fixed_length],
                                               (0, 0, 0, max(0, fixed_length - len(features))))
        with torch.inference_mode():
            logits = model(features.unsqueeze(0).to(extractor.device))
        probs = torch.softmax(logits.float(), dim=-1)[0].cpu().tolist()
        results.append({"file": path, "prediction": class_names[max(range(len(probs)),
                                                                    key=probs.__getitem__)],
                        "probabilities": dict(zip(class_names, probs))})
    return results, failures


def run(args) -> int:
    if args.stream is not None or not args.files:
        from .predict_stream import run_stream
        return run_stream(args)
    from mstr_kernels.commands.checks import check_device, load_checkpoint_arg
    device = check_device(args.device or "auto")
    model, meta = load_checkpoint_arg(args.checkpoint, "--checkpoint", device=device,
                                      backend=args.backend, need_extractor=True)
    results, failures = predict_files(args.files, model, meta, device, args.hubert)
    if args.json:
        print(json.dumps(results, indent=1))
    elif results:
        names = list(results[0]["probabilities"])
        width = max(len(r["file"]) for r in results)
        print(f"{'file':{width}s}  {'prediction':10s}  " + "  ".join(f"{n:>8s}" for n in names))
        for r in results:
            print(f"{r['file']:{width}s}  {r['prediction']:10s}  " +
                  "  ".join(f"{r['probabilities'][n]:8.4f}" for n in names))
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} files skipped", file=sys.stderr)
    return 0 if results else 1
