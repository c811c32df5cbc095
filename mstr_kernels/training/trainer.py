"""One training run (one seed, one fold): Adam + cross-entropy, length-bucketed batches, model
selection on the validation part only (SPEC section 3), checkpoints that resume bit-exactly.

The step loop never synchronizes the device except to log: the running loss stays a device
tensor and is read every `log_every` steps; Adam is the fused one (which also takes fp16's
gradient scaling without a host read). On CUDA the model is compiled by default
(`models.training_speed`), with batches padded to a few fixed lengths and a fixed number of rows,
so that it compiles once per length bucket.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..models import MSTRConfig, build_model
from ..models.training_speed import (COMPILE_MODES, compile_by_default, compile_model,
                                     make_adam)
from .batching import (IGNORE_LABEL, LengthBucketBatchSampler, PackCollate, PackedBatchSampler,
                       PadCollate, cu_seqlens, length_buckets, sequence_lengths)
from .checkpoint import load_checkpoint, prefixed, restore_optimizer, save_checkpoint
from .distributed import DistContext, all_gather_rows
from .metrics import METRICS, classification_metrics
from .seeding import rng_state_tensors, seed_everything, set_rng_state_tensors

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    batch_size: int = 32
    fixed_length: Optional[int] = None  # None: pad per batch + lengths masks; N: paper protocol
    select_metric: str = "UA"
    amp: str = "none"
    compile: Optional[bool] = None  # None: on CUDA yes, on the CPU no (models.training_speed)
    compile_mode: Optional[str] = None  # None: the device's default (models.training_speed)
    device: str = "auto"
    workers: Optional[int] = None  # None: 4 on CUDA (loading overlaps compute), 0 on CPU
    log_every: int = 10
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends)
    progress: bool = True  # progress bars (only on a terminal)
    quiet: bool = False  # no output at all (also no per-epoch validation lines)
    # Packed batches (MSTR only): the items' frames concatenated, no padding. batch_frames N:
    # batches of about N frames (PackedBatchSampler); None: the length-bucketed batches of
    # batch_size items, packed (the same batches, so the same metrics, as the padded run).
    packed: bool = False
    batch_frames: Optional[int] = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp={self.amp!r} must be one of {sorted(AMP_DTYPES)}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r} must be one of {COMPILE_MODES}")
        if self.packed and self.fixed_length is not None:
            raise ValueError("packed=True trains without padding: fixed_length must be None")
        if self.batch_frames is not None and (not self.packed or self.batch_frames < 1):
            raise ValueError(f"batch_frames={self.batch_frames} needs packed=True and must be >= 1")
        if self.select_metric not in METRICS:
            raise ValueError(f"select_metric={self.select_metric!r} must be one of {METRICS}")


@dataclass
class RunResult:
    seed: int
    fold: str
    best_epoch: int
    valid: Dict[str, float]
    test: Dict[str, float]
    history: List[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_samples_per_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
    return device


def _autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batch_shapes(model_config: MSTRConfig, datasets, config: "TrainConfig", world_size: int):
    """(buckets, rows) for PadCollate when the model is compiled: lengths on the bucket ladder
    of unit p**levels up to the longest item of any split (fixed_length: that one length), and
    each process's share of a global batch as the row count."""
    rows = -(-config.batch_size // world_size)
    if config.fixed_length is not None:
        return None, rows
    longest = max(max(sequence_lengths(d), default=1) for d in datasets)
    return length_buckets(longest, model_config.p ** model_config.levels), rows


def _train_logits(net, x, lengths, config: TrainConfig):
    if config.packed:
        return net(x, cu_seqlens=cu_seqlens(lengths))
    return net(x, None if config.fixed_length else lengths)


def _train_batches(fold, config: TrainConfig, seed: int, ctx: DistContext, buckets, rows):
    """The training batch sampler and collate: length buckets, or packed batches."""
    lengths = sequence_lengths(fold.train)
    if config.batch_frames:
        sampler = PackedBatchSampler(lengths, config.batch_frames, seed=seed, rank=ctx.rank,
                                     world_size=ctx.world_size)
    else:
        sampler = LengthBucketBatchSampler(lengths, config.batch_size, seed=seed, rank=ctx.rank,
                                           world_size=ctx.world_size)
    if config.packed:
        return sampler, PackCollate()
    return sampler, PadCollate(config.fixed_length, buckets=buckets, rows=rows)


def _loader(dataset, batch_sampler, collate, device, workers, generator=None):
    if workers is None:
        workers = 4 if device.type == "cuda" else 0
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, generator=generator)


