// The fused CPU kernels of fractal attention (SPEC section 1), written once and compiled once
// per instruction set: each fractal_attention_cpu*.cpp defines CPU_CAPABILITY (DEFAULT, AVX2,
// AVX512) and the matching CPU_CAPABILITY_* macro before including this file, so that ATen's
// Vectorized<T> (and its exp / erf) use that instruction set and every symbol lands in its own
// namespace mstr_kernels::cpu_kernels::CPU_CAPABILITY.
//
// One task = one (batch, tile of P = p**levels frames, head). It gathers the tile's valid rows of
// q, k, v (any strides, any float dtype) into a thread-local buffer of acc_t (float, or double for
// float64) whose rows are padded with zeros to a whole number of vectors, builds the pooled
// levels hierarchically as means (children weighted by the valid frames they cover, so tails are
// exact), and walks the levels from the top down. Per level: all window scores and softmaxes
// (level_probs), then Y = P V, then GELU(Y) plus the upsampled "carry" of the level above in a
// pass of its own; level 1 writes each output frame once (float rows of whole vectors straight
// into the output). While it computes, the task prefetches the rows of the thread's next task.
// The backward recomputes the same and spreads the pooled gradients back the same way (divided
// by counts). Tasks never share an output row, so the result is deterministic and independent of
// the thread count. Outputs come from csrc/cpu/output_cache.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "fractal_attention.h"

namespace mstr_kernels {
namespace cpu_kernels {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int64_t kMaxP = 8;
constexpr int64_t kMaxLevels = 10;  // p = 2: 2**10 = 1024

// A (B, H, T, D) tensor as a pointer and element strides (64-bit offsets throughout).
template <typename scalar_t>
struct StridedRows {
  scalar_t* data;
  int64_t sb, sh, st, sd;
  explicit StridedRows(const at::Tensor& x)
      : data(static_cast<scalar_t*>(x.data_ptr())),
        sb(x.stride(0)), sh(x.stride(1)), st(x.stride(2)), sd(x.stride(3)) {}
  scalar_t* row(int64_t b, int64_t h, int64_t t) const { return data + b * sb + h * sh + t * st; }
};

// Shape of the problem and the row layout of one tile's pyramid: level l (0-based) has up to
// rows[l] pooled rows, stored from row offset off[l]; every row holds Dp >= D values.
struct Geometry {
  int64_t B, H, T, D, Dp, p, levels, P, ntiles, total_rows;
  int64_t rows[kMaxLevels], off[kMaxLevels], span[kMaxLevels];  // span = frames per pooled row

  Geometry(const at::Tensor& q, const FractalParams& params, int64_t vec_width) {
    B = q.size(0); H = q.size(1); T = q.size(2); D = q.size(3);
    Dp = (D + vec_width - 1) / vec_width * vec_width;
    p = params.p; levels = params.levels;
    TORCH_CHECK(p >= 2 && p <= kMaxP && levels >= 1 && levels <= kMaxLevels,
                "fractal_attention_cpu: p=", p, ", levels=", levels, " outside the kernel's range");
    P = 1;
    for (int64_t l = 0; l < levels; ++l) P *= p;
    ntiles = (T + P - 1) / P;
    total_rows = 0;
    int64_t s = 1;
    const int64_t frames = std::min(P, T);  // a tile never holds more than T frames
    for (int64_t l = 0; l < levels; ++l) {
      span[l] = s;
      rows[l] = (frames + s - 1) / s;
      off[l] = total_rows;
      total_rows += rows[l];
      s *= p;
    }
  }
};

template <typename acc_t>
using Vec = Vectorized<acc_t>;

// One row of D values into dst[0, Dp), zero-padded. Whole vectors, not memcpy: a 256-byte
// memcpy call costs more than the four vector moves it does.
template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* src, int64_t sd, int64_t D, int64_t Dp, acc_t* dst) {
  constexpr int64_t W = Vec<acc_t>::size();
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (sd == 1) {
      int64_t d = 0;
      for (; d + W <= D; d += W) Vec<acc_t>::loadu(src + d).store(dst + d);
      if (d < D) Vec<acc_t>::loadu(src + d, D - d).store(dst + d);  // zeros up to Dp
      return;
    }
  }
  for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<acc_t>(src[d * sd]);
  for (int64_t d = D; d < Dp; ++d) dst[d] = acc_t(0);
}

