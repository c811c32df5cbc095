"""Static report of the GPU kernels for sm_90, without a GPU: registers, spills, local memory,
shared memory, blocks per SM and thread instructions per (frame, channel) element.

    python scripts/gpu_static_report.py [--json PATH] [--quick] [--binary FILE] [--no-triton]

Builds nothing new. CUDA kernels: the sm_90 cubin of the installed extension
(mstr_kernels/_C*.so, or --binary: a .so or .cubin), read with cuobjdump (Triton's bundled copy,
else the CUDA toolkit's). Triton kernels: compiled for GPUTarget("cuda", 90, 32) with the
signature a real launch specializes to, registers and spills from ptxas -v.

Instructions per element, for the kernels specialised on (p, levels, D) (fractal_spec_tile.cuh):
the persistent loop's body in the SASS is split at its block barriers into the kernel's phases
(copies, pooled sums of each level, pooled attention, level 1); each phase's instruction count
times the warps that run it (from the kernel's compile-time mapping, mirrored in SpecConfig)
times 32, over the item's frames x D. A warp is counted for every instruction of its phase
(forward branches inside count as taken both ways), so the figure is an upper bound on what ncu's
smsp__inst_executed would count per element. Kernels whose loops have run-time trip counts (the
general CUDA kernels, Triton) get no figure (null) rather than a guess.

Exit status 1 when a CUDA kernel or the headline Triton row (bfloat16, D=64, p=3, levels=4)
spills or uses local memory, or when the specialised forward or backward at the headline
configuration exceeds the issue's budget (60 and 110 instructions per element). Other rows are
informative.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SM90 = dict(regs=65536, regs_per_partition=16384, max_warps=64, max_blocks=32,
            smem=228 * 1024, smem_reserved=1024, smem_block_limit=227 * 1024)
FORWARD_BUDGET = 60
BACKWARD_BUDGET = 110
# (dtype, p, levels, D): the rows first; --quick keeps only the first.
CONFIGS = [("bf16", 3, 4, 64), ("bf16", 2, 5, 64), ("bf16", 4, 3, 64), ("bf16", 3, 4, 128),
           ("fp16", 3, 4, 64), ("fp32", 3, 4, 64), ("bf16", 3, 4, 32), ("bf16", 3, 5, 32)]
REQUIRED = ("bf16", 3, 4, 64)
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
MANGLED_DTYPE = {"N3c108BFloat16E": "bf16", "N3c104HalfE": "fp16", "f": "fp32"}


# ---- occupancy ---------------------------------------------------------------------------------

def blocks_per_sm(registers: int, threads: int, smem_bytes: int) -> int:
    """Resident blocks per SM on sm_90: registers (allocated per warp in units of 256, per
    scheduler partition), shared memory (1 KiB reserved per block), warps, blocks."""
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    warps_by_regs = 4 * (SM90["regs_per_partition"] // regs_per_warp)
    by_regs = warps_by_regs // warps
    by_smem = SM90["smem"] // (smem_bytes + SM90["smem_reserved"]) if smem_bytes else 10 ** 9
    by_warps = SM90["max_warps"] // warps
    return max(0, min(by_regs, by_smem, by_warps, SM90["max_blocks"]))


# ---- the specialised forward's compile-time mapping (mirror of spec::Config) ----------------

def _cdiv(a, b):
    return -(-a // b)


@dataclass
class SpecConfig:
    itemsize: int
    p: int
    levels: int
    D: int
    kind: str = "fwd"  # "bwd": q, k, v, dout copied; shares of dq, dk, dv pooled

    def __post_init__(self):
        p, L, D = self.p, self.levels, self.D
        inputs, out_rows = (3, 1) if self.kind == "fwd" else (4, 3)
        self.P = p ** L
        self.M = 1 if self.P >= 64 else 96 // self.P
        self.F = self.P * self.M
        self.G = D // 8
        self.W = 16 // self.itemsize
        self.VPR = D // self.W
        self.N1 = self.F // p
        self.rows = {l: self.F // p ** (l - 1) for l in range(2, L + 1)}
        self.R_pool = sum(self.rows.values())
        raw = inputs * self.F * D * self.itemsize
        pooled = (inputs + out_rows) * max(self.R_pool, 1) * D * 4
        two, limit = 113 * 1024, 227 * 1024
        self.stages = (2 if 2 * raw + pooled <= two else 1 if raw + pooled <= two
                       else 2 if 2 * raw + pooled <= limit else 1)
        self.smem_bytes = self.stages * raw + pooled
        self.fits = self.smem_bytes <= limit
        self.min_blocks = 2 if self.smem_bytes <= two else 1
        max_threads = 256 if self.min_blocks == 2 else 512
        items1 = self.N1 * self.G
        self.rounds1 = _cdiv(items1, max_threads)
        self.threads = _cdiv(_cdiv(items1, self.rounds1), 32) * 32
        self.warps = self.threads // 32
        self.items_pool = sum(rows // p for rows in self.rows.values()) * self.G
        self.rounds_pool = _cdiv(self.items_pool, self.threads)

    def phase_warps(self):
        """(name, executed warp-passes over the phase's code / copies of that code in the
        SASS) per barrier-delimited phase of one item, in program order."""
        def share(items):  # warps with items, per round, over all warps of all rounds
            rounds = _cdiv(items, self.threads)
            active = sum(min(self.warps, _cdiv(items - r * self.threads, 32))
                         for r in range(rounds))
            return active / (rounds * self.warps)

        phases = [("copies", 1.0)]
        for l, rows in self.rows.items():
            phases.append((f"sums level {l}", share(rows * self.G)))
        if self.levels >= 2:
            phases.append(("pooled attention", share(self.items_pool)))
        phases.append(("level 1", 1.0))
        if self.stages == 1:
            phases.append(("copies (one stage)", 1.0))
        return phases


# ---- SASS --------------------------------------------------------------------------------------

def find_cuobjdump():
    try:
        import triton
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "cuobjdump").exists():
            return str(Path(home) / "bin" / "cuobjdump")
    return shutil.which("cuobjdump")


def extension_binary():
    import mstr_kernels
    found = sorted(glob.glob(os.path.join(os.path.dirname(mstr_kernels.__file__), "_C*.so")))
    return found[0] if found else None


def run_cuobjdump(cuobjdump, args, binary):
    res = subprocess.run([cuobjdump, *args, binary], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(args)} {binary}: {res.stderr.strip()[:500]}")
    return res.stdout


def parse_sass(text):
    """{mangled name: [(address, instruction text)]} from cuobjdump -sass (one arch)."""
    functions, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return functions


def cubin_instruction_count(cubin: bytes):
    """Instructions in a cubin's SASS (all functions): a static size, for comparing two
    versions of a kernel whose loops have run-time trip counts; None without cuobjdump."""
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        Path(path).write_bytes(cubin)
        return sum(len(f) for f in parse_sass(run_cuobjdump(cuobjdump, ["-sass"], path)).values())


def parse_resources(text):
    """{mangled name: {REG, STACK, SHARED, LOCAL}} from cuobjdump -res-usage."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            found = re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)
            out[current] = {k: int(v) for k, v in found}
            current = None
    return out


