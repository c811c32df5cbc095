"""The GPU window (scripts/gpu_window.sh) without a GPU: the script parses, its dry run writes a
results file, and the summary reads what each step leaves (and says what is missing)."""
import json
import os
import subprocess
import sys
import tarfile
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
    # what the device tool brings back: at most 8 files, the details in one archive
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(files) <= 8, files
    archive = results[0].with_name(results[0].stem + ".tar.gz")
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"window.log", "steps.txt"} <= names, names
    data = json.loads(results[0].read_text())
    assert data["bench"] == [] and data["model_rows"] is None and data["host_overhead"] is None
    assert data["packed_vs_padded"] is None
    assert "benchmark: missing" in res.stdout and "model rows: missing" in res.stdout
    assert "packed vs padded: missing" in res.stdout
    assert data["ab_variants"] is None and "A/B of the variants: missing" in res.stdout


def test_packed_step_is_in_the_default_window():
    text = SCRIPT.read_text()
    default = text.split('STEPS=" ${GPU_WINDOW_STEPS:-')[1].split('}')[0].split()
    assert "packed" in default
    assert "tests/test_varlen.py -k cuda" in text and "benchmarks/packed_vs_padded.py" in text


def test_summary_reads_the_packed_benchmark(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    rows = [{"batching": b, "frames_per_s": f} for b, f in
            (("padded", 1000.0), ("bucketed", 1500.0), ("packed", 2000.0))]
    ratios = {"packed_over_padded": 2.0, "packed_over_bucketed": 2000.0 / 1500.0}
    (work / "packed-vs-padded.json").write_text(json.dumps({"rows": rows, "ratios": ratios,
                                                            "config": {}}))
    data, printed = run_summary(work, tmp_path)
    assert data["packed_vs_padded"] == {"rows": rows, "ratios": ratios}
    assert "packed 2000 frames/s" in printed and "packed / padded 2.00x" in printed
    assert "packed / bucketed 1.33x" in printed


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


def test_summary_reads_the_variants_ab(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    rows = [{"kind": "fwd", "variant": "full", "median_us": 300.0, "floor_ratio": 1.2,
             "note": "rel. diff 0.0e+00 vs full"},
            {"kind": "bwd", "variant": "memory", "median_us": None, "floor_ratio": None,
             "note": "failed: RuntimeError: x"}]
    (work / "ab.json").write_text(json.dumps(rows))
    data, printed = run_summary(work, tmp_path)
    assert data["ab_variants"] == rows
    assert "A/B fwd       full: 300.0 us, 1.20x floor" in printed
    assert "A/B bwd     memory: not timed (failed: RuntimeError: x)" in printed


def test_variants_ab_names_what_the_extension_accepts():
    """The window's A/B script sets MSTR_KERNELS_CUDA_VARIANT to names the extension parses
    (csrc/cuda/fractal_spec_cuda.cu), and without a GPU it says so and fails."""
    import re
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import cuda_variants_ab as ab
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    source = (ROOT / "csrc" / "cuda" / "fractal_spec_cuda.cu").read_text()
    accepted = set(re.findall(r'strcmp\(env, "([a-z-]+)"\) == 0\) return Variant', source))
    assert accepted == {"full", "memory", "arithmetic", "gelu-erf"}, accepted
    assert set(ab.SETTINGS) == set(ab.VARIANTS)
    assert {kernel for _, kernel, _ in ab.SETTINGS.values()} <= accepted
    text = SCRIPT.read_text()
    assert "benchmarks/cuda_variants_ab.py" in text and '"$WORK/ab.json"' in text
    if not __import__("torch").cuda.is_available():
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_variants_ab.py"),
                              "--rounds", "1"], capture_output=True, text=True, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert res.returncode == 1 and "no CUDA GPU visible" in res.stdout
