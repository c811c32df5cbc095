"""`mstr bench`: the results JSON, the floor ratio tied to the copy bandwidth of the same run,
FlexAttention's equality check, and the SPEC section 4 target verdicts. Tiny shapes, CPU."""
import json
import math

import pytest
import torch

from mstr_kernels import cli
from mstr_kernels.bench import report
from mstr_kernels.bench.contenders import (FLEX, SDPA, Contender, Shape, check_same_function,
                                           flex_contender, verify)
from mstr_kernels.bench.op_bench import PASSES, TENSORS_MOVED, floor_bytes

ROW_KEYS = {"contender", "pass", "B", "H", "T", "D", "dtype", "p", "levels", "median_ms", "gbs",
            "floor_ratio", "peak_mem_mb", "speedup_vs_reference",
            "speedup_vs_compiled_reference"}
ENV_KEYS = {"device_name", "driver", "torch", "triton", "cuda", "commit", "date", "threads"}
CPU = torch.device("cpu")


def has_flex():
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--device", "cpu", "--quick", "--T", "20", "31", "--B", "1", "--H", "2",
            "--D", "8", "--p", "3", "--levels", "2", "--budget", "0.02", "--no-model",
            "--contenders", "reference", "cpu", SDPA, FLEX,
            "--json", str(out / "r.json"), "--plots", str(out / "plots")]
    assert cli.main(argv) == 0
    return json.loads((out / "r.json").read_text()), out


def test_json_schema(quick_run):
    result, _ = quick_run
    assert ENV_KEYS <= set(result["env"])
    assert result["env"]["device"] == "cpu" and result["env"]["threads"] >= 1
    assert result["copy_gbs"] > 0
    assert result["model_rows"] == [] and result["model_skipped"] == "--no-model"
    rows = result["rows"]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["pass"] in PASSES
    # every contender asked for, each T, each pass, has a row (a figure or the reason it has none)
    names = {"reference", SDPA, FLEX} | ({"cpu"} if "cpu" in {r["contender"] for r in rows} else set())
    for name in names:
        for T in (20, 31):
            for pass_ in PASSES:
                match = [r for r in rows if (r["contender"], r["T"], r["pass"]) == (name, T, pass_)]
                assert len(match) == 1, (name, T, pass_)
                assert match[0]["median_ms"] is not None or match[0]["note"]
    ref = [r for r in rows if r["contender"] == "reference"]
    assert all(r["median_ms"] > 0 and r["speedup_vs_reference"] == 1.0 for r in ref)
    assert all(r["speedup_vs_compiled_reference"] is None for r in rows)  # not in this run
    for r in ref:
        sdpa = next(x for x in rows if x["contender"] == SDPA
                    and (x["T"], x["pass"]) == (r["T"], r["pass"]))
        assert math.isclose(r["speedup_vs_sdpa"], sdpa["median_ms"] / r["median_ms"])
    assert {t["status"] for t in result["targets"]} <= {"met", "not met", "not measured"}


def test_no_op_runs_no_op_rows(tmp_path):
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--device", "cpu", "--quick", "--no-op", "--no-model", "--T", "20",
                     "--budget", "0.02", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["rows"] == [] and result["model_rows"] == [] and result["copy_gbs"] > 0


def test_floor_ratio_uses_this_runs_copy_bandwidth(quick_run):
    result, _ = quick_run
    timed = [r for r in result["rows"] if r["median_ms"]]
    assert timed
    for r in timed:
        shape = Shape(r["B"], r["H"], r["T"], r["D"], getattr(torch, r["dtype"]), r["p"],
                      r["levels"])
        nbytes = floor_bytes(shape, r["pass"])
        assert nbytes == TENSORS_MOVED[r["pass"]] * r["B"] * r["H"] * r["T"] * r["D"] * 4
        floor_ms = nbytes / (result["copy_gbs"] * 1e9) * 1e3
        assert math.isclose(r["floor_ratio"], r["median_ms"] / floor_ms, rel_tol=1e-9)
        assert math.isclose(r["gbs"], nbytes / (r["median_ms"] * 1e-3) / 1e9, rel_tol=1e-9)


def test_plots_written(quick_run):
    pytest.importorskip("matplotlib")
    _, out = quick_run
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == ["op-memory-B1-H2-D8-float32-p3-L2.png", "op-time-B1-H2-D8-float32-p3-L2.png"]


@pytest.mark.skipif(not has_flex(), reason="this torch has no torch.nn.attention.flex_attention")
def test_flex_rows_are_checked_then_timed(quick_run):
    result, _ = quick_run
    flex = [r for r in result["rows"] if r["contender"] == FLEX]
    fwd = [r for r in flex if r["pass"] == "fwd"]
    assert all(r["median_ms"] for r in fwd), [r["note"] for r in fwd]


