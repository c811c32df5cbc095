"""`mstr info`: which backends this install has, and why the others are missing."""


def register(sub):
    parser = sub.add_parser("info", help="show the install: versions, devices and backends",
                            description="Print the versions of mstr-kernels, torch, Triton and "
                                        "CUDA, the GPU, how the C++/CUDA extension was built, and "
                                        "each backend: available, or why not, and the inputs it "
                                        "takes. No options.")
    parser.set_defaults(func=run)


def run(args) -> int:
    import platform

    import torch

    import mstr_kernels
    from mstr_kernels.ops import BACKENDS, available_backends
    from mstr_kernels.ops.extension import build_info

    print(f"mstr-kernels {mstr_kernels.__version__}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), Python {platform.python_version()}")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    else:
        print("GPU: none visible")
    info = build_info()
    if info:
        print("extension build: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print("\nbackends (in the order 'auto' tries them):")
    for name, why in available_backends().items():
        b = BACKENDS[name]
        status = "available" if why is None else f"unavailable: {why}"
        print(f"  {name:10s} {status}\n             {b.description}; devices {b.devices}, "
              f"dtypes {', '.join(str(d).replace('torch.', '') for d in b.dtypes)}, "
              f"head dim <= {b.max_head_dim}, {b.p_range[0]} <= p <= {b.p_range[1]}, "
              f"p**levels <= {b.max_tile}")
    if available_backends().get("cpu") is None:
        from mstr_kernels.ops import cpu_output_cache_stats
        stats = cpu_output_cache_stats()
        print(f"\ncpu backend output cache: keeps up to {stats['limit_bytes'] / 2**20:.0f} MiB of "
              "freed outputs for reuse (MSTR_KERNELS_CPU_CACHE_MB; 0 turns it off)")
    return 0
