"""`mstr flops`: the paper's Table 2 (Params, FLOPs), counted from the model objects."""


def register(sub):
    parser = sub.add_parser("flops", help="print the paper's Table 2 Params and FLOPs, counted "
                            "from the models (SPEC section 3 convention)",
                            description=__doc__ + " FLOPs follow SPEC section 3: multiply-"
                            "accumulates of QK^T and AV over all frames and layers, plus those "
                            "of every Linear layer for one frame.")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON record per dataset and model instead of the table")
    parser.add_argument("--feature-dim", type=int, default=1024,
                        help="input feature size F (default 1024, HuBERT-large)")
    parser.add_argument("--layers", type=int, default=4, help="Transformer blocks (default 4)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (default 16)")
    parser.add_argument("--p", type=int, default=3,
                        help="MSTR fractal factor: window and pooling base (default 3)")
    parser.add_argument("--levels", type=int, default=4, help="MSTR scale levels (default 4)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json

    from mstr_kernels.commands.checks import UsageError, check_op_params
    from mstr_kernels.models import table2

    check_op_params(args.p, args.levels)
    for flag in ("feature_dim", "layers", "heads"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.feature_dim % args.heads:
        raise UsageError(f"--feature-dim {args.feature_dim} must be a multiple of --heads "
                         f"{args.heads}")

    records = table2(feature_dim=args.feature_dim, num_layers=args.layers,
                     num_heads=args.heads, p=args.p, levels=args.levels)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    print("Table 2 (FLOPs = MACs of QK^T and AV over T frames and all layers + MACs of every "
          "Linear for one frame)")
    header = (f"{'dataset':9s} {'T':>4s} {'model':8s} {'params':>8s} {'attention':>10s} "
              f"{'linear':>8s} {'FLOPs':>9s} {'paper':>9s} {'diff':>7s} {'paper params':>12s}")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r.dataset:9s} {r.T:4d} {r.model:8s} {r.params / 1e6:7.2f}M "
              f"{r.attention_macs / 1e6:9.1f}M {r.linear_macs / 1e6:7.2f}M {r.flops / 1e6:8.1f}M "
              f"{r.paper_flops / 1e6:8.2f}M {100 * r.flops_rel_diff:+6.2f}% "
              f"{r.paper_params / 1e6:11.1f}M")
    print("The paper's Params column equals 21.6M + 16,384*T, a term the paper does not explain; "
          "the models' own count is the params column.")
    return 0
