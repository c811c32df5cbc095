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

// The block's thread index, read anew (not a value the compiler may keep from before a loop).
template <class Block>
MSTR_DEV int thread_index(const Block& blk) {
#if defined(__CUDA_ARCH__)
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
#else
  return blk.tid;
#endif
}

template <typename T, int kP, int kL, int kD>
using BwdConfig = Config<T, kP, kL, kD, 4, 3>;

template <typename T>
struct BackwardArgs {
  TensorRef<const T> q, k, v, dout;
  TensorRef<T> dq, dk, dv;
  const int* lengths;
  const int* work = nullptr;  // packed sequences, as ForwardArgs
  int64_t T_len;
  int H, n_super, n_items;
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

MSTR_DEV float gelu_tanh_grad(float x) {
  const float x2 = x * x;
  const float th = tanh_fast(x * fmaf(0.0356774081f, x2, 0.7978845608f));
  const float du = fmaf(0.1070322243f, x2, 0.7978845608f);  // d/dx of the tanh argument
  return fmaf(0.5f, th, 0.5f) + 0.5f * x * fmaf(-th, th, 1.0f) * du;
}

template <Gelu kForm>
MSTR_DEV float gelu_grad(float x) {
  if constexpr (kForm == Gelu::kTanh) {
    return gelu_tanh_grad(x);
  } else {
    return gelu_erf_grad(x);
  }
}

// One window of p rows (means = rows x inv): the gradients of the rows' means, times inv (each
// frame's share). Rows come from `load(x, i, row)` (x: 0 q, 1 k, 2 v, 3 dout-sum), results go to
// `emit(x, i, row)` (x: 0 dq, 1 dk, 2 dv). All lanes of the warp take part (butterflies).
template <class Cfg, class Block, class Load, class Emit>
MSTR_DEV void window_backward(const Block& blk, float scale_log2, float scale,
                              const float (&inv)[Cfg::p], const bool (&valid)[Cfg::p],
                              Load&& load, Emit&& emit) {
  constexpr int p = Cfg::p, G = Cfg::G, C = kChannels;
  float P[p][p];
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
      const float row_scale = scale_log2 * inv[i];
#pragma unroll
      for (int j = 0; j < p; ++j) P[i][j] = part[i * p + j] * (row_scale * inv[j]);
    }
  }
  window_softmax<p>(P, valid);
  // dY_i = dG_i GELU'(Y_i), Y_i = sum_j P_ij Vmean_j; then dP_ij = <dY_i, Vmean_j>.
  float dy[p][C];
  float dP[p][p];
  {
    float vr[p][C];
#pragma unroll
    for (int j = 0; j < p; ++j) {
      load(2, j, vr[j]);
#pragma unroll
      for (int e = 0; e < C; ++e) vr[j][e] *= inv[j];
    }
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
  // dVmean_j = sum_i P_ij dY_i; share = dVmean_j * inv_j.
#pragma unroll
  for (int j = 0; j < p; ++j) {
    float out[C];
#pragma unroll
    for (int e = 0; e < C; ++e) {
      float acc = P[0][j] * dy[0][e];
#pragma unroll
      for (int i = 1; i < p; ++i) acc = fmaf(P[i][j], dy[i][e], acc);
      out[e] = acc * inv[j];
    }
    emit(2, j, out);
  }
  // dS_ij = scale P_ij (dP_ij - sum_m P_im dP_im), in place of dP.
#pragma unroll
  for (int i = 0; i < p; ++i) {
    float w = P[i][0] * dP[i][0];
#pragma unroll
    for (int j = 1; j < p; ++j) w = fmaf(P[i][j], dP[i][j], w);
#pragma unroll
    for (int j = 0; j < p; ++j) dP[i][j] = scale * P[i][j] * (dP[i][j] - w);
  }
  // dQmean_i = sum_j dS_ij Kmean_j, dKmean_j = sum_i dS_ij Qmean_i; shares times inv.
  {
    float kr[p][C];
#pragma unroll
    for (int j = 0; j < p; ++j) load(1, j, kr[j]);
#pragma unroll
    for (int i = 0; i < p; ++i) {
      float out[C];
#pragma unroll
      for (int e = 0; e < C; ++e) {
        float acc = (dP[i][0] * inv[0]) * kr[0][e];
#pragma unroll
        for (int j = 1; j < p; ++j) acc = fmaf(dP[i][j] * inv[j], kr[j][e], acc);
        out[e] = acc * inv[i];
      }
      emit(0, i, out);
    }
  }
  {
    float qr[p][C];
#pragma unroll
    for (int i = 0; i < p; ++i) load(0, i, qr[i]);
#pragma unroll
    for (int j = 0; j < p; ++j) {
      float out[C];
#pragma unroll
      for (int e = 0; e < C; ++e) {
        float acc = (dP[0][j] * inv[0]) * qr[0][e];
#pragma unroll
        for (int i = 1; i < p; ++i) acc = fmaf(dP[i][j] * inv[i], qr[i][e], acc);
        out[e] = acc * inv[j];
      }
      emit(1, j, out);
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
  pooled_sums<Cfg>(blk, raw, psum, c);

  if constexpr (L >= 2) {
    const int n = item_pos.n;
    const int tid = thread_index(blk), c0 = tid % G;
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
      window_backward<Cfg>(
          blk, a.scale_log2, a.scale, inv, valid,
          [&](int x, int i, float (&row)[C]) {
            load_pooled<Cfg>(psum + (x * R + j0 + i) * D, c0, row);
          },
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
  const int tid = thread_index(blk);
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
    // its first row is (each tensor's rows are emitted together), 8 values live, not 24.
    const int c1 = tid % G;
    float up[C];
    auto load_up = [&](int x) {
#pragma unroll
      for (int e = 0; e < C; ++e) up[e] = 0.0f;
      static_for<2, L + 1>([&](auto lc) {
        constexpr int l = decltype(lc)::value;
        constexpr int span = ipow(p, l - 2), off = Cfg::pool_off(l);
        float g[C];
        load_pooled<Cfg>(pgrad + (x * R + off + w / span) * D, c1, g);
#pragma unroll
        for (int e = 0; e < C; ++e) up[e] += g[e];
      });
    };
    window_backward<Cfg>(
        blk, a.scale_log2, a.scale, inv, valid,
        [&](int x, int i, float (&row)[C]) {
          load_raw<Cfg>(raw + (x * F + w * p + i) * D, c1, row);
        },
        [&](int x, int i, const float (&row)[C]) {
          if (i == 0) load_up(x);
          const int t = w * p + i;
          if (!(active && t < it.frames)) return;
          float out[C];
#pragma unroll
          for (int e = 0; e < C; ++e) out[e] = row[e] + up[e];
          const TensorRef<T>& dst = x == 0 ? a.dq : (x == 1 ? a.dk : a.dv);
          store_out<Cfg>(dst.ptr + it.b * dst.sb + it.h * dst.sh + (it.t0 + t) * dst.st, c1, out,
                         valid[i]);
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