@pytest.mark.skipif(not has_flex(), reason="this torch has no torch.nn.attention.flex_attention")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_window_computes_the_reference_function(dtype):
    shape = Shape(B=1, H=2, T=40, D=8, dtype=dtype, p=3, levels=3)
    contender = flex_contender(shape, CPU)
    verify(contender, shape, CPU)
    assert contender.fn is not None, contender.unavailable


@pytest.mark.skipif(not has_flex(), reason="this torch has no torch.nn.attention.flex_attention")
def test_equality_check_rejects_a_different_function():
    shape = Shape(B=1, H=2, T=40, D=8, dtype=torch.float32, p=3, levels=3)
    # FlexAttention built for p=2 is a different function from the reference at p=3.
    wrong = flex_contender(Shape(1, 2, 40, 8, torch.float32, 2, 3), CPU)
    wrong.maker = lambda s, d: flex_contender(Shape(s.B, s.H, s.T, s.D, s.dtype, 2, s.levels), d)
    verify(wrong, shape, CPU)
    assert wrong.fn is None and "relative L2 error" in wrong.unavailable
    full = Contender(SDPA, "baseline", torch.nn.functional.scaled_dot_product_attention)
    assert "differs from the reference" in check_same_function(full, shape, CPU, grads=True)


def _result(device, rows, model_rows=()):
    return {"env": {"device": device}, "rows": rows, "model_rows": list(model_rows)}


def test_targets_verdicts():
    main = dict(report.GPU_MAIN)
    rows = [dict(main, contender="triton", **{"pass": "fwd"}, floor_ratio=1.2,
                 speedup_vs_reference=20.0, speedup_vs_compiled_reference=4.0,
                 held_for_backward_mb=0.0, note=None),
            dict(main, contender="triton", **{"pass": "fwd+bwd"}, floor_ratio=1.9,
                 speedup_vs_reference=20.0, speedup_vs_compiled_reference=2.0,
                 held_for_backward_mb=0.0, note=None)]
    got = {t["target"].split(": ", 1)[1]: t["status"]
           for t in report.targets(_result("cuda", rows)) if t["target"].startswith("triton")}
    assert got == {"forward time / floor": "met", "forward+backward time / floor": "not met",
                   "forward+backward speedup vs reference eager": "met",
                   "forward+backward speedup vs compiled reference": "not met",
                   "extra memory held between forward and backward (MiB)": "met"}
    cpu_rows = [dict(report.CPU_MAIN, contender="cpu", **{"pass": "fwd+bwd"},
                     speedup_vs_reference=6.0, speedup_vs_compiled_reference=1.2, note=None)]
    cpu = [t for t in report.targets(_result("cpu", cpu_rows)) if t["target"].startswith("CPU")]
    assert [t["status"] for t in cpu] == ["met", "not met"]
    assert all(t["status"] == "not measured" and t["why"]
               for t in report.targets(_result("cpu", cpu_rows)) if "CUDA" in t["target"])


def test_model_step_targets():
    """Issue 15's GPU targets from model rows: compiled MSTR no slower than compiled vanilla,
    its wall time within 1.3x its GPU busy time, and the B=8 step at most half the B=32 step."""
    def step(model, B, T, ms, busy=None, compiled=1):
        return dict(model=model, B=B, T=T, F=1024, step_ms=ms, busy_ms=busy, compiled=compiled)
    model_rows = [step("MSTR[triton]", 32, 326, 10.0, busy=8.5), step("vanilla", 32, 326, 11.0),
                  step("MSTR[triton]", 8, 326, 6.0), step("MSTR[triton]", 8, 326, 1.0, compiled=0),
                  step("MSTR[triton]", 8, 1024, 9.0), step("vanilla", 8, 1024, 10.0)]
    got = {t["target"]: (t["status"], t["value"]) for t in report.targets(
        _result("cuda", [], model_rows)) if "MSTR[triton]" in t["target"]}
    assert got["compiled MSTR[triton] training step B=32 T=326 F=1024: wall / GPU busy time"] == (
        "met", 10.0 / 8.5)
    assert got["compiled MSTR[triton] training step B=8 / B=32, T=326 F=1024"] == ("not met", 0.6)
    assert got["compiled MSTR[triton] training step / compiled vanilla step, B=32 T=326 F=1024 "
               "bf16 autocast"] == ("met", 10.0 / 11.0)
    assert got["compiled MSTR[triton] training step / compiled vanilla step, B=8 T=1024 F=1024 "
               "bf16 autocast"][0] == "not met"
    on_cpu = [t for t in report.targets(_result("cpu", [], model_rows))
              if "wall / GPU busy" in t["target"] or "B=8 / B=32" in t["target"]]
    assert on_cpu and all(t["status"] == "not measured" for t in on_cpu)


