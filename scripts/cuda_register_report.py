"""Registers, spills and shared memory of the CUDA kernels, per architecture and instantiation.

Compiles csrc/cuda/fractal_attention_cuda.cu with `nvcc -Xptxas -v` for sm_90 and sm_80 (no GPU
needed) and prints what ptxas reports for each kernel, plus the dynamic shared memory the
launcher picks for the main configuration (bfloat16, D=64, p=3, levels=4). Exits non-zero if
any kernel spills.

    python scripts/cuda_register_report.py [--arch 90 --arch 80]
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "csrc" / "cuda" / "fractal_attention_cuda.cu"


def find_nvcc():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    sys.exit("nvcc not found: set CUDA_HOME")


def include_flags():
    from torch.utils.cpp_extension import include_paths
    flags = [f"-I{d}" for d in include_paths("cuda")]
    flags += [f"-I{sysconfig.get_paths()['include']}", f"-I{ROOT / 'csrc'}"]
    for site in sys.path:  # headers of the nvidia wheels (cublas_v2.h, cusparse.h, ...)
        for d in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            flags += ["-isystem", d]
    return flags


def ptxas_report(nvcc, arch):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-c", str(SOURCE), "-o", os.path.join(tmp, "k.o"), "-O3", "-std=c++20",
               "--expt-relaxed-constexpr", "-DMSTR_WITH_CUDA", "-D__CUDA_NO_HALF_OPERATORS__",
               "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-D__CUDA_NO_HALF2_OPERATORS__", "-DTORCH_EXTENSION_NAME=_C",
               "-Xcompiler", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}",
               "-Xptxas", "-v"] + include_flags()
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"nvcc failed for sm_{arch}:\n{run.stderr[-4000:]}")
    return run.stderr


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def parse(report):
    """[(kernel, registers, spill_stores, spill_loads, stack, static_smem)] from ptxas -v."""
    rows, current, props = [], None, {}
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current, props = m.group(1), {}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and current:
            props.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            smem = re.search(r"(\d+) bytes smem", line)
            rows.append((current, int(m.group(1)), props.get("spill_st", 0),
                         props.get("spill_ld", 0), props.get("stack", 0),
                         int(smem.group(1)) if smem else 0))
            current = None
    return rows


def main_config_smem():
    """Dynamic shared memory for bf16, D=64, p=3, levels=4, as make_geometry in the .cu picks it
    (preferred budget 100 KiB; row_stride(); table, scores, [dscores], 1/counts, pyramids)."""
    p, levels, D = 3, 4, 64
    P = p ** levels
    R = sum(P // p ** l for l in range(levels))
    E = R * p
    up4 = lambda x: (x + 3) // 4 * 4
    table = up4(10 + 10 + 11 + 11 + 1)  # LevelTable, in floats

    def layout(dc, n_pyr, dscores):
        quads = -(-dc // 4)
        dcs = 4 * (quads + 1 if quads % 2 == 0 else quads)  # row_stride()
        return 4 * (table + up4(E) + (up4(E) if dscores else 0) + up4(R) + n_pyr * R * dcs)

    result = {}
    for name, n_pyr, ds in (("forward", 2, False), ("backward", 4, True)):
        for parts in range(1, D + 1):
            dc = -(-D // parts)
            dc = -(-dc // 8) * 8
            if layout(dc, n_pyr, ds) <= 100 * 1024:
                result[name] = (dc, layout(dc, n_pyr, ds))
                break
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", default=None, help="e.g. 90, 80 (repeatable)")
    args = parser.parse_args()
    nvcc = find_nvcc()
    spills = False
    for arch in args.arch or ["90", "80"]:
        rows = parse(ptxas_report(nvcc, arch))
        names = demangle([r[0] for r in rows])
        print(f"== sm_{arch} ({nvcc})")
        print(f"{'kernel':58s} {'regs':>5s} {'spill st/ld B':>14s} {'stack B':>8s} {'static smem B':>14s}")
        for name, regs, st, ld, stack, smem in rows:
            pretty = re.sub(r"mstr_kernels::\(anonymous namespace\)::", "", names[name])
            pretty = re.sub(r"\(.*\)$", "", pretty).replace("c10::", "")
            print(f"{pretty:58s} {regs:5d} {f'{st}/{ld}':>14s} {stack:8d} {smem:14d}")
            spills |= st > 0 or ld > 0
    print("== main configuration (bfloat16, D=64, p=3, levels=4): dynamic shared memory per block")
    for name, (dc, nbytes) in main_config_smem().items():
        print(f"{name:9s} head-dim chunk {dc:3d} of 64, {nbytes} bytes ({nbytes / 1024:.1f} KiB)")
    print("spills: " + ("YES" if spills else "none"))
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
