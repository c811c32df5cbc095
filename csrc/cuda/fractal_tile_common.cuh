// Shared-memory building blocks of one (batch, head, tile of P = p**levels frames) of fractal
// attention (global-memory side: fractal_tile_io.cuh),
// written against a small "block" interface (tid, nthreads, sync) so that the same code runs as
// a CUDA thread block (fractal_attention_cuda.cu) and, for testing without a GPU, as host
// threads.
//
// Every phase is a loop over independent items, separated by block barriers: an item writes
// only its own shared-memory slots and reads only slots written before the last barrier. No
// warp-level intrinsics, no atomics: results do not depend on the schedule, so runs are bitwise
// deterministic.
//
// Shared memory holds, per tile and chunk of DC head-dim columns, "pyramids": rows of fp32
// sums of frames, level 0 = the frames themselves, level l row j = sum of the valid frames of
// group j (S = p**l frames), built level by level from the one below (sums and counts, so tails
// given by `lengths` stay exact). Rows are handled 4 columns ("quads", one 16-byte shared-memory
// access) at a time; a chunk's columns are padded to a multiple of 4 with zeros.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fractal_range.h"

#if defined(__CUDACC__)
#define MSTR_HD __host__ __device__ __forceinline__
#define MSTR_DEV __device__ __forceinline__
#else
#define MSTR_HD inline
#define MSTR_DEV inline
#endif

