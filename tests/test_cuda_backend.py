"""What is particular to the `cuda` backend (csrc/cuda): 64-bit offsets and autocast on the GPU.
Its parity with float64 (shapes and tails, big tiles that chunk the head dim, odd head dims,
dtypes, strides, lengths, magnitudes, compile, opcheck, determinism, poisoned memory) is
tests/test_parity.py, as for every backend; there the cuda cases are skipped with the reason
where no GPU is visible.
"""
import pytest
import torch

import mstr_kernels
from conftest import requires_cuda
from float64_loop import fractal_attention_f64
from parity import SPEC_BOUND, qkv_views, rel_err

pytestmark = requires_cuda


def test_autocast_runs_in_bfloat16():
    q, k, v = qkv_views(1, 2, 90, 64, torch.float32, device="cuda",
                        generator=torch.Generator().manual_seed(0), layout="contiguous")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = mstr_kernels.fractal_attention(q, k, v, backend="cuda")
    assert out.dtype == torch.bfloat16
    ref = fractal_attention_f64(*(x.bfloat16().double().cpu() for x in (q, k, v)), 3, 4)
    assert rel_err(out, torch.from_numpy(ref).cuda()) < SPEC_BOUND[torch.bfloat16]


def test_offsets_beyond_int32(whole_gpu):
    # q, k, v views of one (1, T, 3, 1, D) tensor with B*H*T*D > 2**31; tiles are independent,
    # so the last tiles are checked against the reference on just those frames.
    D, P = 64, 81
    T = (2 ** 31) // D + 5 * P + 17
    need = 4 * T * D * 2 + (1 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    qkv = torch.empty(1, T, 3, 1, D, device="cuda", dtype=torch.bfloat16)
    tail_start = (T // P - 1) * P
    qkv[:, :tail_start].zero_()
    qkv[:, tail_start:].normal_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out = mstr_kernels.fractal_attention(q, k, v, p=3, levels=4, backend="cuda")
    tail = [x[:, :, tail_start:] for x in (q, k, v)]
    ref = fractal_attention_f64(*(x.double().cpu() for x in tail), 3, 4)
    assert rel_err(out[:, :, tail_start:], torch.from_numpy(ref).cuda()) < SPEC_BOUND[torch.bfloat16]
    assert (out[:, :, :tail_start:P * 1000] == 0).all()  # zero inputs: zero output (GELU(0)=0)
