"""One training run (one seed, one fold): Adam + cross-entropy, length-bucketed batches, model
selection on the validation part only (SPEC section 3), checkpoints that resume bit-exactly.

The step loop never synchronizes the device except to log: the running loss stays a device
tensor and is read every `log_every` steps.
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
from .batching import LengthBucketBatchSampler, PadCollate, sequence_lengths
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
    compile: bool = False
    device: str = "auto"
    workers: Optional[int] = None  # None: 4 on CUDA (loading overlaps compute), 0 on CPU
    log_every: int = 10
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends)
    progress: bool = True  # progress bars (only on a terminal)
    quiet: bool = False  # no output at all (also no per-epoch validation lines)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp={self.amp!r} must be one of {sorted(AMP_DTYPES)}")
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
                   workers: Optional[int] = 0) -> dict:
    """Metrics (WA, UA, WF1, loss) over a dataset; under DDP each rank runs a shard and the
    predictions are gathered, so every rank returns the metrics of the whole dataset."""
    was_training = model.training
    model.eval()
    lengths = sequence_lengths(dataset)
    mine = sorted(range(ctx.rank, len(dataset), ctx.world_size), key=lambda i: lengths[i])
    batches = [mine[s:s + batch_size] for s in range(0, len(mine), batch_size)]
    rows = []
    for (x, lens, y), idx in zip(_loader(dataset, batches, PadCollate(fixed_length), device,
                                         workers), batches):
        x, lens, y = (t.to(device, non_blocking=True) for t in (x, lens, y))
        with _autocast(device, amp):
            logits = model(x, None if fixed_length else lens)
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
    last_path, best_path = os.path.join(run_dir, "last.safetensors"), \
        os.path.join(run_dir, "best.safetensors")
    seed_everything(seed)
    model = build_model(model_name, model_config).to(device)  # same init on every rank
    torch.manual_seed(seed * 1009 + ctx.rank + 1)  # each rank's own dropout stream
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
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
    if config.compile:
        net = torch.compile(net)
    eval_net = torch.compile(model) if config.compile else model

    sampler = LengthBucketBatchSampler(sequence_lengths(fold.train), config.batch_size,
                                       seed=seed, rank=ctx.rank, world_size=ctx.world_size)
    collate = PadCollate(config.fixed_length)
    loader = _loader(fold.train, sampler, collate, device, config.workers,
                     generator=torch.Generator().manual_seed(seed))
    eval_kw = dict(batch_size=2 * config.batch_size, fixed_length=config.fixed_length,
                   device=device, amp=config.amp, ctx=ctx, workers=config.workers)

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
            frames = int(lengths.sum())  # CPU tensor from the collate: no device sync
            x, lengths, y = (t.to(device, non_blocking=True) for t in (x, lengths, y))
            with _autocast(device, config.amp):
                logits = net(x, None if config.fixed_length else lengths)
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
            running_items += y.shape[0]
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
