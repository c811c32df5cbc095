// The fused CPU kernels of fractal attention (SPEC section 1), written once and compiled once
// per instruction set: each fractal_attention_cpu*.cpp defines CPU_CAPABILITY (DEFAULT, AVX2,
// AVX512) and the matching CPU_CAPABILITY_* macro before including this file, so that ATen's
// Vectorized<T> (and its exp / erf) use that instruction set and every symbol lands in its own
// namespace mstr_kernels::cpu_kernels::CPU_CAPABILITY.
//
// One task = one (batch, tile of P = p**levels frames, head). It gathers the tile's valid rows of
// q, k, v (any strides, any float dtype) into a thread-local buffer of acc_t (float, or double for
// float64) whose rows are padded with zeros to a whole number of vectors, builds the pooled
// levels hierarchically as sums (then means: count = valid frames of the group, so tails are
// exact), and walks the levels from the top down. Each level's window attention (p x p scores,
// max-subtracted softmax) and GELU produce one row per pooled frame, added to the upsampled
// "carry" of the level above; level 1 writes each output frame once. The backward recomputes the
// same and spreads the pooled gradients back the same way (divided by counts). Tasks never share
// an output row, so the result is deterministic and independent of the thread count.
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

template <typename acc_t>
inline Vec<acc_t> gelu(const Vec<acc_t>& x) {
  const Vec<acc_t> half(acc_t(0.5)), one(acc_t(1)), inv_sqrt2(acc_t(M_SQRT1_2));
  return half * x * (one + (x * inv_sqrt2).erf());
}

// d GELU(x) / dx = Phi(x) + x * phi(x).
template <typename acc_t>
inline Vec<acc_t> gelu_grad(const Vec<acc_t>& x) {
  const Vec<acc_t> half(acc_t(0.5)), one(acc_t(1)), inv_sqrt2(acc_t(M_SQRT1_2));
  const Vec<acc_t> inv_sqrt_2pi(acc_t(0.3989422804014327)), minus_half(acc_t(-0.5));
  const Vec<acc_t> cdf = half * (one + (x * inv_sqrt2).erf());
  const Vec<acc_t> pdf = (minus_half * x * x).exp() * inv_sqrt_2pi;
  return at::vec::fmadd(x, pdf, cdf);
}

// Valid frames of pooled row j of a level with `span` frames per row, in a tile of nt valid frames.
inline int64_t group_count(int64_t j, int64_t span, int64_t nt) {
  return std::min((j + 1) * span, nt) - j * span;
}

// Builds levels 1.. of a pyramid whose level-0 rows (nt of them) are filled: each pooled row is
// the sum of its (up to p) children. With `to_means`, levels >= 1 are then divided by counts.
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
      for (int64_t d = 0; d < g.Dp; d += W) {
        Vec<acc_t> s = Vec<acc_t>::loadu(child + c0 * g.Dp + d);
        for (int64_t c = 1; c < nc; ++c) s = s + Vec<acc_t>::loadu(child + (c0 + c) * g.Dp + d);
        s.store(parent + j * g.Dp + d);
      }
    }
    m = m_next;
  }
  if (!to_means) return;
  for (int64_t l = 1; l < g.levels; ++l) {
    const int64_t m_l = (nt + g.span[l] - 1) / g.span[l];
    acc_t* rows = buf + g.off[l] * g.Dp;
    for (int64_t j = 0; j < m_l; ++j) {
      const Vec<acc_t> inv(acc_t(1) / acc_t(group_count(j, g.span[l], nt)));
      for (int64_t d = 0; d < g.Dp; d += W)
        (Vec<acc_t>::loadu(rows + j * g.Dp + d) * inv).store(rows + j * g.Dp + d);
    }
  }
}

