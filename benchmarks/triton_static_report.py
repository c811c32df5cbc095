"""Static report of the Triton kernels: compile for sm_90 and sm_80 without a GPU and print
registers, spills and shared memory per configuration.

    python benchmarks/triton_static_report.py [--arch 90 80] [--quick]

Triton compiles to PTX for an explicit GPUTarget (no driver needed); ptxas (bundled with Triton)
then reports registers and spill bytes with -v. Exit status 1 if a required configuration
(bfloat16, D=64, p=3, levels=4) spills or a configuration fails to compile.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mstr_kernels.ops.triton_fractal import _meta, launch_config  # noqa: E402
from mstr_kernels.ops.triton_fractal_bwd import fractal_bwd_kernel  # noqa: E402
from mstr_kernels.ops.triton_fractal_fwd import fractal_fwd_kernel  # noqa: E402

DTYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
# (dtype, p, levels, D): the benchmark shape first (it must not spill), then the SPEC's corners.
CONFIGS = [("bf16", 3, 4, 64), ("fp16", 3, 4, 64), ("fp32", 3, 4, 64), ("bf16", 3, 4, 80),
           ("bf16", 2, 10, 64), ("bf16", 8, 3, 64), ("bf16", 5, 4, 24), ("bf16", 3, 4, 256),
           ("fp32", 7, 2, 5)]
QUICK = CONFIGS[:2]
REQUIRED = ("bf16", 3, 4, 64)


def _launch_values(kernel, D: int):
    """The runtime integer arguments of a real launch at the benchmark layout: q, k, v views of
    a (B, T, 3, H, D) projection, dout and outputs laid out as (B, T, H, D)."""
    B, T, H = 32, 4096, 16
    view = {"b": T * 3 * H * D, "h": D, "t": 3 * H * D, "d": 1}
    dense = {"b": T * H * D, "h": D, "t": H * D, "d": 1}
    values = {"H": H, "T": T, "D": D, "n_tiles": 51, "total_tiles": B * H * 51}
    for name in kernel.arg_names:
        if len(name) == 3 and name[0] == "s" and name[2] in "bhtd":
            values[name] = (view if name[1] in "qkv" else dense)[name[2]]
    return values


def _signature(kernel, kind: str, dtype: str, has_lengths: bool, cfg, p: int, levels: int,
               D: int):
    """Signature, constexprs and attributes as the JIT specializes a real launch: integer
    arguments equal to 1 become constants, multiples of 16 and pointers carry divisibility 16."""
    constexprs = {k: v for k, v in _meta(cfg, kind, p, levels, has_lengths).items()
                  if k not in ("num_warps", "maxnreg")}
    values = _launch_values(kernel, D)
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = {"lengths_ptr": "*i32", "scratch_ptr": "*fp32"}.get(
                name, DTYPES[dtype])
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "scale":
            signature[name] = "fp32"
        elif values[name] == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if values[name] < 2 ** 31 else "i64"
            if values[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def ptxas_usage(ptx: str, arch: int):
    """(registers, spill store bytes, spill load bytes) from `ptxas -v` on the PTX."""
    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        res = subprocess.run([ptxas, "-v", f"--gpu-name={sm}", src, "-o",
                              os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(text)
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    stores, loads = (int(x) for x in re.search(
        r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
    return regs, stores, loads


def report(arch: int, dtype: str, p: int, levels: int, D: int, kind: str):
    kernel = fractal_fwd_kernel if kind == "fwd" else fractal_bwd_kernel
    cfg = launch_config(p, levels, D, kind)
    signature, constexprs, attrs = _signature(kernel, kind, dtype, True, cfg, p, levels, D)
    src = ASTSource(kernel, signature, constexprs, attrs)
    options = {"num_warps": cfg.num_warps}
    if cfg.maxnreg:
        options["maxnreg"] = cfg.maxnreg
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    regs, spill_st, spill_ld = ptxas_usage(compiled.asm["ptx"], arch)
    capped = "maxnreg" in options
    if (spill_st or spill_ld) and capped:  # as the launcher does: drop a cap that spills
        options.pop("maxnreg")
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        regs, spill_st, spill_ld = ptxas_usage(compiled.asm["ptx"], arch)
        capped = False
    return cfg, regs, spill_st, spill_ld, compiled.metadata.shared, capped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    parser.add_argument("--quick", action="store_true", help="only the benchmark shape")
    args = parser.parse_args(argv)
    failed = False
    print(f"triton {triton.__version__}")
    print(f"{'arch':>5} {'kernel':>6} {'dtype':>5} {'p':>2} {'lv':>3} {'D':>4} | {'chunk':>9} {'pool':>4} "
          f"{'BD':>4} {'warps':>5} {'cap':>4} | {'regs':>4} {'spill st/ld B':>13} {'smem B':>7}")
    for arch in args.arch:
        for dtype, p, levels, D in (QUICK if args.quick else CONFIGS):
            for kind in ("fwd", "bwd"):
                try:
                    cfg, regs, st, ld, smem, capped = report(arch, dtype, p, levels, D, kind)
                except Exception as e:  # a compile failure is a finding, reported per row
                    print(f"{arch:>5} {kind:>6} {dtype:>5} {p:>2} {levels:>3} {D:>4} | "
                          f"COMPILE FAILED: {type(e).__name__}: {str(e)[:300]}")
                    failed = True
                    continue
                chunk = f"{cfg.block_r}/{cfg.block_r_level} rows"
                flag = ""
                if (dtype, p, levels, D) == REQUIRED and (st or ld):
                    flag = "  <- required config spills"
                    failed = True
                print(f"{arch:>5} {kind:>6} {dtype:>5} {p:>2} {levels:>3} {D:>4} | "
                      f"{chunk:>9} {cfg.block_r_pool:>4} {cfg.block_d:>4} "
                      f"{cfg.num_warps:>5} {cfg.maxnreg if capped else '-':>4} | "
                      f"{regs:>4} {f'{st}/{ld}':>13} {smem:>7}{flag}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