// Copies n contiguous values with whole vectors (a short memcpy call costs more than its moves).
// Plain stores: streaming (non-temporal) stores of the output rows measured no faster here
// (benchmarks/NOTES.md), so outputs stay in cache for whatever reads them next.
template <typename scalar_t>
inline void copy_out(const scalar_t* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    constexpr int64_t W = Vec<scalar_t>::size();
    int64_t d = 0;
    for (; d + W <= n; d += W) Vec<scalar_t>::loadu(src + d).store(dst + d);
    if (d < n) Vec<scalar_t>::loadu(src + d, n - d).store(dst + d, n - d);
  } else {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(scalar_t));
  }
}

// A store that bypasses the caches (the output is not read again by the kernel) where the
// address is 64-byte aligned and the ISA is AVX-512; a plain store otherwise.
template <typename acc_t>
inline void stream_store(const Vec<acc_t>& x, acc_t* dst) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) {
    if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0) return _mm512_stream_ps(dst, x);
  }
#endif
  x.store(dst);
}

template <typename scalar_t, typename acc_t>
inline void store_row(const acc_t* src, int64_t D, scalar_t* dst, int64_t sd) {
  if (sd == 1) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      copy_out(src, D, dst);
    } else {
      scalar_t row[256];
      for (int64_t d = 0; d < D; ++d) row[d] = static_cast<scalar_t>(src[d]);
      copy_out(row, D, dst);
    }
  } else {
    for (int64_t d = 0; d < D; ++d) dst[d * sd] = static_cast<scalar_t>(src[d]);
  }
}

template <typename scalar_t>
inline void zero_row(int64_t D, scalar_t* dst, int64_t sd) {
  for (int64_t d = 0; d < D; ++d) dst[d * sd] = scalar_t(0);
}

template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t Dp) {
  constexpr int64_t W = Vec<acc_t>::size();
  Vec<acc_t> s0(acc_t(0)), s1(acc_t(0));
  int64_t d = 0;
  for (; d + 2 * W <= Dp; d += 2 * W) {
    s0 = at::vec::fmadd(Vec<acc_t>::loadu(a + d), Vec<acc_t>::loadu(b + d), s0);
    s1 = at::vec::fmadd(Vec<acc_t>::loadu(a + d + W), Vec<acc_t>::loadu(b + d + W), s1);
  }
  if (d < Dp) s0 = at::vec::fmadd(Vec<acc_t>::loadu(a + d), Vec<acc_t>::loadu(b + d), s0);
  return at::vec::vec_reduce_all<acc_t>(std::plus<Vec<acc_t>>(), s0 + s1);
}

// 1 / x for x >= 1: the approximate reciprocal and one Newton step (relative error ~2**-23)
// where the ISA has one; a full-width division is about as slow as the rest of the GELU.
inline Vec<float> reciprocal_of_positive(const Vec<float>& x) {
#if defined(CPU_CAPABILITY_AVX512)
  const Vec<float> r(_mm512_rcp14_ps(x));
#elif defined(CPU_CAPABILITY_AVX2)
  const Vec<float> r(_mm256_rcp_ps(x));
#else
  return Vec<float>(1.0f) / x;
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  return r * at::vec::fnmadd(x, r, Vec<float>(2.0f));  // r (2 - x r)
#endif
}

