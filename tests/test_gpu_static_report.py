"""scripts/gpu_static_report.py: the static count of the GPU kernels, without a GPU.

The SASS counting is checked on a synthetic listing (known answer); the report itself runs on
the installed extension's sm_90 cubins (present when it was built with CUDA, as CI builds it)
and the Triton kernels compiled for sm_90, and must keep the specialised forward and backward
within their instruction budgets, without spills or local memory.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_static_report.py"
KEYS = {"backend", "pass", "dtype", "p", "levels", "D", "registers", "spill_bytes", "local_bytes",
        "smem_bytes", "blocks_per_sm", "instructions_per_element"}


def _module():
    spec = importlib.util.spec_from_file_location("gpu_static_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _listing(segments, loop=True):
    """A cuobjdump -sass style listing: a prologue, then a loop whose body has `segments[i]`
    instructions before barrier i (the last segment ends with the back-edge)."""
    lines, addr = ["\tFunction : fake_kernel"], 0

    def emit(text):
        nonlocal addr
        lines.append(f"        /*{addr:04x}*/                   {text} ;   /* 0x0 */")
        addr += 16

    emit("S2R R0, SR_TID.X")
    start = addr
    for i, n in enumerate(segments):
        for _ in range(n - 1):
            emit("FFMA R1, R2, R3, R1")
        if i < len(segments) - 1:
            emit("BAR.SYNC.DEFER_BLOCKING 0x0")
        else:
            emit(f"@P0 BRA {hex(start)}" if loop else "NOP")
    emit("EXIT")
    return "\n".join(lines)


def test_phase_count_on_known_listing():
    g = _module()
    cfg = g.SpecConfig(2, 3, 4, 64)  # 7 warps, 81 frames, two stages: 6 phases
    phases = cfg.phase_warps()
    assert [name for name, _ in phases] == ["copies", "sums level 2", "sums level 3",
                                            "sums level 4", "pooled attention", "level 1"]
    sizes = [40, 50, 30, 30, 200, 300, 5]  # the last: loop increment after the end barrier
    instrs = g.parse_sass(_listing(sizes))["fake_kernel"]
    ipe, breakdown, note = g.spec_instructions(instrs, cfg)
    assert note == ""
    counted = [40 + 5] + sizes[1:6]
    expect = sum(n * share * cfg.warps for n, (_, share) in zip(counted, phases)) * 32 / (81 * 64)
    assert ipe == pytest.approx(expect)
    assert [b["sass_instructions"] for b in breakdown] == counted
    # warps with work: sums of levels 3 and 4 have 9 and 3 rows x 8 lanes
    assert breakdown[2]["warps"] == 3.0 and breakdown[3]["warps"] == 1.0  # 72 and 24 items
    assert breakdown[4]["warps"] == 4.0  # 13 pooled windows x 8 lanes


def test_unexpected_structure_counts_everything():
    g = _module()
    cfg = g.SpecConfig(2, 3, 4, 64)
    instrs = g.parse_sass(_listing([100, 100, 10]))["fake_kernel"]
    ipe, _, note = g.spec_instructions(instrs, cfg)
    assert "every instruction counted for every warp" in note
    assert ipe == pytest.approx((110 + 100) * cfg.warps * 32 / (81 * 64))


def test_occupancy():
    g = _module()
    assert g.blocks_per_sm(128, 224, 102144) == 2
    assert g.blocks_per_sm(128, 256, 10_000) == 2     # registers: 64K / (128 x 256)
    assert g.blocks_per_sm(64, 128, 200 * 1024) == 1  # shared memory


def test_budgets_fail_the_report():
    """Both headline budgets are hard (forward 60, backward 110), and so are spills; a row of
    another configuration over the budget is informative only."""
    g = _module()

    def row(pass_, ipe, config=("bf16", 3, 4, 64), spills=0):
        dtype, p, levels, D = config
        return {"backend": "cuda-specialised", "pass": pass_, "dtype": dtype, "p": p,
                "levels": levels, "D": D, "instructions_per_element": ipe,
                "spill_bytes": spills, "local_bytes": 0}

    assert g.check([row("fwd", 54.0), row("bwd", 106.0)]) == []
    assert g.check([row("bwd", 125.0, ("bf16", 2, 5, 64))]) == []
    assert len(g.check([row("fwd", 61.0)])) == 1
    assert len(g.check([row("bwd", 110.5)])) == 1
    assert len(g.check([row("bwd", 100.0, ("bf16", 2, 5, 64), spills=4)])) == 1


def test_report_json(tmp_path):
    g = _module()
    binary = g.extension_binary()
    cuobjdump = g.find_cuobjdump()
    if binary is None or cuobjdump is None:
        pytest.skip("extension or cuobjdump missing")
    listing = subprocess.run([cuobjdump, "--list-elf", binary], capture_output=True, text=True)
    if "sm_90" not in listing.stdout:
        pytest.skip("the extension has no sm_90 cubin (built without CUDA for sm_90)")
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile for sm_90
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())
    for r in rows:
        assert KEYS <= set(r), sorted(KEYS - set(r))
    by = {(r["backend"], r["pass"]): r for r in rows}
    assert ("cuda-specialised", "fwd") in by, (
        f"{binary} has no specialised kernels: built before csrc/cuda/fractal_spec_* (rebuild)")
    spec = by[("cuda-specialised", "fwd")]
    assert (spec["dtype"], spec["p"], spec["levels"], spec["D"]) == ("bf16", 3, 4, 64)
    assert 0 < spec["instructions_per_element"] <= 60
    assert spec["spill_bytes"] == 0 and spec["local_bytes"] == 0
    assert spec["blocks_per_sm"] >= 1
    bwd = by[("cuda-specialised", "bwd")]
    assert bwd["spill_bytes"] == 0 and bwd["local_bytes"] == 0
    assert 0 < bwd["instructions_per_element"] <= 110
    assert ("triton", "fwd") in by and ("triton", "bwd") in by
    assert ("cuda-general", "fwd") in by and ("cuda-general", "bwd") in by
