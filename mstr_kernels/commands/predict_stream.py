"""`mstr predict --stream SOURCE`: an emotion estimate per tile of frames as the audio is read.

SOURCE is an audio file (decoded to 16 kHz mono as `mstr predict` decodes it, then read in
steps of one tile) or `-`: raw 16 kHz mono samples on standard input, little-endian float32 in
[-1, 1] (`--raw-format f32le`, the default; `ffmpeg -i IN -f f32le -ac 1 -ar 16000 -` writes it)
or 16-bit signed integers (`--raw-format s16le`).

Exact mode (default): after each tile, the features of the whole audio so far and the model on
them, so each line is `mstr predict` on the audio read so far and the last is `mstr predict` on
the whole input. Windowed mode (`--context SECONDS`): each frame's features once, from a window
of audio, through `MSTRStream`; linear work, not exact (see mstr_kernels/features/streaming.py).
"""
from __future__ import annotations

import json
import sys
import time

RAW_FORMATS = {"f32le": ("<f4", 1.0), "s16le": ("<i2", 1.0 / 32768)}


def add_stream_arguments(parser) -> None:
    group = parser.add_argument_group("streaming")
    group.add_argument("--stream", metavar="SOURCE", default=None,
                       help="print an estimate per tile of frames as the audio is read: an audio "
                            "file, or - for raw 16 kHz mono samples on standard input (see "
                            "--raw-format)")
    group.add_argument("--raw-format", choices=sorted(RAW_FORMATS), default="f32le",
                       help="sample format of --stream - (default f32le: little-endian float32 "
                            "in [-1, 1]; s16le: 16-bit signed little-endian)")
    group.add_argument("--context", type=float, default=None, metavar="SECONDS",
                       help="windowed mode: make each frame's features once from SECONDS of audio "
                            "before it (linear work, not exact: HuBERT sees the whole input); "
                            "default: exact, HuBERT over all the audio so far at each tile")
    group.add_argument("--lookahead", type=float, default=0.5, metavar="SECONDS",
                       help="windowed mode: audio after each frame that its features wait for "
                            "(default 0.5; adds that much latency)")


def _user_error(message):
    """A mistake on the command line, as the other commands report them (one line)."""
    return ValueError(message)