// Softmax probabilities of one window of n rows (queries j, keys i): probs[j][i].
template <typename acc_t>
inline void window_probs(const acc_t* Q, const acc_t* K, int64_t n, int64_t Dp, acc_t scale,
                         acc_t probs[kMaxP][kMaxP]) {
  // The n*n max-subtracted scores are exponentiated as one flat array: a few vector exps.
  alignas(64) acc_t flat[kMaxP * kMaxP];
  for (int64_t j = 0; j < n; ++j) {
    acc_t top = -std::numeric_limits<acc_t>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      flat[j * n + i] = scale * dot(Q + j * Dp, K + i * Dp, Dp);
      top = std::max(top, flat[j * n + i]);
    }
    for (int64_t i = 0; i < n; ++i) flat[j * n + i] -= top;
  }
  constexpr int64_t W = Vec<acc_t>::size();
  for (int64_t o = 0; o < n * n; o += W) {
    const int64_t count = std::min(W, n * n - o);
    Vec<acc_t>::loadu(flat + o, count).exp().store(flat + o, count);
  }
  for (int64_t j = 0; j < n; ++j) {
    acc_t z = 0;
    for (int64_t i = 0; i < n; ++i) z += flat[j * n + i];
    const acc_t inv_z = acc_t(1) / z;
    for (int64_t i = 0; i < n; ++i) probs[j][i] = flat[j * n + i] * inv_z;
  }
}

// Per-thread scratch for one tile: q, k, v pyramids and per-level carries.
template <typename acc_t>
struct Scratch {
  // One uninitialized block: every row is written before it is read (pads included).
  std::unique_ptr<acc_t[]> block;
  acc_t *q, *k, *v, *carry;             // forward
  acc_t *dg, *carry_k, *carry_v, *dy;   // backward (carry holds the q carry)
  Scratch(const Geometry& g, bool backward) {
    const int64_t n = g.total_rows * g.Dp;
    block.reset(new acc_t[(backward ? 7 : 4) * n + (backward ? kMaxP * g.Dp : 0)]);
    acc_t* next = block.get();
    for (acc_t** array : {&q, &k, &v, &carry}) { *array = next; next += n; }
    dg = carry_k = carry_v = dy = nullptr;
    if (backward) {
      for (acc_t** array : {&dg, &carry_k, &carry_v}) { *array = next; next += n; }
      dy = next;
    }
  }
};

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
                  int64_t b, int64_t h, int64_t t0, int64_t tlen, int64_t nt, acc_t scale,
                  const Geometry& g, Scratch<acc_t>& s) {
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t Dp = g.Dp;
  if (nt > 0) {
    gather_tile(q, k, v, b, h, t0, nt, g, s);
    alignas(64) acc_t row[256 + 64];
    acc_t probs[kMaxP][kMaxP];
    for (int64_t l = g.levels - 1; l >= 0; --l) {
      const int64_t m = (nt + g.span[l] - 1) / g.span[l];
      const acc_t* Q = s.q + g.off[l] * Dp;
      const acc_t* K = s.k + g.off[l] * Dp;
      const acc_t* V = s.v + g.off[l] * Dp;
      acc_t* carry = s.carry + g.off[l] * Dp;
      const acc_t* above = l + 1 < g.levels ? s.carry + g.off[l + 1] * Dp : nullptr;
      for (int64_t r0 = 0; r0 < m; r0 += g.p) {
        const int64_t n = std::min(g.p, m - r0);
        window_probs(Q + r0 * Dp, K + r0 * Dp, n, Dp, scale, probs);
        for (int64_t j = 0; j < n; ++j) {
          // Level 0 writes the output row; higher levels keep GELU(Y) + carry for the level below.
          acc_t* dst = l > 0 ? carry + (r0 + j) * Dp : row;
          const acc_t* up = above ? above + ((r0 + j) / g.p) * Dp : nullptr;
          for (int64_t d = 0; d < Dp; d += W) {
            Vec<acc_t> y = Vec<acc_t>(probs[j][0]) * Vec<acc_t>::loadu(V + r0 * Dp + d);
            for (int64_t i = 1; i < n; ++i)
              y = at::vec::fmadd(Vec<acc_t>(probs[j][i]), Vec<acc_t>::loadu(V + (r0 + i) * Dp + d), y);
            Vec<acc_t> o = gelu(y);
            if (up) o = o + Vec<acc_t>::loadu(up + d);
            o.store(dst + d);
          }
          if (l == 0) store_row(row, g.D, out.row(b, h, t0 + r0 + j), out.sd);
        }
      }
    }
  }
  for (int64_t t = nt; t < tlen; ++t) zero_row(g.D, out.row(b, h, t0 + t), out.sd);
}