// erf(x / sqrt(2)). float: x P(x^2) / Q(x^2) on x clamped to +-5.5 (beyond, erf rounds to +-1),
// coefficients from scripts/fit_gelu_erf.py; max error 3.7e-7, about half the instructions of
// ATen's erf, which calls exp (the GELUs were two thirds of the forward's instructions).
// double keeps ATen's erf.
template <typename acc_t>
inline Vec<acc_t> erf_of_scaled(const Vec<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    const Vec<float> xc = at::vec::clamp(x, Vec<float>(-5.5f), Vec<float>(5.5f));
    const Vec<float> s = xc * xc;
    Vec<float> num(4.549714e-08f), den(1.1974911e-06f);
    for (float c : {1.270452e-05f, 0.00033768098f, 0.009354704f, 0.0677081f, 0.79788446f})
      num = at::vec::fmadd(num, s, Vec<float>(c));
    for (float c : {7.365245e-05f, 0.0018845289f, 0.028646687f, 0.25152543f, 1.0f})
      den = at::vec::fmadd(den, s, Vec<float>(c));
    return xc * num * reciprocal_of_positive(den);
  } else {
    return (x * Vec<acc_t>(acc_t(M_SQRT1_2))).erf();
  }
}

template <typename acc_t>
inline Vec<acc_t> gelu(const Vec<acc_t>& x) {
  const Vec<acc_t> half_x = Vec<acc_t>(acc_t(0.5)) * x;
  return at::vec::fmadd(half_x, erf_of_scaled(x), half_x);
}

// d GELU(x) / dx = Phi(x) + x * phi(x).
template <typename acc_t>
inline Vec<acc_t> gelu_grad(const Vec<acc_t>& x) {
  const Vec<acc_t> half(acc_t(0.5));
  const Vec<acc_t> inv_sqrt_2pi(acc_t(0.3989422804014327)), minus_half(acc_t(-0.5));
  const Vec<acc_t> cdf = at::vec::fmadd(half, erf_of_scaled(x), half);
  const Vec<acc_t> pdf = (minus_half * x * x).exp() * inv_sqrt_2pi;
  return at::vec::fmadd(x, pdf, cdf);
}

// Valid frames of pooled row j of a level with `span` frames per row, in a tile of nt valid frames.
inline int64_t group_count(int64_t j, int64_t span, int64_t nt) {
  return std::min((j + 1) * span, nt) - j * span;
}

// Builds levels 1.. of a pyramid whose level-0 rows (nt of them) are filled: each pooled row is
// the sum of its (up to p) children, or with `to_means` their mean over the frames they cover
// (children weighted by their frame counts, so tails are exact), in one pass per level.
template <typename acc_t>
void build_pyramid(acc_t* buf, const Geometry& g, int64_t nt, bool to_means) {
  constexpr int64_t W = Vec<acc_t>::size();
  int64_t m = nt;
  for (int64_t l = 1; l < g.levels; ++l) {
    const int64_t m_next = (m + g.p - 1) / g.p;
    const acc_t* child = buf + g.off[l - 1] * g.Dp;
    acc_t* parent = buf + g.off[l] * g.Dp;
    for (int64_t j = 0; j < m_next; ++j) {
      const int64_t c0 = j * g.p, nc = std::min(g.p, m - c0);
      acc_t weight[kMaxP];
      const acc_t frames = acc_t(group_count(j, g.span[l], nt));
      for (int64_t c = 0; c < nc; ++c)
        weight[c] = to_means ? acc_t(group_count(c0 + c, g.span[l - 1], nt)) / frames : acc_t(1);
      for (int64_t d = 0; d < g.Dp; d += W) {
        Vec<acc_t> sum = Vec<acc_t>(weight[0]) * Vec<acc_t>::loadu(child + c0 * g.Dp + d);
        for (int64_t c = 1; c < nc; ++c)
          sum = at::vec::fmadd(Vec<acc_t>(weight[c]), Vec<acc_t>::loadu(child + (c0 + c) * g.Dp + d), sum);
        sum.store(parent + j * g.Dp + d);
      }
    }
    m = m_next;
  }
}

