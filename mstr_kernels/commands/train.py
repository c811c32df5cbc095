"""`mstr train`: train MSTR or the vanilla baseline with the paper's presets, several seeds.

Works under `torchrun` (DDP). `mstr train --dataset synthetic` needs no download;
`--quick` makes it a short demo run."""

import argparse

# the short synthetic run behind --quick (make demo): small data, few epochs
QUICK_DATASET_OPTIONS = {"num_train": 640, "num_valid": 160, "num_test": 160, "max_len": 160}
QUICK_EPOCHS = 6


def register(sub):
    p = sub.add_parser("train", help="train MSTR or the vanilla baseline on a dataset "
                       "(paper presets; several seeds reported as mean and std)",
                       description=__doc__)
    p.add_argument("--dataset", default="synthetic",
                   help="dataset name (synthetic, iemocap, meld, cremad, folder; default "
                   "synthetic)")
    p.add_argument("--features-dir", default=None, help="extracted features of a corpus")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the dataset builder (e.g. num_train=500); repeatable")
    p.add_argument("--model", choices=("mstr", "vanilla"), default="mstr",
                   help="mstr (fractal attention) or vanilla (the full-attention baseline); "
                   "default mstr")
    p.add_argument("--levels", type=int, default=None, help="MSTR scale levels (paper: 4)")
    p.add_argument("--p", type=int, default=None, help="fractal factor (paper: 3)")
    p.add_argument("--layers", type=int, default=None, help="blocks (paper: 4)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (paper: 16)")
    p.add_argument("--dropout", type=float, default=None, help="block dropout (paper: 0.1)")
    p.add_argument("--classifier-dropout", type=float, default=None, help="paper: 0.5")
    p.add_argument("--backend", default="auto", help="fractal attention backend (default auto)")
    p.add_argument("--epochs", type=int, default=None, help="default: the dataset's preset")
    p.add_argument("--lr", type=float, default=None, help="default: the dataset's preset")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch size (split over DDP processes); paper: 32")
    p.add_argument("--seeds", default="0", help="e.g. 0-9 (the paper's) or 0,1,2; default 0")
    p.add_argument("--folds", default=None, help="comma-separated fold names (default: all)")
    p.add_argument("--fixed-length", default=None, metavar="N|paper",
                   help="the paper's protocol: pad or cut every item to N frames, zeros "
                   "attended ('paper' = the dataset's preset length); default: pad per batch "
                   "and mask by lengths")
    p.add_argument("--packed", action="store_true",
                   help="MSTR only: train on packed batches (the items' frames concatenated, no "
                   "padding; fractal_attention_varlen) instead of length-bucketed padded ones")
    p.add_argument("--batch-frames", type=int, default=None, metavar="N",
                   help="with --packed: batches of about N frames (default: the padded run's "
                   "length-bucketed batches of --batch-size items, packed)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast dtype (default none: float32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model, batches padded to a few fixed lengths "
                   "(default: on CUDA yes, on the CPU no)")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"),
                   help="torch.compile mode (default: max-autotune-no-cudagraphs on CUDA, "
                   "default on the CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default 4 on CUDA, 0 on CPU)")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/DATASET/MODEL, MODEL being mstr-L<levels> "
                   "or vanilla; with --compare, one MODEL folder per variant under --out)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out (finished runs are kept)")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="optimizer steps between mid-epoch checkpoints (0: only epoch ends)")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress updates")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the per-epoch validation lines stay; progress bars "
                   "are off anyway when stderr is not a terminal)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors (results go to results.json)")
    p.add_argument("--quick", action="store_true",
                   help=f"short synthetic demo: a small dataset and {QUICK_EPOCHS} epochs")
    p.add_argument("--compare", action="store_true",
                   help="train MSTR, a single-level MSTR (levels=1) and the vanilla baseline "
                   "on the same data and seeds, and print them side by side")
    p.set_defaults(func=run)


def check_arguments(args) -> dict:
    """The flags that can be checked before any data is read; returns the dataset options."""
    from mstr_kernels.commands.checks import (UsageError, check_backend, check_device,
                                              check_folder, check_op_params)
    from mstr_kernels.data import dataset_names
    from mstr_kernels.data.registry import DATASET_BUILDERS, dataset_options
    if args.dataset not in DATASET_BUILDERS:
        raise UsageError(f"--dataset {args.dataset!r} is unknown: allowed are "
                         f"{', '.join(dataset_names())}")
    if args.quick and args.dataset != "synthetic":
        raise UsageError(f"--quick is the short synthetic demo: it takes --dataset synthetic, "
                         f"not {args.dataset!r}")
    device = check_device(args.device)
    if args.model == "mstr":
        check_backend(args.backend, device)
        from mstr_kernels.models import MSTRConfig
        defaults = MSTRConfig.__dataclass_fields__
        check_op_params(args.p if args.p is not None else defaults["p"].default,
                        args.levels if args.levels is not None else defaults["levels"].default)
    if args.features_dir is not None:
        check_folder(args.features_dir, "--features-dir")
    for flag in ("epochs", "batch_size", "levels", "layers", "heads", "p"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be >= 1")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr {args.lr}: must be > 0")
    if args.fixed_length not in (None, "paper"):
        try:
            if int(args.fixed_length) < 1:
                raise ValueError
        except ValueError:
            raise UsageError(f"--fixed-length {args.fixed_length!r}: allowed are a frame count "
                             f">= 1 or 'paper'") from None
    try:
        options = parse_options(args.dataset_option)
    except ValueError as e:
        raise UsageError(str(e)) from None
    allowed = dataset_options(args.dataset)
    unknown = sorted(set(options) - set(allowed))
    if unknown and allowed is not None:
        raise UsageError(f"--dataset-option {unknown[0]}: dataset {args.dataset!r} has no such "
                         f"option; allowed are {', '.join(allowed) or 'none'}")
    return options


