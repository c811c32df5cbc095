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

#include "fractal_spec_configs.h"
#include "fractal_spec_device.cuh"

namespace mstr_kernels {
namespace specialised {

// kInputs tensors copied per item (forward: q, k, v; backward: q, k, v, dout), kOutRows pooled
// output arrays (forward: GELU(Y); backward: the pooled shares of dq, dk, dv).
template <typename T, int kP, int kL, int kD, int kInputs = 3, int kOutRows = 1>
struct Config {
  static_assert(kD % (2 * kChannels) == 0 || kD == kChannels * 4, "D in {32, 64, 128}");
  static constexpr int p = kP, levels = kL, D = kD, inputs = kInputs, out_rows = kOutRows;
  static constexpr int P = ipow(kP, kL);            // frames per tile
  static constexpr int M = tiles_per_item(P);       // tiles per item
  static constexpr int F = P * M;                   // frames per item
  static constexpr int G = kD / kChannels;          // lanes per window: 4, 8 or 16
  static constexpr int W = kVecBytes / int(sizeof(T));  // elements per 16-byte vector
  static constexpr int U = kChannels / W;           // vectors per thread and row: 1 or 2
  static constexpr int VPR = kD / W;                // vectors per row
  static constexpr int N1 = F / kP;                 // level-1 windows
  // Pooled levels l = 2..L: rows(l) = F / p**(l-1) rows of S(l) = p**(l-1) frames, the first at
  // pool_off(l) in the pooled arrays; windows(l) windows.
  static constexpr int S(int l) { return ipow(kP, l - 1); }
  static constexpr int rows(int l) { return F / ipow(kP, l - 1); }
  static constexpr int windows(int l) { return rows(l) / kP; }
  static constexpr int pool_off(int l) {
    int off = 0;
    for (int m = 2; m < l; ++m) off += rows(m);
    return off;
  }
  static constexpr int R_pool = pool_off(kL + 1);
  static constexpr int win_off(int l) {  // first window of level l among the pooled windows
    int off = 0;
    for (int m = 2; m < l; ++m) off += windows(m);
    return off;
  }
  static constexpr int pool_windows = win_off(kL + 1);
  // Shared memory: raw q, k, v per stage (as in global memory), then fp32 pooled sums of q, k,
  // v and the pooled GELU rows (R_pool rows of D floats each).
  static constexpr int raw_bytes = kInputs * F * kD * int(sizeof(T));
  static constexpr int pooled_floats = (kInputs + kOutRows) * (R_pool > 0 ? R_pool : 1) * kD;
  static constexpr int pooled_bytes = pooled_floats * 4;
  static constexpr int stages = 2 * raw_bytes + pooled_bytes <= kSmemTwoBlocks ? 2
                                : raw_bytes + pooled_bytes <= kSmemTwoBlocks    ? 1
                                : 2 * raw_bytes + pooled_bytes <= kSmemLimit    ? 2
                                                                                : 1;
  static constexpr int smem_bytes = stages * raw_bytes + pooled_bytes;
  static constexpr bool fits = smem_bytes <= kSmemLimit;
  static constexpr int min_blocks = smem_bytes <= kSmemTwoBlocks ? 2 : 1;
  static constexpr int max_threads = min_blocks == 2 ? 256 : 512;
  static constexpr int items1 = N1 * G;  // level-1 (window, lane) items
  static constexpr int rounds1 = cdiv(items1, max_threads);
  static constexpr int threads = cdiv(cdiv(items1, rounds1), 32) * 32;
  static constexpr int items_pool = pool_windows * G;
  static constexpr int rounds_pool = cdiv(items_pool, threads);
  static constexpr Gelu gelu = sizeof(T) == 2 ? Gelu::kTanh : Gelu::kErf;
};

template <typename T>
struct ForwardArgs {
  TensorRef<const T> q, k, v;
  TensorRef<T> out;
  const int* lengths;  // nullptr: every frame is valid
  // Packed sequences (nullptr: padded batch): the (2, n_super) work list, entry e an item of
  // work[n_super + e] <= F valid frames from packed row work[e] (B = 1, n_super = entries).
  const int* work = nullptr;
  int64_t T_len;
  int H, n_super, n_items;  // n_items = B * H * n_super < 2**31 (checked by the launcher)
  float scale_log2;  // scale * log2(e): softmax in base 2
  MSTR_DEV const TensorRef<const T>& input(int x) const { return x == 0 ? q : (x == 1 ? k : v); }
};

// Where an item lies: (b, super-tile, h) with h fastest (neighbouring blocks read neighbouring
// memory of a (B, T, 3, H, D) projection).
struct Item {
  int64_t b, h, t0;
  int frames;  // frames of the item inside the sequence (<= F)
  int n;       // valid frames: 0 <= n <= frames
};

// A value of the packed-sequence work list (read-only for the whole launch).
MSTR_DEV int work_value(const int* work, unsigned i) {
#if defined(__CUDA_ARCH__)
  return __ldg(work + i);
#else
  return work[i];
#endif
}

template <class Cfg, class Args>
MSTR_DEV Item locate(const Args& a, int item) {
  Item it;
  const unsigned rest = unsigned(item) / unsigned(a.H);
  it.h = unsigned(item) - rest * unsigned(a.H);
  const unsigned s = rest % unsigned(a.n_super);
  it.b = rest / unsigned(a.n_super);  // packed sequences: 0 (n_super = entries)
  // Packed: the entry's rows end the item (the rows past them are other sequences'), all valid.
  const bool packed = a.work != nullptr;
  it.t0 = packed ? unsigned(work_value(a.work, s)) : s * Cfg::F;  // >= 0 (checked)
  const int64_t left = packed ? work_value(a.work, unsigned(a.n_super) + s) : a.T_len - it.t0;
  it.frames = int(left < Cfg::F ? left : Cfg::F);
  const int64_t len = packed ? it.t0 + it.frames : a.lengths ? int64_t(a.lengths[it.b]) : a.T_len;
  const int64_t valid = len - it.t0;
  it.n = int(valid < 0 ? 0 : (valid > it.frames ? it.frames : valid));
  return it;
}

template <typename T>
MSTR_DEV const T* row_ptr(const TensorRef<const T>& x, const Item& it, int t) {
  return x.ptr + it.b * x.sb + it.h * x.sh + (it.t0 + t) * x.st;
}

// The item's q, k, v rows into `raw` (tensor-major, rows of D), VPR threads per row; rows of
// frames past the valid length are zero-filled (their source address is not read).
template <class Cfg, class Args, typename T, class Block>
MSTR_DEV void issue_copies(const Block& blk, const Args& a, T* raw, const Item& it) {
  constexpr int F = Cfg::F, D = Cfg::D, VPR = Cfg::VPR;
  static_assert(Cfg::threads % VPR == 0, "whole rows per round");
  constexpr int rows_per_round = Cfg::threads / VPR;
  const int vec = blk.tid % VPR, t_first = blk.tid / VPR;
#pragma unroll
  for (int x = 0; x < Cfg::inputs; ++x) {
    const TensorRef<const T>& src = a.input(x);
    const T* from = row_ptr(src, it, t_first) + vec * Cfg::W;
    const int64_t step = int64_t(rows_per_round) * src.st;
    T* dst = raw + (x * F + t_first) * D + vec * Cfg::W;
#pragma unroll
    for (int r = 0; r < cdiv(F, rows_per_round); ++r) {
      const int t = t_first + r * rows_per_round;
      if (F % rows_per_round == 0 || t < F) copy16(dst + r * rows_per_round * D, from, t < it.n);
      from += step;
    }
  }
}

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
          float acc[C] = {};
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
            for (int e = 0; e < C; ++e) acc[e] += row[e];
          }
          constexpr int here = Cfg::pool_off(l);
          store_pooled<Cfg>(psum + (x * Cfg::R_pool + here + j) * D, c, acc);
        }
      }
    }
    blk.sync();
  });

}