def opcode(instr):
    return re.sub(r"^@!?U?P\w+\s+", "", instr).split()[0]


def static_smem(res):
    """Static shared memory of a kernel: cuobjdump's SHARED less the 1 KiB sm_90 reserves for
    the system in every block (counted by blocks_per_sm)."""
    return max(0, res.get("SHARED", 0) - SM90["smem_reserved"])


def spill_bytes(instrs):
    """Bytes stored to local memory per pass over the code (STL widths)."""
    total = 0
    for _, ins in instrs:
        op = opcode(ins)
        if op.startswith("STL"):
            width = re.search(r"STL\.(\d+)", op)
            total += int(width.group(1)) // 8 if width else 4
    return total


def branch_target(instr):
    m = re.search(r"\bBRA\s+(?:\S+,\s*)?(0x[0-9a-f]+)", instr)
    return int(m.group(1), 16) if m else None


def persistent_loop(instrs):
    """(start, end) indices of the body of the outermost loop (the widest backward branch) and
    the number of other backward branches inside it."""
    index = {addr: i for i, (addr, _) in enumerate(instrs)}
    back = [(index[t], i) for i, (addr, ins) in enumerate(instrs)
            if (t := branch_target(ins)) is not None and t <= addr and t in index]
    if not back:
        return None, 0
    start, end = max(back, key=lambda se: se[1] - se[0])
    inner = sum(1 for s, e in back if (s, e) != (start, end) and start <= s and e <= end)
    return (start, end), inner