// Horizontal sums of W vectors (W = lanes): out[k] = sum of the lanes of v[k]. With AVX-512 a
// transposing tree of unpacks and 128-bit shuffles does it in 45 instructions, against about 8
// dependent ones per vector for vec_reduce_all.
template <typename acc_t>
inline void horizontal_sums(const Vec<acc_t>* v, acc_t* out) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) {
    __m512 quads[4];  // 128-bit lane L of quads[g] = lane-L partial sums of v[4g .. 4g+3]
    for (int g = 0; g < 4; ++g) {
      const __m512 a = v[4 * g], b = v[4 * g + 1], c = v[4 * g + 2], d = v[4 * g + 3];
      const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
      const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
      const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
      quads[g] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                               _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    }
    const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88),
                                     _mm512_shuffle_f32x4(quads[0], quads[1], 0xDD));
    const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88),
                                     _mm512_shuffle_f32x4(quads[2], quads[3], 0xDD));
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88),
                                        _mm512_shuffle_f32x4(w01, w23, 0xDD)));
    return;
  }
#endif
  for (int64_t k = 0; k < Vec<acc_t>::size(); ++k)
    out[k] = at::vec::vec_reduce_all<acc_t>(std::plus<Vec<acc_t>>(), v[k]);
}

// Softmax probabilities of every window of one level of m rows (windows of p rows, the last
// one possibly shorter): probs[w * p * p + j * p + i] for query j and key i of window w; the
// entries of a short window's missing rows and keys are 0. All scores of the level first, W dot
// products per horizontal_sums, then one pass of vector exps: window by window, each window's
// reductions, exp and normalisation formed one long dependency chain.
template <typename acc_t>
void level_probs(const acc_t* Q, const acc_t* K, int64_t m, int64_t p, int64_t Dp, acc_t scale,
                 acc_t* probs) {
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t windows = (m + p - 1) / p, total = windows * p * p;
  Vec<acc_t> pending[W];
  int64_t npending = 0, done = 0;  // probs[done, done + npending) wait in `pending`
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t r0 = w * p, n = std::min(p, m - r0);
    for (int64_t j = 0; j < p; ++j) {
      for (int64_t i = 0; i < p; ++i) {
        Vec<acc_t> acc(acc_t(0));
        if (j < n && i < n) {
          const acc_t* a = Q + (r0 + j) * Dp;
          const acc_t* b = K + (r0 + i) * Dp;
          for (int64_t d = 0; d < Dp; d += W)
            acc = at::vec::fmadd(Vec<acc_t>::loadu(a + d), Vec<acc_t>::loadu(b + d), acc);
        }
        pending[npending++] = acc;
        if (npending == W) {
          horizontal_sums(pending, probs + done);
          done += W;
          npending = 0;
        }
      }
    }
  }
  if (npending > 0) {
    alignas(64) acc_t tail[W];
    for (int64_t k = npending; k < W; ++k) pending[k] = Vec<acc_t>(acc_t(0));
    horizontal_sums(pending, tail);
    std::copy(tail, tail + npending, probs + done);
  }
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t n = std::min(p, m - w * p);
    acc_t* win = probs + w * p * p;
    for (int64_t j = 0; j < n; ++j) {
      acc_t top = -std::numeric_limits<acc_t>::infinity();  // of the scaled scores: scale < 0 is allowed
      for (int64_t i = 0; i < n; ++i) top = std::max(top, win[j * p + i] *= scale);
      for (int64_t i = 0; i < n; ++i) win[j * p + i] -= top;
    }
  }
  int64_t o = 0;
  for (; o + W <= total; o += W) Vec<acc_t>::loadu(probs + o).exp().store(probs + o);
  if (o < total) Vec<acc_t>::loadu(probs + o, total - o).exp().store(probs + o, total - o);
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t n = std::min(p, m - w * p);
    acc_t* win = probs + w * p * p;
    for (int64_t j = 0; j < n; ++j) {
      acc_t z = 0;
      for (int64_t i = 0; i < n; ++i) z += win[j * p + i];
      const acc_t inv_z = acc_t(1) / z;
      for (int64_t i = 0; i < n; ++i) win[j * p + i] *= inv_z;
    }
  }
}