namespace mstr_kernels {
namespace tile {

#if defined(__CUDACC__)
using ::float4;
using ::uint4;
#else
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
#endif

constexpr int kMaxLevels = int(spec::kMaxLevels);
constexpr int kVecBytes = 16;   // one 128-bit global load or store

template <typename T>
struct TensorRef {  // a (B, H, T, D) tensor: element strides, any values (0 included)
  T* ptr;
  int64_t sb, sh, st, sd;
  bool vec;  // sd == 1, other strides and the pointer allow 16-byte accesses, D % width == 0
};

struct Geometry {
  int64_t B, H, T, n_tiles;
  int D, p, levels, P;
  int DC;   // head-dim columns per chunk
  int DCs;  // row stride of a pyramid in floats: a multiple of 4 with DCs / 4 odd, so that
            // 16-byte reads of 8 different rows by 8 threads hit 8 different bank groups
  int R;    // pyramid rows: sum over levels of P / p**l
  int E;    // score entries: R * p
  float scale;
  const int* lengths;  // nullptr: every frame is valid
  // Packed sequences (nullptr: padded batch, B = 1 otherwise): work-list entry e holds
  // work_rows[e] valid frames from packed row work_start[e], as entry_tiles tiles of P frames
  // (n_tiles = entries * entry_tiles); tile m of it holds the entry's frames m*P ...
  const int* work_start = nullptr;
  const int* work_rows = nullptr;
  int entry_tiles = 1;
};

// Packed sequences: `work` the (2, entries) work list of entries of entry_frames rows (whole
// tiles), on the device (launcher) or the host (tests/cuda_host).
inline void use_work_list(Geometry& g, const int* work, int64_t entries, int64_t entry_frames) {
  g.work_start = work;
  g.work_rows = work + entries;
  g.entry_tiles = int(entry_frames / g.P);
  g.n_tiles = entries * g.entry_tiles;
}

MSTR_HD int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Row stride for chunks of dc columns.
MSTR_HD int row_stride(int dc) {
  const int quads = (dc + 3) / 4;
  return 4 * (quads % 2 == 0 ? quads + 1 : quads);
}

struct LevelTable {          // per tile, in shared memory
  int S[kMaxLevels];         // frames per pooled row
  int N[kMaxLevels];         // valid pooled rows: ceil(n_tile / S)
  int off[kMaxLevels + 1];   // first pyramid row of each level
  int eoff[kMaxLevels + 1];  // first score entry of each level
  int p_magic;               // x / p == (x * p_magic) >> 16 for 0 <= x <= 8192
};

MSTR_DEV int div_p(const LevelTable& L, int x) { return (x * L.p_magic) >> 16; }

// Shared-memory carve-up, in floats.
struct SmemLayout {
  int64_t scores, dscores, inv_count, pyramid0, bytes;
};

MSTR_HD SmemLayout smem_layout(int R, int E, int DCs, int n_pyramids, bool with_dscores) {
  SmemLayout s;
  s.scores = round_up(int(sizeof(LevelTable) / sizeof(float)), 4);
  s.dscores = s.scores + round_up(E, 4);
  s.inv_count = s.dscores + (with_dscores ? round_up(E, 4) : 0);
  s.pyramid0 = s.inv_count + round_up(R, 4);
  s.bytes = (s.pyramid0 + int64_t(n_pyramids) * R * DCs) * int64_t(sizeof(float));
  return s;
}

// Host side: the geometry of a launch, with the widest chunk of the head dim whose shared
// memory fits `preferred_bytes` (else `limit_bytes`); chunks keep 16-byte accesses (a multiple
// of `vec_width` columns) where D allows, else any width. DC == 0: nothing fits.
inline Geometry plan_geometry(int64_t B, int64_t H, int64_t T, int D, int p, int levels,
                              float scale, const int* lengths, int n_pyramids, bool with_dscores,
                              int vec_width, int64_t preferred_bytes, int64_t limit_bytes,
                              SmemLayout* layout) {
  Geometry g;
  g.B = B;
  g.H = H;
  g.T = T;
  g.D = D;
  g.p = p;
  g.levels = levels;
  g.P = 1;
  for (int l = 0; l < levels; ++l) g.P *= p;
  g.n_tiles = (T + g.P - 1) / g.P;
  g.R = 0;  // P + P/p + ... + p: one term per level
  for (int l = 0, rows = g.P; l < levels; ++l, rows /= p) g.R += rows;
  g.E = g.R * p;
  g.scale = scale;
  g.lengths = lengths;
  g.DC = 0;
  for (const int64_t budget : {preferred_bytes < limit_bytes ? preferred_bytes : limit_bytes,
                               limit_bytes}) {
    for (const int align : {D % vec_width == 0 ? vec_width : 1, 1}) {
      for (int parts = 1; parts <= D && g.DC == 0; ++parts) {
        const int dc = round_up((D + parts - 1) / parts, align);
        if (smem_layout(g.R, g.E, row_stride(dc), n_pyramids, with_dscores).bytes <= budget) {
          g.DC = dc;
        }
      }
    }
    if (g.DC) break;
  }
  g.DCs = row_stride(g.DC > 0 ? g.DC : 1);
  *layout = smem_layout(g.R, g.E, g.DCs, n_pyramids, with_dscores);
  return g;
}

template <typename T>
struct VecWidth {
  static constexpr int value = kVecBytes / int(sizeof(T));
};

// ---- float4 arithmetic ----------------------------------------------------------------------

MSTR_DEV float4 zero4() { return float4{0.0f, 0.0f, 0.0f, 0.0f}; }
MSTR_DEV void add4(float4& acc, const float4& v) {
  acc.x += v.x; acc.y += v.y; acc.z += v.z; acc.w += v.w;
}
MSTR_DEV void axpy4(float4& acc, float a, const float4& v) {
  acc.x = fmaf(a, v.x, acc.x); acc.y = fmaf(a, v.y, acc.y);
  acc.z = fmaf(a, v.z, acc.z); acc.w = fmaf(a, v.w, acc.w);
}
MSTR_DEV void dot4(float4& acc, const float4& a, const float4& b) {
  acc.x = fmaf(a.x, b.x, acc.x); acc.y = fmaf(a.y, b.y, acc.y);
  acc.z = fmaf(a.z, b.z, acc.z); acc.w = fmaf(a.w, b.w, acc.w);
}
MSTR_DEV float4 scale4(const float4& v, float a) {
  return float4{v.x * a, v.y * a, v.z * a, v.w * a};
}
MSTR_DEV float sum4(const float4& v) { return (v.x + v.y) + (v.z + v.w); }

MSTR_DEV float4* quad_row(float* pyr, int row, int DCs) {
  return reinterpret_cast<float4*>(pyr + int64_t(row) * DCs);
}
MSTR_DEV const float4* quad_row(const float* pyr, int row, int DCs) {
  return reinterpret_cast<const float4*>(pyr + int64_t(row) * DCs);
}

// ---- GELU (erf form) ------------------------------------------------------------------------
// Phi(x) = erfc(-x / sqrt 2) / 2 with erfc from the Chebyshev fit of Numerical Recipes
// (erfcc, fractional error < 1.2e-7 everywhere): GELU(x) = x * Phi(x) has a relative error of
// ~2e-6 at worst in float32, with no cancellation in the negative tail. It costs about half the
// instructions of erff, which dominates the kernel's arithmetic (one GELU per pooled element).

// 1 / x within 2 ulp, inline (a precise division calls a slow-path subroutine, and registers
// live across a call are spilled). Used for counts (1..1024) and softmax sums (1..p).
MSTR_DEV float fast_rcp(float x) {
#if defined(__CUDA_ARCH__)
  return __fdividef(1.0f, x);
#else
  return 1.0f / x;
#endif
}

MSTR_DEV float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return expf(x);
#endif
}

// erfc(z) / 2 for z = |x| / sqrt 2, as the halved tail probability of a standard normal.
MSTR_DEV float normal_tail(float x) {
  const float z = fabsf(x) * 0.70710678118654752f;
  const float t = fast_rcp(fmaf(0.5f, z, 1.0f));
  float poly = 0.17087277f;
  poly = fmaf(t, poly, -0.82215223f);
  poly = fmaf(t, poly, 1.48851587f);
  poly = fmaf(t, poly, -1.13520398f);
  poly = fmaf(t, poly, 0.27886807f);
  poly = fmaf(t, poly, -0.18628806f);
  poly = fmaf(t, poly, 0.09678418f);
  poly = fmaf(t, poly, 0.37409196f);
  poly = fmaf(t, poly, 1.00002368f);
  poly = fmaf(t, poly, -1.26551223f);
  return 0.5f * t * fast_exp(fmaf(-z, z, poly));
}

MSTR_DEV float normal_cdf(float x) {
  const float tail = normal_tail(x);
  return x >= 0.0f ? 1.0f - tail : tail;
}

MSTR_DEV float gelu(float x) { return x * normal_cdf(x); }

MSTR_DEV float gelu_grad(float x) {
  return normal_cdf(x) + x * 0.39894228040143268f * fast_exp(-0.5f * x * x);
}

MSTR_DEV float4 gelu4(const float4& v) { return float4{gelu(v.x), gelu(v.y), gelu(v.z), gelu(v.w)}; }

// ---- work split -----------------------------------------------------------------------------

// Threads as a (rows x columns) grid for phases over (row, column-item) pairs: `ncol` column
// lanes (<= the items per row) and `nrow` row lanes; leftover threads get no rows.
struct Lanes {
  int col, ncol, row, nrow;
};

template <class Block>
MSTR_DEV Lanes split_lanes(const Block& blk, int items_per_row) {
  Lanes ln;
  ln.ncol = items_per_row < blk.nthreads ? (items_per_row > 0 ? items_per_row : 1) : blk.nthreads;
  ln.nrow = blk.nthreads / ln.ncol;
  ln.col = blk.tid % ln.ncol;
  ln.row = blk.tid < ln.nrow * ln.ncol ? blk.tid / ln.ncol : (1 << 30);
  return ln;
}

// ---- per-tile tables and pyramids -----------------------------------------------------------

template <class Block>
MSTR_DEV void init_tile(const Block& blk, const Geometry& g, const SmemLayout& sl, float* smem,
                        LevelTable& L, int n_tile, bool with_dscores) {
  if (blk.tid == 0) {
    int S = 1, off = 0, eoff = 0;
    for (int l = 0; l < g.levels; ++l) {
      L.S[l] = S;
      L.N[l] = (n_tile + S - 1) / S;
      L.off[l] = off;
      L.eoff[l] = eoff;
      off += g.P / S;
      eoff += (g.P / S) * g.p;
      S *= g.p;
    }
    L.off[g.levels] = off;
    L.eoff[g.levels] = eoff;
    L.p_magic = (65536 + g.p - 1) / g.p;
  }
  float* scores = smem + sl.scores;
  float* dscores = smem + sl.dscores;
  for (int e = blk.tid; e < g.E; e += blk.nthreads) {
    scores[e] = 0.0f;
    if (with_dscores) dscores[e] = 0.0f;
  }
  blk.sync();
  float* inv_count = smem + sl.inv_count;
  for (int l = 0; l < g.levels; ++l) {
    for (int j = blk.tid; j < L.off[l + 1] - L.off[l]; j += blk.nthreads) {
      const int left = n_tile - j * L.S[l];
      const int c = left < L.S[l] ? left : L.S[l];
      inv_count[L.off[l] + j] = c > 0 ? fast_rcp(float(c)) : 0.0f;
    }
  }
  blk.sync();
}

// Levels 1.. of up to two pyramids (pyr_b may be null), each row the sum of p rows below.
template <class Block>
MSTR_DEV void build_pyramids(const Block& blk, const Geometry& g, const LevelTable& L, float* pyr_a,
                             float* pyr_b, int dc) {
  const int nq = (dc + 3) / 4;
  const Lanes ln = split_lanes(blk, nq);
  for (int l = 1; l < g.levels; ++l) {
    const int rows_below = L.N[l - 1];
    for (int j = ln.row; j < L.N[l]; j += ln.nrow) {
      const int first = L.off[l - 1] + j * g.p;
      const int count = rows_below - j * g.p < g.p ? rows_below - j * g.p : g.p;
      for (int q = ln.col; q < nq; q += ln.ncol) {
        float4 sa = zero4(), sb = zero4();
        for (int m = 0; m < count; ++m) {
          add4(sa, quad_row(pyr_a, first + m, g.DCs)[q]);
          if (pyr_b) add4(sb, quad_row(pyr_b, first + m, g.DCs)[q]);
        }
        quad_row(pyr_a, L.off[l] + j, g.DCs)[q] = sa;
        if (pyr_b) quad_row(pyr_b, L.off[l] + j, g.DCs)[q] = sb;
      }
    }
    blk.sync();
  }
}

// Score entry e -> (level, row j, key row i) and whether both rows are valid.
struct Entry {
  int l, j, i;
  bool valid;
};

MSTR_DEV Entry decode_entry(const Geometry& g, const LevelTable& L, int e) {
  Entry x;
  x.l = 0;
  while (e >= L.eoff[x.l + 1]) ++x.l;
  const int local = e - L.eoff[x.l];
  x.j = div_p(L, local);
  const int window_start = div_p(L, x.j) * g.p;
  x.i = window_start + (local - x.j * g.p);
  x.valid = x.j < L.N[x.l] && x.i < L.N[x.l];
  return x;
}

// acc[e] += scale_of(e) * <a row j, b row i> over the chunk's columns, for every valid entry;
// `key_scaled`: multiply by 1 / count of row i (b holds sums, the mean is wanted).
template <class Block>
MSTR_DEV void accumulate_row_dots(const Block& blk, const Geometry& g, const LevelTable& L,
                                  const float* pyr_a, const float* pyr_b, const float* inv_count,
                                  bool key_scaled, float* acc, int dc) {
  const int nq = (dc + 3) / 4;
  for (int e = blk.tid; e < g.E; e += blk.nthreads) {
    const Entry x = decode_entry(g, L, e);
    if (!x.valid) continue;
    const float4* a = quad_row(pyr_a, L.off[x.l] + x.j, g.DCs);
    const float4* b = quad_row(pyr_b, L.off[x.l] + x.i, g.DCs);
    float4 d = zero4();
    for (int q = 0; q < nq; ++q) dot4(d, a[q], b[q]);
    acc[e] += key_scaled ? sum4(d) * inv_count[L.off[x.l] + x.i] : sum4(d);
  }
}

// scores[e] holds <Qsum_j, Ksum_i>; replaces it by softmax_i(scale * <Qmean_j, Kmean_i>),
// 0 for keys outside the valid window.
template <class Block>
MSTR_DEV void softmax_rows(const Block& blk, const Geometry& g, const LevelTable& L,
                           const float* inv_count, float* scores) {
  for (int l = 0; l < g.levels; ++l) {
    for (int j = blk.tid; j < L.N[l]; j += blk.nthreads) {
      const int ws = div_p(L, j) * g.p;
      const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
      float* s = scores + L.eoff[l] + j * g.p;
      const float row_scale = g.scale * inv_count[L.off[l] + j];
      const float* key_inv = inv_count + L.off[l] + ws;
      float top = -INFINITY;
      for (int m = 0; m < wn; ++m) top = fmaxf(top, s[m] * row_scale * key_inv[m]);
      if (top == -INFINITY) top = 0.0f;  // scores all -inf (overflowed): weights 0, as SDPA
      float total = 0.0f;
      for (int m = 0; m < wn; ++m) {
        const float ex = expf(s[m] * row_scale * key_inv[m] - top);
        s[m] = ex;
        total += ex;
      }
      const float inv_total = total > 0.0f ? fast_rcp(total) : 0.0f;
      for (int m = 0; m < wn; ++m) s[m] *= inv_total;
      for (int m = wn; m < g.p; ++m) s[m] = 0.0f;
    }
  }
}

// Y_j (quad q) = sum_i P_ji * Vmean_i over the valid window of row j at level l.
MSTR_DEV float4 window_output(const Geometry& g, const LevelTable& L, const float* probs,
                              const float* inv_count, const float* pyr_v, int l, int j, int q) {
  const int ws = div_p(L, j) * g.p;
  const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
  const float* pj = probs + L.eoff[l] + j * g.p;
  const int row0 = L.off[l] + ws;
  float4 y = zero4();
  for (int m = 0; m < wn; ++m) {
    axpy4(y, pj[m] * inv_count[row0 + m], quad_row(pyr_v, row0 + m, g.DCs)[q]);
  }
  return y;
}

}  // namespace tile
}  // namespace mstr_kernels