template <class Cfg, typename T, class Block>
MSTR_DEV void forward_item(const Block& blk, const ForwardArgs<T>& a, const T* raw, float* pooled,
                           const Item& it) {
  constexpr int p = Cfg::p, L = Cfg::levels, G = Cfg::G, D = Cfg::D, F = Cfg::F;
  constexpr int C = kChannels;
  float* psum = pooled;                      // [3][R_pool][D]: pooled sums of q, k, v
  float* pgelu = pooled + 3 * Cfg::R_pool * D;  // [R_pool][D]: GELU(Y) of the pooled rows
  const int c = blk.tid % G;

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
      for (int e = 0; e < C; ++e) y[e] = gelu<Cfg::gelu>(y[e]) + up[e];
      const int t = w * p + i;
      if (active && t < it.frames) {
        T* dst = a.out.ptr + it.b * a.out.sb + it.h * a.out.sh + (it.t0 + t) * a.out.st;
        store_out<Cfg>(dst, c, y, valid[i]);
      }
    }
  }
}

// Shared memory of a block: `stages` raw buffers, then the pooled arrays.
template <class Cfg, typename T>
MSTR_DEV T* raw_stage(unsigned char* smem, int stage) {
  return reinterpret_cast<T*>(smem + stage * Cfg::raw_bytes);
}

template <class Cfg>
MSTR_DEV float* pooled_area(unsigned char* smem) {
  return reinterpret_cast<float*>(smem + Cfg::stages * Cfg::raw_bytes);
}

// A block's items first, first + stride, ...: the next item's copies are issued before this
// one's arithmetic (two stages), or after it (one stage); item_fn(raw, pooled, Item, index)
// does one. kRelocate: the item's position is recomputed each iteration rather than carried
// over from the previous one's copies (fewer registers live across the item: the backward).
template <class Cfg, typename T, bool kRelocate = false, class Args, class Block, class ItemFn>
MSTR_DEV void item_loop(const Block& blk, const Args& a, unsigned char* smem, int first, int stride,
                        ItemFn&& item_fn) {
  if (first >= a.n_items) return;
  float* pooled = pooled_area<Cfg>(smem);
  Item it = locate<Cfg>(a, first);
  issue_copies<Cfg>(blk, a, raw_stage<Cfg, T>(smem, 0), it);
  copy_commit();
  int stage = 0;
  for (int item = first; item < a.n_items; item += stride) {
    const int next = item + stride;
    if constexpr (kRelocate) it = locate<Cfg>(a, item);
    const Item it_next = locate<Cfg>(a, next < a.n_items ? next : item);
    if constexpr (Cfg::stages == 2) {
      if (next < a.n_items) issue_copies<Cfg>(blk, a, raw_stage<Cfg, T>(smem, stage ^ 1), it_next);
      copy_commit();
      copy_wait<1>();
    } else {
      copy_wait<0>();
    }
    blk.sync();
    item_fn(raw_stage<Cfg, T>(smem, stage), pooled, it, item);
    blk.sync();
    if constexpr (Cfg::stages == 2) {
      stage ^= 1;
    } else {
      if (next < a.n_items) issue_copies<Cfg>(blk, a, raw_stage<Cfg, T>(smem, 0), it_next);
      copy_commit();
    }
    if constexpr (!kRelocate) it = it_next;
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
