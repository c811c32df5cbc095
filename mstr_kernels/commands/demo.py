"""`mstr demo`: the op through every available backend on the same sample inputs, with each
backend's error against float64 and its median time."""


def register(sub):
    parser = sub.add_parser("demo", help="run the op on every available backend and compare",
                            description=__doc__)
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="device of the inputs (default: cuda if visible, else cpu)")
    parser.add_argument("--shape", default="4,8,1024,64",
                        help="B,H,T,D of q, k and v (default 4,8,1024,64)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="dtype of q, k and v (default float32)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per backend after one warm-up (default 5)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import statistics
    import time

    import torch

    from mstr_kernels.ops import BACKENDS, available_backends, fractal_attention

    from mstr_kernels.commands.checks import UsageError, check_device
    device = check_device(args.device or "auto").type
    dtype = getattr(torch, args.dtype)
    try:
        B, H, T, D = (int(x) for x in args.shape.split(","))
    except ValueError:
        raise UsageError(f"--shape {args.shape!r}: must be four integers B,H,T,D "
                         f"(e.g. 4,8,1024,64)") from None
    if min(B, H, T, D) < 1:
        raise UsageError(f"--shape {args.shape!r}: B, H, T and D must be >= 1")
    if args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats}: must be >= 1")
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3, H, D, generator=g, dtype=torch.float64)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).to(device)
    f64 = [qkv[:, :, i].transpose(1, 2).to(device) for i in range(3)]
    inputs = [x.to(dtype) for x in f64]
    # float64 reference on the same (rounded) inputs: the error is the backend's own
    q64 = inputs[0].double().requires_grad_(True)
    truth = fractal_attention(q64, inputs[1].double(), inputs[2].double(), lengths=lengths,
                              backend="reference")
    truth_dq, = torch.autograd.grad(truth, (q64,), torch.ones_like(truth))
    truth = truth.detach()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    print(f"fractal attention, B={B} H={H} T={T} D={D} {args.dtype} on {device}, p=3 levels=4, "
          f"lengths in [{T // 2}, {T}]")
    print(f"{'backend':10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'rel err out':>12s} {'rel err dq':>11s}")
    for name, why in available_backends().items():
        if why is not None or BACKENDS[name].reasons(inputs[0], 3, 4):
            reason = why or "; ".join(BACKENDS[name].reasons(inputs[0], 3, 4))
            print(f"{name:10s} skipped: {reason}")
            continue
        q, k, v = (x.detach().requires_grad_(True) for x in inputs)
        dout = torch.ones_like(q)
        times = {"fwd": [], "fwd+bwd": []}
        for i in range(args.repeats + 1):
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                fractal_attention(q, k, v, lengths=lengths, backend=name)
            sync()
            t1 = time.perf_counter()
            out = fractal_attention(q, k, v, lengths=lengths, backend=name)
            dq, = torch.autograd.grad(out, (q,), dout)
            sync()
            t2 = time.perf_counter()
            if i:  # the first round warms up
                times["fwd"].append(t1 - t0)
                times["fwd+bwd"].append(t2 - t1)
        err = float((out.detach().double() - truth).norm() / truth.norm())
        err_dq = float((dq.double() - truth_dq).norm() / truth_dq.norm())
        print(f"{name:10s} {1e3 * statistics.median(times['fwd']):9.2f} "
              f"{1e3 * statistics.median(times['fwd+bwd']):11.2f} {err:12.2e} {err_dq:11.2e}")
    return 0
