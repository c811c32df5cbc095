// Global-memory side of a tile (see fractal_tile_common.cuh): where a tile lies, loading
// frames into level 0 of a pyramid (16-byte vectors where strides allow, else scalars), staging
// loads in registers, and storing each frame's sum over levels once.
#pragma once

#include "fractal_tile_common.cuh"

namespace mstr_kernels {
namespace tile {

// ---- global memory --------------------------------------------------------------------------

MSTR_DEV uint4 load16(const void* src) {
#if defined(__CUDA_ARCH__)
  return __ldg(reinterpret_cast<const uint4*>(src));
#else
  uint4 raw;
  std::memcpy(&raw, src, kVecBytes);
  return raw;
#endif
}

// 16 bytes of T as W / 4 float quads.
template <typename T>
MSTR_DEV void unpack16(const uint4& raw, float4* dst) {
  constexpr int W = kVecBytes / int(sizeof(T));
  T tmp[W];
  memcpy(tmp, &raw, kVecBytes);
#pragma unroll
  for (int q = 0; q < W / 4; ++q) {
    dst[q] = float4{static_cast<float>(tmp[4 * q]), static_cast<float>(tmp[4 * q + 1]),
                    static_cast<float>(tmp[4 * q + 2]), static_cast<float>(tmp[4 * q + 3])};
  }
}

template <int W, typename T>
MSTR_DEV void store_vector(T* dst, const float* in) {
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
  if (g.work_start != nullptr) {  // packed sequences: the rows past the entry's are others'
    const int64_t entry = tile / g.entry_tiles;
    const int first = int(tile - entry * g.entry_tiles) * g.P;
    const int left = g.work_rows[entry] - first;
    tp.b = 0;
    tp.t0 = int64_t(g.work_start[entry]) + first;
    tp.T_tile = tp.n_tile = left < 0 ? 0 : (left > g.P ? g.P : left);
    return tp;
  }
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

// Level 0 of a pyramid: the chunk's columns of the tile's valid frames (padding columns 0).
template <typename T, class Block>
MSTR_DEV void load_frames(const Block& blk, const TensorRef<const T>& x, const TilePos& tp,
                          int d0, int dc, float* dst, int DCs) {
  constexpr int W = VecWidth<T>::value;
  const T* base = frame_base(x, tp, d0);
  if (x.vec && dc % W == 0) {
    const Lanes ln = split_lanes(blk, dc / W);
    for (int t = ln.row; t < tp.n_tile; t += ln.nrow) {
      for (int v = ln.col; v < dc / W; v += ln.ncol) {
        unpack16<T>(load16(base + int64_t(t) * x.st + v * W), quad_row(dst, t, DCs) + v * (W / 4));
      }
    }
  } else {
    const int nq = (dc + 3) / 4;
    const Lanes ln = split_lanes(blk, nq);
    for (int t = ln.row; t < tp.n_tile; t += ln.nrow) {
      const T* src = base + int64_t(t) * x.st;
      for (int q = ln.col; q < nq; q += ln.ncol) {
        float vals[4];
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const int c = 4 * q + w;
          vals[w] = c < dc ? static_cast<float>(src[int64_t(c) * x.sd]) : 0.0f;
        }
        quad_row(dst, t, DCs)[q] = float4{vals[0], vals[1], vals[2], vals[3]};
      }
    }
  }
}

// A chunk of one tensor's valid frames held in registers (up to kStageRows 16-byte vectors per
// thread), so that the loads of several tensors, or of a later phase, are in flight together.
constexpr int kStageRows = 3;

struct Staged {
  uint4 raw[kStageRows];
  bool held;  // false: the chunk does not fit or is not vectorizable; load it when unstaged
};

template <typename T, class Block>
MSTR_DEV void stage(const Block& blk, const TensorRef<const T>& x, const TilePos& tp, int d0,
                    int dc, Staged& s) {
  constexpr int W = VecWidth<T>::value;
  const Lanes ln = split_lanes(blk, dc / W > 0 ? dc / W : 1);
  // The same decision in every thread of the block.
  s.held = x.vec && dc % W == 0 && ln.ncol == dc / W && tp.n_tile <= kStageRows * ln.nrow;
  if (!s.held) return;
  const T* base = frame_base(x, tp, d0) + ln.col * W;
#pragma unroll
  for (int r = 0; r < kStageRows; ++r) {
    const int t = ln.row + r * ln.nrow;
    if (t < tp.n_tile) s.raw[r] = load16(base + int64_t(t) * x.st);
  }
}

template <typename T, class Block>
MSTR_DEV void unstage(const Block& blk, const Staged& s, const TensorRef<const T>& x,
                      const TilePos& tp, int d0, int dc, float* dst, int DCs) {
  constexpr int W = VecWidth<T>::value;
  if (!s.held) {
    load_frames(blk, x, tp, d0, dc, dst, DCs);
    return;
  }
  const Lanes ln = split_lanes(blk, dc / W);
#pragma unroll
  for (int r = 0; r < kStageRows; ++r) {
    const int t = ln.row + r * ln.nrow;
    if (t < tp.n_tile) unpack16<T>(s.raw[r], quad_row(dst, t, DCs) + ln.col * (W / 4));
  }
}

// Two tensors' chunks into two pyramids, all loads issued before the first store.
template <typename T, class Block>
MSTR_DEV void load_frames_pair(const Block& blk, const TensorRef<const T>& x,
                               const TensorRef<const T>& y, const TilePos& tp, int d0, int dc,
                               float* dst_x, float* dst_y, int DCs) {
  Staged sx, sy;
  stage(blk, x, tp, d0, dc, sx);
  stage(blk, y, tp, d0, dc, sy);
  unstage(blk, sx, x, tp, d0, dc, dst_x, DCs);
  unstage(blk, sy, y, tp, d0, dc, dst_y, DCs);
}

// Sum over levels of the rows frame t belongs to, for `QUADS` quads from quad `q0` on.
template <int QUADS>
MSTR_DEV void sum_levels(const Geometry& g, const LevelTable& L, const float* pyr, int t, int q0,
                         float4 (&acc)[QUADS]) {
#pragma unroll
  for (int q = 0; q < QUADS; ++q) acc[q] = zero4();
  int idx = t;
  for (int l = 0; l < g.levels; ++l) {
    const float4* row = quad_row(pyr, L.off[l] + idx, g.DCs) + q0;
#pragma unroll
    for (int q = 0; q < QUADS; ++q) add4(acc[q], row[q]);
    idx = div_p(L, idx);
  }
}

// For t in [0, T_tile): frame t of the chunk = sum over levels of pyr[row of t at that level]
// (valid frames) or 0 (padding frames), stored once to global memory.
template <typename T, class Block>
MSTR_DEV void store_frames(const Block& blk, const Geometry& g, const LevelTable& L,
                           const float* pyr, const TensorRef<T>& x, const TilePos& tp, int d0,
                           int dc) {
  constexpr int W = VecWidth<T>::value;
  T* base = frame_base(x, tp, d0);
  if (x.vec && dc % W == 0) {
    const Lanes ln = split_lanes(blk, dc / W);
    for (int t = ln.row; t < tp.T_tile; t += ln.nrow) {
      for (int v = ln.col; v < dc / W; v += ln.ncol) {
        float4 acc[W / 4];
        if (t < tp.n_tile) {
          sum_levels<W / 4>(g, L, pyr, t, v * (W / 4), acc);
        } else {
#pragma unroll
          for (int q = 0; q < W / 4; ++q) acc[q] = zero4();
        }
        store_vector<W>(base + int64_t(t) * x.st + v * W, reinterpret_cast<const float*>(acc));
      }
    }
  } else {
    const int nq = (dc + 3) / 4;
    const Lanes ln = split_lanes(blk, nq);
    for (int t = ln.row; t < tp.T_tile; t += ln.nrow) {
      T* dst = base + int64_t(t) * x.st;
      for (int q = ln.col; q < nq; q += ln.ncol) {
        float4 acc[1];
        if (t < tp.n_tile) {
          sum_levels<1>(g, L, pyr, t, q, acc);
        } else {
          acc[0] = zero4();
        }
        const float vals[4] = {acc[0].x, acc[0].y, acc[0].z, acc[0].w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          if (4 * q + w < dc) dst[int64_t(4 * q + w) * x.sd] = static_cast<T>(vals[w]);
        }
      }
    }
  }
}

}  // namespace tile
}  // namespace mstr_kernels
