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
// exact), computes the softmax probabilities of every window of every level at once
// (tile_probs), and walks the levels from the top down. Per level: Y = P V, then GELU(Y) plus
// the upsampled "carry" of the level above in a pass of its own; level 1 writes each output frame
// once (float rows of whole vectors straight into the output). While it computes, the task
// prefetches the rows of the thread's next task.
// The backward recomputes the same and spreads the pooled gradients back the same way (divided
// by counts). Tasks never share an output row, so the result is deterministic and independent of
// the thread count. Outputs come from csrc/cpu/output_cache.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

#include "cpu/fractal_attention_cpu_vec.h"
#include "cpu/fractal_attention_cpu_windows.h"
#include "fractal_attention.h"
#include "fractal_range.h"

namespace mstr_kernels {
namespace cpu_kernels {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kMaxLevels = spec::kMaxLevels;

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
  // Windows of a full tile, all levels, rounded up to whole vectors: the row length of the
  // window-minor probabilities (tile_probs).
  int64_t probs_stride;
  // Whether q's heads lie closer together than its frames (views of a (B, T, 3, H, D)
  // projection) rather than each head's frames contiguous ((B, H, T, D)): the order of the
  // tasks (for_each_tile) and of the prefetches (NextTaskPrefetch) follows the memory.
  bool heads_inner;

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
    int64_t windows = 0;
    for (int64_t l = 0; l < levels; ++l) windows += (rows[l] + p - 1) / p;
    probs_stride = (windows + vec_width - 1) / vec_width * vec_width;
    heads_inner = std::abs(q.stride(1)) <= std::abs(q.stride(2)) || T == 1;
  }
};

// Valid frames of pooled row j of a level with `span` frames per row, in a tile of nt valid frames.
inline int64_t group_count(int64_t j, int64_t span, int64_t nt) {
  return std::min((j + 1) * span, nt) - j * span;
}

// Builds levels 1.. of a pyramid from its nt level-0 rows (`level0`, rows `stride` apart; by
// default buf's own level 0): each pooled row is the sum of its (up to p) children, or with
// `to_means` their mean over the frames they cover (children weighted by their frame counts, so
// tails are exact), in one pass per level.
template <typename acc_t>
void build_pyramid(acc_t* buf, const Geometry& g, int64_t nt, bool to_means,
                   const acc_t* level0 = nullptr, int64_t stride = 0) {
  constexpr int64_t W = Vec<acc_t>::size();
  int64_t m = nt;
  for (int64_t l = 1; l < g.levels; ++l) {
    const int64_t m_next = (m + g.p - 1) / g.p;
    const bool from_level0 = l == 1 && level0 != nullptr;
    const acc_t* child = from_level0 ? level0 : buf + g.off[l - 1] * g.Dp;
    const int64_t cs = from_level0 ? stride : g.Dp;  // child row stride
    acc_t* parent = buf + g.off[l] * g.Dp;
    for (int64_t j = 0; j < m_next; ++j) {
      const int64_t c0 = j * g.p, nc = std::min(g.p, m - c0);
      acc_t weight[kMaxP];
      const acc_t frames = acc_t(group_count(j, g.span[l], nt));
      for (int64_t c = 0; c < nc; ++c)
        weight[c] = to_means ? acc_t(group_count(c0 + c, g.span[l - 1], nt)) / frames : acc_t(1);
      for (int64_t d = 0; d < g.Dp; d += W) {
        Vec<acc_t> sum = Vec<acc_t>(weight[0]) * Vec<acc_t>::loadu(child + c0 * cs + d);
        for (int64_t c = 1; c < nc; ++c)
          sum = at::vec::fmadd(Vec<acc_t>(weight[c]), Vec<acc_t>::loadu(child + (c0 + c) * cs + d), sum);
        sum.store(parent + j * g.Dp + d);
      }
    }
    m = m_next;
  }
}

