"""`mstr evaluate`: a checkpoint's WA, UA and WF1 on a dataset split."""


def register(sub):
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset split",
                       description=__doc__ + " By default: the checkpoint's own dataset, "
                       "features folder, options and fold, on its test part.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by mstr train")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    p.add_argument("--features-dir", default=None,
                   help="default: the folder the checkpoint was trained from (its own dataset)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="overrides the options recorded in the checkpoint (for its own dataset)")
    p.add_argument("--fold", default=None, help="default: the checkpoint's fold")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test",
                   help="default test")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--backend", default=None,
                   help="fractal attention backend (default: the checkpoint's, or auto where "
                        "that one cannot run here)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast dtype (default none: float32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    from mstr_kernels.commands.checks import (UsageError, check_device, check_folder,
                                              load_checkpoint_arg)
    from mstr_kernels.commands.train import parse_options
    from mstr_kernels.data import build_dataset, dataset_names
    from mstr_kernels.training import evaluate_model

    device = check_device(args.device)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.dataset is not None and args.dataset not in dataset_names():
        raise UsageError(f"--dataset {args.dataset!r} is unknown: allowed are "
                         f"{', '.join(dataset_names())}")
    if args.features_dir is not None:
        check_folder(args.features_dir, "--features-dir")
    model, meta = load_checkpoint_arg(args.checkpoint, "checkpoint", device=device,
                                      backend=args.backend)
    dataset = args.dataset or meta["dataset"]
    # the data the model was trained on, unless told otherwise
    options = dict(meta.get("dataset_options") or {}) if dataset == meta["dataset"] else {}
    try:
        options.update(parse_options(args.dataset_option))
    except ValueError as e:
        raise UsageError(str(e)) from None
    features_dir = args.features_dir
    if features_dir is None and dataset == meta["dataset"] and meta.get("features_dir"):
        features_dir = meta["features_dir"]
        if not os.path.isdir(features_dir):
            raise UsageError(f"the checkpoint's features folder {features_dir!r} does not exist "
                             "here: pass --features-dir")
    try:
        bundle = build_dataset(dataset, features_dir, **options)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--dataset {dataset}: {e}") from e
    if list(bundle.class_names) != list(meta["class_names"]):
        raise UsageError(f"--dataset {dataset!r} has classes {bundle.class_names}, the "
                         f"checkpoint's are {meta['class_names']}")
    fold_name = args.fold or meta.get("fold")
    folds = {f.name: f for f in bundle.folds}
    if fold_name not in folds:
        raise UsageError(f"--fold {fold_name!r} is not a fold of dataset {dataset!r}: allowed are "
                         f"{', '.join(sorted(folds))}")
    fixed = meta.get("train_config", {}).get("fixed_length")
    metrics = evaluate_model(model, getattr(folds[fold_name], args.split), bundle.num_classes,
                             batch_size=args.batch_size, fixed_length=fixed, device=device,
                             amp=args.amp)
    record = {"checkpoint": args.checkpoint, "dataset": dataset, "fold": fold_name,
              "split": args.split, **metrics}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{dataset} {fold_name} {args.split}: " + " ".join(
            f"{k} {metrics[k]:.2f}" for k in ("WA", "UA", "WF1")) + f" loss {metrics['loss']:.4f}")
    return 0
