"""Several seeds (and folds) of one model on one dataset: runs, mean/std, results JSON, table."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import List, Optional, Sequence

import numpy as np

from ..models import MSTRConfig, count_params, build_model
from .distributed import DistContext
from .metrics import METRICS, summarize
from .trainer import RunResult, TrainConfig, train_run


def run_experiment(model_name: str, model_config: MSTRConfig, bundle, config: TrainConfig,
                   seeds: Sequence[int], out_dir: str, *, folds: Optional[Sequence[str]] = None,
                   ctx: DistContext = DistContext(), resume: bool = False) -> dict:
    """Every seed on every chosen fold. A seed's score is the mean over folds (IEMOCAP's 5
    sessions); the summary is the mean and std over seeds. Test scores are those of the epoch
    chosen on the validation data."""
    chosen = [f for f in bundle.folds if folds is None or f.name in folds]
    if folds is not None and len(chosen) != len(folds):
        known = [f.name for f in bundle.folds]
        raise ValueError(f"folds={list(folds)} not all in the dataset's folds {known}")
    runs: List[RunResult] = []
    start = time.time()
    for seed in seeds:
        for fold in chosen:
            run_dir = os.path.join(out_dir, f"seed{seed}", fold.name)
            runs.append(train_run(model_name, model_config, bundle, fold, config, seed, run_dir,
                                  ctx=ctx, resume=resume))
    per_seed = []
    for seed in seeds:
        mine = [r for r in runs if r.seed == seed]
        per_seed.append({k: float(np.mean([r.test[k] for r in mine])) for k in METRICS})
    results = {
        "dataset": bundle.name, "model": model_name, "config": model_config.to_dict(),
        "params": count_params(build_model(model_name, model_config)),
        "train_config": asdict(config), "seeds": list(seeds), "folds": [f.name for f in chosen],
        "world_size": ctx.world_size, "selection": "epoch with the best validation "
        f"{config.select_metric}; test scores at that epoch",
        "summary": summarize(per_seed), "per_seed": per_seed,
        "runs": [r.to_dict() for r in runs], "wall_seconds": time.time() - start,
    }
    if ctx.is_main:
        path = os.path.join(out_dir, "results.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
        os.replace(tmp, path)
    return results


def format_table(results: dict) -> str:
    c = results["config"]
    attention = "full attention" if c["attention"] == "full" else f"levels={c['levels']}, p={c['p']}"
    lines = [f"{results['dataset']} / {results['model']} ({attention}, "
             f"{results['params'] / 1e6:.3f}M params): test scores at the best validation "
             f"{results['train_config']['select_metric']} epoch",
             f"{'seed':>5s} {'fold':>12s} {'best ep':>7s} " + " ".join(f"{k:>7s}" for k in METRICS)
             + f" {'samples/s':>9s}"]
    for r in results["runs"]:
        lines.append(f"{r['seed']:5d} {r['fold']:>12s} {r['best_epoch']:7d} "
                     + " ".join(f"{r['test'][k]:7.2f}" for k in METRICS)
                     + f" {r['train_samples_per_s']:9.1f}")
    s = results["summary"]
    lines.append(f"{'mean':>5s} {'':>12s} {'':>7s} " + " ".join(f"{s[k]['mean']:7.2f}" for k in METRICS))
    lines.append(f"{'std':>5s} {'':>12s} {'':>7s} " + " ".join(f"{s[k]['std']:7.2f}" for k in METRICS))
    return "\n".join(lines)


def format_comparison(all_results: List[dict]) -> str:
    first = all_results[0]
    lines = [f"{first['dataset']}: test scores (mean +- std over seeds {first['seeds']}), "
             f"epochs chosen on validation {first['train_config']['select_metric']}",
             f"{'model':14s} {'params':>8s} " + " ".join(f"{k:>13s}" for k in METRICS)
             + f" {'samples/s':>9s}"]
    for r in all_results:
        name = r["model"] if r["model"] == "vanilla" else f"mstr levels={r['config']['levels']}"
        speed = np.mean([run["train_samples_per_s"] for run in r["runs"]])
        lines.append(f"{name:14s} {r['params'] / 1e6:7.3f}M " + " ".join(
            f"{r['summary'][k]['mean']:6.2f} +-{r['summary'][k]['std']:5.2f}" for k in METRICS)
            + f" {speed:9.1f}")
    return "\n".join(lines)
