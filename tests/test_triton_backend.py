"""What is particular to the Triton backend: 64-bit offsets, its launch knobs and their
environment variable. Its parity with float64 (shapes, dtypes, strides, lengths, magnitudes,
compile, opcheck, determinism, poisoned memory) is tests/test_parity.py, as for every backend.

Runs on CUDA when a GPU is visible, else on CPU tensors under TRITON_INTERPRET=1 (set by
tests/conftest.py before triton is imported).
"""
import os

import pytest
import torch

from conftest import CUDA
from parity import Inputs

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not (CUDA or INTERPRET),
    reason="the Triton backend needs a CUDA GPU or TRITON_INTERPRET=1 (neither is present)")

if CUDA or INTERPRET:
    import mstr_kernels

DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.skipif(not CUDA, reason="64-bit offsets need > 2**31 elements: a GPU run only")
def test_offsets_beyond_int32(whole_gpu):
    """Tiles far beyond 2**31 elements match the same frames computed on a small copy."""
    free, _ = torch.cuda.mem_get_info()
    H, D, p, levels = 16, 64, 3, 4
    tile = p ** levels
    T = (2 ** 31 // (H * D) // tile + 2) * tile  # the out tensor passes 2**31 elements
    need = 8 * T * H * D * 2  # qkv (3), out, dq, dk, dv, dout in bf16
    if free < need * 1.2:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} free")
    qkv = torch.randn(1, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (x.transpose(1, 2).requires_grad_() for x in qkv.unbind(2))
    out = mstr_kernels.fractal_attention(q, k, v, p=p, levels=levels, backend="triton")
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    tail = slice(T - 2 * tile, T)
    small = [x[:, :, tail].detach().clone().requires_grad_() for x in (q, k, v)]
    out_small = mstr_kernels.fractal_attention(*small, p=p, levels=levels, backend="triton")
    grads_small = torch.autograd.grad(out_small, small, dout[:, :, tail].contiguous())
    assert torch.equal(out[:, :, tail], out_small)
    for g, gs in zip((dq, dk, dv), grads_small):
        assert torch.equal(g[:, :, tail], gs)


def test_tuning_from_environment(tmp_path):
    """MSTR_KERNELS_TRITON_TUNING (inline JSON or a file, as triton_tune.py --json-out writes
    it) overrides launch knobs; a bad value is an error naming the variable."""
    from mstr_kernels.ops.triton_fractal import TUNING_ENV, tuning_from_env
    assert tuning_from_env(None) == {}
    assert tuning_from_env('{"fwd": {"scratch_mb": 16}}') == {"fwd": {"scratch_mb": 16}}
    path = tmp_path / "tuning.json"
    path.write_text('{"bwd": {"num_warps": 8, "chunk": 1024}}')
    assert tuning_from_env(str(path)) == {"bwd": {"num_warps": 8, "chunk": 1024}}
    for bad in ('{"fwd": {"warps": 8}}', '{"side": {}}', "[1]", str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match=TUNING_ENV):
            tuning_from_env(bad)


def test_other_launch_knobs_give_the_same_outputs():
    """The knobs triton_tune.py sweeps change block sizes and the grid, never the result."""
    from mstr_kernels.ops import triton_fractal as tf
    B, H, T, D, p, levels = 2, 2, 60, 24, 3, 3
    q, k, v, dout, lengths = Inputs(DEVICE, torch.float32, B, H, T, D, p, levels, (60, 41),
                                    "contiguous", seed=5).make()
    saved = {kind: dict(knobs) for kind, knobs in tf.TUNING.items()}
    results = []
    try:
        for knobs in ({"level1_first": 0}, {"level1_first": 1},
                      {"chunk": 512, "level_chunk": 256, "pool_chunk": 512, "num_warps": 2,
                       "scratch_mb": 8, "level1_first": 1},
                      {"chunk": 4096, "level_chunk": 2048, "pool_chunk": 8192, "num_warps": 8}):
            for kind in ("fwd", "bwd"):
                tf.set_tuning(kind, **{k: v for k, v in dict(saved[kind], **knobs).items()
                                       if k in saved[kind]})
            out = tf.fractal_attention_fwd(q, k, v, lengths, p, levels, D ** -0.5)
            grads = tf.fractal_attention_bwd(dout, q, k, v, lengths, p, levels, D ** -0.5)
            results.append((out, *grads))
    finally:
        for kind in ("fwd", "bwd"):
            tf.set_tuning(kind, **saved[kind])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
