// The (p, levels) pairs with a forward specialised at compile time (fractal_spec_tile.cuh),
// each for D in {32, 64, 128} and float32, float16, bfloat16 where its shared memory fits one
// block (specialised::Config::fits). Read by the CUDA launcher, the host emulation
// (tests/cuda_host/tile_on_host.cpp) and scripts/gpu_static_report.py.
#pragma once

#include <cstdint>

#ifndef MSTR_SPEC_PL  // (a narrower list may be defined before this header, to compile faster)
#define MSTR_SPEC_PL(X) \
  X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(3, 5) X(2, 5) X(2, 6) X(2, 7) X(4, 3) X(4, 4)
#endif

#ifndef MSTR_SPEC_D
#define MSTR_SPEC_D(X) X(32) X(64) X(128)
#endif

namespace mstr_kernels {
namespace specialised {
// Whole tiles of P = p**levels frames per item of the specialised kernels (small tiles are
// grouped so that a block has enough work). Also the granularity of the `cuda` backend's
// packed-sequence work list (ops/backends.py mirrors it: cuda_varlen_item_frames).
constexpr int tiles_per_item(int P) { return P >= 64 ? 1 : 96 / P; }
}  // namespace specialised

// Rows of one entry of the `cuda` backend's packed-sequence work list: one item of the
// specialised kernels, whole tiles (the general kernels run it tile by tile).
constexpr int64_t varlen_item_frames(int64_t p, int64_t levels) {
  int64_t tile = 1;
  for (int64_t l = 0; l < levels; ++l) tile *= p;
  return tile * specialised::tiles_per_item(int(tile));
}
}  // namespace mstr_kernels
