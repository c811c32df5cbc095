"""The `cpu` backend's cache of large output buffers (csrc/cpu/output_cache.h): reuse, results
that do not depend on what a reused buffer held, the byte limit, the environment switch, and
allocations the torch profiler sees."""
import os
import subprocess
import sys

import pytest
import torch

import mstr_kernels
from mstr_kernels.ops import BACKENDS, cpu_output_cache_stats, empty_cpu_output_cache
from parity import f64_outputs, qkv_views, rel_err

CPU_MISSING = BACKENDS["cpu"].unavailable_reason()
pytestmark = pytest.mark.skipif(CPU_MISSING is not None,
                                reason=f"the cpu backend is not built: {CPU_MISSING}")

# (B, H, T, D) float32 outputs of 2 MiB: above the cache's 1 MiB threshold.
SHAPE = (2, 4, 1024, 64)


def run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    return result


def test_freed_outputs_are_reused():
    q, k, v = qkv_views(*SHAPE)
    before = cpu_output_cache_stats()
    out = mstr_kernels.fractal_attention(q, k, v, backend="cpu")
    address = out.data_ptr()
    del out
    again = mstr_kernels.fractal_attention(q, k, v, backend="cpu")
    after = cpu_output_cache_stats()
    assert again.data_ptr() == address
    assert after["hits"] >= before["hits"] + 1
    assert after["live_bytes"] >= again.numel() * 4


def test_reused_buffer_contents_never_leak():
    """A buffer that held NaN is fully overwritten: padding rows are exact zeros."""
    g = torch.Generator().manual_seed(1)
    q, k, v = qkv_views(*SHAPE, generator=g)
    poisoned = mstr_kernels.fractal_attention(q, k, v, backend="cpu")
    poisoned.fill_(float("nan"))
    del poisoned
    lengths = torch.tensor([1024, 300])
    hits = cpu_output_cache_stats()["hits"]
    out = mstr_kernels.fractal_attention(q, k, v, lengths=lengths, backend="cpu")
    assert cpu_output_cache_stats()["hits"] == hits + 1
    assert torch.isfinite(out).all()
    assert torch.all(out[1, :, 300:] == 0)
    want = f64_outputs(q, k, v, 3, 4, lengths)
    assert rel_err(out, want) < 1e-5


def test_gradients_come_from_the_cache_and_stay_correct():
    g = torch.Generator().manual_seed(2)
    q, k, v = (x.requires_grad_(True) for x in qkv_views(*SHAPE, generator=g))
    dout = torch.randn(SHAPE, generator=g)
    grads = []
    for _ in range(2):  # the second pass reuses the first one's freed buffers
        out = mstr_kernels.fractal_attention(q, k, v, backend="cpu")
        grads.append(torch.autograd.grad(out, (q, k, v), dout))
        del out
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_empty_gives_cached_bytes_back_and_resize_works():
    q, k, v = qkv_views(*SHAPE)
    out = mstr_kernels.fractal_attention(q, k, v, backend="cpu")
    out.untyped_storage().resize_(out.untyped_storage().nbytes() * 2)  # storages stay resizable
    del out
    assert cpu_output_cache_stats()["cached_bytes"] > 0
    freed = empty_cpu_output_cache()
    assert freed > 0
    assert cpu_output_cache_stats()["cached_bytes"] == 0


def test_limit_zero_turns_the_cache_off_and_bad_values_are_named():
    code = ("import mstr_kernels, torch\n"
            "from mstr_kernels.ops import cpu_output_cache_stats\n"
            "q = torch.randn(2, 4, 1024, 64)\n"
            "for _ in range(3):\n"
            "    mstr_kernels.fractal_attention(q, q, q, backend='cpu')\n"
            "s = cpu_output_cache_stats()\n"
            "print(s['limit_bytes'], s['hits'], s['cached_bytes'])\n")
    off = run_python(code, MSTR_KERNELS_CPU_CACHE_MB="0")
    assert off.returncode == 0, off.stderr
    assert off.stdout.split() == ["0", "0", "0"]
    small = run_python(code, MSTR_KERNELS_CPU_CACHE_MB="1")  # a 2 MiB output exceeds 1 MiB
    assert small.returncode == 0, small.stderr
    assert small.stdout.split() == [str(2**20), "0", "0"]
    bad = run_python(code, MSTR_KERNELS_CPU_CACHE_MB="lots")
    assert bad.returncode != 0
    assert "MSTR_KERNELS_CPU_CACHE_MB=lots" in bad.stderr and "0..2**30" in bad.stderr


def test_profiler_sees_cached_allocations():
    """Peak-memory figures of the benchmarks come from the profiler: cached outputs count."""
    from torch.profiler import ProfilerActivity, profile
    q, k, v = qkv_views(*SHAPE)
    mstr_kernels.fractal_attention(q, k, v, backend="cpu")  # leaves a cached buffer behind
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = mstr_kernels.fractal_attention(q, k, v, backend="cpu")
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert allocated >= out.numel() * out.element_size()
