// The work of one (batch, head, tile of P = p**levels frames) of fractal attention, written
// against a small "block" interface (tid, nthreads, sync) so that the same code runs as a CUDA
// thread block (fractal_attention_cuda.cu) and, for testing without a GPU, as host threads.
//
// Every phase is a loop `for (e = tid; e < n; e += nthreads)` over independent items, separated
// by block barriers: an item writes only its own shared-memory slots and reads only slots
// written before the last barrier. No warp-level intrinsics, no atomics: results do not depend
// on the thread count or the schedule, so runs are bitwise deterministic.
//
// Shared memory holds, per tile and chunk of DC head-dim columns, "pyramids": rows of fp32
// sums of frames, level 0 = the frames themselves, level l row j = sum of the valid frames of
// group j (S = p**l frames), built level by level from the one below (sums and counts, so
// tails given by `lengths` stay exact). Scores need the full head dim, so they are accumulated
// over all chunks before the softmax; everything after the softmax is per column.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MSTR_HD __host__ __device__ __forceinline__
#define MSTR_DEV __device__ __forceinline__
#else
#define MSTR_HD inline
#define MSTR_DEV inline
#endif

namespace mstr_kernels {
namespace tile {

constexpr int kMaxLevels = 10;  // p >= 2 and p**levels <= 1024
constexpr int kVecBytes = 16;   // one 128-bit load or store

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
  int DCs;  // row stride of a pyramid in shared memory (odd: conflict-free column reads)
  int R;    // pyramid rows: sum over levels of P / p**l
  int E;    // score entries: R * p
  float scale;
  const int* lengths;  // nullptr: every frame is valid
};

struct LevelTable {     // per tile, in shared memory
  int S[kMaxLevels];    // frames per pooled row
  int N[kMaxLevels];    // valid pooled rows: ceil(n_tile / S)
  int off[kMaxLevels + 1];   // first pyramid row of each level
  int eoff[kMaxLevels + 1];  // first score entry of each level
};

// Shared-memory carve-up, in floats after the level table.
struct SmemLayout {
  int64_t scores, dscores, inv_count, pyramid0, bytes;
  int n_pyramids;
};

MSTR_HD int round_up(int x, int m) { return (x + m - 1) / m * m; }

MSTR_HD SmemLayout smem_layout(int R, int E, int DCs, int n_pyramids, bool with_dscores) {
  SmemLayout s;
  s.n_pyramids = n_pyramids;
  const int64_t table_floats = round_up(int(sizeof(LevelTable) / sizeof(float)), 4);
  s.scores = table_floats;
  s.dscores = s.scores + round_up(E, 4);
  s.inv_count = s.dscores + (with_dscores ? round_up(E, 4) : 0);
  s.pyramid0 = s.inv_count + round_up(R, 4);
  s.bytes = (s.pyramid0 + int64_t(n_pyramids) * R * DCs) * int64_t(sizeof(float));
  return s;
}

template <typename T>
struct VecWidth {
  static constexpr int value = kVecBytes / int(sizeof(T));
};

MSTR_DEV float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

MSTR_DEV float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}

// W consecutive elements starting at src (element stride sd), as floats.
template <int W, typename T>
MSTR_DEV void load_elements(const T* src, int64_t sd, float* out) {
  if constexpr (W == 1) {
    out[0] = static_cast<float>(src[0]);
  } else {
    static_assert(W * sizeof(T) == kVecBytes, "vector width must fill 16 bytes");
    T tmp[W];
#if defined(__CUDA_ARCH__)
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    memcpy(tmp, &raw, kVecBytes);
#else
    std::memcpy(tmp, src, kVecBytes);
#endif
#pragma unroll
    for (int w = 0; w < W; ++w) out[w] = static_cast<float>(tmp[w]);
  }
}

