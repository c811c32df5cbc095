"""`mstr bench`: the op benchmark (every contender, forward and forward+backward, against the
memory floor) and the model training-step benchmark; a table, JSON results and PNG plots."""
from __future__ import annotations

import argparse

# Default sweeps: the SPEC section 4 configuration of each device, and a small one for --quick.
DEFAULTS = {
    # SPEC's T=4096 first: a run cut short by a time limit still has the target rows.
    "cuda": dict(T=[4096, 1024, 2048, 8192, 16384], B=[32], H=[16], D=[64], dtype=["bfloat16"],
                 p=[3], levels=[4]),
    "cpu": dict(T=[256, 512, 1024, 2048], B=[8], H=[16], D=[64], dtype=["float32"], p=[3],
                levels=[4]),
}
QUICK = {
    "cuda": dict(T=[1024, 4096], B=[8], H=[16], D=[64], dtype=["bfloat16"], p=[3], levels=[4]),
    "cpu": dict(T=[243, 1024], B=[1], H=[4], D=[32], dtype=["float32"], p=[3], levels=[4]),
}
# Model benchmark sizes: the paper's training step; --quick on CPU uses a small model. Eager and
# compiled rows at (B, T) and, compiled, at the sweep's compiled_sweep_T (SPEC section 4's B=8
# T=1024 target; B=8 T=326 for the step's scaling with B); with --quick only the first backend
# and vanilla are compiled too.
MODEL = {"cuda": dict(B=32, T=326, F_dim=1024, layers=4, heads=16, sweep_T=[326, 1024, 4096, 8192],
                      sweep_B=8, compiled_sweep_T=[326, 1024]),
         "cpu": dict(B=8, T=326, F_dim=1024, layers=4, heads=16, sweep_T=[326, 1024, 2048],
                     sweep_B=2, compiled_sweep_T=[])}
MODEL_QUICK = {"cuda": dict(B=8, T=326, F_dim=1024, layers=4, heads=16, sweep_T=[326, 2048],
                            sweep_B=4, compiled_sweep_T=[]),
               "cpu": dict(B=2, T=163, F_dim=128, layers=1, heads=4, sweep_T=[], sweep_B=None,
                           compiled_sweep_T=[])}
PEAK_MEM_BASIS = {
    "cuda": "torch.cuda.max_memory_allocated during one call, inputs included (MiB)",
    "cpu": "torch profiler: allocations during one call net of frees, above what was live "
           "before it (inputs excluded; temporaries freed inside one op unseen: a lower bound)",
}