// Per-thread scratch for one tile: q, k, v pyramids and per-level carries.
template <typename acc_t>
struct Scratch {
  // One uninitialized block: every row is written before it is read (pads included).
  std::unique_ptr<acc_t[]> block;
  acc_t *q, *k, *v, *carry;             // forward
  acc_t *dg, *carry_k, *carry_v, *dy;   // backward (carry holds the q carry)
  acc_t *probs, *window_rows;           // tile_probs' output
  std::unique_ptr<Vec<acc_t>[]> work;   // tile_probs' accumulators of one block of windows
  Scratch(const Geometry& g, bool backward)
      : work(new Vec<acc_t>[g.p * g.p * Vec<acc_t>::size()]) {
    const int64_t n = g.total_rows * g.Dp;
    const int64_t nprobs = (g.p * g.p + 1) * g.probs_stride;
    block.reset(new acc_t[(backward ? 7 : 4) * n + (backward ? kMaxP * g.Dp : 0) + nprobs]);
    acc_t* next = block.get();
    probs = next;
    window_rows = probs + g.p * g.p * g.probs_stride;
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

// Prefetches rows [r0, r1) of `next`'s tile of x, so that the next task's first reads find them
// while this task computes (they otherwise wait on memory).
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

// Prefetches the next task's rows of q, k, v into L2 while the forward computes, line by line,
// tensor by tensor, a few lines per tick() over `events` ticks spread through the task: the rows
// the next task reads first go first, and no tick issues a burst that fills the core's miss
// buffers (per-window bursts of whole frames measured slower: benchmarks/NOTES.md). The
// cursor steps by pointer: per-line index arithmetic had cost as much as the prefetches. (The
// backward, four times longer per task, measured slower with it than with prefetch_rows: NOTES.)
template <typename scalar_t>
struct NextTaskPrefetch {
  static constexpr int64_t kLine = 64, kMaxTensors = 3;
  // Per tensor: the next task's first row, the bytes from row to row, from prefetch to prefetch
  // within a row (a line, or a value where values lie farther apart), and a row's extent.
  const char* first_row[kMaxTensors];
  int64_t row_step[kMaxTensors], step[kMaxTensors], span[kMaxTensors];
  int64_t ntensors, rows, total = 0, events, issued = 0, ticks = 0;
  // The next line: `address` in the row at `row_start` of tensor `tensor`, rows_left to go.
  int64_t tensor = 0, rows_left;
  const char *row_start = nullptr, *address = nullptr;

  NextTaskPrefetch(std::initializer_list<const StridedRows<const scalar_t>*> tensors,
                   const Task& next, int64_t D, int64_t events_)
      : ntensors(static_cast<int64_t>(tensors.size())), rows(next.nt), rows_left(next.nt),
        events(std::max<int64_t>(events_, 1)) {
    TORCH_INTERNAL_ASSERT(ntensors <= kMaxTensors);
    constexpr int64_t size = sizeof(scalar_t);
    int64_t i = 0;
    for (const StridedRows<const scalar_t>* x : tensors) {
      first_row[i] = reinterpret_cast<const char*>(x->row(next.b, next.h, next.t0));
      row_step[i] = x->st * size;
      const int64_t value_step = x->sd * size;  // torch strides are >= 0
      span[i] = x->sd == 0 ? size : (D - 1) * value_step + size;
      step[i] = std::max(kLine, value_step);
      total += rows * (step[i] == kLine ? (span[i] + 2 * kLine - 2) / kLine : D);  // at most
      ++i;
    }
    if (rows > 0) start_row(first_row[0]);
  }
  void start_row(const char* row) {
    row_start = row;
    const uintptr_t line_start = reinterpret_cast<uintptr_t>(row) & ~uintptr_t(kLine - 1);
    address = step[tensor] == kLine ? reinterpret_cast<const char*>(line_start) : row;
  }
  void issue(int64_t upto) {
    while (issued < upto && tensor < ntensors) {
      prefetch_l2(address);
      ++issued;
      address += step[tensor];
      if (address < row_start + span[tensor]) continue;
      if (--rows_left > 0) {
        start_row(row_start + row_step[tensor]);
      } else if (++tensor < ntensors) {
        rows_left = rows;
        start_row(first_row[tensor]);
      }
    }
  }
  void tick() { issue(std::min(total, total * ++ticks / events)); }
  void finish() { issue(total); }
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
                  const Task& task, const Task& next, acc_t scale, const Geometry& g,
                  Scratch<acc_t>& s) {
  const int64_t b = task.b, h = task.h, t0 = task.t0, tlen = task.tlen, nt = task.nt;
  constexpr int64_t W = Vec<acc_t>::size();
  const int64_t Dp = g.Dp;
  // float rows of whole vectors: level 0 is read in place and written straight into the output.
  const bool rows_in_place = std::is_same_v<scalar_t, acc_t> && g.D == Dp;
  const bool direct_in = rows_in_place && q.sd == 1 && k.sd == 1 && v.sd == 1;
  const bool direct_out = rows_in_place && out.sd == 1;
  if (nt > 0) {
    if (direct_in) {
      const auto* q0 = reinterpret_cast<const acc_t*>(q.row(b, h, t0));
      const auto* k0 = reinterpret_cast<const acc_t*>(k.row(b, h, t0));
      const auto* v0 = reinterpret_cast<const acc_t*>(v.row(b, h, t0));
      build_pyramid(s.q, g, nt, true, q0, q.st);
      build_pyramid(s.k, g, nt, true, k0, k.st);
      build_pyramid(s.v, g, nt, true, v0, v.st);
    } else {
      gather_tile(q, k, v, b, h, t0, nt, g, s);
    }
    // Level l's rows: the pyramid in scratch, level 0 of float rows in place.
    const acc_t *Qs[kMaxLevels], *Ks[kMaxLevels], *Vs[kMaxLevels];
    int64_t qs[kMaxLevels], ks[kMaxLevels], vs[kMaxLevels], ms[kMaxLevels];
    int64_t events = 0;  // NextTaskPrefetch ticks: one per window and one per GELU row
    for (int64_t l = 0; l < g.levels; ++l) {
      const bool in_place = l == 0 && direct_in;
      ms[l] = (nt + g.span[l] - 1) / g.span[l];
      events += (ms[l] + g.p - 1) / g.p + ms[l];
      Qs[l] = in_place ? reinterpret_cast<const acc_t*>(q.row(b, h, t0)) : s.q + g.off[l] * Dp;
      Ks[l] = in_place ? reinterpret_cast<const acc_t*>(k.row(b, h, t0)) : s.k + g.off[l] * Dp;
      Vs[l] = in_place ? reinterpret_cast<const acc_t*>(v.row(b, h, t0)) : s.v + g.off[l] * Dp;
      qs[l] = in_place ? q.st : Dp; ks[l] = in_place ? k.st : Dp; vs[l] = in_place ? v.st : Dp;
    }
    NextTaskPrefetch<scalar_t> prefetch({&q, &k, &v}, next, g.D, events);
    tile_probs(Qs, qs, Ks, ks, ms, g.levels, g.p, Dp, scale, g.probs_stride, s.probs,
               s.window_rows, s.work.get());
    const int64_t ps = g.probs_stride;
    int64_t window = 0;  // tile_probs' numbering: top level first
    for (int64_t l = g.levels - 1; l >= 0; --l) {
      const int64_t m = ms[l], vstride = vs[l];
      const acc_t* V = Vs[l];
      acc_t* Y = s.carry + g.off[l] * Dp;  // this level's rows: Y, then GELU(Y) + carry
      // Y = P V, window by window.
      for (int64_t r0 = 0; r0 < m; r0 += g.p, ++window) {
        const int64_t n = std::min(g.p, m - r0);
        prefetch.tick();
        const acc_t* probs = s.probs + window;  // (j, i) at probs[(j * p + i) * ps]
        if (n == g.p && n == 2) {
          window_values<2>(probs, ps, V + r0 * vstride, vstride, Dp, Y + r0 * Dp);
        } else if (n == g.p && n == 3) {
          window_values<3>(probs, ps, V + r0 * vstride, vstride, Dp, Y + r0 * Dp);
        } else if (n == g.p && n == 4) {
          window_values<4>(probs, ps, V + r0 * vstride, vstride, Dp, Y + r0 * Dp);
        } else {
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t d = 0; d < Dp; d += W) {
              Vec<acc_t> y =
                  Vec<acc_t>(probs[j * g.p * ps]) * Vec<acc_t>::loadu(V + r0 * vstride + d);
              for (int64_t i = 1; i < n; ++i)
                y = at::vec::fmadd(Vec<acc_t>(probs[(j * g.p + i) * ps]),
                                   Vec<acc_t>::loadu(V + (r0 + i) * vstride + d), y);
              y.store(Y + (r0 + j) * Dp + d);
            }
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
        prefetch.tick();
        for (int64_t d = 0; d < Dp; d += W) {
          Vec<acc_t> o = gelu(Vec<acc_t>::loadu(Y + r * Dp + d));
          if (up) o = o + Vec<acc_t>::loadu(up + d);
          if (to_out) stream_store(o, dst + d); else o.store(dst + d);
        }
      }
    }
    prefetch.finish();
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
    {
      const acc_t *Qs[kMaxLevels], *Ks[kMaxLevels];
      int64_t strides[kMaxLevels], ms[kMaxLevels];
      for (int64_t l = 0; l < g.levels; ++l) {
        Qs[l] = s.q + g.off[l] * Dp;
        Ks[l] = s.k + g.off[l] * Dp;
        strides[l] = Dp;
        ms[l] = (nt + g.span[l] - 1) / g.span[l];
      }
      tile_probs(Qs, strides, Ks, strides, ms, g.levels, g.p, Dp, scale, g.probs_stride,
                 s.probs, s.window_rows, s.work.get());
    }
    const int64_t ps = g.probs_stride;
    int64_t window = 0;  // tile_probs' numbering: top level first
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
      for (int64_t r0 = 0; r0 < m; r0 += g.p, ++window) {
        const int64_t n = std::min(g.p, m - r0);
        if (l == 0) {  // frame-wise in step with level 0, the rest of `next` at the end
          const int64_t r1 = r0 + n < m ? r0 + n : next.nt;
          prefetch_rows(q, next, r0, r1, g.D);
          prefetch_rows(k, next, r0, r1, g.D);
          prefetch_rows(v, next, r0, r1, g.D);
          prefetch_rows(dout, next, r0, r1, g.D);
        }
        const acc_t* Qw = Q + r0 * Dp;
        const acc_t* Kw = K + r0 * Dp;
        const acc_t* Vw = V + r0 * Dp;
        const acc_t* probs = s.probs + window;  // (j, i) at probs[(j * p + i) * ps]
        // dY = dG * GELU'(Y), Y recomputed from the probabilities.
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t d = 0; d < Dp; d += W) {
            Vec<acc_t> y = Vec<acc_t>(probs[j * g.p * ps]) * Vec<acc_t>::loadu(Vw + d);
            for (int64_t i = 1; i < n; ++i)
              y = at::vec::fmadd(Vec<acc_t>(probs[(j * g.p + i) * ps]),
                                 Vec<acc_t>::loadu(Vw + i * Dp + d), y);
            (Vec<acc_t>::loadu(dG + (r0 + j) * Dp + d) * gelu_grad(y)).store(dY + j * Dp + d);
          }
        }
        // Softmax backward: dS = P * (dP - rowsum(P * dP)), with dP = dY . V; scale folded in.
        for (int64_t j = 0; j < n; ++j) {
          acc_t rowsum = 0;
          for (int64_t i = 0; i < n; ++i) {
            dscore[j][i] = dot(dY + j * Dp, Vw + i * Dp, Dp);
            rowsum += probs[(j * g.p + i) * ps] * dscore[j][i];
          }
          for (int64_t i = 0; i < n; ++i)
            dscore[j][i] = scale * probs[(j * g.p + i) * ps] * (dscore[j][i] - rowsum);
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
              gv = at::vec::fmadd(Vec<acc_t>(probs[(i * g.p + r) * ps]),
                                  Vec<acc_t>::loadu(dY + i * Dp + d), gv);
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

// Calls fn(task_at(i), next, scratch) for every task i in [0, ntasks), in parallel; `next` is
// the task the same thread runs after this one (nt = 0 if none), whose rows may be prefetched.
template <typename acc_t, typename TaskAt, typename Fn>
void for_each_task(const Geometry& g, int64_t ntasks, bool backward, const TaskAt& task_at,
                   const Fn& fn) {
  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> scratch(g, backward);
    for (int64_t task = begin; task < end; ++task) {
      const Task next = task + 1 < end ? task_at(task + 1) : Task{0, 0, 0, 0, 0};
      fn(task_at(task), next, scratch);
    }
  });
}

// Every (batch, tile, head) task of a padded batch. Consecutive tasks walk memory in order: the
// tiles of one head in turn where a head's frames are contiguous (heads_inner false: (B, H, T,
// D) tensors), the heads of one tile in turn where heads sit side by side in a row (views of a
// (B, T, 3, H, D) projection).
template <typename acc_t, typename Fn>
void for_each_tile(const Geometry& g, const at::Tensor& lengths, bool backward, const Fn& fn) {
  const int32_t* len = lengths.defined() ? lengths.data_ptr<int32_t>() : nullptr;
  auto task_at = [&](int64_t task) {
    const int64_t h = g.heads_inner ? task % g.H : (task / g.ntiles) % g.H;
    const int64_t tile = g.heads_inner ? (task / g.H) % g.ntiles : task % g.ntiles;
    const int64_t b = task / (g.H * g.ntiles);
    const int64_t n = len ? static_cast<int64_t>(len[b]) : g.T;
    const int64_t t0 = tile * g.P;
    const int64_t tlen = std::min(g.P, g.T - t0);
    return Task{b, h, t0, tlen, std::clamp<int64_t>(n - t0, 0, tlen)};
  };
  for_each_task<acc_t>(g, g.B * g.ntiles * g.H, backward, task_at, fn);
}

// Packed sequences: q, k, v are (1, H, total, D) views and `tiles` the (2, items) int32 work
// list (ops/varlen.py): item i covers rows tiles[0][i] .. + tiles[1][i] of one sequence, all
// valid. Items of 0 rows (the list's unused tail) are empty tasks.
template <typename acc_t, typename Fn>
void for_each_work_item(const Geometry& g, const at::Tensor& tiles, bool backward, const Fn& fn) {
  const int64_t items = tiles.size(1);
  const int32_t* start = tiles.data_ptr<int32_t>();
  const int32_t* count = start + items;
  auto task_at = [&](int64_t task) {
    const int64_t h = g.heads_inner ? task % g.H : task / items;
    const int64_t item = g.heads_inner ? task / g.H : task % items;
    const int64_t n = count[item];
    return Task{0, h, static_cast<int64_t>(start[item]), n, n};
  };
  for_each_task<acc_t>(g, items * g.H, backward, task_at, fn);
}

}  // namespace

void fwd_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& tiles, const FractalParams& params, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "fractal_attention_varlen_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry g(q, params, Vec<acc_t>::size());
    const StridedRows<const scalar_t> Q(q), K(k), V(v);
    const StridedRows<scalar_t> O(out);
    const acc_t scale = static_cast<acc_t>(params.scale);
    for_each_work_item<acc_t>(g, tiles, false, [&](const Task& t, const Task& next,
                                                   Scratch<acc_t>& s) {
      forward_tile<scalar_t, acc_t>(Q, K, V, O, t, next, scale, g, s);
    });
  });
}

void bwd_varlen(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                const at::Tensor& v, const at::Tensor& tiles, const FractalParams& params,
                at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "fractal_attention_varlen_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry g(q, params, Vec<acc_t>::size());
    const StridedRows<const scalar_t> dO(dout), Q(q), K(k), V(v);
    const StridedRows<scalar_t> dQ(dq), dK(dk), dV(dv);
    const acc_t scale = static_cast<acc_t>(params.scale);
    for_each_work_item<acc_t>(g, tiles, true, [&](const Task& t, const Task& next,
                                                  Scratch<acc_t>& s) {
      backward_tile<scalar_t, acc_t>(dO, Q, K, V, dQ, dK, dV, t, next, scale, g, s);
    });
  });
}

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
