// A small cache of large CPU output buffers for the fused CPU kernels.
//
// Why: glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh mmaps
// and returns them to the OS on free, so every call that returns a large new tensor first pays
// one page fault and one zeroing per 4 KiB page it writes: about half of the forward's time at
// B=8, H=16, T=1024, D=64 float32 on a 2-core machine (figures: benchmarks/NOTES.md). A training loop asks
// for the same output sizes every step; keeping the freed buffers (as torch's CUDA caching
// allocator does on the GPU) lets the kernels write into warm pages.
//
// Buffers of at least kMinBytes come from the cache or c10::alloc_cpu; freed ones are kept up to
// a byte limit (environment MSTR_KERNELS_CPU_CACHE_MB, read once, default 1024; 0 turns the cache
// off), the oldest evicted first. Allocations and frees are reported to the torch profiler like
// those of the default CPU allocator, so memory measurements see them.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

namespace mstr_kernels {

struct CpuOutputCacheStats {
  std::size_t limit_bytes;   // the cache keeps at most this many freed bytes
  std::size_t cached_bytes;  // freed buffers kept for reuse
  std::size_t live_bytes;    // buffers handed out and not yet freed
  int64_t hits;              // allocations served from the cache
  int64_t misses;            // allocations that went to c10::alloc_cpu
};

// An uninitialized CPU tensor of `sizes` (contiguous) whose storage comes from the cache.
at::Tensor empty_cpu_cached(at::IntArrayRef sizes, at::ScalarType dtype);

CpuOutputCacheStats cpu_output_cache_stats();

// Frees every cached buffer (live ones are untouched); returns the bytes given back.
std::size_t empty_cpu_output_cache();

}  // namespace mstr_kernels