def register(sub):
    p = sub.add_parser("bench", help="benchmark the op against its memory floor and its peers, "
                       "and the model's training step",
                       description=__doc__ + " Sweep options default to SPEC section 4's "
                       "configuration of the device (a smaller one with --quick).")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="device to benchmark (default: cuda if visible, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="a small sweep (about a minute on a 2-core CPU)")
    p.add_argument("--json", metavar="PATH", help="write the results JSON here")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into this folder")
    p.add_argument("--T", type=int, nargs="+", help="sequence lengths to sweep")
    p.add_argument("--B", type=int, nargs="+", help="batch sizes to sweep")
    p.add_argument("--H", type=int, nargs="+", help="head counts to sweep")
    p.add_argument("--D", type=int, nargs="+", help="head dims to sweep")
    p.add_argument("--dtype", nargs="+", choices=["float32", "float16", "bfloat16", "float64"],
                   help="dtypes to sweep")
    p.add_argument("--p", type=int, nargs="+", help="window sizes p to sweep")
    p.add_argument("--levels", type=int, nargs="+", help="level counts to sweep")
    p.add_argument("--contenders", nargs="+", metavar="NAME",
                   help="only these contenders (backend names, reference-compiled, sdpa-full, "
                        "flex-window)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed repeats per measurement (default 0.5; 0.15 with --quick)")
    p.add_argument("--op", action=argparse.BooleanOptionalAction, default=True,
                   help="run the op benchmark (default: yes; --no-op: the model rows only)")
    p.add_argument("--model", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the model training-step benchmark (default: yes)")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"),
                   help="torch.compile mode of the compiled model rows (default: mstr train's "
                   "on the device)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from mstr_kernels.bench import report
    from mstr_kernels.bench.model_bench import BUSY_BASIS
    from mstr_kernels.bench.op_bench import Sweep, run_op_bench
    from mstr_kernels.bench.timing import copy_bandwidth, noise_fields
    from mstr_kernels.ops import BACKENDS, available_backends

    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(device_type)
    from mstr_kernels.bench.contenders import ALL_CONTENDER_NAMES
    unknown = sorted(set(args.contenders or ()) - set(ALL_CONTENDER_NAMES))
    if unknown:
        raise SystemExit(f"--contenders: unknown {unknown}; allowed are {list(ALL_CONTENDER_NAMES)}")
    defaults = (QUICK if args.quick else DEFAULTS)[device_type]
    sweep = Sweep(**{k: getattr(args, k) or v for k, v in defaults.items()})
    budget = args.budget if args.budget is not None else (0.15 if args.quick else 0.5)

    env = report.environment(device)
    print(f"mstr bench on {env['device_name']} ({device_type}), torch {env['torch']}, "
          f"triton {env['triton']}, CUDA {env['cuda']}, {env['threads']} threads")
    copy_gbs, copy_timing = copy_bandwidth(device, budget_s=max(budget, 0.3))
    copy_noise = noise_fields(copy_timing)
    print(f"device-to-device copy: {copy_gbs:.1f} GB/s (bytes read + written): the memory floor"
          + (f" (UNRELIABLE: {copy_noise['unreliable']})" if copy_noise["unreliable"] else ""))
    result = {"env": env, "copy_gbs": copy_gbs, "copy_noise": copy_noise, "rows": [],
              "model_rows": [],
              "model_skipped": "not run yet" if args.model else "--no-model",
              "peak_mem_basis": PEAK_MEM_BASIS[device_type],
              "busy_basis": BUSY_BASIS[device_type]}

    def save():
        if args.json:
            result["targets"] = report.targets(result)
            result["noise"] = report.noise_summary(result)
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1) + "\n")
            return path

    # Order: the op at the first T (SPEC's configuration by default), the model's training step,
    # then the rest of the op sweep and the model's T sweep, so that a run cut short by a time
    # limit has the target rows first. The JSON is saved after every row; an interrupt (a time
    # limit's SIGINT) ends the measuring but still writes the table, the JSON and the plots.
    model_cfg = (MODEL_QUICK if args.quick else MODEL)[device_type]
    model_backends = [n for n, why in available_backends().items()
                      if why is None and device_type in BACKENDS[n].devices
                      and (not args.contenders or n in args.contenders)]

    def op_stage(Ts):
        if Ts and args.op:
            run_op_bench(Sweep(**{**sweep.__dict__, "T": Ts}), device, copy_gbs,
                         contenders=args.contenders, budget_s=budget, rows=result["rows"],
                         on_row=save)

    def model_stage(main: bool):
        if not args.model:
            return
        if not main and not model_cfg["sweep_T"]:
            return
        if main:
            print("model training step (forward, backward, Adam):")
        from mstr_kernels.bench.model_bench import run_model_bench
        run_model_bench(device, model_backends, B=model_cfg["B"], T=model_cfg["T"],
                        F_dim=model_cfg["F_dim"], sweep_T=[] if main else model_cfg["sweep_T"],
                        sweep_B=model_cfg["sweep_B"], num_layers=model_cfg["layers"],
                        num_heads=model_cfg["heads"], budget_s=4 * budget,
                        rows=result["model_rows"], on_row=save, include_main=main,
                        compiled=([f"MSTR[{b}]" for b in model_backends[:1]] + ["vanilla"]
                                  if args.quick else None),
                        compiled_sweep_T=model_cfg["compiled_sweep_T"],
                        compile_mode=args.compile_mode)
        result["model_skipped"] = None

    what = "the op benchmark"
    try:
        op_stage(sweep.T[:1])
        what = "the model benchmark"
        model_stage(main=True)
        what = "the op benchmark"
        op_stage(sweep.T[1:])
        what = "the model benchmark"
        model_stage(main=False)
    except KeyboardInterrupt:
        result["interrupted"] = f"during {what}"
        if result["model_skipped"] == "not run yet":
            result["model_skipped"] = "the run was interrupted before the model benchmark"
    rows = sorted(result["rows"], key=lambda r: (r["dtype"], r["p"], r["levels"], r["B"],
                                                 r["H"], r["D"], r["T"]))
    result["rows"] = rows
    result["targets"] = report.targets(result)
    result["noise"] = report.noise_summary(result)

    print()
    print(report.table(rows))
    if result["model_rows"]:
        print()
        print(report.model_table(result["model_rows"]))
        print(f"busy ms: {result['busy_basis']}")
    warnings = report.noise_warnings(result)
    if warnings:
        print()
        print("\n".join(warnings))
        print(f"{len(warnings)} figure(s) unreliable: rerun on a quiet machine "
              f"(the JSON marks them: rows' `unreliable`)")
    if result.get("interrupted"):
        print(f"\nINTERRUPTED {result['interrupted']}: the results are partial")
    print(f"\nSPEC section 4 targets measurable on {device_type}:")
    print(report.targets_text(result["targets"], device_type))
    if args.json:
        print(f"\nwrote {save()}")
    if args.plots:
        try:
            for path in report.plots(result, Path(args.plots)):
                print(f"wrote {path}")
        except ImportError as e:
            print(f"no plots: matplotlib is missing ({e})")
    return 130 if result.get("interrupted") else 0
