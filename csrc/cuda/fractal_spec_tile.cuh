// Forward of fractal attention specialised at compile time on p, levels and the head dim D
// (the general kernels, fractal_tile.cuh, take every other input). Written against a "block"
// interface so that the same code runs as a CUDA thread block (fractal_spec_cuda.cu) and on the
// host (tests/cuda_host/tile_on_host.cpp):
//   blk.tid, blk.sync() (__syncthreads), blk.xor_add<N>(float (&v)[N], mask): v += v of lane
//   (lane ^ mask) for every element (__shfl_xor_sync; the host emulates it per warp of 32).
//
// Mapping. A block item is F = M * p**levels consecutive frames of one (batch, head): M whole
// tiles, so that every window of every level lies inside the item and small tiles still give a
// block enough work. Each thread owns 8 channels of one level-1 window ("lane" c of the G = D/8
// lanes of that window, G consecutive lanes of one warp): p x p partial dot products over its 8
// channels, finished by a log2(G)-step butterfly, softmax with exp2, P.V, GELU, all in
// registers. Pooled levels (rows = sums of p rows below, fp32 in shared memory, counts for
// tails) are computed the same way, every level at once, before level 1; level 1 then adds the
// pooled GELU rows of its window (the same for its p frames: nearest upsampling) and writes
// each output row once, 16-byte vectors, whole 128-byte lines per warp at D=64 bf16.
// The item's q, k, v are copied into shared memory with cp.async (16 bytes, zero-filled for
// frames past the valid length), the next item's copies in flight while this one computes when
// two stages fit. Every phase is straight-line code over compile-time counts; no atomics.
#pragma once

#include "fractal_spec_item.cuh"