def test_model_bench_rows(monkeypatch):
    """Eager and compiled rows (compiled as `mstr train` compiles, here with aot_eager for speed
    on 2 cores), wall time beside the busy time (CPU: time in profiled ops), the spread."""
    from mstr_kernels.bench import model_bench
    real_compile = model_bench.compile_model
    modes = []

    def compile_aot_eager(model, device, *, mode=None):
        modes.append(mode)
        return real_compile(model, device, mode=mode, backend="aot_eager")
    monkeypatch.setattr(model_bench, "compile_model", compile_aot_eager)
    kwargs = dict(B=2, T=20, F_dim=32, num_layers=1, num_heads=2, sweep_T=[40], sweep_B=1,
                  steps=2, budget_s=0.0, progress=lambda line: None)
    saved = []
    rows = model_bench.run_model_bench(CPU, ["reference"], on_row=lambda: saved.append(1),
                                       compiled=["vanilla"], **kwargs)
    assert [(r["model"], r["mode"], r["B"], r["T"], r["sweep"]) for r in rows] == [
        ("MSTR[reference]", "eager", 2, 20, False), ("vanilla", "eager", 2, 20, False),
        ("vanilla", "default", 2, 20, False),
        ("MSTR[reference]", "eager", 1, 40, True), ("vanilla", "eager", 1, 40, True)]
    assert modes == ["default"] and [r["compiled"] for r in rows] == [0, 0, 1, 0, 0]
    assert len(saved) == len(rows)
    for r in rows:
        assert r["step_ms"] > 0, r["note"]
        assert r["busy_ms"] is None and r["note"] is None  # n/a on the CPU (BUSY_BASIS)
        s = r["spread"]
        assert s["min_ms"] <= s["median_ms"] <= s["max_ms"] and s["calls"] >= 2
        assert r["step_ms"] == s["median_ms"] and r["warmup_s"] > 0
    assert rows[0]["speedup_vs_reference"] == 1.0
    assert math.isclose(rows[1]["speedup_vs_reference"], rows[0]["step_ms"] / rows[1]["step_ms"])


def test_busy_time_counts_overlapping_kernels_once():
    from mstr_kernels.bench.model_bench import union_ms
    assert union_ms([]) == 0
    # microseconds: [0, 10] and [5, 20] overlap (two streams), [30, 35] apart
    assert union_ms([(5, 20), (0, 10), (30, 35)]) == pytest.approx(0.025)
    assert union_ms([(0, 10), (2, 3)]) == pytest.approx(0.010)


def test_noise_verdict_flags_spread_and_load():
    from mstr_kernels.bench.timing import Timing, noise_verdict, timing_from_rounds
    quiet = timing_from_rounds([[1.0, 1.01], [0.99, 1.0], [1.02, 1.0]], other_load_cores=0.0)
    assert quiet.rounds == 3 and quiet.calls == 6 and noise_verdict(quiet) is None
    # as in the co-run of issue 19: one round about 60x slower than the others
    noisy = timing_from_rounds([[0.119, 0.12], [7.988, 8.1], [0.12, 0.121]])
    assert noisy.max_ms > 60 * noisy.min_ms
    assert "rounds spread" in noise_verdict(noisy)
    loaded = Timing(1.0, 0.99, 1.01, 5, 50, other_load_cores=1.5)
    assert "other processes kept 1.5" in noise_verdict(loaded, load_limit=0.5)
    assert noise_verdict(loaded, load_limit=2.0) is None