def parse_options(items):
    import json
    options = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--dataset-option {item!r} must be KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build_configs(args, bundle):
    """(model config, train config) from the dataset's preset, overridden by the flags."""
    from mstr_kernels.models import MSTRConfig
    from mstr_kernels.training import TrainConfig
    preset = dict(bundle.preset or {})
    model_kw = dict(feature_dim=bundle.feature_dim, num_classes=bundle.num_classes,
                    backend=args.backend, **preset.get("model", {}))
    for flag, key in (("levels", "levels"), ("p", "p"), ("layers", "num_layers"),
                      ("heads", "num_heads"), ("dropout", "dropout"),
                      ("classifier_dropout", "classifier_dropout")):
        if getattr(args, flag) is not None:
            model_kw[key] = getattr(args, flag)
    model_kw["attention"] = "fractal" if args.model == "mstr" else "full"
    fixed = args.fixed_length
    if fixed == "paper":
        if "fixed_length" not in preset:
            raise ValueError(f"--fixed-length paper: dataset {bundle.name!r} has no preset length")
        fixed = int(preset["fixed_length"])
    elif fixed is not None:
        fixed = int(fixed)
    epochs = args.epochs if args.epochs is not None else preset.get("epochs")
    if args.quick and args.epochs is None:
        epochs = QUICK_EPOCHS
    lr = args.lr if args.lr is not None else preset.get("lr")
    if epochs is None or lr is None:
        raise ValueError(f"dataset {bundle.name!r} has no preset epochs/lr: pass --epochs, --lr")
    train = TrainConfig(epochs=epochs, lr=lr,
                        batch_size=args.batch_size or preset.get("batch_size", 32),
                        fixed_length=fixed, select_metric=preset.get("select_metric", "UA"),
                        amp=args.amp, compile=args.compile, compile_mode=args.compile_mode,
                        device=args.device,
                        workers=args.workers, log_every=args.log_every,
                        checkpoint_every=args.checkpoint_every,
                        progress=not (args.no_progress or args.quiet), quiet=args.quiet,
                        packed=args.packed, batch_frames=args.batch_frames)
    return MSTRConfig(**model_kw), train


def run(args) -> int:
    import dataclasses
    import json
    import os

    from mstr_kernels.commands.checks import UsageError
    from mstr_kernels.data import build_dataset
    from mstr_kernels.training.distributed import init_distributed, shutdown_distributed
    from mstr_kernels.training.experiment import format_comparison, format_table, run_experiment
    from mstr_kernels.training.seeding import parse_seeds
    from mstr_kernels.training.trainer import resolve_device
    options = check_arguments(args)
    if args.quick:
        options = {**QUICK_DATASET_OPTIONS, **options}
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError:
        raise UsageError(f"--seeds {args.seeds!r}: allowed are a range LOW-HIGH with LOW <= HIGH "
                         f"(e.g. 0-9), a list (0,3,5) or one seed (7), non-negative, no "
                         f"repeats") from None
    try:
        bundle = build_dataset(args.dataset, args.features_dir, **options)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--dataset {args.dataset}"
                         + (f" --features-dir {args.features_dir}" if args.features_dir else "")
                         + f": {e}") from e
    try:
        model_config, train_config = build_configs(args, bundle)
    except ValueError as e:
        raise UsageError(str(e)) from e
    folds = args.folds.split(",") if args.folds else None
    known_folds = [f.name for f in bundle.folds]
    for fold in folds or ():
        if fold not in known_folds:
            raise UsageError(f"--folds {fold!r} is not a fold of dataset {bundle.name!r}: "
                             f"allowed are {', '.join(known_folds)}")
    variants = [(args.model, model_config)]
    if args.compare:  # the paper's comparison: MSTR, single-level MSTR, the vanilla baseline
        variants = [("mstr", dataclasses.replace(model_config, attention="fractal")),
                    ("mstr", dataclasses.replace(model_config, attention="fractal", levels=1)),
                    ("vanilla", dataclasses.replace(model_config, attention="full"))]
    ctx = init_distributed(resolve_device(args.device, _NoCtx()).type)
    try:
        base = args.out or os.path.join("runs", bundle.name)
        all_results = []
        for model_name, config in variants:
            name = "vanilla" if model_name == "vanilla" else f"mstr-L{config.levels}"
            out = os.path.join(base, name) if args.compare or args.out is None else base
            results = run_experiment(model_name, config, bundle, train_config, seeds, out,
                                     folds=folds, ctx=ctx, resume=args.resume)
            all_results.append(results)
            if ctx.is_main and not args.quiet:
                print(format_table(results))
                print(f"results: {os.path.join(out, 'results.json')}\n")
        if args.compare and ctx.is_main:
            if not args.quiet:
                print(format_comparison(all_results))
            with open(os.path.join(base, "comparison.json"), "w") as f:
                json.dump([{k: r[k] for k in ("model", "config", "params", "summary")}
                           for r in all_results], f, indent=2)
    finally:
        shutdown_distributed(ctx)
    return 0


class _NoCtx:
    local_rank = 0
