// Softmax attention inside windows of p rows for the fused CPU kernels
// (fractal_attention_cpu_kernel.h): the dot products and probabilities of every window of a tile,
// and Y = P V for one window. Compiled once per instruction set like the kernels: the including
// file defines CPU_CAPABILITY first.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cpu/fractal_attention_cpu_vec.h"
#include "fractal_range.h"

namespace mstr_kernels {
namespace cpu_kernels {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kMaxP = spec::kMaxP;

// The N x N dot-product accumulators (vectors, not yet summed) of one full window of N <= 4
// rows: each vector of Q and K is loaded once (in registers: N * N + N + 1 <= 21 vectors).
template <int N, typename acc_t>
inline void window_dots(const acc_t* Q, int64_t qs, const acc_t* K, int64_t ks, int64_t Dp,
                        Vec<acc_t>* acc, int64_t acc_stride) {
  constexpr int64_t W = Vec<acc_t>::size();
  Vec<acc_t> sum[N * N];
  for (int a = 0; a < N * N; ++a) sum[a] = Vec<acc_t>(acc_t(0));
  for (int64_t d = 0; d < Dp; d += W) {
    Vec<acc_t> kv[N];
    for (int i = 0; i < N; ++i) kv[i] = Vec<acc_t>::loadu(K + i * ks + d);
    for (int j = 0; j < N; ++j) {
      const Vec<acc_t> qv = Vec<acc_t>::loadu(Q + j * qs + d);
      for (int i = 0; i < N; ++i) sum[j * N + i] = at::vec::fmadd(qv, kv[i], sum[j * N + i]);
    }
  }
  for (int a = 0; a < N * N; ++a) acc[a * acc_stride] = sum[a];
}

// Y[j] = sum_i probs[(j * N + i) * ps] V[i] for one full window of N <= 4 rows (Dp apart): the
// probabilities broadcast once, each vector of V loaded once, N independent accumulators.
template <int N, typename acc_t>
inline void window_values(const acc_t* probs, int64_t ps, const acc_t* V, int64_t vs, int64_t Dp,
                          acc_t* Y) {
  constexpr int64_t W = Vec<acc_t>::size();
  Vec<acc_t> weight[N * N];
  for (int a = 0; a < N * N; ++a) weight[a] = Vec<acc_t>(probs[a * ps]);
  for (int64_t d = 0; d < Dp; d += W) {
    Vec<acc_t> v[N];
    for (int i = 0; i < N; ++i) v[i] = Vec<acc_t>::loadu(V + i * vs + d);
    for (int j = 0; j < N; ++j) {
      Vec<acc_t> y = weight[j * N] * v[0];
      for (int i = 1; i < N; ++i) y = at::vec::fmadd(weight[j * N + i], v[i], y);
      y.store(Y + j * Dp + d);
    }
  }
}

// Softmax probabilities of every window of every level of one tile, window-minor:
// probs[(j * p + i) * stride + w] for query j and key i of window w, windows numbered in the
// forward's order (top level first), so that the softmax runs on whole vectors of W windows
// (scalar, window by window, it cost as much as all the dot products). Per block of W windows:
// each window's p * p dot-product accumulators (window_dots) into `work`, then per (j, i) one
// horizontal_sums turns the W windows' accumulators into their W scores. Level l has m[l] rows,
// read from Q[l] and K[l] (rows qs[l] and ks[l] apart); the last window of a level holds fewer
// than p rows when p does not divide m[l]: its missing keys get -inf (probability exactly 0),
// its missing queries are never read. `rows_of` receives each window's rows (stride values);
// `work` holds p * p * W vectors. Returns the number of windows.
template <typename acc_t>
int64_t tile_probs(const acc_t* const* Q, const int64_t* qs, const acc_t* const* K,
                   const int64_t* ks, const int64_t* m, int64_t levels, int64_t p, int64_t Dp,
                   acc_t scale, int64_t stride, acc_t* probs, acc_t* rows_of, Vec<acc_t>* work) {
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t pp = p * p;
  int64_t w = 0;
  auto reduce_block = [&](int64_t count) {  // windows [w - count, w) sit in work slots [0, count)
    for (int64_t a = 0; a < pp; ++a) {
      for (int64_t slot = count; slot < W; ++slot) work[a * W + slot] = Vec<acc_t>(acc_t(0));
      horizontal_sums(work + a * W, probs + a * stride + (w - count));
    }
  };
  for (int64_t l = levels - 1; l >= 0; --l) {
    for (int64_t r0 = 0; r0 < m[l]; r0 += p) {
      const int64_t n = std::min(p, m[l] - r0);
      const acc_t* Qw = Q[l] + r0 * qs[l];
      const acc_t* Kw = K[l] + r0 * ks[l];
      Vec<acc_t>* acc = work + w % W;  // (j, i) at acc[(j * p + i) * W]
      if (n == p && p == 2) {
        window_dots<2>(Qw, qs[l], Kw, ks[l], Dp, acc, W);
      } else if (n == p && p == 3) {
        window_dots<3>(Qw, qs[l], Kw, ks[l], Dp, acc, W);
      } else if (n == p && p == 4) {
        window_dots<4>(Qw, qs[l], Kw, ks[l], Dp, acc, W);
      } else {
        for (int64_t j = 0; j < p; ++j) {
          for (int64_t i = 0; i < p; ++i) {
            Vec<acc_t> sum(acc_t(0));
            if (j < n && i < n)
              for (int64_t d = 0; d < Dp; d += W)
                sum = at::vec::fmadd(Vec<acc_t>::loadu(Qw + j * qs[l] + d),
                                     Vec<acc_t>::loadu(Kw + i * ks[l] + d), sum);
            acc[(j * p + i) * W] = sum;
          }
        }
      }
      rows_of[w++] = acc_t(n);
      if (w % W == 0) reduce_block(W);
    }
  }
  if (w % W != 0) reduce_block(w % W);
  const int64_t windows = w;
  for (; w % W != 0; ++w) rows_of[w] = acc_t(p);  // padding lanes: finite, never read
  const Vec<acc_t> minus_inf(-std::numeric_limits<acc_t>::infinity()), vscale(scale);
  for (int64_t w0 = 0; w0 < windows; w0 += W) {
    const Vec<acc_t> rows = Vec<acc_t>::loadu(rows_of + w0);
    for (int64_t j = 0; j < p; ++j) {
      acc_t* row = probs + j * p * stride + w0;
      Vec<acc_t> score[kMaxP];
      Vec<acc_t> top = minus_inf;  // of the scaled scores: scale < 0 is allowed
      for (int64_t i = 0; i < p; ++i) {
        const Vec<acc_t> scaled = Vec<acc_t>::loadu(row + i * stride) * vscale;
        score[i] = Vec<acc_t>::blendv(minus_inf, scaled, rows > Vec<acc_t>(acc_t(i)));
        top = at::vec::maximum(top, score[i]);
      }
      // Scores all -inf (overflowed): weights 0, as SDPA gives, not NaN from -inf - -inf.
      top = Vec<acc_t>::blendv(top, Vec<acc_t>(acc_t(0)), top == minus_inf);
      Vec<acc_t> z(acc_t(0));
      for (int64_t i = 0; i < p; ++i) {
        score[i] = (score[i] - top).exp();
        z = z + score[i];
      }
      const Vec<acc_t> zero(acc_t(0)), one(acc_t(1));
      const Vec<acc_t> inv_z = one / Vec<acc_t>::blendv(z, one, z == zero);
      for (int64_t i = 0; i < p; ++i) (score[i] * inv_z).store(row + i * stride);
    }
  }
  return windows;
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu_kernels
}  // namespace mstr_kernels