// Per-thread scratch for one tile: q, k, v pyramids and per-level carries.
template <typename acc_t>
struct Scratch {
  // One uninitialized block: every row is written before it is read (pads included).
  std::unique_ptr<acc_t[]> block;
  acc_t *q, *k, *v, *carry;             // forward
  acc_t *dg, *carry_k, *carry_v, *dy;   // backward (carry holds the q carry)
  acc_t* probs;                         // level_probs of the current level
  Scratch(const Geometry& g, bool backward) {
    const int64_t n = g.total_rows * g.Dp;
    const int64_t nprobs = (g.rows[0] / g.p + 1) * g.p * g.p;
    block.reset(new acc_t[(backward ? 7 : 4) * n + (backward ? kMaxP * g.Dp : 0) + nprobs]);
    acc_t* next = block.get();
    probs = next;
    next += nprobs;
    for (acc_t** array : {&q, &k, &v, &carry}) { *array = next; next += n; }
    dg = carry_k = carry_v = dy = nullptr;
    if (backward) {
      for (acc_t** array : {&dg, &carry_k, &carry_v}) { *array = next; next += n; }
      dy = next;
    }
  }
};

// One task: tile `t0 / P` of head h of batch row b; tlen frames in the tile, nt of them valid.
struct Task {
  int64_t b, h, t0, tlen, nt;
};

// Prefetches rows [r0, r1) of `next`'s tile of x into L2, a cache line at a time, so that the
// next task's gather finds them while this task computes (the gather otherwise waits on memory).
// g++ 12 drops __builtin_prefetch from these kernels (its IPA passes remove them), so x86 gets
// the instruction itself.
inline void prefetch_l2(const char* address) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*address));
#else
  __builtin_prefetch(address, 0, 2);
#endif
}

template <typename scalar_t>
inline void prefetch_rows(const StridedRows<const scalar_t>& x, const Task& next, int64_t r0,
                          int64_t r1, int64_t D) {
  r1 = std::min(r1, next.nt);
  const int64_t bytes = (D - 1) * x.sd * static_cast<int64_t>(sizeof(scalar_t)) + sizeof(scalar_t);
  for (int64_t r = r0; r < r1; ++r) {
    const char* row = reinterpret_cast<const char*>(x.row(next.b, next.h, next.t0 + r));
    for (int64_t o = 0; o < bytes; o += 64) prefetch_l2(row + o);
  }
}

template <typename scalar_t, typename acc_t>
int64_t gather_tile(const StridedRows<const scalar_t>& q, const StridedRows<const scalar_t>& k,
                    const StridedRows<const scalar_t>& v, int64_t b, int64_t h, int64_t t0,
                    int64_t nt, const Geometry& g, Scratch<acc_t>& s) {
  for (int64_t t = 0; t < nt; ++t) {
    load_row(q.row(b, h, t0 + t), q.sd, g.D, g.Dp, s.q + t * g.Dp);
    load_row(k.row(b, h, t0 + t), k.sd, g.D, g.Dp, s.k + t * g.Dp);
    load_row(v.row(b, h, t0 + t), v.sd, g.D, g.Dp, s.v + t * g.Dp);
  }
  build_pyramid(s.q, g, nt, true);
  build_pyramid(s.k, g, nt, true);
  build_pyramid(s.v, g, nt, true);
  return nt;
}

