// One (batch, head, tile of P = p**levels frames) of the fractal attention forward and
// backward, from the building blocks in fractal_tile_common.cuh. Scores need the full head
// dim, so they are accumulated over all chunks of D before the softmax; everything after the
// softmax is per column.
#pragma once

#include "fractal_tile_common.cuh"
#include "fractal_tile_io.cuh"

namespace mstr_kernels {
namespace tile {

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

MSTR_DEV int chunk_width(const Geometry& g, int d0) { return g.D - d0 < g.DC ? g.D - d0 : g.DC; }

// Pass over q and k: scores of every level, then the window softmax. Leaves the last chunk's
// q and k pyramids in pyramids 0 and 1. Once the first chunk of q and k is in shared memory,
// the first chunks of up to two more tensors (`later`, may be null) start loading into
// registers (`staged`), to be unstaged by the caller after the softmax. kStaged = false loads
// straight into shared memory and stages nothing (fewer registers: the backward's choice).
template <bool kStaged, typename T, class Block>
MSTR_DEV void scores_to_probs(const Block& blk, const Geometry& g, const SmemLayout& sl,
                              float* smem, const LevelTable& L, const TensorRef<const T>& q,
                              const TensorRef<const T>& k, const TilePos& tp,
                              const TensorRef<const T>* later0, Staged& staged0,
                              const TensorRef<const T>* later1, Staged& staged1) {
  float* pq = smem + sl.pyramid0;
  float* pk = pq + int64_t(g.R) * g.DCs;
  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = chunk_width(g, d0);
    if constexpr (kStaged) {
      load_frames_pair(blk, q, k, tp, d0, dc, pq, pk, g.DCs);
      if (d0 == 0) {
        if (later0) stage(blk, *later0, tp, 0, dc, staged0);
        if (later1) stage(blk, *later1, tp, 0, dc, staged1);
      }
    } else {
      load_frames(blk, q, tp, d0, dc, pq, g.DCs);
      load_frames(blk, k, tp, d0, dc, pk, g.DCs);
    }
    blk.sync();
    build_pyramids(blk, g, L, pq, pk, dc);
    accumulate_row_dots(blk, g, L, pq, pk, smem + sl.inv_count, false, smem + sl.scores, dc);
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
  Staged v0, unused;  // the first chunk of v, loaded while the scores are computed
  v0.held = false;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // sm_80's allocation spills with v held in registers across the scores: load v later.
  const TensorRef<const T>* prefetch_v = nullptr;
#else
  const TensorRef<const T>* prefetch_v = &a.v;
#endif
  if (tp.n_tile > 0) {
    scores_to_probs<true>(blk, g, a.sl, smem, L, a.q, a.k, tp, prefetch_v, v0,
                    static_cast<const TensorRef<const T>*>(nullptr), unused);
  }
  const float* probs = smem + a.sl.scores;
  const float* inv_count = smem + a.sl.inv_count;
  float* pv = smem + a.sl.pyramid0;
  float* pg = pv + int64_t(g.R) * g.DCs;
  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = chunk_width(g, d0);
    if (tp.n_tile > 0) {
      if (d0 == 0) {
        unstage(blk, v0, a.v, tp, d0, dc, pv, g.DCs);
      } else {
        load_frames(blk, a.v, tp, d0, dc, pv, g.DCs);
      }
      blk.sync();
      build_pyramids(blk, g, L, pv, nullptr, dc);
      const int nq = (dc + 3) / 4;
      const Lanes ln = split_lanes(blk, nq);
      for (int l = 0; l < g.levels; ++l) {
        for (int j = ln.row; j < L.N[l]; j += ln.nrow) {
          for (int q = ln.col; q < nq; q += ln.ncol) {
            quad_row(pg, L.off[l] + j, g.DCs)[q] =
                gelu4(window_output(g, L, probs, inv_count, pv, l, j, q));
          }
        }
      }
      blk.sync();
    }
    store_frames(blk, g, L, pg, a.out, tp, d0, dc);  // n_tile == 0: zeros, pg is not read
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
      const int dc = chunk_width(g, d0);
      store_frames(blk, g, L, pd, a.dq, tp, d0, dc);  // n_tile == 0: zeros, pd is not read
      store_frames(blk, g, L, pd, a.dk, tp, d0, dc);
      store_frames(blk, g, L, pd, a.dv, tp, d0, dc);
    }
    blk.sync();
    return;
  }
  // Plain loads: staging v and dout across the scores costs the backward register spills.
  Staged none;
  const TensorRef<const T>* no_tensor = nullptr;
  scores_to_probs<false>(blk, g, a.sl, smem, L, a.q, a.k, tp, no_tensor, none, no_tensor, none);
  const float* probs = smem + a.sl.scores;
  float* dscores = smem + a.sl.dscores;
  const float* inv_count = smem + a.sl.inv_count;

  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = chunk_width(g, d0);
    const int nq = (dc + 3) / 4;
    const Lanes ln = split_lanes(blk, nq);
    load_frames(blk, a.v, tp, d0, dc, pv, DCs);
    load_frames(blk, a.dout, tp, d0, dc, pd, DCs);
    blk.sync();
    build_pyramids(blk, g, L, pv, pd, dc);
    for (int l = 0; l < g.levels; ++l) {  // dG -> dY in place
      for (int j = ln.row; j < L.N[l]; j += ln.nrow) {
        for (int q = ln.col; q < nq; q += ln.ncol) {
          const float4 y = window_output(g, L, probs, inv_count, pv, l, j, q);
          float4& d = quad_row(pd, L.off[l] + j, DCs)[q];
          d = float4{d.x * gelu_grad(y.x), d.y * gelu_grad(y.y), d.z * gelu_grad(y.z),
                     d.w * gelu_grad(y.w)};
        }
      }
    }
    blk.sync();
    accumulate_row_dots(blk, g, L, pd, pv, inv_count, true, dscores, dc);  // dP += <dY, Vmean>
    blk.sync();
    for (int l = 0; l < g.levels; ++l) {  // v pyramid -> dVsum = dVmean / count
      for (int i = ln.row; i < L.N[l]; i += ln.nrow) {
        const int ws = div_p(L, i) * g.p;
        const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
        const float* pcol = probs + L.eoff[l] + ws * g.p + (i - ws);  // P_{ws+m, i}: stride p
        const float inv = inv_count[L.off[l] + i];
        for (int q = ln.col; q < nq; q += ln.ncol) {
          float4 acc = zero4();
          for (int m = 0; m < wn; ++m) axpy4(acc, pcol[m * g.p], quad_row(pd, L.off[l] + ws + m, DCs)[q]);
          quad_row(pv, L.off[l] + i, DCs)[q] = scale4(acc, inv);
        }
      }
    }
    blk.sync();
    store_frames(blk, g, L, pv, a.dv, tp, d0, dc);
    blk.sync();
  }

  for (int l = 0; l < g.levels; ++l) {  // dP -> scale * dS in place
    for (int j = blk.tid; j < L.N[l]; j += blk.nthreads) {
      const int e0 = L.eoff[l] + j * g.p;
      float weighted = 0.0f;
      for (int m = 0; m < g.p; ++m) weighted += probs[e0 + m] * dscores[e0 + m];
      for (int m = 0; m < g.p; ++m) {
        dscores[e0 + m] = g.scale * probs[e0 + m] * (dscores[e0 + m] - weighted);
      }
    }
  }
  blk.sync();

  const bool one_chunk = g.DC >= g.D;
  for (int d0 = 0; d0 < g.D; d0 += g.DC) {
    const int dc = chunk_width(g, d0);
    const int nq = (dc + 3) / 4;
    const Lanes ln = split_lanes(blk, nq);
    if (!one_chunk) {
      load_frames(blk, a.q, tp, d0, dc, pq, DCs);
      load_frames(blk, a.k, tp, d0, dc, pk, DCs);
      blk.sync();
      build_pyramids(blk, g, L, pq, pk, dc);
    }
    for (int l = 0; l < g.levels; ++l) {  // dQsum -> pyramid 3, dKsum -> pyramid 2
      for (int j = ln.row; j < L.N[l]; j += ln.nrow) {
        const int ws = div_p(L, j) * g.p;
        const int wn = L.N[l] - ws < g.p ? L.N[l] - ws : g.p;
        const int row0 = L.off[l] + ws;
        const float* ds_row = dscores + L.eoff[l] + j * g.p;             // dS_{j, ws+m}
        const float* ds_col = dscores + L.eoff[l] + ws * g.p + (j - ws);  // dS_{ws+m, j}
        const float inv = inv_count[L.off[l] + j];
        for (int q = ln.col; q < nq; q += ln.ncol) {
          float4 dq = zero4(), dk = zero4();
          for (int m = 0; m < wn; ++m) {
            const float key_inv = inv_count[row0 + m];
            axpy4(dq, ds_row[m] * key_inv, quad_row(pk, row0 + m, DCs)[q]);
            axpy4(dk, ds_col[m * g.p] * key_inv, quad_row(pq, row0 + m, DCs)[q]);
          }
          quad_row(pd, L.off[l] + j, DCs)[q] = scale4(dq, inv);
          quad_row(pv, L.off[l] + j, DCs)[q] = scale4(dk, inv);
        }
      }
    }
    blk.sync();
    store_frames(blk, g, L, pd, a.dq, tp, d0, dc);
    store_frames(blk, g, L, pv, a.dk, tp, d0, dc);
    blk.sync();
  }
}

}  // namespace tile
}  // namespace mstr_kernels
