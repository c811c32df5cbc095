"""A/B timing of builds of the CPU kernels: each build of `mstr_kernels._C` (a copied .so file)
runs in its own process (two builds in one process would share their exported symbols), in
alternating rounds, so that the load of a shared machine falls on all of them alike.

Per round and build: the median of 7 calls of the fused forward and backward at B=8, H=16,
T=1024, D=64, float32, p=3, levels=4 (q, k, v views of a (B, T, 3, H, D) projection, or with
`--layout contiguous` separate (B, H, T, D) tensors; 2 threads)
and the memory floor of that round (bytes of q, k, v, out at the bandwidth of a 256 MiB copy_
into a warm buffer); printed: medians over rounds. `--in-cache` instead times one thread on
B=1 (inputs resident in L3) and prints the best microseconds per tile.

    cp mstr_kernels/_C*.so /tmp/a.so   # build, copy, change, build, copy ...
    python benchmarks/cpu_ab.py /tmp/a.so /tmp/b.so --rounds 3 [--in-cache]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TIMING = str(Path(__file__).resolve().parent.parent / "mstr_kernels" / "bench" / "timing.py")
ONE_ROUND = r"""
import importlib.machinery, importlib.util, json, sys, torch
path, in_cache, layout = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
# The project's timer, loaded from its file: importing mstr_kernels would load its own _C.
spec = importlib.util.spec_from_file_location("mstr_timing", sys.argv[4])
timing = sys.modules["mstr_timing"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)
loader = importlib.machinery.ExtensionFileLoader("_C", path)
ext = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_C", path, loader=loader))
loader.exec_module(ext)
torch.manual_seed(0)
B, H, T, D = (1, 16, 1024, 64) if in_cache else (8, 16, 1024, 64)
if in_cache:
    torch.set_num_threads(1)
if layout == "projection":
    proj = torch.randn(B, T, 3, H, D)
    q, k, v = (proj[:, :, i].transpose(1, 2) for i in range(3))
else:
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
dout = torch.randn(B, H, T, D)
fwd = lambda: ext.fractal_attention_fwd(q, k, v, None, 3, 4, D ** -0.5)
bwd = lambda: ext.fractal_attention_bwd(dout, q, k, v, None, 3, 4, D ** -0.5)
def median_ms(fn, n=7):
    return timing.measure([fn], torch.device("cpu"), budget_s=0, min_reps=n, max_reps=n,
                          warmup=2, rounds=1).median_ms
if in_cache:
    tiles = B * H * 13
    best = lambda fn, n: min(median_ms(fn, 1) for _ in range(n)) * 1e3 / tiles
    print(json.dumps({"fwd_us_per_tile": best(fwd, 40), "bwd_us_per_tile": best(bwd, 20)}))
else:
    src = torch.randn(64 << 20); dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src))
    floor_ms = 4 * q.numel() * 4 / (2 * src.numel() * 4 / copy_ms)
    print(json.dumps({"fwd_ms": median_ms(fwd), "bwd_ms": median_ms(bwd), "floor_ms": floor_ms}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", help="copies of mstr_kernels/_C*.so")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--in-cache", action="store_true")
    ap.add_argument("--per-round", action="store_true",
                    help="also print every round (this machine's copy bandwidth differs between "
                         "processes by up to 1.7x: compare builds within a bandwidth mode)")
    ap.add_argument("--layout", choices=("projection", "contiguous"), default="projection",
                    help="q, k, v as views of a (B, T, 3, H, D) projection (default), or contiguous "
                         "(B, H, T, D) tensors as `mstr bench` uses")
    args = ap.parse_args()
    runs = {path: [] for path in args.builds}
    for _ in range(args.rounds):
        for path in args.builds:
            out = subprocess.run([sys.executable, "-c", ONE_ROUND, path, "1" if args.in_cache else "0",
                                  args.layout, TIMING],
                                 capture_output=True, text=True, check=True).stdout
            runs[path].append(json.loads(out.strip().splitlines()[-1]))
            if args.per_round:
                print(f"  {path}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[path][-1].items()))
        time.sleep(0.5)
    for path, rows in runs.items():
        if args.in_cache:
            print(f"{path}: fwd {min(r['fwd_us_per_tile'] for r in rows):.2f} us/tile, "
                  f"bwd {min(r['bwd_us_per_tile'] for r in rows):.2f} us/tile (best, 1 thread)")
        else:
            med = lambda key: statistics.median(r[key] for r in rows)
            ratio = statistics.median(r["fwd_ms"] / r["floor_ms"] for r in rows)
            print(f"{path}: fwd {med('fwd_ms'):.2f} ms (fwd / floor {ratio:.2f}), "
                  f"bwd {med('bwd_ms'):.2f} ms, floor {med('floor_ms'):.2f} ms")


if __name__ == "__main__":
    main()
