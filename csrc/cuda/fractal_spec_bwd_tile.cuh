// Backward of fractal attention specialised on (p, levels, D), in the forward's mapping
// (fractal_spec_tile.cuh): an item's q, k, v, dout copied into shared memory, pooled sums of all
// four level by level, then every pooled window at once (recompute P and Y, dY = dG GELU'(Y)
// with dG the group's sum of dout, dP, dS = P (dP - sum P dP), the mean-gradients of q, k, v of
// the window's rows), stored as each frame's share (mean-gradient / count); then level 1 on the
// frames, adding the shares of the rows above its window, each gradient row stored once.
// Recomputes everything from q, k, v, dout; no atomics (bit-identical runs).
#pragma once

#include "fractal_spec_tile.cuh"

namespace mstr_kernels {
namespace specialised {

template <typename T, int kP, int kL, int kD, Variant kVariant = Variant::kFull>
using BwdConfig = Config<T, kP, kL, kD, 4, 3, kVariant>;

template <typename T>
struct BackwardArgs {
  TensorRef<const T> q, k, v, dout;
  TensorRef<T> dq, dk, dv;
  const int* lengths;
  const int* work = nullptr;  // packed sequences, as ForwardArgs
  int64_t T_len;
  int H, n_super, n_items;
  UDivisor by_H, by_super;
  float scale_log2;  // scale * log2(e)
  float scale;
  MSTR_DEV const TensorRef<const T>& input(int x) const {
    return x == 0 ? q : (x == 1 ? k : (x == 2 ? v : dout));
  }
};

// GELU'(x) of the form the forward uses for this dtype.
MSTR_DEV float gelu_erf_grad(float x) {
  const float z = fabsf(x) * 0.70710678118654752f;
  const float t = rcp(fmaf(0.3275911f, z, 1.0f));
  float poly = 1.061405429f;
  poly = fmaf(poly, t, -1.453152027f);
  poly = fmaf(poly, t, 1.421413741f);
  poly = fmaf(poly, t, -0.284496736f);
  poly = fmaf(poly, t, 0.254829592f);
  const float gauss = ex2(-z * z * 1.4426950408889634f);  // exp(-x^2 / 2)
  const float tail = 0.5f * poly * t * gauss;
  const float cdf = x >= 0.0f ? 1.0f - tail : tail;
  return fmaf(x * 0.39894228040143268f, gauss, cdf);
}

// (1 + th) / 2 + x (1 - th^2) u'(x) / 2 with u the tanh argument: four FMAs after tanh.
MSTR_DEV float gelu_tanh_grad(float x) {
  const float x2 = x * x;
  const float th = tanh_fast(x * fmaf(0.0356774081f, x2, 0.7978845608f));
  const float half_du = fmaf(0.05351611215f, x2, 0.3989422804f);  // u'(x) / 2
  return fmaf(x * half_du, fmaf(-th, th, 1.0f), fmaf(0.5f, th, 0.5f));
}

template <Gelu kForm>
MSTR_DEV float gelu_grad(float x) {
  if constexpr (kForm == Gelu::kTanh) {
    return gelu_tanh_grad(x);
  } else {
    return gelu_erf_grad(x);
  }
}

// One window of p rows (means = sums x inv): the gradients of the rows' means, times inv (each
// frame's share). Rows come from `load(x, i, row)` (x: 0 q, 1 k, 2 v, 3 dout-sum: sums, not
// means), results go to `emit(x, i, row)` (x: 0 dq, 1 dk, 2 dv). kFrames: the rows are frames
// (inv is 1, not applied) and each gradient row starts from `start(x, i, acc)` (the shares of
// the pooled rows above: the additions ride on the FMAs). All lanes of the warp take part
// (butterflies).
// The counts are folded into the p x p weights rather than applied per channel: with
// Pn_ij = P_ij inv_j, Y_i = sum_j Pn_ij V_j, dP_ij = inv_j <dY_i, V_j>, dV share_j =
// sum_i Pn_ij dY_i, and the shares of dq_i and dk_j both take A_ij = scale inv_i inv_j dS_ij =
// scale inv_i Pn_ij (inv_j <dY_i, V_j> - sum_m Pn_im <dY_i, V_m>) times the sums of k and q.
template <class Cfg, bool kFrames, class Block, class Load, class Start, class Emit>
MSTR_DEV void window_backward(const Block& blk, float scale_log2, float scale,
                              const float (&inv)[Cfg::p], const bool (&valid)[Cfg::p],
                              Load&& load, Start&& start, Emit&& emit) {
  constexpr int p = Cfg::p, G = Cfg::G, C = kChannels;
  // out[e] = (start or 0) + sum_m wt[m] row_m[e], the rows given by rows(m, e).
  auto combine = [&](int x, int i, auto&& wt, auto&& rows) {
    float out[C];
    if constexpr (kFrames) start(x, i, out);
#pragma unroll
    for (int e = 0; e < C; ++e) {
      float acc = kFrames ? fmaf(wt(0), rows(0, e), out[e]) : wt(0) * rows(0, e);
#pragma unroll
      for (int m = 1; m < p; ++m) acc = fmaf(wt(m), rows(m, e), acc);
      out[e] = acc;
    }
    emit(x, i, out);
  };
  float P[p][p];  // the softmax weights, then Pn = P_ij inv_j
  {
    float qr[p][C], kr[p][C];
#pragma unroll
    for (int i = 0; i < p; ++i) {
      load(0, i, qr[i]);
      load(1, i, kr[i]);
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
      const float row_scale = kFrames ? scale_log2 : scale_log2 * inv[i];
#pragma unroll
      for (int j = 0; j < p; ++j) {
        P[i][j] = part[i * p + j] * (kFrames ? row_scale : row_scale * inv[j]);
      }
    }
  }
  window_softmax<p>(P, valid);
  if constexpr (!kFrames) {
#pragma unroll
    for (int i = 0; i < p; ++i) {
#pragma unroll
      for (int j = 0; j < p; ++j) P[i][j] *= inv[j];
    }
  }
  // dY_i = dG_i GELU'(Y_i); then <dY_i, V_j> (dP_ij / inv_j).
  float dy[p][C];
  float dP[p][p];
  {
    float vr[p][C];
#pragma unroll
    for (int j = 0; j < p; ++j) load(2, j, vr[j]);
#pragma unroll
    for (int i = 0; i < p; ++i) {
      float g[C];
      load(3, i, g);
#pragma unroll
      for (int e = 0; e < C; ++e) {
        float y = P[i][0] * vr[0][e];
#pragma unroll
        for (int j = 1; j < p; ++j) y = fmaf(P[i][j], vr[j][e], y);
        dy[i][e] = g[e] * gelu_grad<Cfg::gelu>(y);
      }
    }
    float part[p * p];
#pragma unroll
    for (int i = 0; i < p; ++i) {
#pragma unroll
      for (int j = 0; j < p; ++j) {
        float d = dy[i][0] * vr[j][0];
#pragma unroll
        for (int e = 1; e < C; ++e) d = fmaf(dy[i][e], vr[j][e], d);
        part[i * p + j] = d;
      }
    }
    lane_sum<G>(blk, part);
#pragma unroll
    for (int i = 0; i < p; ++i) {
#pragma unroll
      for (int j = 0; j < p; ++j) dP[i][j] = part[i * p + j];
    }
  }
  // dV share_j = sum_i Pn_ij dY_i.
#pragma unroll
  for (int j = 0; j < p; ++j) {
    combine(2, j, [&](int i) { return P[i][j]; }, [&](int i, int e) { return dy[i][e]; });
  }
  // A_ij in place of dP.
#pragma unroll
  for (int i = 0; i < p; ++i) {
    float w = P[i][0] * dP[i][0];
#pragma unroll
    for (int j = 1; j < p; ++j) w = fmaf(P[i][j], dP[i][j], w);
    const float row_scale = kFrames ? scale : scale * inv[i];
#pragma unroll
    for (int j = 0; j < p; ++j) {
      const float d = kFrames ? dP[i][j] - w : fmaf(inv[j], dP[i][j], -w);
      dP[i][j] = (row_scale * P[i][j]) * d;
    }
  }
  // dq share_i = sum_j A_ij K_j, dk share_j = sum_i A_ij Q_i (sums of k and q).
  {
    float kr[p][C];
#pragma unroll
    for (int j = 0; j < p; ++j) load(1, j, kr[j]);
#pragma unroll
    for (int i = 0; i < p; ++i) {
      combine(0, i, [&](int j) { return dP[i][j]; }, [&](int j, int e) { return kr[j][e]; });
    }
  }
  {
    float qr[p][C];
#pragma unroll
    for (int i = 0; i < p; ++i) load(0, i, qr[i]);
#pragma unroll
    for (int j = 0; j < p; ++j) {
      combine(1, j, [&](int i) { return dP[i][j]; }, [&](int i, int e) { return qr[i][e]; });
    }
  }
}

template <class Cfg, typename T, class Block>
MSTR_DEV void backward_item(const Block& blk, const BackwardArgs<T>& a, const T* raw,
                            float* pooled, const Item& item_pos, int item) {
  constexpr int p = Cfg::p, L = Cfg::levels, G = Cfg::G, D = Cfg::D, F = Cfg::F;
  constexpr int C = kChannels, R = Cfg::R_pool;
  float* psum = pooled;              // [4][R][D]: pooled sums of q, k, v, dout
  float* pgrad = pooled + 4 * R * D;  // [3][R][D]: shares of dq, dk, dv of the pooled rows
  const int c = blk.tid % G;
  if constexpr (Cfg::variant == Variant::kMemory) {  // dq, dk, dv rows: the q, k, v rows
    copy_rows_out<Cfg, 3>(blk, raw, item_pos, [&](int x) -> const TensorRef<T>& {
      return x == 0 ? a.dq : (x == 1 ? a.dk : a.dv);
    });
    return;
  }
  pooled_sums<Cfg>(blk, raw, psum, c);

  if constexpr (L >= 2) {
    const int n = item_pos.n;
    const int tid = thread_index<Cfg>(blk), c0 = tid % G;
#pragma unroll
    for (int r = 0; r < Cfg::rounds_pool; ++r) {
      const int k = tid + r * Cfg::threads;
      if (k - tid % 32 >= Cfg::items_pool) continue;  // whole warps only
      const bool active = k < Cfg::items_pool;
      const int win = active ? k / G : 0;
      int S = p, off = 0, woff = 0;
      static_for<3, L + 1>([&](auto lc) {
        constexpr int l = decltype(lc)::value;
        if (win >= Cfg::win_off(l)) {
          S = Cfg::S(l);
          off = Cfg::pool_off(l);
          woff = Cfg::win_off(l);
        }
      });
      const int j0 = off + (win - woff) * p;
      const int f0 = (win - woff) * p * S;
      float inv[p];
      bool valid[p];
#pragma unroll
      for (int i = 0; i < p; ++i) {
        const int left = n - (f0 + i * S);
        const int cnt = left < S ? left : S;
        valid[i] = cnt > 0;
        inv[i] = valid[i] ? rcp(float(cnt)) : 0.0f;
      }
      window_backward<Cfg, false>(
          blk, a.scale_log2, a.scale, inv, valid,
          [&](int x, int i, float (&row)[C]) {
            load_pooled<Cfg>(psum + (x * R + j0 + i) * D, c0, row);
          },
          [](int, int, float (&)[C]) {},
          [&](int x, int i, const float (&row)[C]) {
            if (active) store_pooled<Cfg>(pgrad + (x * R + j0 + i) * D, c0, row);
          });
    }
    blk.sync();
  }

  // Located again rather than kept across the pooled phase, and the thread index re-read so
  // that the compiler does not hoist this phase's per-thread offsets out of the item loop
  // (registers: the pooled phase is the peak).
  const Item it = L >= 2 ? locate<Cfg>(a, item) : item_pos;
  const int tid = thread_index<Cfg>(blk);
#pragma unroll
  for (int r = 0; r < Cfg::rounds1; ++r) {
    const int k = tid + r * Cfg::threads;
    const bool active = k < Cfg::items1;
    const int w = active ? k / G : 0;
    float inv[p];
    bool valid[p];
#pragma unroll
    for (int i = 0; i < p; ++i) {
      valid[i] = w * p + i < it.n;
      inv[i] = 1.0f;
    }
    // Shares of the pooled rows above this window, for the tensor being emitted: loaded when
    // its first row is (each tensor's rows are emitted together), 8 values live, not 24. The
    // tensor's first gradient row of the window is found then too; the others are steps of the
    // row stride (not each computed from scratch).
    const int c1 = tid % G;
    // The rows' pointer kept from the first row of each tensor (fewer instructions), except
    // at p=3 levels=3, where it made ptxas spill at the 128-register cap (2 blocks per SM).
    constexpr bool kRowPointer = !(p == 3 && L == 3);
    float up[C];
    T* dst_row = nullptr;
    auto load_up = [&](int x) {
      if constexpr (L >= 2) {
        load_pooled<Cfg>(pgrad + (x * R + w) * D, c1, up);  // level 2: row w
      } else {
#pragma unroll
        for (int e = 0; e < C; ++e) up[e] = 0.0f;
      }
      static_for<3, L + 1>([&](auto lc) {
        constexpr int l = decltype(lc)::value;
        constexpr int span = ipow(p, l - 2), off = Cfg::pool_off(l);
        float g[C];
        load_pooled<Cfg>(pgrad + (x * R + off + w / span) * D, c1, g);
#pragma unroll
        for (int e = 0; e < C; ++e) up[e] += g[e];
      });
      if constexpr (kRowPointer) {
        const TensorRef<T>& dst = x == 0 ? a.dq : (x == 1 ? a.dk : a.dv);
        dst_row = dst.ptr + it.b * dst.sb + it.h * dst.sh + (it.t0 + w * p) * dst.st + c1 * Cfg::W;
      }
    };
    window_backward<Cfg, true>(
        blk, a.scale_log2, a.scale, inv, valid,
        [&](int x, int i, float (&row)[C]) {
          load_raw<Cfg>(raw + (x * F + w * p + i) * D, c1, row);
        },
        [&](int x, int i, float (&acc)[C]) {
          if (i == 0) load_up(x);
#pragma unroll
          for (int e = 0; e < C; ++e) acc[e] = up[e];
        },
        [&](int x, int i, const float (&row)[C]) {
          if (!(active && w * p + i < it.frames && writes_outputs<Cfg>(a))) return;
          const TensorRef<T>& dst = x == 0 ? a.dq : (x == 1 ? a.dk : a.dv);
          T* const at = kRowPointer ? dst_row + i * dst.st
                                    : dst.ptr + it.b * dst.sb + it.h * dst.sh +
                                          (it.t0 + w * p + i) * dst.st + c1 * Cfg::W;
          store_out<Cfg>(at, row, valid[i]);
        });
  }
}

template <class Cfg, typename T, class Block>
MSTR_DEV void backward_block(const Block& blk, const BackwardArgs<T>& a, unsigned char* smem,
                             int first, int stride) {
  item_loop<Cfg, T, true>(blk, a, smem, first, stride,
                    [&](const T* raw, float* pooled, const Item& it, int item) {
                      backward_item<Cfg>(blk, a, raw, pooled, it, item);
                    });
}

}  // namespace specialised
}  // namespace mstr_kernels