template <int W, typename T>
MSTR_DEV void store_elements(T* dst, int64_t sd, const float* in) {
  if constexpr (W == 1) {
    dst[0] = static_cast<T>(in[0]);
  } else {
    T tmp[W];
#pragma unroll
    for (int w = 0; w < W; ++w) tmp[w] = static_cast<T>(in[w]);
#if defined(__CUDA_ARCH__)
    uint4 raw;
    memcpy(&raw, tmp, kVecBytes);
    *reinterpret_cast<uint4*>(dst) = raw;
#else
    std::memcpy(dst, tmp, kVecBytes);
#endif
  }
}

// Where one tile of one (b, h) lies, and how many of its frames are valid.
struct TilePos {
  int64_t b, h, t0;
  int T_tile;  // frames of the tile inside the sequence (P, or fewer for the last tile)
  int n_tile;  // valid frames: 0 <= n_tile <= T_tile
};

MSTR_DEV TilePos tile_position(const Geometry& g, int64_t item) {
  TilePos tp;
  tp.h = item % g.H;
  const int64_t rest = item / g.H;  // h fastest: neighbouring blocks read neighbouring memory
  const int64_t tile = rest % g.n_tiles;
  tp.b = rest / g.n_tiles;
  tp.t0 = tile * g.P;
  const int64_t left = g.T - tp.t0;
  tp.T_tile = int(left < g.P ? left : g.P);
  const int64_t n = g.lengths ? int64_t(g.lengths[tp.b]) : g.T;
  const int64_t valid = n - tp.t0;
  tp.n_tile = int(valid < 0 ? 0 : (valid > tp.T_tile ? tp.T_tile : valid));
  return tp;
}

template <typename T>
MSTR_DEV T* frame_base(const TensorRef<T>& x, const TilePos& tp, int d0) {
  return x.ptr + tp.b * x.sb + tp.h * x.sh + tp.t0 * x.st + int64_t(d0) * x.sd;
}

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
  }
  float* scores = smem + sl.scores;
  float* dscores = smem + sl.dscores;
  for (int e = blk.tid; e < g.E; e += blk.nthreads) {
    scores[e] = 0.0f;
    if (with_dscores) dscores[e] = 0.0f;
  }
  blk.sync();
  float* inv_count = smem + sl.inv_count;
  for (int r = blk.tid; r < g.R; r += blk.nthreads) {
    int l = 0;
    while (r >= L.off[l + 1]) ++l;
    const int j = r - L.off[l];
    const int c = n_tile - j * L.S[l] < L.S[l] ? n_tile - j * L.S[l] : L.S[l];
    inv_count[r] = c > 0 ? 1.0f / float(c) : 0.0f;
  }
  blk.sync();
}

// Level 0 of a pyramid: the chunk's columns of the tile's valid frames.
template <int W, typename T, class Block>
MSTR_DEV void load_frames_w(const Block& blk, const T* base, int64_t st, int64_t sd, int n_rows,
                            int dc, float* dst, int DCs) {
  const int groups = dc / W;
  for (int e = blk.tid; e < n_rows * groups; e += blk.nthreads) {
    const int t = e / groups;
    const int c = (e - t * groups) * W;
    float vals[W];
    load_elements<W>(base + int64_t(t) * st + int64_t(c) * sd, sd, vals);
#pragma unroll
    for (int w = 0; w < W; ++w) dst[t * DCs + c + w] = vals[w];
  }
}

template <typename T, class Block>
MSTR_DEV void load_frames(const Block& blk, const TensorRef<const T>& x, const TilePos& tp, int d0,
                          int dc, float* dst, int DCs) {
  constexpr int W = VecWidth<T>::value;
  const T* base = frame_base(x, tp, d0);
  if (x.vec && dc % W == 0) {
    load_frames_w<W>(blk, base, x.st, x.sd, tp.n_tile, dc, dst, DCs);
  } else {
    load_frames_w<1>(blk, base, x.st, x.sd, tp.n_tile, dc, dst, DCs);
  }
}