template <typename scalar_t, typename acc_t>
void backward_tile(const StridedRows<const scalar_t>& dout, const StridedRows<const scalar_t>& q,
                   const StridedRows<const scalar_t>& k, const StridedRows<const scalar_t>& v,
                   const StridedRows<scalar_t>& dq, const StridedRows<scalar_t>& dk,
                   const StridedRows<scalar_t>& dv, int64_t b, int64_t h, int64_t t0,
                   int64_t tlen, int64_t nt, acc_t scale, const Geometry& g, Scratch<acc_t>& s) {
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t Dp = g.Dp;
  if (nt > 0) {
    gather_tile(q, k, v, b, h, t0, nt, g, s);
    // dL/dGELU(Y_l)[j] is the sum of dout over the frames of pooled row j: a pyramid of sums.
    for (int64_t t = 0; t < nt; ++t)
      load_row(dout.row(b, h, t0 + t), dout.sd, g.D, Dp, s.dg + t * Dp);
    build_pyramid(s.dg, g, nt, false);
    alignas(64) acc_t rq[256 + 64], rk[256 + 64], rv[256 + 64];
    acc_t probs[kMaxP][kMaxP], dscore[kMaxP][kMaxP];
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
      for (int64_t r0 = 0; r0 < m; r0 += g.p) {
        const int64_t n = std::min(g.p, m - r0);
        const acc_t* Qw = Q + r0 * Dp;
        const acc_t* Kw = K + r0 * Dp;
        const acc_t* Vw = V + r0 * Dp;
        window_probs(Qw, Kw, n, Dp, scale, probs);
        // dY = dG * GELU'(Y), Y recomputed from the probabilities.
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t d = 0; d < Dp; d += W) {
            Vec<acc_t> y = Vec<acc_t>(probs[j][0]) * Vec<acc_t>::loadu(Vw + d);
            for (int64_t i = 1; i < n; ++i)
              y = at::vec::fmadd(Vec<acc_t>(probs[j][i]), Vec<acc_t>::loadu(Vw + i * Dp + d), y);
            (Vec<acc_t>::loadu(dG + (r0 + j) * Dp + d) * gelu_grad(y)).store(dY + j * Dp + d);
          }
        }
        // Softmax backward: dS = P * (dP - rowsum(P * dP)), with dP = dY . V; scale folded in.
        for (int64_t j = 0; j < n; ++j) {
          acc_t rowsum = 0;
          for (int64_t i = 0; i < n; ++i) {
            dscore[j][i] = dot(dY + j * Dp, Vw + i * Dp, Dp);
            rowsum += probs[j][i] * dscore[j][i];
          }
          for (int64_t i = 0; i < n; ++i)
            dscore[j][i] = scale * probs[j][i] * (dscore[j][i] - rowsum);
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
              gv = at::vec::fmadd(Vec<acc_t>(probs[i][r]), Vec<acc_t>::loadu(dY + i * Dp + d), gv);
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

// Calls fn(b, h, t0, tlen, nt, scratch) for every (batch, tile, head) task, in parallel.
template <typename acc_t, typename Fn>
void for_each_tile(const Geometry& g, const at::Tensor& lengths, bool backward, const Fn& fn) {
  const int32_t* len = lengths.defined() ? lengths.data_ptr<int32_t>() : nullptr;
  const int64_t ntasks = g.B * g.ntiles * g.H;
  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> scratch(g, backward);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task % g.H;
      const int64_t tile = (task / g.H) % g.ntiles;
      const int64_t b = task / (g.H * g.ntiles);
      const int64_t n = len ? static_cast<int64_t>(len[b]) : g.T;
      const int64_t t0 = tile * g.P;
      const int64_t tlen = std::min(g.P, g.T - t0);
      const int64_t nt = std::clamp<int64_t>(n - t0, 0, tlen);
      fn(b, h, t0, tlen, nt, scratch);
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
    for_each_tile<acc_t>(g, lengths, false, [&](int64_t b, int64_t h, int64_t t0, int64_t tlen,
                                                int64_t nt, Scratch<acc_t>& s) {
      forward_tile<scalar_t, acc_t>(Q, K, V, O, b, h, t0, tlen, nt, scale, g, s);
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
    for_each_tile<acc_t>(g, lengths, true, [&](int64_t b, int64_t h, int64_t t0, int64_t tlen,
                                               int64_t nt, Scratch<acc_t>& s) {
      backward_tile<scalar_t, acc_t>(dO, Q, K, V, dQ, dK, dV, b, h, t0, tlen, nt, scale, g, s);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu_kernels
}  // namespace mstr_kernels
