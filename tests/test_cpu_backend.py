"""What is particular to the fused `cpu` backend (csrc/cpu): its instruction-set variants, the
kernel's direct output path for rows of whole vectors, and `auto` choosing it. Its parity with
float64 (shapes, tails, lengths, strides, every dtype, the SPEC range's corners, magnitudes,
gradcheck, compile, opcheck, determinism across runs and thread counts, poisoned memory) is
tests/test_parity.py, as for every backend."""
import os
import subprocess
import sys

import pytest
import torch

from mstr_kernels.ops import BACKENDS, select_backend
from parity import SPEC_BOUND, Inputs, check_case

CPU_MISSING = BACKENDS["cpu"].unavailable_reason()
pytestmark = pytest.mark.skipif(CPU_MISSING is not None,
                                reason=f"the cpu backend is not built: {CPU_MISSING}")


@pytest.mark.parametrize("layout", ["projection", "contiguous"])
@pytest.mark.parametrize("D,scale", [(64, None), (32, -0.7), (16, 2.5)])
def test_float32_whole_vector_rows_and_any_scale(layout, D, scale):
    """Rows of whole vectors take the kernel's direct (streamed) output path; a negative scale
    flips which score is the softmax's maximum; magnified inputs make that matter (and make the
    softmax ill-conditioned, where the rule holds the kernel to the reference's own error)."""
    T = 2 * 81 + 5
    check_case("cpu", Inputs("cpu", torch.float32, 3, 2, T, D, 3, 4, (T, 0, 100), layout, scale,
                             magnitude=4.0, seed=D))


def test_auto_picks_cpu_for_cpu_tensors():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        q = torch.zeros(1, 1, 4, 4, dtype=dtype)
        assert select_backend("auto", q, 3, 2).name == "cpu"


CHECK_VARIANT = """
import sys, torch
sys.path.insert(0, {tests!r})
import mstr_kernels
from parity import f64_outputs, qkv_views, rel_err
g = torch.Generator().manual_seed(1)
q, k, v = qkv_views(2, 2, 40, 13, torch.float32, generator=g)
lengths = torch.tensor([40, 17])
out = mstr_kernels.fractal_attention(q, k, v, p=3, levels=3, lengths=lengths, backend="cpu")
print(torch.backends.cpu.get_cpu_capability(), rel_err(out, f64_outputs(q, k, v, 3, 3, lengths)))
"""


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_instruction_set_variants(capability):
    """Each compiled variant (chosen at run time from ATEN_CPU_CAPABILITY and the CPU) is right."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    script = CHECK_VARIANT.format(tests=os.path.dirname(__file__))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    reported, err = run.stdout.split()
    if reported.lower() != capability:
        pytest.skip(f"this CPU cannot run the {capability} variant (ATen reports {reported})")
    assert float(err) < SPEC_BOUND[torch.float32]