@torch.no_grad()
def evaluate_model(model, dataset, num_classes: int, *, batch_size: int = 64,
                   fixed_length: Optional[int] = None, device=torch.device("cpu"),
                   amp: str = "none", ctx: DistContext = DistContext(),
                   workers: Optional[int] = 0, buckets=None, pad_rows: Optional[int] = None) -> dict:
    """Metrics (WA, UA, WF1, loss) over a dataset; under DDP each rank runs a shard and the
    predictions are gathered, so every rank returns the metrics of the whole dataset.
    `buckets`, `pad_rows`: pad batches to fixed shapes (a compiled model; see PadCollate)."""
    was_training = model.training
    model.eval()
    lengths = sequence_lengths(dataset)
    mine = sorted(range(ctx.rank, len(dataset), ctx.world_size), key=lambda i: lengths[i])
    batches = [mine[s:s + batch_size] for s in range(0, len(mine), batch_size)]
    rows = []
    collate = PadCollate(fixed_length, buckets=buckets, rows=pad_rows)
    for (x, lens, y), idx in zip(_loader(dataset, batches, collate, device, workers), batches):
        x, lens, y = (t.to(device, non_blocking=True) for t in (x, lens, y))
        with _autocast(device, amp):
            logits = model(x, None if fixed_length else lens)
        # padding rows (PadCollate's `rows`) come last: only the items' rows count
        logits, y = logits[:len(idx)], y[:len(idx)]
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        rows.append(torch.stack([torch.tensor(idx, device=device, dtype=torch.float64),
                                 y.double(), logits.argmax(-1).double(), loss.double()], 1))
    local = torch.cat(rows) if rows else torch.zeros(0, 4, dtype=torch.float64, device=device)
    every = all_gather_rows(ctx, local).cpu()
    every = every[every[:, 0].argsort()]
    model.train(was_training)
    labels, preds = every[:, 1].long().numpy(), every[:, 2].long().numpy()
    result = classification_metrics(labels, preds, num_classes)
    result["loss"] = float(every[:, 3].mean())
    return result