def _check_args(args):
    if args.files:
        raise _user_error(f"--stream: give audio FILEs or --stream SOURCE, not both (got "
                          f"FILEs {args.files})")
    if args.stream is None:
        raise _user_error("no input: give audio FILEs, or --stream SOURCE for one file or - "
                          "(standard input)")
    for name in ("context", "lookahead"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise _user_error(f"--{name}={value} must be >= 0 seconds")


def _check_streamable(meta):
    fixed = (meta.get("train_config") or {}).get("fixed_length")
    if fixed:
        raise _user_error(f"--stream: the checkpoint was trained with the fixed-length protocol "
                          f"(fixed_length={fixed}: every utterance padded or cut to {fixed} "
                          f"frames, zeros attended), so its estimate on a prefix is not the "
                          f"model on that prefix: streaming is refused; use `mstr predict "
                          f"FILE`")


def _blocks_from_stdin(raw_format, first, step, limit):
    """Sample blocks of `first`, then `step` samples read from standard input (the last may be
    shorter), at most `limit` samples in all (None: no limit)."""
    import numpy as np
    dtype, scale = RAW_FORMATS[raw_format]
    width = np.dtype(dtype).itemsize
    source, size, read = sys.stdin.buffer, first, 0
    while limit is None or read < limit:
        if limit is not None:
            size = min(size, limit - read)
        data = source.read(size * width)
        if not data:
            return
        if len(data) % width:
            print(f"note: the input ended inside a sample: its last {len(data) % width} "
                  f"byte(s) are dropped", file=sys.stderr)
            data = data[:len(data) - len(data) % width]
        block = np.frombuffer(data, dtype=dtype).astype(np.float32) * np.float32(scale)
        if not np.all(np.isfinite(block)):
            raise _user_error(f"--stream -: standard input holds non-finite samples (is it "
                              f"--raw-format {raw_format}?)")
        read += block.size
        yield block
        if block.size < size:
            return
        size = step


def _blocks_of(audio, first, step):
    """A decoded waveform in blocks of `first`, then `step` samples."""
    start, size = 0, first
    while start < len(audio):
        yield audio[start:start + size]
        start += size
        size = step


class _Printer:
    def __init__(self, class_names, as_json, source, mode):
        self.class_names, self.as_json = class_names, as_json
        if not as_json:
            print(f"stream {source}: {mode}")
            print(f"{'time_s':>8s}  {'frames':>6s}  {'prediction':10s}  " +
                  "  ".join(f"{n:>8s}" for n in class_names))

    def estimate(self, seconds, frames, probs, final=False, source=None, **extra):
        best = self.class_names[max(range(len(probs)), key=probs.__getitem__)]
        if self.as_json:
            print(json.dumps({"time_s": round(seconds, 4), "frames": frames, "prediction": best,
                              "probabilities": dict(zip(self.class_names, probs)),
                              "final": final, **({"source": source} if final else {}),
                              **extra}), flush=True)
        else:
            label = "end" if final else ""
            print(f"{seconds:8.2f}  {frames:6d}  {best:10s}  " +
                  "  ".join(f"{p:8.4f}" for p in probs) + (f"  {label}" if label else ""),
                  flush=True)


def run_stream(args) -> int:
    import numpy as np
    import torch

    from mstr_kernels.commands.predict import make_extractor
    from mstr_kernels.data.audio import AudioError, load_audio
    from mstr_kernels.features.streaming import (WindowedFeatures, features_of, frame_geometry,
                                                 samples_for_frames)
    from mstr_kernels.models import MSTRStream
    from mstr_kernels.training.checkpoint import load_model

    _check_args(args)
    model, meta = load_model(args.checkpoint, backend=args.backend)
    _check_streamable(meta)
    extractor = make_extractor(meta, args.device, args.hubert)
    model = model.to(extractor.device).eval()
    settings = meta["extractor"]
    rate = int(settings["sample_rate"])
    hop, receptive = frame_geometry(extractor)
    windowed = args.context is not None
    # exact mode runs the offline model on all frames at each step: any model; windowed mode
    # streams the model: MSTRStream refuses one that is not tile-local
    stream = MSTRStream(model) if windowed else None
    tile = model.config.p ** model.config.levels
    # windowed streams are not cut: their cost is linear in the length
    max_seconds = None if windowed else settings.get("max_seconds")
    limit = int(max_seconds * rate) if max_seconds else None
    first, step = samples_for_frames(tile, hop, receptive), tile * hop
    source = args.stream
    if source == "-":
        blocks = _blocks_from_stdin(args.raw_format, first, step, limit)
    else:
        try:
            audio = load_audio(source, rate)  # decoded as `mstr predict` decodes it
        except AudioError as e:
            print(f"skipped {source}: {e.reason}", file=sys.stderr)
            return 1
        blocks = _blocks_of(audio[:limit], first, step)
    if windowed:
        frame_rate = rate / hop
        features = WindowedFeatures(extractor, round(args.context * frame_rate),
                                    round(args.lookahead * frame_rate))
        mode = (f"windowed features ({args.context:g} s context, {args.lookahead:g} s "
                f"lookahead; not exact), tile {tile} frames = {tile * hop / rate:g} s")
    else:
        mode = (f"exact (features of all the audio so far at each tile), tile {tile} frames "
                f"= {tile * hop / rate:g} s")
    printer = _Printer(list(meta["class_names"]), args.json, source, mode)

    so_far, samples, compute, last = [], 0, 0.0, None
    exhausted = False
    while not exhausted:
        block = next(blocks, None)
        exhausted = block is None
        started = time.perf_counter()
        if block is not None:
            samples += block.size
        if windowed:
            new = features.finish() if exhausted else features.push(block)
            stream.push(new.to(extractor.device))
            frames = stream.frames
            probs = torch.softmax(stream.logits().float(), -1).cpu().tolist() if frames else None
        elif block is not None:
            so_far.append(block)
            frames = 0 if samples < receptive else (samples - receptive) // hop + 1
            probs = None
            if frames:
                x = features_of(extractor, np.concatenate(so_far))
                with torch.inference_mode():
                    logits = model(x[None].to(extractor.device))
                probs = torch.softmax(logits.float(), dim=-1)[0].cpu().tolist()
        compute += time.perf_counter() - started
        if exhausted:
            break
        if probs is not None:
            last = (samples / rate, frames, probs)
            printer.estimate(*last)
    if windowed and probs is not None:
        last = (samples / rate, frames, probs)
    if last is None:
        print(f"skipped {source}: shorter than one feature frame ({samples} samples at "
              f"{rate} Hz, {receptive} needed)", file=sys.stderr)
        return 1
    seconds = samples / rate
    factor = compute / seconds
    printer.estimate(*last, final=True, source=source, real_time_factor=round(factor, 4),
                     compute_s=round(compute, 4))
    if limit is not None and samples >= limit:
        print(f"note: read the first {max_seconds:g} s only, the checkpoint's max_seconds "
              f"(as `mstr predict` cuts); --context streams have no limit", file=sys.stderr)
    if not args.json:
        print(f"real-time factor {factor:.3f} ({compute:.2f} s of compute for {seconds:.2f} s "
              f"of audio)")
    return 0
