"""The GPU window (scripts/gpu_window.sh) without a GPU: the script parses, its dry run writes a
results file, and the summary reads what each step leaves (and says what is missing)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_window.sh"
SUMMARY = ROOT / "scripts" / "gpu_window_summary.py"


def run_summary(work: Path, tmp_path: Path):
    out = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, str(SUMMARY), str(work), "--json", str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text()), res.stdout


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_writes_a_summary_that_says_what_is_missing(tmp_path):
    env = dict(os.environ, GPU_WINDOW_DRY="1", OUT=str(tmp_path), PYTHON=sys.executable,
               PYTHONPATH=str(ROOT))
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    results = list(tmp_path.glob("*-window.json"))
    assert len(results) == 1, list(tmp_path.iterdir())
    data = json.loads(results[0].read_text())
    assert data["bench"] == [] and data["model_rows"] is None and data["host_overhead"] is None
    assert "benchmark: missing" in res.stdout and "model rows: missing" in res.stdout


def test_summary_reads_training_figures(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "steps.txt").write_text("build 0\nmodel training step 0\n")
    (work / "host-overhead.json").write_text(json.dumps({"rows": {
        "sdpa": {"forward_us": 10.0}, "triton": {"forward_us": 17.0,
                                                 "forward_ratio_to_sdpa": 1.7}}}))
    target = {"target": "compiled MSTR[triton] training step B=8 / B=32, T=326 F=1024",
              "wanted": "<= 0.5", "value": 0.4, "status": "met", "why": None}
    (work / "model.json").write_text(json.dumps({"model_rows": [
        {"model": "MSTR[triton]", "mode": "default", "B": 32, "T": 326, "step_ms": 9.5,
         "busy_ms": 8.0}], "targets": [target]}))
    data, printed = run_summary(work, tmp_path)
    assert data["steps"] == {"build": "0", "model training step": "0"}
    assert data["host_overhead"]["triton"]["forward_ratio_to_sdpa"] == 1.7
    assert data["model_targets"] == [target]
    assert "1.70x SDPA" in printed and "step 9.50 ms, GPU busy 8.00 ms" in printed
    assert "[met] compiled MSTR[triton] training step B=8 / B=32" in printed