namespace mstr_kernels {
namespace specialised {

// ---- one item -------------------------------------------------------------------------------

template <int kLanes, int N, class Block>
MSTR_DEV void lane_sum(const Block& blk, float (&v)[N]) {
#pragma unroll
  for (int m = kLanes / 2; m >= 1; m /= 2) blk.template xor_add<N>(v, m);
}

// softmax over the p keys of each of the p queries of a window, in place on logits (base 2);
// keys with valid[j] false get probability 0; a query row whose keys are all invalid gets 0.
// Valid keys are a prefix of the window (frames before the valid length), so key 0 is valid
// whenever any is. Scores that are all -inf give weights 0 (SDPA's convention).
template <int kP>
MSTR_DEV void window_softmax(float (&s)[kP][kP], const bool (&valid)[kP]) {
#pragma unroll
  for (int i = 0; i < kP; ++i) {
    float top = s[i][0];
#pragma unroll
    for (int j = 1; j < kP; ++j) top = valid[j] ? fmaxf(top, s[i][j]) : top;
    top = top == -INFINITY ? 0.0f : top;  // scores all -inf (overflowed): weights 0, as SDPA
    float total = 0.0f;
#pragma unroll
    for (int j = 0; j < kP; ++j) {
      s[i][j] = valid[j] ? ex2(s[i][j] - top) : 0.0f;
      total += s[i][j];
    }
    const float inv = total > 0.0f ? rcp(total) : 0.0f;
#pragma unroll
    for (int j = 0; j < kP; ++j) s[i][j] *= inv;
  }
}

// One pooled window for item k = (window over all pooled levels, lane c): the window's level
// is found per lane (levels of one warp may differ; the code is the same). Lanes past the last
// window compute on window 0 and store nothing: the warp's shuffles need every lane.
template <class Cfg, typename T, class Block>
MSTR_DEV void pooled_window(const Block& blk, const ForwardArgs<T>& a, const Item& it,
                            const float* psum, float* pgelu, int k, int c) {
  constexpr int p = Cfg::p, L = Cfg::levels, G = Cfg::G, D = Cfg::D, C = kChannels;
  constexpr int R = Cfg::R_pool;
  const bool active = k < Cfg::pool_windows * G;
  const int win = active ? k / G : 0;
  int S = p, off = 0, woff = 0;  // frames per row, first row and first window of the level
  static_for<3, L + 1>([&](auto lc) {
    constexpr int l = decltype(lc)::value;
    if (win >= Cfg::win_off(l)) {
      S = Cfg::S(l);
      off = Cfg::pool_off(l);
      woff = Cfg::win_off(l);
    }
  });
  const int j0 = off + (win - woff) * p;  // the window's first row in the pooled arrays
  const int f0 = (win - woff) * p * S;   // its first frame
  float inv[p];
  bool valid[p];
#pragma unroll
  for (int i = 0; i < p; ++i) {
    const int left = it.n - (f0 + i * S);
    const int cnt = left < S ? left : S;
    valid[i] = cnt > 0;
    inv[i] = valid[i] ? rcp(float(cnt)) : 0.0f;
  }
  float s[p][p];
  {
    float qr[p][C], kr[p][C];
#pragma unroll
    for (int i = 0; i < p; ++i) {
      load_pooled<Cfg>(psum + (0 * R + j0 + i) * D, c, qr[i]);
      load_pooled<Cfg>(psum + (1 * R + j0 + i) * D, c, kr[i]);
    }
    float part[p * p];
#pragma unroll
    for (int i = 0; i < p; ++i) {
#pragma unroll
      for (int j = 0; j < p; ++j) {
        float d = qr[i][0] * kr[j][0];
#pragma unroll
        for (int e = 1; e < C; ++e) d = fmaf(qr[i][e], kr[j][e], d);
        part[i * p + j] = d;
      }
    }
    lane_sum<G>(blk, part);
#pragma unroll
    for (int i = 0; i < p; ++i) {
      const float row_scale = a.scale_log2 * inv[i];
#pragma unroll
      for (int j = 0; j < p; ++j) s[i][j] = part[i * p + j] * (row_scale * inv[j]);
    }
  }
  window_softmax<p>(s, valid);
  float vr[p][C];
#pragma unroll
  for (int i = 0; i < p; ++i) load_pooled<Cfg>(psum + (2 * R + j0 + i) * D, c, vr[i]);
#pragma unroll
  for (int i = 0; i < p; ++i) {
    float y[C];
#pragma unroll
    for (int e = 0; e < C; ++e) y[e] = (s[i][0] * inv[0]) * vr[0][e];
#pragma unroll
    for (int j = 1; j < p; ++j) {
      const float w = s[i][j] * inv[j];
#pragma unroll
      for (int e = 0; e < C; ++e) y[e] = fmaf(w, vr[j][e], y[e]);
    }
#pragma unroll
    for (int e = 0; e < C; ++e) y[e] = gelu<Cfg::gelu>(y[e]);
    if (active) store_pooled<Cfg>(pgelu + (j0 + i) * D, c, y);
  }
}

// Pooled sums of the Cfg::inputs tensors, level by level: level 2 from the raw frames, level l
// from level l - 1 (a barrier after each level).
template <class Cfg, typename T, class Block>
MSTR_DEV void pooled_sums(const Block& blk, const T* raw, float* psum, int c) {
  constexpr int p = Cfg::p, L = Cfg::levels, G = Cfg::G, D = Cfg::D, F = Cfg::F;
  constexpr int C = kChannels;
  static_for<2, L + 1>([&](auto lc) {
    constexpr int l = decltype(lc)::value;
    constexpr int n_items = Cfg::rows(l) * G;
#pragma unroll
    for (int r = 0; r < cdiv(n_items, Cfg::threads); ++r) {
      const int k = blk.tid + r * Cfg::threads;
      if (n_items % Cfg::threads == 0 || k < n_items) {
        const int j = k / G;
#pragma unroll
        for (int x = 0; x < Cfg::inputs; ++x) {
          float acc[C];  // started from the first row: no additions of zero
#pragma unroll
          for (int i = 0; i < p; ++i) {
            float row[C];
            if constexpr (l == 2) {
              load_raw<Cfg>(raw + (x * F + j * p + i) * D, c, row);
            } else {
              constexpr int below = Cfg::pool_off(l - 1);
              load_pooled<Cfg>(psum + (x * Cfg::R_pool + below + j * p + i) * D, c, row);
            }
#pragma unroll
            for (int e = 0; e < C; ++e) acc[e] = i == 0 ? row[e] : acc[e] + row[e];
          }
          constexpr int here = Cfg::pool_off(l);
          store_pooled<Cfg>(psum + (x * Cfg::R_pool + here + j) * D, c, acc);
        }
      }
    }
    blk.sync();
  });

}

// Variant::kMemory's item: output row t of tensor x (dst(x), x < kOut) is raw row t of input
// x, in the mapping and with the stores of level 1.
template <class Cfg, int kOut, typename T, class Block, class Dst>
MSTR_DEV void copy_rows_out(const Block& blk, const T* raw, const Item& it, Dst&& dst) {
  constexpr int p = Cfg::p, G = Cfg::G, D = Cfg::D, F = Cfg::F;
#pragma unroll
  for (int r = 0; r < Cfg::rounds1; ++r) {
    const int k = blk.tid + r * Cfg::threads;
    const bool active = k < Cfg::items1;
    const int w = active ? k / G : 0, c = blk.tid % G;
#pragma unroll
    for (int x = 0; x < kOut; ++x) {
      const TensorRef<T>& d = dst(x);
      T* const row0 = d.ptr + it.b * d.sb + it.h * d.sh + (it.t0 + w * p) * d.st + c * Cfg::W;
#pragma unroll
      for (int i = 0; i < p; ++i) {
        float row[kChannels];
        load_raw<Cfg>(raw + (x * F + w * p + i) * D, c, row);
        if (active && w * p + i < it.frames) store_out<Cfg>(row0 + i * d.st, row, w * p + i < it.n);
      }
    }
  }
}

template <class Cfg, typename T, class Block>
MSTR_DEV void forward_item(const Block& blk, const ForwardArgs<T>& a, const T* raw, float* pooled,
                           const Item& it) {
  constexpr int p = Cfg::p, L = Cfg::levels, G = Cfg::G, D = Cfg::D, F = Cfg::F;
  constexpr int C = kChannels;
  float* psum = pooled;                      // [3][R_pool][D]: pooled sums of q, k, v
  float* pgelu = pooled + 3 * Cfg::R_pool * D;  // [R_pool][D]: GELU(Y) of the pooled rows
  const int c = blk.tid % G;

  if constexpr (Cfg::variant == Variant::kMemory) {
    copy_rows_out<Cfg, 1>(blk, raw, it, [&](int) -> const TensorRef<T>& { return a.out; });
    return;
  }
  pooled_sums<Cfg>(blk, raw, psum, c);

  // Pooled attention, all levels at once: item k = (window, lane), whole warps skipped.
  if constexpr (L >= 2) {
#pragma unroll
    for (int r = 0; r < Cfg::rounds_pool; ++r) {
      const int k = blk.tid + r * Cfg::threads;
      if (k - blk.tid % 32 < Cfg::items_pool) pooled_window<Cfg>(blk, a, it, psum, pgelu, k, c);
    }
    blk.sync();
  }

  // Level 1: item k = (window w, lane c); frames w*p .. w*p + p - 1.
#pragma unroll
  for (int r = 0; r < Cfg::rounds1; ++r) {
    const int k = blk.tid + r * Cfg::threads;
    const bool active = k < Cfg::items1;
    const int w = active ? k / G : 0;
    bool valid[p];
#pragma unroll
    for (int i = 0; i < p; ++i) valid[i] = w * p + i < it.n;
    float s[p][p];
    {
      float qr[p][C], kr[p][C];
#pragma unroll
      for (int i = 0; i < p; ++i) {
        load_raw<Cfg>(raw + (0 * F + w * p + i) * D, c, qr[i]);
        load_raw<Cfg>(raw + (1 * F + w * p + i) * D, c, kr[i]);
      }
      float part[p * p];
#pragma unroll
      for (int i = 0; i < p; ++i) {
#pragma unroll
        for (int j = 0; j < p; ++j) {
          float d = qr[i][0] * kr[j][0];
#pragma unroll
          for (int e = 1; e < C; ++e) d = fmaf(qr[i][e], kr[j][e], d);
          part[i * p + j] = d;
        }
      }
      lane_sum<G>(blk, part);
#pragma unroll
      for (int i = 0; i < p; ++i) {
#pragma unroll
        for (int j = 0; j < p; ++j) s[i][j] = part[i * p + j] * a.scale_log2;
      }
    }
    window_softmax<p>(s, valid);
    float up[C] = {};  // sum over the pooled levels of the rows above this window
    if constexpr (L >= 2) load_pooled<Cfg>(pgelu + (w) * D, c, up);  // level 2: row w
    static_for<3, L + 1>([&](auto lc) {
      constexpr int l = decltype(lc)::value;
      constexpr int span = ipow(p, l - 2), off = Cfg::pool_off(l);  // level-1 windows per row
      float g[C];
      load_pooled<Cfg>(pgelu + (off + w / span) * D, c, g);
#pragma unroll
      for (int e = 0; e < C; ++e) up[e] += g[e];
    });
    float vr[p][C];
#pragma unroll
    for (int i = 0; i < p; ++i) load_raw<Cfg>(raw + (2 * F + w * p + i) * D, c, vr[i]);
    // The window's first output row; the others by the row stride (not each from scratch).
    T* const out_row =
        a.out.ptr + it.b * a.out.sb + it.h * a.out.sh + (it.t0 + w * p) * a.out.st + c * Cfg::W;
#pragma unroll
    for (int i = 0; i < p; ++i) {
      float y[C];
#pragma unroll
      for (int e = 0; e < C; ++e) y[e] = s[i][0] * vr[0][e];
#pragma unroll
      for (int j = 1; j < p; ++j) {
#pragma unroll
        for (int e = 0; e < C; ++e) y[e] = fmaf(s[i][j], vr[j][e], y[e]);
      }
#pragma unroll
      for (int e = 0; e < C; ++e) y[e] = gelu_add<Cfg::gelu>(y[e], up[e]);
      if (active && w * p + i < it.frames && writes_outputs<Cfg>(a)) {
        store_out<Cfg>(out_row + i * a.out.st, y, valid[i]);
      }
    }
  }
}


template <class Cfg, typename T, class Block>
MSTR_DEV void forward_block(const Block& blk, const ForwardArgs<T>& a, unsigned char* smem,
                            int first, int stride) {
  item_loop<Cfg, T>(blk, a, smem, first, stride,
                    [&](const T* raw, float* pooled, const Item& it, int) {
                      forward_item<Cfg>(blk, a, raw, pooled, it);
                    });
}

}  // namespace specialised
}  // namespace mstr_kernels
