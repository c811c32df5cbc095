"""Packed batches against padded and length-bucketed batches of the same utterances: one epoch
of MSTR training steps (forward, cross-entropy, backward, Adam) per way of batching, its time
and the real (unpadded) frames per second.

Utterance lengths are drawn like IEMOCAP's HuBERT frames (50 Hz): log-normal with a mean of
about 225 frames (4.5 s), clipped to 50 .. 1500 frames (1 s .. 30 s). The ways of batching:
  padded:          random batches of --batch-size items, padded to the batch's longest;
  bucketed:        LengthBucketBatchSampler's batches (sorted within pools), padded;
  packed:          the padded run's random batches, packed (fractal_attention_varlen);
  packed-budget:   PackedBatchSampler's batches of about batch-size x mean-length frames.
Every way sees every utterance once per epoch. The ways run in alternating rounds (one epoch
each per round, after a warm-up round), so that a change in the machine's load hits them all
alike; times are the median over --repeats rounds. Results go to
benchmarks/results/packed-vs-padded-<device>-<date>.json.

    python benchmarks/packed_vs_padded.py [--device cpu] [--utterances 96] [--feature-dim 128]
        [--layers 2] [--heads 4] [--batch-size 16] [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mstr_kernels.bench import timing  # noqa: E402
from mstr_kernels.bench.report import environment, results_stem  # noqa: E402
from mstr_kernels.models import MSTR, MSTRConfig  # noqa: E402
from mstr_kernels.training.batching import (LengthBucketBatchSampler, PackCollate,  # noqa: E402
                                            PackedBatchSampler, PadCollate, cu_seqlens)

MEAN_FRAMES, MIN_FRAMES, MAX_FRAMES, SIGMA = 225.0, 50, 1500, 0.6


def utterance_lengths(n: int, seed: int) -> list:
    """Log-normal frame counts with mean MEAN_FRAMES (before clipping to MIN..MAX_FRAMES)."""
    g = torch.Generator().manual_seed(seed)
    mu = math.log(MEAN_FRAMES) - SIGMA ** 2 / 2
    raw = torch.empty(n, dtype=torch.float64).log_normal_(mu, SIGMA, generator=g)
    return raw.round().clamp(MIN_FRAMES, MAX_FRAMES).long().tolist()


def batchings(lengths, batch_size, seed):
    """{name: list of index batches}, every utterance once in each."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    random_batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    bucketed = LengthBucketBatchSampler(lengths, batch_size, seed=seed).global_batches()
    budget = round(batch_size * sum(lengths) / len(lengths))
    budgeted = PackedBatchSampler(lengths, budget, seed=seed).global_batches()
    return {"padded": random_batches, "bucketed": bucketed, "packed": random_batches,
            "packed-budget": budgeted}, budget


def make_inputs(name, batches, items, device):
    """Per batch: (model kwargs, labels, frames the model computes on)."""
    collate = PackCollate() if name.startswith("packed") else PadCollate()
    inputs = []
    for batch in batches:
        x, lens, labels = collate([items[i] for i in batch])
        if name.startswith("packed"):
            kwargs = {"x": x.to(device), "cu_seqlens": cu_seqlens(lens).to(device)}
            computed = x.shape[0]
        else:
            kwargs = {"x": x.to(device), "lengths": lens.to(device)}
            computed = x.shape[0] * x.shape[1]
        inputs.append((kwargs, labels.to(device), computed))
    return inputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--utterances", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--feature-dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed rounds (one epoch of each batching per round; median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared small CPU, a parallel region "
                    "waits for a descheduled thread on every op)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/"
                    "packed-vs-padded-<device>-<date>.json)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = utterance_lengths(args.utterances, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    items = [(torch.randn(n, args.feature_dim, generator=g), int(torch.randint(0, 4, (1,),
              generator=g))) for n in lengths]
    all_batches, budget = batchings(lengths, args.batch_size, args.seed)
    config = MSTRConfig(feature_dim=args.feature_dim, num_classes=4, num_layers=args.layers,
                        num_heads=args.heads, backend=args.backend)
    torch.manual_seed(args.seed)
    model = MSTR(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    real_frames = sum(lengths)
    env = environment(device)
    print(f"{args.utterances} utterances, {real_frames} frames (mean {real_frames / len(lengths):.0f}, "
          f"min {min(lengths)}, max {max(lengths)}); MSTR F={args.feature_dim} "
          f"layers={args.layers} heads={args.heads} p=3 levels=4 float32, "
          f"{env['threads']} threads on {env['device_name']}")

    inputs = {name: make_inputs(name, batches, items, device)
              for name, batches in all_batches.items()}

    def epoch(name):
        start = time.perf_counter()
        for kwargs, labels, _ in inputs[name]:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(**kwargs), labels).backward()
            opt.step()
        timing.synchronize(device)
        return 1e3 * (time.perf_counter() - start)

    times = {name: [] for name in inputs}
    for round_ in range(args.repeats + 1):  # round 0 warms up (allocator, caches, Adam state)
        for name in inputs:
            ms = epoch(name)
            if round_:
                times[name].append(ms)
        print(f"  round {round_}{' (warm-up)' if not round_ else ''}: " + ", ".join(
            f"{name} {ms:.0f} ms" for name, ms in
            ((n, t[-1] if t else float('nan')) for n, t in times.items())), flush=True)
    rows = []
    for name, batches in all_batches.items():
        ms = statistics.median(times[name])
        computed = sum(c for _, _, c in inputs[name])
        rows.append({"batching": name, "batches": len(batches), "epoch_ms": ms,
                     "epoch_ms_min": min(times[name]), "epoch_ms_max": max(times[name]),
                     "step_ms": ms / len(batches), "frames_per_s": real_frames / (ms / 1e3),
                     "computed_frames": computed, "padding_fraction": 1 - real_frames / computed})
        r = rows[-1]
        print(f"  {name:>14s}: {r['batches']:3d} batches, epoch {ms:9.1f} ms (min "
              f"{r['epoch_ms_min']:.1f}, max {r['epoch_ms_max']:.1f}), step {r['step_ms']:7.1f} "
              f"ms, {r['frames_per_s']:8.0f} frames/s, padding "
              f"{100 * r['padding_fraction']:4.1f}%", flush=True)
    by = {r["batching"]: r for r in rows}
    ratios = {f"{a}_over_{b}": by[a]["frames_per_s"] / by[b]["frames_per_s"]
              for a in ("packed", "packed-budget") for b in ("padded", "bucketed")}
    for k, v in ratios.items():
        print(f"  frames/s {k.replace('_', ' ')}: {v:.2f}x")
    result = {"benchmark": "packed_vs_padded", "environment": env,
              "config": {**vars(args), "frame_budget": budget, "p": 3, "levels": 4,
                         "dtype": "float32", "lengths": {"distribution": "log-normal",
                         "mean_target": MEAN_FRAMES, "sigma": SIGMA, "clip": [MIN_FRAMES,
                         MAX_FRAMES], "total": real_frames, "min": min(lengths),
                         "max": max(lengths)}},
             "rows": rows, "ratios": ratios}
    out = Path(args.json) if args.json else (REPO / "benchmarks" / "results" /
                                             f"packed-vs-padded-{results_stem(env)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {os.path.relpath(out, os.getcwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
