"""Render README.md's performance section from the committed results files.

Reads benchmarks/results/*.json (written by `mstr bench --json`), takes the newest file of each
machine, GPU machines first (CPU figures are shown only until a GPU file exists), and writes the
section between `<!-- perf:start -->` and `<!-- perf:end -->`. Every figure comes from a file;
nothing is typed by hand.

    python scripts/render_readme_perf.py            # rewrite README.md
    python scripts/render_readme_perf.py --check    # exit 1 if README.md is out of date
    python scripts/render_readme_perf.py --stdout   # print the section only
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mstr_kernels.bench import report  # noqa: E402

START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def load_results(results_dir: Path) -> list:
    """(path, result) of the newest results file per machine, GPU machines first. Other JSON
    files there (tuning knobs) have no "env" and are skipped."""
    newest = {}
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or "env" not in result:
            continue
        env = result["env"]
        key = (env["device"], env["device_name"])
        if key not in newest or env["date"] > newest[key][1]["env"]["date"]:
            newest[key] = (path, result)
    return sorted(newest.values(), key=lambda v: (v[1]["env"]["device"] != "cuda",
                                                  v[1]["env"]["device_name"]))


def _f(x, spec, suffix=""):
    return "-" if x is None else format(x, spec) + suffix


def _main_config(result):
    """The configuration the section tabulates: SPEC section 4's for the device if present,
    else the largest T of the first swept configuration."""
    main = report.GPU_MAIN if result["env"]["device"] == "cuda" else report.CPU_MAIN
    rows = result["rows"]
    if any(all(r[k] == v for k, v in main.items()) for r in rows):
        return main
    first = rows[0]
    cfg = {k: first[k] for k in ("dtype", "B", "H", "D", "p", "levels")}
    cfg["T"] = max(r["T"] for r in rows if all(r[k] == v for k, v in cfg.items() if k != "T"))
    return cfg


def _tuning_note(env: dict) -> str:
    tuning = env.get("triton_tuning")
    if not tuning:
        return ""
    return " Triton launch knobs: " + "; ".join(
        f"{kind} " + ", ".join(f"{k}={v}" for k, v in knobs.items()) for kind, knobs in tuning.items()) + "."


def _rel(path: Path) -> str:
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def render_one(path: Path, result: dict) -> str:
    env = result["env"]
    cfg = _main_config(result)
    lines = [f"### {env['device_name']} ({env['device']})", "",
             f"`{_rel(path)}`: {env['date']}, commit {env['commit']}, "
             f"torch {env['torch']}, Triton {env['triton']}, CUDA {env['cuda']}"
             + (f", driver {env['driver']}" if env.get("driver") else "")
             + f", {env['threads']} CPU threads. Device-to-device copy: "
             f"{result['copy_gbs']:.1f} GB/s (read + write), which sets the memory floor."
             + _tuning_note(env), "",
             "Op, " + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ":", "",
             "| contender | pass | median ms | GB/s | time / floor | x reference | "
             "x compiled reference | x SDPA | x Flex | peak MiB | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in result["rows"]:
        if all(r[k] == v for k, v in cfg.items()):
            lines.append(f"| {r['contender']} | {r['pass']} | {_f(r['median_ms'], '.3f')} | "
                         f"{_f(r['gbs'], '.1f')} | {_f(r['floor_ratio'], '.2f')} | "
                         f"{_f(r['speedup_vs_reference'], '.2f')} | "
                         f"{_f(r['speedup_vs_compiled_reference'], '.2f')} | "
                         f"{_f(r.get('speedup_vs_sdpa'), '.2f')} | {_f(r.get('speedup_vs_flex'), '.2f')} | "
                         f"{_f(r['peak_mem_mb'], '.0f')} | {(r.get('note') or '').replace('|', '/')[:80]} |")
    if result.get("peak_mem_basis"):
        lines += ["", f"Peak memory: {result['peak_mem_basis']}."]
    model_rows = result.get("model_rows") or []
    if model_rows:
        lines += ["", "Model training step (forward, backward, Adam):", "",
                  "| model | mode | B | T | F | precision | step ms | busy ms | peak MiB "
                  "| x MSTR[reference] | note |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in model_rows:
            lines.append(f"| {r['model']} | {r.get('mode', 'eager')} | {r['B']} | {r['T']} | "
                         f"{r['F']} | {r['dtype']} | {_f(r['step_ms'], '.2f')} | "
                         f"{_f(r.get('busy_ms'), '.2f')} | {_f(r['peak_mem_mb'], '.0f')} | "
                         f"{_f(r.get('speedup_vs_reference'), '.2f')} | {r.get('note') or ''} |")
        if result.get("busy_basis"):
            lines += ["", f"Busy ms: {result['busy_basis']}."]
    elif result.get("model_skipped"):
        lines += ["", f"Model benchmark not in this file: {result['model_skipped']}."]
    lines += ["", "SPEC section 4 targets:", ""]
    for t in report.targets(result):
        if t["device"] != env["device"]:
            continue
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"- **{t['status']}**: {t['target']}: {value} (target {t['wanted']})"
                     + (f"; {t['why']}" if t["why"] else ""))
    plot_dir = path.with_suffix("")
    plots = sorted(plot_dir.glob("*.png")) if plot_dir.is_dir() else []
    if plots:
        lines.append("")
        lines += [f"![{p.stem}]({_rel(p)})" for p in plots]
    return "\n".join(lines)


def render(results_dir: Path) -> str:
    found = load_results(results_dir)
    head = ["## Performance", "",
            "Rendered by `scripts/render_readme_perf.py` from `benchmarks/results/` "
            "(`mstr bench --json`); regenerate after adding a results file."]
    if not found:
        return "\n".join(head + ["", "No results files are committed yet."])
    if all(r["env"]["device"] != "cuda" for _, r in found):
        head += ["", "No GPU results are committed yet: these are CPU figures from this "
                 "repository's machines. GPU files come from `scripts/gpu_suite.sh`."]
    return "\n\n".join(["\n".join(head)] + [render_one(p, r) for p, r in found])


def splice(readme: str, section: str) -> str:
    if START not in readme or END not in readme or readme.index(START) > readme.index(END):
        raise SystemExit(f"README.md needs the markers {START} and {END} (in that order) around "
                         "the performance section")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{section}\n{END}{after}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    mode.add_argument("--stdout", action="store_true", help="print the section, write nothing")
    args = ap.parse_args(argv)
    section = render(args.results)
    if args.stdout:
        print(section)
        return 0
    if not args.readme.exists():
        raise SystemExit(f"{args.readme} does not exist")
    old = args.readme.read_text()
    new = splice(old, section)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date: run python scripts/render_readme_perf.py")
            return 1
        return 0
    args.readme.write_text(new)
    print(f"rendered the performance section of {args.readme} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