template <typename scalar_t, typename acc_t>
void forward_tile(const StridedRows<const scalar_t>& q, const StridedRows<const scalar_t>& k,
                  const StridedRows<const scalar_t>& v, const StridedRows<scalar_t>& out,
                  const Task& task, const Task& next, acc_t scale, const Geometry& g,
                  Scratch<acc_t>& s) {
  const int64_t b = task.b, h = task.h, t0 = task.t0, tlen = task.tlen, nt = task.nt;
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t Dp = g.Dp;
  const bool direct_out = std::is_same_v<scalar_t, acc_t> && out.sd == 1 && g.D == Dp;
  if (nt > 0) {
    gather_tile(q, k, v, b, h, t0, nt, g, s);
    for (int64_t l = g.levels - 1; l >= 0; --l) {
      const int64_t m = (nt + g.span[l] - 1) / g.span[l];
      const acc_t* Q = s.q + g.off[l] * Dp;
      const acc_t* K = s.k + g.off[l] * Dp;
      const acc_t* V = s.v + g.off[l] * Dp;
      acc_t* Y = s.carry + g.off[l] * Dp;  // this level's rows: Y, then GELU(Y) + carry
      level_probs(Q, K, m, g.p, Dp, scale, s.probs);
      // Y = P V, window by window.
      for (int64_t r0 = 0; r0 < m; r0 += g.p) {
        const int64_t n = std::min(g.p, m - r0);
        if (l == 0) {  // frame-wise in step with this level, the rest of `next` at the end
          const int64_t r1 = r0 + n < m ? r0 + n : next.nt;
          prefetch_rows(q, next, r0, r1, g.D);
          prefetch_rows(k, next, r0, r1, g.D);
          prefetch_rows(v, next, r0, r1, g.D);
        }
        const acc_t* probs = s.probs + r0 * g.p;  // this window's p x p block
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t d = 0; d < Dp; d += W) {
            Vec<acc_t> y = Vec<acc_t>(probs[j * g.p]) * Vec<acc_t>::loadu(V + r0 * Dp + d);
            for (int64_t i = 1; i < n; ++i)
              y = at::vec::fmadd(Vec<acc_t>(probs[j * g.p + i]),
                                 Vec<acc_t>::loadu(V + (r0 + i) * Dp + d), y);
            y.store(Y + (r0 + j) * Dp + d);
          }
        }
      }
      // GELU(Y) plus the level above upsampled, in a pass of its own: independent vectors, so
      // that the GELU's long dependency chains overlap (inside the loop above they did not).
      // Level 0 writes float rows of whole vectors straight into the output.
      const acc_t* above = l + 1 < g.levels ? s.carry + g.off[l + 1] * Dp : nullptr;
      const bool to_out = l == 0 && direct_out;
      for (int64_t r = 0; r < m; ++r) {
        acc_t* dst = to_out ? reinterpret_cast<acc_t*>(out.row(b, h, t0 + r)) : Y + r * Dp;
        const acc_t* up = above ? above + (r / g.p) * Dp : nullptr;
        for (int64_t d = 0; d < Dp; d += W) {
          Vec<acc_t> o = gelu(Vec<acc_t>::loadu(Y + r * Dp + d));
          if (up) o = o + Vec<acc_t>::loadu(up + d);
          if (to_out) stream_store(o, dst + d); else o.store(dst + d);
        }
      }
    }
#if defined(CPU_CAPABILITY_AVX512)
    if (direct_out) _mm_sfence();  // order the streamed rows before the caller reads them
#endif
    if (!direct_out)
      for (int64_t t = 0; t < nt; ++t) store_row(s.carry + t * Dp, g.D, out.row(b, h, t0 + t), out.sd);
  }
  for (int64_t t = nt; t < tlen; ++t) zero_row(g.D, out.row(b, h, t0 + t), out.sd);
}