def train_run(model_name: str, model_config: MSTRConfig, bundle, fold, config: TrainConfig,
              seed: int, run_dir: str, *, ctx: DistContext = DistContext(), resume: bool = False,
              step_hook: Optional[Callable[[int], None]] = None) -> RunResult:
    """Train one model on one fold with one seed; writes run_dir/last.safetensors (resume) and
    run_dir/best.safetensors (the validation-selected model). step_hook(global_step) is called
    after every optimizer step."""
    device = resolve_device(config.device, ctx)
    if config.packed and model_name != "mstr":
        raise ValueError(f"packed batches need fractal attention (model 'mstr'), got "
                         f"model={model_name!r}")
    last_path, best_path = os.path.join(run_dir, "last.safetensors"), \
        os.path.join(run_dir, "best.safetensors")
    seed_everything(seed)
    model = build_model(model_name, model_config).to(device)  # same init on every rank
    torch.manual_seed(seed * 1009 + ctx.rank + 1)  # each rank's own dropout stream
    optimizer = make_adam(model.parameters(), config.lr, device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    meta_base = {"model": model_name, "config": model_config.to_dict(),
                 "class_names": list(bundle.class_names), "extractor": bundle.extractor,
                 "dataset": bundle.name, "dataset_options": bundle.options,
                 "features_dir": bundle.features_dir,
                 "fold": fold.name, "seed": seed,
                 "train_config": asdict(config), "world_size": ctx.world_size}

    epoch, start_batch, global_step = 0, 0, 0
    history: List[dict] = []
    best = {"epoch": -1, "score": None, "valid": None}  # JSON-clean before the first epoch
    train_seconds, train_samples = 0.0, 0
    if resume and ctx.is_main and os.path.isdir(run_dir):
        for name in os.listdir(run_dir):  # a kill during a write leaves its temporary behind
            if name.startswith(".tmp-") and name.endswith(".safetensors"):
                os.unlink(os.path.join(run_dir, name))
    if resume and os.path.exists(last_path):
        tensors, meta = load_checkpoint(last_path, "cpu")
        if meta.get("finished"):
            if ctx.is_main and not config.quiet:
                tqdm.write(f"seed {seed} {fold.name}: finished before, result kept ({last_path})")
            return RunResult(**meta["result"])
        if meta["world_size"] != ctx.world_size:
            raise ValueError(f"checkpoint {last_path!r} was written with world_size="
                             f"{meta['world_size']}, this run has {ctx.world_size}")
        model.load_state_dict(prefixed(tensors, "model."))
        restore_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items()}, meta)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        set_rng_state_tensors(prefixed(tensors, f"extra.rng.rank{ctx.rank}."))
        pos = meta["position"]
        epoch, start_batch, global_step = pos["epoch"], pos["batch"], pos["global_step"]
        history, best = meta["history"], meta["best"]
        train_seconds, train_samples = meta["train_seconds"], meta["train_samples"]
        if ctx.is_main and not config.quiet:
            tqdm.write(f"seed {seed} {fold.name}: resumed from {last_path} at epoch "
                       f"{epoch + 1}/{config.epochs}, batch {start_batch}, step {global_step}")

    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    compiling = config.compile if config.compile is not None else compile_by_default(device)
    buckets, rows, eval_rows = None, None, None
    eval_net = model
    if compiling:
        buckets, rows = _batch_shapes(model_config, (fold.train, fold.valid, fold.test), config,
                                      ctx.world_size)
        eval_rows = 2 * config.batch_size
        # One graph per bucket for training and one for evaluation (grad mode and
        # train/eval differ), and a spare for a last batch too big to pad (see the sampler).
        graphs = 2 * len(buckets or [0]) + 2
        compiled = compile_model(net, device, mode=config.compile_mode, graphs=graphs)
        # DDP's wrapper is for training steps: evaluation compiles the bare model
        eval_net = compiled if net is model else compile_model(model, device,
                                                               mode=config.compile_mode,
                                                               graphs=graphs)
        net = compiled

    sampler, collate = _train_batches(fold, config, seed, ctx, buckets, rows)
    loader = _loader(fold.train, sampler, collate, device, config.workers,
                     generator=torch.Generator().manual_seed(seed))
    eval_kw = dict(batch_size=2 * config.batch_size, fixed_length=config.fixed_length,
                   device=device, amp=config.amp, ctx=ctx, workers=config.workers,
                   buckets=buckets, pad_rows=eval_rows)

    def checkpoint(path, position, finished=False, result=None):
        rng = {f"rng.rank{r}.{k}": v for r, state in enumerate(_gather_rng(ctx, device))
               for k, v in state.items()}
        meta = dict(meta_base, position=position, history=history, best=best,
                    train_seconds=train_seconds, train_samples=train_samples,
                    scaler=scaler.state_dict() if scaler.is_enabled() else None,
                    finished=finished, result=result)
        if ctx.is_main:
            save_checkpoint(path, model, meta, optimizer=optimizer, extra_tensors=rng)
        ctx.barrier()

    while epoch < config.epochs:
        sampler.set_epoch(epoch, start_batch)
        global_sizes = [len(b) for b in sampler.global_batches()]
        model.train()
        bar = tqdm(total=len(global_sizes), initial=start_batch, leave=False, dynamic_ncols=True,
                   desc=f"seed {seed} {fold.name} epoch {epoch + 1}/{config.epochs}",
                   # None: tqdm's own choice, off when stderr is not a terminal (a log)
                   disable=None if config.progress and not config.quiet and ctx.is_main
                   else True)
        running_loss = torch.zeros((), device=device)
        running_items, running_frames, window_start = 0, 0, time.perf_counter()
        epoch_start = time.perf_counter()
        for batch_index, (x, lengths, y) in enumerate(loader, start=start_batch):
            # CPU tensors from the collate: no device sync
            frames, items = int(lengths.sum()), int((y != IGNORE_LABEL).sum())
            x, lengths, y = (t.to(device, non_blocking=True) for t in (x, lengths, y))
            with _autocast(device, config.amp):
                logits = _train_logits(net, x, lengths, config)
            loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
            # DDP averages gradients over ranks: scaling each rank's sum by W / global batch
            # size makes that average the mean loss of the global batch, as in one process.
            loss = loss_sum * (ctx.world_size / global_sizes[batch_index])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            running_loss += loss_sum.detach()
            running_items += items
            running_frames += frames
            train_samples += global_sizes[batch_index]
            bar.update(1)
            if global_step % config.log_every == 0:
                elapsed = time.perf_counter() - window_start
                bar.set_postfix(loss=f"{running_loss.item() / running_items:.4f}",
                                samples_s=f"{running_items * ctx.world_size / elapsed:.0f}",
                                frames_s=f"{running_frames * ctx.world_size / elapsed:.0f}")
                running_loss.zero_()
                running_items, running_frames, window_start = 0, 0, time.perf_counter()
            if config.checkpoint_every and global_step % config.checkpoint_every == 0 \
                    and batch_index + 1 < len(global_sizes):
                train_seconds += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                checkpoint(last_path, {"epoch": epoch, "batch": batch_index + 1,
                                       "global_step": global_step})
            if step_hook is not None:
                step_hook(global_step)
        bar.close()
        train_seconds += time.perf_counter() - epoch_start
        epoch, start_batch = epoch + 1, 0

        valid = evaluate_model(eval_net, fold.valid, bundle.num_classes, **eval_kw)
        history.append({"epoch": epoch, "valid": valid})
        score = valid[config.select_metric]
        if best["score"] is None or score > best["score"]:  # ties keep the earlier epoch
            best = {"epoch": epoch, "score": score, "valid": valid}
            if ctx.is_main:
                save_checkpoint(best_path, model, dict(meta_base, best=best, epoch=epoch))
        if ctx.is_main and not config.quiet:
            tqdm.write(f"seed {seed} {fold.name} epoch {epoch}/{config.epochs}: valid "
                       + " ".join(f"{k} {valid[k]:.2f}" for k in METRICS)
                       + f" loss {valid['loss']:.4f}"
                       + (" (best)" if best["epoch"] == epoch else ""))
        checkpoint(last_path, {"epoch": epoch, "batch": 0, "global_step": global_step})

    # model selection: the best validation epoch's weights, then (only then) the test set
    ctx.barrier()
    best_tensors, _ = load_checkpoint(best_path, "cpu")
    model.load_state_dict(prefixed(best_tensors, "model."))
    test = evaluate_model(eval_net, fold.test, bundle.num_classes, **eval_kw)
    result = RunResult(seed=seed, fold=fold.name, best_epoch=best["epoch"], valid=best["valid"],
                       test=test, history=history, train_seconds=train_seconds,
                       train_samples_per_s=train_samples / max(train_seconds, 1e-9))
    checkpoint(last_path, {"epoch": epoch, "batch": 0, "global_step": global_step},
               finished=True, result=result.to_dict())
    return result


def _gather_rng(ctx: DistContext, device) -> List[Dict[str, torch.Tensor]]:
    """Every rank's generator states (rank order); one process: just its own."""
    mine = rng_state_tensors()
    if not ctx.enabled:
        return [mine]
    gathered = []
    for key in sorted(mine):
        gathered.append(all_gather_rows(ctx, mine[key].to(device)[None]).cpu())
    return [{key: g[r] for key, g in zip(sorted(mine), gathered)}
            for r in range(ctx.world_size)]