def spec_instructions(instrs, cfg: SpecConfig):
    """Thread instructions per element of one item (see the module docstring), the per-phase
    breakdown, and a note when the SASS does not have the expected phase structure."""
    loop, inner = persistent_loop(instrs)
    if loop is None:
        return None, [], "no persistent loop found"
    body = instrs[loop[0]:loop[1] + 1]
    segments, current = [], []
    for addr, ins in body:
        current.append(ins)
        if opcode(ins).startswith("BAR.SYNC"):
            segments.append(current)
            current = []
    segments.append(current)
    phases = cfg.phase_warps()
    # The loop's back-edge segment (after the last barrier) is the tail of the previous phase
    # list: with two stages it holds only the loop increment, counted with the copies.
    if cfg.stages == 2:
        segments[0] = segments[0] + segments[-1]
        segments = segments[:-1]
    note = ""
    if len(segments) != len(phases):
        note = (f"{len(segments)} barrier-delimited segments, {len(phases)} phases expected: "
                f"every instruction counted for every warp")
        weights = [("all", 1.0)] * len(segments)
    else:
        weights = phases
    if inner:
        note = (note + "; " if note else "") + f"{inner} inner loop(s) counted once"
    breakdown, warp_instr = [], 0.0
    for (name, share), seg in zip(weights, segments):
        executed = len(seg) * share * cfg.warps
        warp_instr += executed
        breakdown.append({"phase": name, "sass_instructions": len(seg),
                          "warps": round(share * cfg.warps, 2),
                          "per_element": round(executed * 32 / (cfg.F * cfg.D), 2)})
    return warp_instr * 32 / (cfg.F * cfg.D), breakdown, note


# ---- the general CUDA kernels' launch shape (mirror of plan_geometry / launch_shape) ---------