template <typename scalar_t, typename acc_t>
void backward_tile(const StridedRows<const scalar_t>& dout, const StridedRows<const scalar_t>& q,
                   const StridedRows<const scalar_t>& k, const StridedRows<const scalar_t>& v,
                   const StridedRows<scalar_t>& dq, const StridedRows<scalar_t>& dk,
                   const StridedRows<scalar_t>& dv, const Task& task, const Task& next,
                   acc_t scale, const Geometry& g, Scratch<acc_t>& s) {
  const int64_t b = task.b, h = task.h, t0 = task.t0, tlen = task.tlen, nt = task.nt;
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t Dp = g.Dp;
  if (nt > 0) {
    gather_tile(q, k, v, b, h, t0, nt, g, s);
    // dL/dGELU(Y_l)[j] is the sum of dout over the frames of pooled row j: a pyramid of sums.
    for (int64_t t = 0; t < nt; ++t)
      load_row(dout.row(b, h, t0 + t), dout.sd, g.D, Dp, s.dg + t * Dp);
    build_pyramid(s.dg, g, nt, false);
    alignas(64) acc_t rq[256 + 64], rk[256 + 64], rv[256 + 64];
    acc_t dscore[kMaxP][kMaxP];
    acc_t* dY = s.dy;
    for (int64_t l = g.levels - 1; l >= 0; --l) {
      const int64_t m = (nt + g.span[l] - 1) / g.span[l];
      const int64_t o = g.off[l] * Dp;
      const acc_t* Q = s.q + o;
      const acc_t* K = s.k + o;
      const acc_t* V = s.v + o;
      const acc_t* dG = s.dg + o;
      acc_t* carries[3] = {s.carry + o, s.carry_k + o, s.carry_v + o};
      const bool has_above = l + 1 < g.levels;
      const int64_t oa = has_above ? g.off[l + 1] * Dp : 0;
      const acc_t* above[3] = {s.carry + oa, s.carry_k + oa, s.carry_v + oa};
      level_probs(Q, K, m, g.p, Dp, scale, s.probs);
      for (int64_t r0 = 0; r0 < m; r0 += g.p) {
        const int64_t n = std::min(g.p, m - r0);
        if (l == 0) {  // as in forward_tile
          const int64_t r1 = r0 + n < m ? r0 + n : next.nt;
          prefetch_rows(q, next, r0, r1, g.D);
          prefetch_rows(k, next, r0, r1, g.D);
          prefetch_rows(v, next, r0, r1, g.D);
          prefetch_rows(dout, next, r0, r1, g.D);
        }
        const acc_t* Qw = Q + r0 * Dp;
        const acc_t* Kw = K + r0 * Dp;
        const acc_t* Vw = V + r0 * Dp;
        const acc_t* probs = s.probs + r0 * g.p;  // this window's p x p block
        // dY = dG * GELU'(Y), Y recomputed from the probabilities.
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t d = 0; d < Dp; d += W) {
            Vec<acc_t> y = Vec<acc_t>(probs[j * g.p]) * Vec<acc_t>::loadu(Vw + d);
            for (int64_t i = 1; i < n; ++i)
              y = at::vec::fmadd(Vec<acc_t>(probs[j * g.p + i]), Vec<acc_t>::loadu(Vw + i * Dp + d), y);
            (Vec<acc_t>::loadu(dG + (r0 + j) * Dp + d) * gelu_grad(y)).store(dY + j * Dp + d);
          }
        }
        // Softmax backward: dS = P * (dP - rowsum(P * dP)), with dP = dY . V; scale folded in.
        for (int64_t j = 0; j < n; ++j) {
          acc_t rowsum = 0;
          for (int64_t i = 0; i < n; ++i) {
            dscore[j][i] = dot(dY + j * Dp, Vw + i * Dp, Dp);
            rowsum += probs[j * g.p + i] * dscore[j][i];
          }
          for (int64_t i = 0; i < n; ++i)
            dscore[j][i] = scale * probs[j * g.p + i] * (dscore[j][i] - rowsum);
        }
        for (int64_t r = 0; r < n; ++r) {
          const acc_t inv_count = acc_t(1) / acc_t(group_count(r0 + r, g.span[l], nt));
          const Vec<acc_t> inv(inv_count);
          const int64_t up_row = ((r0 + r) / g.p) * Dp;
          acc_t* dst[3];
          for (int c = 0; c < 3; ++c) dst[c] = l > 0 ? carries[c] + (r0 + r) * Dp : nullptr;
          if (l == 0) { dst[0] = rq; dst[1] = rk; dst[2] = rv; }
          for (int64_t d = 0; d < Dp; d += W) {
            Vec<acc_t> gq(acc_t(0)), gk(acc_t(0)), gv(acc_t(0));
            for (int64_t i = 0; i < n; ++i) {
              gq = at::vec::fmadd(Vec<acc_t>(dscore[r][i]), Vec<acc_t>::loadu(Kw + i * Dp + d), gq);
              gk = at::vec::fmadd(Vec<acc_t>(dscore[i][r]), Vec<acc_t>::loadu(Qw + i * Dp + d), gk);
              gv = at::vec::fmadd(Vec<acc_t>(probs[i * g.p + r]), Vec<acc_t>::loadu(dY + i * Dp + d), gv);
            }
            // Mean pooling spreads a pooled gradient over its frames divided by their count.
            gq = gq * inv; gk = gk * inv; gv = gv * inv;
            if (has_above) {
              gq = gq + Vec<acc_t>::loadu(above[0] + up_row + d);
              gk = gk + Vec<acc_t>::loadu(above[1] + up_row + d);
              gv = gv + Vec<acc_t>::loadu(above[2] + up_row + d);
            }
            gq.store(dst[0] + d); gk.store(dst[1] + d); gv.store(dst[2] + d);
          }
          if (l == 0) {
            const int64_t t = t0 + r0 + r;
            store_row(rq, g.D, dq.row(b, h, t), dq.sd);
            store_row(rk, g.D, dk.row(b, h, t), dk.sd);
            store_row(rv, g.D, dv.row(b, h, t), dv.sd);
          }
        }
      }
    }
  }
  for (int64_t t = nt; t < tlen; ++t) {
    zero_row(g.D, dq.row(b, h, t0 + t), dq.sd);
    zero_row(g.D, dk.row(b, h, t0 + t), dk.sd);
    zero_row(g.D, dv.row(b, h, t0 + t), dv.sd);
  }
}

