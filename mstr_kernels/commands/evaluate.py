"""`mstr evaluate`: a checkpoint's WA, UA and WF1 on a dataset split."""


def register(sub):
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset split")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by mstr train")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's dataset")
    p.add_argument("--features-dir", default=None,
                   help="default: the folder the checkpoint was trained from (its own dataset)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="overrides the options recorded in the checkpoint (for its own dataset)")
    p.add_argument("--fold", default=None, help="default: the checkpoint's fold")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default=None, help="override the op backend")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    from mstr_kernels.commands.train import parse_options
    from mstr_kernels.data import build_dataset
    from mstr_kernels.training import evaluate_model, load_model
    from mstr_kernels.training.distributed import DistContext
    from mstr_kernels.training.trainer import resolve_device

    device = resolve_device(args.device, DistContext())
    model, meta = load_model(args.checkpoint, map_location=device, backend=args.backend)
    dataset = args.dataset or meta["dataset"]
    # the data the model was trained on, unless told otherwise
    options = dict(meta.get("dataset_options") or {}) if dataset == meta["dataset"] else {}
    options.update(parse_options(args.dataset_option))
    features_dir = args.features_dir
    if features_dir is None and dataset == meta["dataset"] and meta.get("features_dir"):
        features_dir = meta["features_dir"]
        if not os.path.isdir(features_dir):
            raise FileNotFoundError(f"the checkpoint's features folder {features_dir!r} does not "
                                    "exist here: pass --features-dir")
    bundle = build_dataset(dataset, features_dir, **options)
    if list(bundle.class_names) != list(meta["class_names"]):
        raise ValueError(f"dataset {dataset!r} classes {bundle.class_names} differ from the "
                         f"checkpoint's {meta['class_names']}")
    fold_name = args.fold or meta.get("fold")
    folds = {f.name: f for f in bundle.folds}
    if fold_name not in folds:
        raise ValueError(f"fold={fold_name!r} must be one of {sorted(folds)}")
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