// Levels 1.. of up to two pyramids (pyr_b may be null), each row the sum of p rows below.
template <class Block>
MSTR_DEV void build_pyramids(const Block& blk, const Geometry& g, const LevelTable& L, float* pyr_a,
                             float* pyr_b, int dc) {
  const int DCs = g.DCs;
  for (int l = 1; l < g.levels; ++l) {
    const int rows_below = L.N[l - 1];
    const int n = L.N[l] * dc;
    for (int e = blk.tid; e < n; e += blk.nthreads) {
      const int j = e / dc;
      const int c = e - j * dc;
      const int first = L.off[l - 1] + j * g.p;
      const int count = rows_below - j * g.p < g.p ? rows_below - j * g.p : g.p;
      float sa = 0.0f, sb = 0.0f;
      for (int m = 0; m < count; ++m) {
        sa += pyr_a[(first + m) * DCs + c];
        if (pyr_b) sb += pyr_b[(first + m) * DCs + c];
      }
      pyr_a[(L.off[l] + j) * DCs + c] = sa;
      if (pyr_b) pyr_b[(L.off[l] + j) * DCs + c] = sb;
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
  x.j = local / g.p;
  x.i = x.j - x.j % g.p + (local - x.j * g.p);
  x.valid = x.j < L.N[x.l] && x.i < L.N[x.l];
  return x;
}

// acc[e] += <a row j, b row i> over the chunk's columns (raw sums, no count or scale).
template <class Block>
MSTR_DEV void accumulate_row_dots(const Block& blk, const Geometry& g, const LevelTable& L,
                                  const float* pyr_a, const float* pyr_b, float* acc, int dc) {
  const int DCs = g.DCs;
  for (int e = blk.tid; e < g.E; e += blk.nthreads) {
    const Entry x = decode_entry(g, L, e);
    if (!x.valid) continue;
    const float* a = pyr_a + (L.off[x.l] + x.j) * DCs;
    const float* b = pyr_b + (L.off[x.l] + x.i) * DCs;
    float dot = 0.0f;
    for (int c = 0; c < dc; ++c) dot += a[c] * b[c];
    acc[e] += dot;
  }
}

// Row r of the pyramid -> level and index in that level.
MSTR_DEV int level_of_row(const LevelTable& L, int r) {
  int l = 0;
  while (r >= L.off[l + 1]) ++l;
  return l;
}

// scores[e] holds <Qsum_j, Ksum_i>; replaces it by softmax_i(scale * <Qmean_j, Kmean_i>),
// 0 for keys outside the valid window.
template <class Block>
MSTR_DEV void softmax_rows(const Block& blk, const Geometry& g, const LevelTable& L,
                           const float* inv_count, float* scores) {
  for (int r = blk.tid; r < g.R; r += blk.nthreads) {
    const int l = level_of_row(L, r);
    const int j = r - L.off[l];
    if (j >= L.N[l]) continue;
    const int ws = j - j % g.p;
    const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
    float* s = scores + L.eoff[l] + j * g.p;
    const float row_scale = g.scale * inv_count[r];
    const float* key_inv = inv_count + L.off[l] + ws;
    float top = -INFINITY;
    for (int m = 0; m < wn; ++m) top = fmaxf(top, s[m] * row_scale * key_inv[m]);
    float total = 0.0f;
    for (int m = 0; m < wn; ++m) {
      const float ex = expf(s[m] * row_scale * key_inv[m] - top);
      s[m] = ex;
      total += ex;
    }
    const float inv_total = 1.0f / total;
    for (int m = 0; m < wn; ++m) s[m] *= inv_total;
    for (int m = wn; m < g.p; ++m) s[m] = 0.0f;
  }
}

// Y_j = sum_i P_ji * Vmean_i for pyramid row r = (l, j), column c.
MSTR_DEV float window_output(const Geometry& g, const LevelTable& L, const float* probs,
                             const float* inv_count, const float* pyr_v, int l, int j, int c) {
  const int ws = j - j % g.p;
  const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
  const float* pj = probs + L.eoff[l] + j * g.p;
  const int row0 = L.off[l] + ws;
  float y = 0.0f;
  for (int m = 0; m < wn; ++m) y += pj[m] * pyr_v[(row0 + m) * g.DCs + c] * inv_count[row0 + m];
  return y;
}

// For t in [0, T_tile): frame t of the chunk = sum over levels of pyr[row of t at l] (valid
// frames) or 0 (padding frames), stored once to global memory.
template <int W, typename T, class Block>
MSTR_DEV void store_frames_w(const Block& blk, const Geometry& g, const LevelTable& L,
                             const float* pyr, T* base, int64_t st, int64_t sd, int n_tile,
                             int T_tile, int dc) {
  const int groups = dc / W;
  for (int e = blk.tid; e < T_tile * groups; e += blk.nthreads) {
    const int t = e / groups;
    const int c = (e - t * groups) * W;
    float vals[W];
#pragma unroll
    for (int w = 0; w < W; ++w) vals[w] = 0.0f;
    if (t < n_tile) {
      for (int l = 0; l < g.levels; ++l) {
        const float* row = pyr + (L.off[l] + t / L.S[l]) * g.DCs + c;
#pragma unroll
        for (int w = 0; w < W; ++w) vals[w] += row[w];
      }
    }
    store_elements<W>(base + int64_t(t) * st + int64_t(c) * sd, sd, vals);
  }
}

template <typename T, class Block>
MSTR_DEV void store_frames(const Block& blk, const Geometry& g, const LevelTable& L,
                           const float* pyr, const TensorRef<T>& x, const TilePos& tp, int d0,
                           int dc) {
  constexpr int W = VecWidth<T>::value;
  T* base = frame_base(x, tp, d0);
  if (x.vec && dc % W == 0) {
    store_frames_w<W>(blk, g, L, pyr, base, x.st, x.sd, tp.n_tile, tp.T_tile, dc);
  } else {
    store_frames_w<1>(blk, g, L, pyr, base, x.st, x.sd, tp.n_tile, tp.T_tile, dc);
  }
}

template <typename T>
struct ForwardArgs {
  Geometry g;
  SmemLayout sl;
  TensorRef<const T> q, k, v;
  TensorRef<T> out;
};

template <typename T>
struct BackwardArgs {
  Geometry g;
  SmemLayout sl;
  TensorRef<const T> dout, q, k, v;
  TensorRef<T> dq, dk, dv;
};

template <typename T, class Block>
MSTR_DEV void scores_to_probs(const Block& blk, const Geometry& g, const SmemLayout& sl,
                              float* smem, const LevelTable& L, const TensorRef<const T>& q,
                              const TensorRef<const T>& k, const TilePos& tp) {
  float* pq = smem + sl.pyramid0;
  float* pk = pq + int64_t(g.R) * g.DCs;
  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = g.D - d0 < g.DC ? g.D - d0 : g.DC;
    load_frames(blk, q, tp, d0, dc, pq, g.DCs);
    load_frames(blk, k, tp, d0, dc, pk, g.DCs);
    blk.sync();
    build_pyramids(blk, g, L, pq, pk, dc);
    accumulate_row_dots(blk, g, L, pq, pk, smem + sl.scores, dc);
    blk.sync();
  }
  softmax_rows(blk, g, L, smem + sl.inv_count, smem + sl.scores);
  blk.sync();
}

// One tile of the forward. Pyramids: 0 = q, then v; 1 = k, then GELU(Y).
template <typename T, class Block>
MSTR_DEV void forward_tile(const Block& blk, const ForwardArgs<T>& a, float* smem, int64_t item) {
  const Geometry& g = a.g;
  const TilePos tp = tile_position(g, item);
  LevelTable& L = *reinterpret_cast<LevelTable*>(smem);
  init_tile(blk, g, a.sl, smem, L, tp.n_tile, false);
  if (tp.n_tile > 0) scores_to_probs(blk, g, a.sl, smem, L, a.q, a.k, tp);
  const float* probs = smem + a.sl.scores;
  const float* inv_count = smem + a.sl.inv_count;
  float* pv = smem + a.sl.pyramid0;
  float* pg = pv + int64_t(g.R) * g.DCs;
  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = g.D - d0 < g.DC ? g.D - d0 : g.DC;
    if (tp.n_tile > 0) {
      load_frames(blk, a.v, tp, d0, dc, pv, g.DCs);
      blk.sync();
      build_pyramids(blk, g, L, pv, nullptr, dc);
      for (int e = blk.tid; e < g.R * dc; e += blk.nthreads) {
        const int r = e / dc;
        const int c = e - r * dc;
        const int l = level_of_row(L, r);
        const int j = r - L.off[l];
        if (j >= L.N[l]) continue;
        pg[r * g.DCs + c] = gelu(window_output(g, L, probs, inv_count, pv, l, j, c));
      }
      blk.sync();
    }
    store_frames(blk, g, L, pg, a.out, tp, d0, dc);
    blk.sync();
  }
}

