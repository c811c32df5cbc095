"""Summary of one GPU window (scripts/gpu_window.sh): reads what its steps left in a folder
(steps.txt, static.json, bench.json, model.json, host-overhead.json, packed-vs-padded.json,
ab.json, ncu.txt), writes one results JSON and prints a short table. Missing pieces are reported as missing, never filled in.

    python scripts/gpu_window_summary.py WORK_DIR --json RESULTS.json
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from pathlib import Path

HEADLINE = {"B": 32, "H": 16, "D": 64, "dtype": "bfloat16", "p": 3, "levels": 4}
NCU_METRICS = {"dram__bytes_read.sum": "dram_read", "dram__bytes_write.sum": "dram_write",
               "smsp__inst_executed.sum": "warp_instructions",
               "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue_active_pct",
               "gpu__time_duration.sum": "duration"}


def read_steps(work: Path):
    steps = {}
    path = work / "steps.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, status = line.rpartition(" ")
            steps[name] = status
    return steps


def read_bench(work: Path):
    path = work / "bench.json"
    if not path.exists():
        return None, []
    data = json.loads(path.read_text())
    rows = [r for r in data.get("rows", [])
            if all(r.get(k) == v for k, v in HEADLINE.items())]
    keep = ("contender", "pass", "T", "median_ms", "floor_ratio", "speedup_vs_sdpa",
            "speedup_vs_reference", "note")
    return data.get("copy_gbs"), [{k: r.get(k) for k in keep} for r in rows]


def read_ab(work: Path):
    """The rows of benchmarks/cuda_variants_ab.py (kind, variant, median_us, floor_ratio, ...)."""
    path = work / "ab.json"
    return json.loads(path.read_text()) if path.exists() else None


def _number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def read_ncu_file(path: Path):
    """{target: metrics} from ncu.txt: sections '### ncu-<target>', each ncu's CSV output."""
    if not path.exists():
        return {}
    parts = re.split(r"^### (\S+)\n", path.read_text(errors="replace"), flags=re.M)
    return {name: read_ncu(text) for name, text in zip(parts[1::2], parts[2::2])}