def general_cuda_plan(itemsize, p, levels, D, kind):
    """(threads, dynamic shared memory bytes) as fractal_attention_cuda.cu plans them."""
    n_pyr, dscores = (2, False) if kind == "fwd" else (4, True)
    P = p ** levels
    R = sum(P // p ** l for l in range(levels))
    E = R * p
    up4 = lambda x: (x + 3) // 4 * 4
    table = up4(10 + 10 + 11 + 11 + 1)  # LevelTable, in floats

    def layout(dc):
        quads = _cdiv(dc, 4)
        dcs = 4 * (quads + 1 if quads % 2 == 0 else quads)
        return 4 * (table + up4(E) + (up4(E) if dscores else 0) + up4(R) + n_pyr * R * dcs)

    vec = 16 // itemsize
    dc = None
    for budget in (100 * 1024, 227 * 1024):
        for align in ((vec if D % vec == 0 else 1), 1):
            for parts in range(1, D + 1):
                cand = _cdiv(_cdiv(D, parts), align) * align
                if layout(cand) <= budget:
                    dc = cand
                    break
            if dc:
                break
        if dc:
            break
    work = P * dc // vec
    threads = min(256, max(64, _cdiv(work, 32) * 32))
    return threads, layout(dc)


# ---- rows --------------------------------------------------------------------------------------

def row(backend, kind, dtype, p, levels, D, registers, spills, local, smem, threads, ipe,
        **extra):
    return dict(backend=backend, **{"pass": kind}, dtype=dtype, p=p, levels=levels, D=D,
                registers=registers, spill_bytes=spills, local_bytes=local, smem_bytes=smem,
                threads=threads, blocks_per_sm=blocks_per_sm(registers, threads, smem),
                instructions_per_element=None if ipe is None else round(ipe, 1), **extra)


def cuda_rows(binary, configs):
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found (Triton's bundled copy or the CUDA toolkit's)")
    sass = parse_sass(run_cuobjdump(cuobjdump, ["-sass", "-arch", "sm_90"], binary))
    res = parse_resources(run_cuobjdump(cuobjdump, ["-res-usage", "-arch", "sm_90"], binary))
    if not sass:
        raise RuntimeError(f"{binary} has no sm_90 code (build with TORCH_CUDA_ARCH_LIST "
                           "including 9.0)")
    spec, general = {}, {}
    for name, instrs in sass.items():
        m = re.search(r"fractal_spec_(fwd|bwd)_kernel.*?ConfigI(N3c108BFloat16E|N3c104HalfE|f)"
                      r"Li(\d+)ELi(\d+)ELi(\d+)ELi\d+ELi\d+ELNS\d+_7VariantE(\d+)E", name)
        if m:
            if m.group(6) != "0":  # the A/B variants (Variant) are not the kernels users run
                continue
            key = (m.group(1), MANGLED_DTYPE[m.group(2)], *map(int, m.groups()[2:5]))
            spec[key] = (name, instrs)
            continue
        m = re.search(r"fractal_(fwd|bwd)_kernelI(N3c108BFloat16E|N3c104HalfE|f)E", name)
        if m:
            general[(m.group(1), MANGLED_DTYPE[m.group(2)])] = (name, instrs)
    rows = []
    for dtype, p, levels, D in configs:
        for kind in ("fwd", "bwd"):
            key = (kind, dtype, p, levels, D)
            if key not in spec:
                continue
            name, instrs = spec[key]
            cfg = SpecConfig(ITEMSIZE[dtype], p, levels, D, kind)
            r = res.get(name, {})
            ipe, breakdown, note = spec_instructions(instrs, cfg)
            rows.append(row("cuda-specialised", kind, dtype, p, levels, D, r.get("REG", 0),
                            spill_bytes(instrs), r.get("LOCAL", 0) + r.get("STACK", 0),
                            cfg.smem_bytes + static_smem(r), cfg.threads, ipe,
                            frames_per_item=cfg.F, stages=cfg.stages, phases=breakdown,
                            note=note, kernel=name))
        for kind in ("fwd", "bwd"):
            if (kind, dtype) not in general:
                continue
            name, instrs = general[(kind, dtype)]
            r = res.get(name, {})
            threads, smem = general_cuda_plan(ITEMSIZE[dtype], p, levels, D, kind)
            rows.append(row("cuda-general", kind, dtype, p, levels, D, r.get("REG", 0),
                            spill_bytes(instrs), r.get("LOCAL", 0) + r.get("STACK", 0),
                            smem + static_smem(r), threads, None,
                            note="run-time loop trip counts: no static count", kernel=name))
    return rows


def triton_rows(configs):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from mstr_kernels.ops.triton_fractal import _meta, launch_config
    from mstr_kernels.ops.triton_fractal_bwd import fractal_bwd_kernel
    from mstr_kernels.ops.triton_fractal_fwd import fractal_fwd_kernel

    types = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}

    def launch_values(kernel, D):
        """Integer arguments of a real launch at the benchmark layout: q, k, v views of a
        (B, T, 3, H, D) projection, dout and outputs laid out as (B, T, H, D)."""
        B, T, H = 32, 4096, 16
        view = {"b": T * 3 * H * D, "h": D, "t": 3 * H * D, "d": 1}
        dense = {"b": T * H * D, "h": D, "t": H * D, "d": 1}
        values = {"H": H, "T": T, "D": D, "n_tiles": 51, "total_tiles": B * H * 51}
        for name in kernel.arg_names:
            if len(name) == 3 and name[0] == "s" and name[2] in "bhtd":
                values[name] = (view if name[1] in "qkv" else dense)[name[2]]
        return values

    def signature(kernel, kind, dtype, cfg, p, levels, D):
        """As the JIT specializes a launch: integers equal to 1 become constants, multiples of
        16 and pointers carry divisibility 16."""
        constexprs = {k: v for k, v in _meta(cfg, kind, p, levels, True).items()
                      if k not in ("num_warps", "maxnreg")}
        constexprs.setdefault("VARLEN", False)  # the padded op's kernels (varlen reuses them)
        values = launch_values(kernel, D)
        sig, attrs = {}, {}
        for i, name in enumerate(kernel.arg_names):
            if name in constexprs:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = {"lengths_ptr": "*i32", "scratch_ptr": "*fp32"}.get(name, types[dtype])
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif name == "scale":
                sig[name] = "fp32"
            elif values[name] == 1:
                sig[name] = "constexpr"
                constexprs[name] = 1
            else:
                sig[name] = "i32" if values[name] < 2 ** 31 else "i64"
                if values[name] % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        return sig, constexprs, attrs

    def ptxas_usage(ptx):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "k.ptx")
            Path(src).write_text(ptx)
            res = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", src, "-o",
                                  os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
        text = res.stdout + res.stderr
        if res.returncode != 0:
            raise RuntimeError(text)
        regs = int(re.search(r"Used (\d+) registers", text).group(1))
        st, ld = (int(x) for x in re.search(
            r"(\d+) bytes spill stores, (\d+) bytes spill loads", text).groups())
        stack = int(re.search(r"(\d+) bytes stack frame", text).group(1))
        return regs, st, ld, stack

    rows = []
    for dtype, p, levels, D in configs:
        for kind, kernel in (("fwd", fractal_fwd_kernel), ("bwd", fractal_bwd_kernel)):
            cfg = launch_config(p, levels, D, kind)
            src = ASTSource(kernel, *signature(kernel, kind, dtype, cfg, p, levels, D))
            options = {"num_warps": cfg.num_warps}
            if cfg.maxnreg:
                options["maxnreg"] = cfg.maxnreg
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
                regs, st, ld, stack = ptxas_usage(compiled.asm["ptx"])
                if (st or ld) and "maxnreg" in options:  # as the launcher: drop a cap that spills
                    options.pop("maxnreg")
                    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                              options=options)
                    regs, st, ld, stack = ptxas_usage(compiled.asm["ptx"])
            except Exception as e:  # a compile failure is a finding, reported per row
                rows.append(dict(backend="triton", **{"pass": kind}, dtype=dtype, p=p,
                                 levels=levels, D=D, error=f"{type(e).__name__}: {str(e)[:300]}"))
                continue
            rows.append(row("triton", kind, dtype, p, levels, D, regs, st, stack,
                            compiled.metadata.shared, cfg.num_warps * 32, None,
                            maxnreg=options.get("maxnreg"),
                            sass_instructions=cubin_instruction_count(compiled.asm["cubin"]),
                            note="run-time loop trip counts: no per-element count; "
                                 "sass_instructions is the kernel's static size"))
    return rows