def test_unreliable_figures_are_flagged_in_rows_json_and_output(monkeypatch, tmp_path, capsys):
    """Rounds with a big spread (fed to the reporter) make the row, the JSON and the printed
    output say the figure is unreliable; quiet rounds do not."""
    from mstr_kernels.bench import timing
    from mstr_kernels.bench.timing import timing_from_rounds
    calls = iter(range(10 ** 6))

    def fake_measure(fns, device, **kwargs):
        for fn in fns:
            fn()
        noisy = next(calls) % 2 == 0  # every other figure (copy, fwd+bwd): one round 60x slower
        return timing_from_rounds([[0.12, 0.12], [8.0 if noisy else 0.121, 0.12], [0.12]], 0.0)
    monkeypatch.setattr(timing, "measure", fake_measure)
    out = tmp_path / "r.json"
    assert cli.main(["bench", "--device", "cpu", "--quick", "--T", "20", "--B", "1", "--H", "1",
                     "--D", "8", "--p", "3", "--levels", "2", "--no-model", "--contenders",
                     "reference", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    flagged = [r for r in result["rows"] if r["unreliable"]]
    assert len(flagged) == 1 and len(result["rows"]) == 2
    assert "rounds spread" in flagged[0]["unreliable"]
    assert flagged[0]["spread"]["max_ms"] > 10 * flagged[0]["spread"]["min_ms"]
    # the first figure timed is the copy bandwidth behind every floor ratio: flagged too
    assert "rounds spread" in result["copy_noise"]["unreliable"]
    assert result["noise"]["unreliable_figures"] == 2
    assert printed.count("WARNING unreliable: reference") == 1 and "UNRELIABLE" in printed
    assert "WARNING unreliable: the copy bandwidth" in printed


def test_plots_show_every_contender_and_say_what_they_measure():
    """Equal values do not hide a contender (distinct hollow markers, sizes), the legend sits
    outside the axes, the labels name the measure (CPU memory: a profiler lower bound)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    rows = []
    for name in ("cpu", "reference", SDPA):
        for T in (16, 32):
            for pass_ in PASSES:
                # every contender the same time and memory: the lines coincide
                rows.append(dict(contender=name, **{"pass": pass_}, B=1, H=2, T=T, D=8,
                                 dtype="float32", p=3, levels=2, median_ms=0.5 * T,
                                 floor_ratio=2.0, peak_mem_mb=1.0))
    result = {"env": {"device": "cpu", "device_name": "a CPU"}, "rows": rows, "model_rows": []}
    figures = report.plot_figures(result)
    assert sorted(name for _, name in figures) == ["op-memory-B1-H2-D8-float32-p3-L2.png",
                                                   "op-time-B1-H2-D8-float32-p3-L2.png"]
    for fig, name in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(renderer)
        for ax in fig.axes:
            lines = {ln.get_label(): ln for ln in ax.get_lines()}
            assert {"cpu", "reference", SDPA} <= set(lines)
            looks = {(ln.get_marker(), ln.get_markersize()) for n, ln in lines.items()
                     if n != "memory floor"}
            assert len(looks) == 3 and all(ln.get_markerfacecolor() == "none"
                                           for n, ln in lines.items() if n != "memory floor")
            assert not legend.overlaps(ax.get_window_extent(renderer)), name
        text = " ".join([fig._suptitle.get_text()] + [ax.get_ylabel() for ax in fig.axes])
        assert ("lower bound" in text) if "memory" in name else ("median wall time" in text)
        plt.close(fig)


def test_readme_perf_section_is_rendered_from_results(quick_run, tmp_path):
    import importlib.util
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "render_readme_perf.py"
    spec = importlib.util.spec_from_file_location("render_readme_perf", script)
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    result, out = quick_run
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu-box-2026-01-01.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{render.START}\nold\n{render.END}\n\ntail\n")
    args = ["--readme", str(readme), "--results", str(results)]
    assert render.main(args + ["--check"]) == 1  # out of date
    assert render.main(args) == 0
    text = readme.read_text()
    assert render.main(args + ["--check"]) == 0
    assert text.startswith("# x\n") and text.endswith("\ntail\n") and "old" not in text
    assert result["env"]["device_name"] in text and "No GPU results are committed yet" in text
    ref = next(r for r in result["rows"] if r["contender"] == "reference" and r["T"] == 31
               and r["pass"] == "fwd")
    assert f"| reference | fwd | {ref['median_ms']:.3f} |" in text
    # a GPU file, once there, comes first and the CPU figures follow; a tuning file beside them
    # (no "env") is not a results file
    gpu = dict(result, env=dict(result["env"], device="cuda", device_name="Some GPU",
                                triton_tuning={"fwd": {"chunk": 1024}}))
    (results / "some-gpu-2026-01-02.json").write_text(json.dumps(gpu))
    (results / "some-gpu-2026-01-02-triton-tuning.json").write_text('{"fwd": {"chunk": 1024}}')
    assert render.main(args) == 0
    text = readme.read_text()
    assert text.index("Some GPU") < text.index(result["env"]["device_name"])
    assert "No GPU results are committed yet" not in text
    assert "Triton launch knobs: fwd chunk=1024." in text
    # the committed results files render, with repository-relative paths
    committed_dir = render.ROOT / "benchmarks" / "results"
    committed = render.render(committed_dir)
    if list(committed_dir.glob("*.json")):
        assert "`benchmarks/results/" in committed
    else:
        assert "No results files are committed yet" in committed
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="needs the markers"):
        render.main(args)


def test_committed_readme_matches_the_committed_results():
    """The README's performance section is what the committed results files render to (a new
    results file or a new target without `python scripts/render_readme_perf.py` fails here)."""
    import importlib.util
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "render_readme_perf.py"
    spec = importlib.util.spec_from_file_location("render_readme_perf_committed", script)
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    assert render.main(["--check"]) == 0