def read_ncu(text: str):
    """Metrics of the one profiled launch from `ncu --csv --page raw`: the first row after the
    header and units rows; stall reasons as the three largest issue-stall columns."""
    start = text.find('"ID"')
    if start < 0:
        return {"error": "no ncu table (see the window log)"}
    rows = list(csv.reader(io.StringIO(text[start:])))
    if len(rows) < 3:
        return {"error": "no profiled launch"}
    header, units, values = rows[0], rows[1], rows[2]
    out = {"kernel": values[header.index("Kernel Name")] if "Kernel Name" in header else None}
    for metric, name in NCU_METRICS.items():
        if metric in header:
            i = header.index(metric)
            out[name] = _number(values[i])
            out[name + "_unit"] = units[i]
    stalls = [(header[i], _number(values[i])) for i in range(len(header))
              if "issue_stalled" in header[i] and _number(values[i]) is not None]
    out["top_stalls"] = sorted(stalls, key=lambda kv: -kv[1])[:3]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    work = args.work
    copy_gbs, bench = read_bench(work)
    static_path = work / "static.json"
    static = json.loads(static_path.read_text()) if static_path.exists() else None
    model_path, host_path = work / "model.json", work / "host-overhead.json"
    model = json.loads(model_path.read_text()) if model_path.exists() else None
    host = json.loads(host_path.read_text()) if host_path.exists() else None
    packed_path = work / "packed-vs-padded.json"
    packed = json.loads(packed_path.read_text()) if packed_path.exists() else None
    result = {"steps": read_steps(work), "copy_gbs": copy_gbs, "bench": bench,
              "model_rows": model["model_rows"] if model else None,
              "model_targets": model["targets"] if model else None,
              "host_overhead": host["rows"] if host else None,
              "packed_vs_padded": {"rows": packed["rows"], "ratios": packed["ratios"]}
              if packed else None,
              "ab_variants": read_ab(work),
              "ncu": read_ncu_file(work / "ncu.txt"),
              "static": static}
    log = work / "window.log"
    if log.exists():
        env = re.search(r"GPU window: (\S+), (\S+), commit (\S+)", log.read_text(errors="replace"))
        if env:
            result["window"], result["date"], result["commit"] = env.groups()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")

    print("\n== GPU window summary ==")
    print("steps: " + (", ".join(f"{k}={v}" for k, v in result["steps"].items()) or "none ran"))
    if bench:
        print(f"copy bandwidth {copy_gbs:.0f} GB/s; B=32 H=16 D=64 bf16 p=3 levels=4")
        print(f"{'contender':>18} {'pass':>7} {'T':>5} {'ms':>9} {'x floor':>8} {'vs sdpa':>8}")
        for r in sorted(bench, key=lambda r: (r["T"], r["pass"], r["contender"])):
            ms = "-" if r["median_ms"] is None else f"{r['median_ms']:.4f}"
            fl = "-" if r["floor_ratio"] is None else f"{r['floor_ratio']:.2f}"
            sp = "-" if r["speedup_vs_sdpa"] is None else f"{r['speedup_vs_sdpa']:.2f}"
            print(f"{r['contender']:>18} {r['pass']:>7} {r['T']:>5} {ms:>9} {fl:>8} {sp:>8}")
    else:
        print("benchmark: missing")
    for name, r in (result["host_overhead"] or {}).items():
        ratio = r.get("forward_ratio_to_sdpa")
        print(f"host overhead {name:>9}: forward {r['forward_us']:.1f} us"
              + (f" ({ratio:.2f}x SDPA)" if ratio else ""))
    for r in result["model_rows"] or []:
        busy = "-" if r.get("busy_ms") is None else f"{r['busy_ms']:.2f}"
        ms = "-" if not r.get("step_ms") else f"{r['step_ms']:.2f}"
        print(f"model {r['model']:>14} {r['mode']:>9} B={r['B']:<3} T={r['T']:<5} "
              f"step {ms} ms, GPU busy {busy} ms")
    for t in result["model_targets"] or []:
        if t["target"].startswith(("compiled", "MSTR")) and t["status"] != "not measured":
            print(f"[{t['status']}] {t['target']}: {t['value']:.3g} (target {t['wanted']})")
    if model is None:
        print("model rows: missing")
    if packed:
        print("packed vs padded (cuda): " + ", ".join(
            f"{r['batching']} {r['frames_per_s']:.0f} frames/s" for r in packed["rows"])
            + "; frames/s packed / padded "
            + f"{packed['ratios']['packed_over_padded']:.2f}x, packed / bucketed "
            + f"{packed['ratios']['packed_over_bucketed']:.2f}x")
    else:
        print("packed vs padded: missing")
    for r in result["ab_variants"] or []:
        what = (f"{r['median_us']:.1f} us, {r['floor_ratio']:.2f}x floor"
                if r.get("median_us") is not None else "not timed")
        print(f"A/B {r['kind']} {r['variant']:>10}: {what} ({r.get('note', '')})")
    if result["ab_variants"] is None:
        print("A/B of the variants: missing")
    for name, m in result["ncu"].items():
        if "error" in m:
            print(f"{name}: {m['error']}")
            continue
        stalls = ", ".join(f"{k.split('stalled_')[-1].split('.')[0]} {v:.1f}"
                           for k, v in m["top_stalls"])
        print(f"{name}: DRAM read {m.get('dram_read')} {m.get('dram_read_unit', '')}, write "
              f"{m.get('dram_write')} {m.get('dram_write_unit', '')}, warp instr "
              f"{m.get('warp_instructions')}, issue active {m.get('issue_active_pct')}%, "
              f"stalls: {stalls}")
    if static:
        for r in static:
            if r.get("backend") == "cuda-specialised":
                print(f"static: {r['dtype']} p={r['p']} L={r['levels']} D={r['D']}: "
                      f"{r['instructions_per_element']} instr/element, {r['registers']} regs, "
                      f"{r['blocks_per_sm']} blocks/SM")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