def print_table(rows):
    cols = ["backend", "pass", "dtype", "p", "levels", "D", "registers", "spill_bytes",
            "local_bytes", "smem_bytes", "threads", "blocks_per_sm", "instructions_per_element"]
    head = ["backend", "pass", "dtype", "p", "L", "D", "regs", "spill", "local", "smem",
            "thr", "blk/SM", "instr/elem"]
    widths = [16, 4, 5, 2, 2, 4, 5, 6, 6, 7, 4, 6, 10]
    print(" ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:>16} {r['pass']:>4} {r['dtype']:>5} {r['p']:>2} {r['levels']:>2} "
                  f"{r['D']:>4}  COMPILE FAILED: {r['error'][:120]}")
            continue
        cells = ["-" if r[c] is None else str(r[c]) for c in cols]
        print(" ".join(c.rjust(w) for c, w in zip(cells, widths)))


def check(rows):
    """Failures: a CUDA kernel or the headline Triton row spills or uses local memory; the
    specialised forward or backward at the headline configuration is over its budget."""
    failures = []
    for r in rows:
        key = (r["dtype"], r["p"], r["levels"], r["D"])
        if "error" in r:
            failures.append(f"{r['backend']} {r['pass']} {key}: {r['error'][:100]}")
            continue
        if r["backend"].startswith("cuda") or key == REQUIRED:
            if r["spill_bytes"] or r["local_bytes"]:
                failures.append(f"{r['backend']} {r['pass']} {key}: spills/local memory")
        ipe = r["instructions_per_element"]
        budget = FORWARD_BUDGET if r["pass"] == "fwd" else BACKWARD_BUDGET
        if r["backend"] == "cuda-specialised" and key == REQUIRED and (ipe is None or ipe > budget):
            failures.append(f"{r['backend']} {r['pass']} {key}: {ipe} instructions per element "
                            f"(budget {budget})")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--quick", action="store_true", help="only bf16, D=64, p=3, levels=4")
    parser.add_argument("--binary", action="append", help="a .so or .cubin with sm_90 code "
                        "(repeatable; default: the installed extension)")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA kernels")
    args = parser.parse_args(argv)
    # Compiling needs the real kernels, not the interpreter's wrappers (the test suite sets
    # TRITON_INTERPRET=1); only here, in the script's own process, before Triton is imported.
    os.environ.pop("TRITON_INTERPRET", None)
    configs = CONFIGS[:1] if args.quick else CONFIGS
    rows = []
    if not args.no_cuda:
        binaries = args.binary or [b for b in [extension_binary()] if b]
        if not binaries:
            print("no mstr_kernels/_C*.so found (extension not built): CUDA rows skipped",
                  file=sys.stderr)
        for binary in binaries:
            rows += cuda_rows(binary, configs)
    if not args.no_triton:
        rows += triton_rows(configs)
    print_table(rows)
    for r in rows:
        if r.get("phases"):
            parts = ", ".join(f"{ph['phase']} {ph['sass_instructions']} x {ph['warps']} warps = "
                              f"{ph['per_element']}" for ph in r["phases"])
            print(f"  {r['dtype']} p={r['p']} L={r['levels']} D={r['D']}: {parts}"
                  + (f" [{r['note']}]" if r["note"] else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    failures = check(rows)
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