// Calls fn(task, next, scratch) for every (batch, tile, head) task, in parallel; `next` is the
// task the same thread runs after this one (nt = 0 if none), whose rows may be prefetched.
template <typename acc_t, typename Fn>
void for_each_tile(const Geometry& g, const at::Tensor& lengths, bool backward, const Fn& fn) {
  const int32_t* len = lengths.defined() ? lengths.data_ptr<int32_t>() : nullptr;
  const int64_t ntasks = g.B * g.ntiles * g.H;
  auto task_at = [&](int64_t task) {
    const int64_t h = task % g.H;
    const int64_t tile = (task / g.H) % g.ntiles;
    const int64_t b = task / (g.H * g.ntiles);
    const int64_t n = len ? static_cast<int64_t>(len[b]) : g.T;
    const int64_t t0 = tile * g.P;
    const int64_t tlen = std::min(g.P, g.T - t0);
    return Task{b, h, t0, tlen, std::clamp<int64_t>(n - t0, 0, tlen)};
  };
  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> scratch(g, backward);
    for (int64_t task = begin; task < end; ++task) {
      const Task next = task + 1 < end ? task_at(task + 1) : Task{0, 0, 0, 0, 0};
      fn(task_at(task), next, scratch);
    }
  });
}

}  // namespace

void fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lengths,
         const FractalParams& params, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "fractal_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry g(q, params, Vec<acc_t>::size());
    const StridedRows<const scalar_t> Q(q), K(k), V(v);
    const StridedRows<scalar_t> O(out);
    const acc_t scale = static_cast<acc_t>(params.scale);
    for_each_tile<acc_t>(g, lengths, false, [&](const Task& t, const Task& next,
                                                Scratch<acc_t>& s) {
      forward_tile<scalar_t, acc_t>(Q, K, V, O, t, next, scale, g, s);
    });
  });
}

void bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
         const at::Tensor& lengths, const FractalParams& params, at::Tensor& dq, at::Tensor& dk,
         at::Tensor& dv) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "fractal_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry g(q, params, Vec<acc_t>::size());
    const StridedRows<const scalar_t> dO(dout), Q(q), K(k), V(v);
    const StridedRows<scalar_t> dQ(dq), dK(dk), dV(dv);
    const acc_t scale = static_cast<acc_t>(params.scale);
    for_each_tile<acc_t>(g, lengths, true, [&](const Task& t, const Task& next,
                                               Scratch<acc_t>& s) {
      backward_tile<scalar_t, acc_t>(dO, Q, K, V, dQ, dK, dV, t, next, scale, g, s);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu_kernels
}  // namespace mstr_kernels