// One tile of the backward: recompute the probabilities, then per level
//   dG_j = sum of dout over group j, dY_j = dG_j * GELU'(Y_j), dP_ji = <dY_j, Vmean_i>,
//   dVmean_i = sum_j P_ji dY_j, dS_ji = P_ji (dP_ji - sum_m P_jm dP_jm),
//   dQmean_j = scale sum_i dS_ji Kmean_i, dKmean_i = scale sum_j dS_ji Qmean_j,
// and each frame's gradient is the sum over levels of its group's mean-gradient / count.
// Pyramids: 0 = q, 1 = k (kept from the scores when one chunk covers D), 2 = v, then dv and
// dk; 3 = dout sums, then dY, then dq.
template <typename T, class Block>
MSTR_DEV void backward_tile(const Block& blk, const BackwardArgs<T>& a, float* smem,
                            int64_t item) {
  const Geometry& g = a.g;
  const TilePos tp = tile_position(g, item);
  LevelTable& L = *reinterpret_cast<LevelTable*>(smem);
  init_tile(blk, g, a.sl, smem, L, tp.n_tile, true);
  const int DCs = g.DCs;
  float* pq = smem + a.sl.pyramid0;
  float* pk = pq + int64_t(g.R) * DCs;
  float* pv = pk + int64_t(g.R) * DCs;
  float* pd = pv + int64_t(g.R) * DCs;
  if (tp.n_tile == 0) {
    for (int d0 = 0; d0 < g.D; d0 += g.DC) {
      const int dc = g.D - d0 < g.DC ? g.D - d0 : g.DC;
      store_frames(blk, g, L, pd, a.dq, tp, d0, dc);  // n_tile == 0: zeros, pd is not read
      store_frames(blk, g, L, pd, a.dk, tp, d0, dc);
      store_frames(blk, g, L, pd, a.dv, tp, d0, dc);
    }
    blk.sync();
    return;
  }
  scores_to_probs(blk, g, a.sl, smem, L, a.q, a.k, tp);
  const float* probs = smem + a.sl.scores;
  float* dscores = smem + a.sl.dscores;
  const float* inv_count = smem + a.sl.inv_count;

  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = g.D - d0 < g.DC ? g.D - d0 : g.DC;
    load_frames(blk, a.v, tp, d0, dc, pv, DCs);
    load_frames(blk, a.dout, tp, d0, dc, pd, DCs);
    blk.sync();
    build_pyramids(blk, g, L, pv, pd, dc);
    for (int e = blk.tid; e < g.R * dc; e += blk.nthreads) {  // dG -> dY in place
      const int r = e / dc;
      const int c = e - r * dc;
      const int l = level_of_row(L, r);
      const int j = r - L.off[l];
      if (j >= L.N[l]) continue;
      pd[r * DCs + c] *= gelu_grad(window_output(g, L, probs, inv_count, pv, l, j, c));
    }
    blk.sync();
    for (int e = blk.tid; e < g.E; e += blk.nthreads) {  // dP_ji += <dY_j, Vmean_i>
      const Entry x = decode_entry(g, L, e);
      if (!x.valid) continue;
      const float* dy = pd + (L.off[x.l] + x.j) * DCs;
      const float* vs = pv + (L.off[x.l] + x.i) * DCs;
      float dot = 0.0f;
      for (int c = 0; c < dc; ++c) dot += dy[c] * vs[c];
      dscores[e] += dot * inv_count[L.off[x.l] + x.i];
    }
    blk.sync();
    for (int e = blk.tid; e < g.R * dc; e += blk.nthreads) {  // v pyramid -> dv per frame
      const int r = e / dc;
      const int c = e - r * dc;
      const int l = level_of_row(L, r);
      const int i = r - L.off[l];
      if (i >= L.N[l]) continue;
      const int ws = i - i % g.p;
      const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
      const float* pcol = probs + L.eoff[l] + ws * g.p + (i - ws);  // P_{ws+m, i}: stride p
      float acc = 0.0f;
      for (int m = 0; m < wn; ++m) acc += pcol[m * g.p] * pd[(L.off[l] + ws + m) * DCs + c];
      pv[r * DCs + c] = acc * inv_count[r];
    }
    blk.sync();
    store_frames(blk, g, L, pv, a.dv, tp, d0, dc);
    blk.sync();
  }

  for (int r = blk.tid; r < g.R; r += blk.nthreads) {  // dP -> scale * dS in place
    const int l = level_of_row(L, r);
    const int j = r - L.off[l];
    if (j >= L.N[l]) continue;
    const int e0 = L.eoff[l] + j * g.p;
    float weighted = 0.0f;
    for (int m = 0; m < g.p; ++m) weighted += probs[e0 + m] * dscores[e0 + m];
    for (int m = 0; m < g.p; ++m) dscores[e0 + m] = g.scale * probs[e0 + m] * (dscores[e0 + m] - weighted);
  }
  blk.sync();

  const bool one_chunk = g.DC >= g.D;
  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = g.D - d0 < g.DC ? g.D - d0 : g.DC;
    if (!one_chunk) {
      load_frames(blk, a.q, tp, d0, dc, pq, DCs);
      load_frames(blk, a.k, tp, d0, dc, pk, DCs);
      blk.sync();
      build_pyramids(blk, g, L, pq, pk, dc);
    }
    for (int e = blk.tid; e < g.R * dc; e += blk.nthreads) {
      const int r = e / dc;
      const int c = e - r * dc;
      const int l = level_of_row(L, r);
      const int j = r - L.off[l];
      if (j >= L.N[l]) continue;
      const int ws = j - j % g.p;
      const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
      const int row0 = L.off[l] + ws;
      const float* ds_row = dscores + L.eoff[l] + j * g.p;             // dS_{j, ws+m}
      const float* ds_col = dscores + L.eoff[l] + ws * g.p + (j - ws);  // dS_{ws+m, j}
      float dq = 0.0f, dk = 0.0f;
      for (int m = 0; m < wn; ++m) {
        const float inv = inv_count[row0 + m];
        dq += ds_row[m] * pk[(row0 + m) * DCs + c] * inv;
        dk += ds_col[m * g.p] * pq[(row0 + m) * DCs + c] * inv;
      }
      pd[r * DCs + c] = dq * inv_count[r];
      pv[r * DCs + c] = dk * inv_count[r];
    }
    blk.sync();
    store_frames(blk, g, L, pd, a.dq, tp, d0, dc);
    store_frames(blk, g, L, pv, a.dk, tp, d0, dc);
    blk.sync();
  }
}

}  // namespace tile
}  // namespace mstr_kernels
