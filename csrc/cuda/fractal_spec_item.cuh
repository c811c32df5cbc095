// The specialised kernels' item machinery (fractal_spec_tile.cuh, fractal_spec_bwd_tile.cuh):
// the compile-time mapping of one configuration (Config), the forward's arguments, where an
// item lies (Item, locate), the cp.async copies of an item's rows into shared memory and the
// persistent loop over a block's items (two stages when they fit). Host-compilable, as the
// tile code, for the emulation in tests/cuda_host.
#pragma once

#include "fractal_spec_configs.h"
#include "fractal_spec_device.cuh"

namespace mstr_kernels {
namespace specialised {

// kInputs tensors copied per item (forward: q, k, v; backward: q, k, v, dout), kOutRows pooled
// output arrays (forward: GELU(Y); backward: the pooled shares of dq, dk, dv).
template <typename T, int kP, int kL, int kD, int kInputs = 3, int kOutRows = 1,
          Variant kVariant = Variant::kFull>
struct Config {
  static_assert(kD % (2 * kChannels) == 0 || kD == kChannels * 4, "D in {32, 64, 128}");
  static constexpr int p = kP, levels = kL, D = kD, inputs = kInputs, out_rows = kOutRows;
  static constexpr int P = ipow(kP, kL);            // frames per tile
  static constexpr int M = tiles_per_item(P);       // tiles per item
  static constexpr int F = P * M;                   // frames per item
  static constexpr int G = kD / kChannels;          // lanes per window: 4, 8 or 16
  static constexpr int W = kVecBytes / int(sizeof(T));  // elements per 16-byte vector
  static constexpr int U = kChannels / W;           // vectors per thread and row: 1 or 2
  static constexpr int VPR = kD / W;                // vectors per row
  static constexpr int N1 = F / kP;                 // level-1 windows
  // Pooled levels l = 2..L: rows(l) = F / p**(l-1) rows of S(l) = p**(l-1) frames, the first at
  // pool_off(l) in the pooled arrays; windows(l) windows.
  static constexpr int S(int l) { return ipow(kP, l - 1); }
  static constexpr int rows(int l) { return F / ipow(kP, l - 1); }
  static constexpr int windows(int l) { return rows(l) / kP; }
  static constexpr int pool_off(int l) {
    int off = 0;
    for (int m = 2; m < l; ++m) off += rows(m);
    return off;
  }
  static constexpr int R_pool = pool_off(kL + 1);
  static constexpr int win_off(int l) {  // first window of level l among the pooled windows
    int off = 0;
    for (int m = 2; m < l; ++m) off += windows(m);
    return off;
  }
  static constexpr int pool_windows = win_off(kL + 1);
  // Shared memory: raw q, k, v per stage (as in global memory), then fp32 pooled sums of q, k,
  // v and the pooled GELU rows (R_pool rows of D floats each).
  static constexpr int raw_bytes = kInputs * F * kD * int(sizeof(T));
  static constexpr int pooled_floats = (kInputs + kOutRows) * (R_pool > 0 ? R_pool : 1) * kD;
  static constexpr int pooled_bytes = pooled_floats * 4;
  static constexpr int stages = 2 * raw_bytes + pooled_bytes <= kSmemTwoBlocks ? 2
                                : raw_bytes + pooled_bytes <= kSmemTwoBlocks    ? 1
                                : 2 * raw_bytes + pooled_bytes <= kSmemLimit    ? 2
                                                                                : 1;
  static constexpr int smem_bytes = stages * raw_bytes + pooled_bytes;
  static constexpr bool fits = smem_bytes <= kSmemLimit;
  static constexpr int min_blocks = smem_bytes <= kSmemTwoBlocks ? 2 : 1;
  static constexpr int max_threads = min_blocks == 2 ? 256 : 512;
  static constexpr int items1 = N1 * G;  // level-1 (window, lane) items
  static constexpr int rounds1 = cdiv(items1, max_threads);
  static constexpr int threads = cdiv(cdiv(items1, rounds1), 32) * 32;
  static constexpr int items_pool = pool_windows * G;
  static constexpr int rounds_pool = cdiv(items_pool, threads);
  static constexpr Variant variant = kVariant;
  // The tanh form for bfloat16 only: float16's own rounding is 4x finer than that form's error,
  // and its gradients would leave SPEC section 1's bound.
  static constexpr Gelu gelu = std::is_same_v<T, c10::BFloat16> && kVariant != Variant::kGeluErf
                                   ? Gelu::kTanh : Gelu::kErf;
};

// Whether this kernel variant writes its outputs to global memory: all but kArithmetic, which
// keeps its stores behind a condition false at run time (T >= 0) that the compiler cannot
// remove, so that the arithmetic feeding them stays.
template <class Cfg, class Args>
MSTR_DEV bool writes_outputs(const Args& a) {
  return Cfg::variant != Variant::kArithmetic || a.T_len < 0;
}

template <typename T>
struct ForwardArgs {
  TensorRef<const T> q, k, v;
  TensorRef<T> out;
  const int* lengths;  // nullptr: every frame is valid
  // Packed sequences (nullptr: padded batch): the (2, n_super) work list, entry e an item of
  // work[n_super + e] <= F valid frames from packed row work[e] (B = 1, n_super = entries).
  const int* work = nullptr;
  int64_t T_len;
  int H, n_super, n_items;  // n_items = B * H * n_super < 2**31 (checked by the launcher)
  UDivisor by_H, by_super;  // set_divisors
  float scale_log2;  // scale * log2(e): softmax in base 2
  MSTR_DEV const TensorRef<const T>& input(int x) const { return x == 0 ? q : (x == 1 ? k : v); }
};

// Where an item lies: (b, super-tile, h) with h fastest (neighbouring blocks read neighbouring
// memory of a (B, T, 3, H, D) projection).
struct Item {
  int64_t b, h, t0;
  int frames;  // frames of the item inside the sequence (<= F)
  int n;       // valid frames: 0 <= n <= frames
};

// A value of the packed-sequence work list (read-only for the whole launch).
MSTR_DEV int work_value(const int* work, unsigned i) {
#if defined(__CUDA_ARCH__)
  return __ldg(work + i);
#else
  return work[i];
#endif
}

template <class Cfg, class Args>
MSTR_DEV Item locate(const Args& a, int item) {
  Item it;
  const unsigned rest = a.by_H.div(unsigned(item));
  it.h = unsigned(item) - rest * unsigned(a.H);
  const unsigned b = a.by_super.div(rest);
  const unsigned s = rest - b * unsigned(a.n_super);
  it.b = b;  // packed sequences: 0 (n_super = entries)
  // Packed: the entry's rows end the item (the rows past them are other sequences'), all valid.
  const bool packed = a.work != nullptr;
  it.t0 = packed ? unsigned(work_value(a.work, s)) : s * Cfg::F;  // >= 0 (checked)
  const int64_t left = packed ? work_value(a.work, unsigned(a.n_super) + s) : a.T_len - it.t0;
  it.frames = int(left < Cfg::F ? left : Cfg::F);
  const int64_t len = packed ? it.t0 + it.frames : a.lengths ? int64_t(a.lengths[it.b]) : a.T_len;
  const int64_t valid = len - it.t0;
  it.n = int(valid < 0 ? 0 : (valid > it.frames ? it.frames : valid));
  return it;
}

// The divisors of locate, once a's H and n_super are set (host).
template <class Args>
inline void set_divisors(Args& a) {
  a.by_H = make_divisor(unsigned(a.H));
  a.by_super = make_divisor(unsigned(a.n_super));
}

template <typename T>
MSTR_DEV const T* row_ptr(const TensorRef<const T>& x, const Item& it, int t) {
  return x.ptr + it.b * x.sb + it.h * x.sh + (it.t0 + t) * x.st;
}

// The block's thread index, read anew (not a value the compiler may keep from before a loop),
// below the block size (so that rounds before the last need no bound check).
template <class Cfg, class Block>
MSTR_DEV int thread_index(const Block& blk) {
#if defined(__CUDA_ARCH__)
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  __builtin_assume(t >= 0 && t < Cfg::threads);
  return t;
#else
  return blk.tid;
#endif
}

// The item's q, k, v rows into `raw` (tensor-major, rows of D), VPR threads per row; rows of
// frames past the valid length are zero-filled (their source address is not read).
template <class Cfg, class Args, typename T, class Block>
MSTR_DEV void issue_copies(const Block& blk, const Args& a, T* raw, const Item& it) {
  if constexpr (Cfg::variant == Variant::kArithmetic) return;  // no global loads
  constexpr int F = Cfg::F, D = Cfg::D, VPR = Cfg::VPR;
  static_assert(Cfg::threads % VPR == 0, "whole rows per round");
  constexpr int rows_per_round = Cfg::threads / VPR;
  // The thread index re-read: the offsets derived from it are not kept across the item loop
  // (in the backward, at its register cap, they were spilled).
  const int tid = thread_index<Cfg>(blk);
  const int vec = tid % VPR, t_first = tid / VPR;
#pragma unroll
  for (int x = 0; x < Cfg::inputs; ++x) {
    const TensorRef<const T>& src = a.input(x);
    const T* from = row_ptr(src, it, t_first) + vec * Cfg::W;
    const int64_t step = int64_t(rows_per_round) * src.st;
    T* dst = raw + (x * F + t_first) * D + vec * Cfg::W;
#pragma unroll
    for (int r = 0; r < cdiv(F, rows_per_round); ++r) {
      const int t = t_first + r * rows_per_round;
      if (F % rows_per_round == 0 || t < F) copy16(dst + r * rows_per_round * D, from, t < it.n);
      from += step;
    }
  }
}

// Shared memory of a block: `stages` raw buffers, then the pooled arrays.
template <class Cfg, typename T>
MSTR_DEV T* raw_stage(unsigned char* smem, int stage) {
  return reinterpret_cast<T*>(smem + stage * Cfg::raw_bytes);
}

template <class Cfg>
MSTR_DEV float* pooled_area(unsigned char* smem) {
  return reinterpret_cast<float*>(smem + Cfg::stages * Cfg::raw_bytes);
}

// A block's items first, first + stride, ...: the next item's copies are issued before this
// one's arithmetic (two stages), or after it (one stage); item_fn(raw, pooled, Item, index)
// does one. kRelocate: the item's position is recomputed each iteration rather than carried
// over from the previous one's copies (fewer registers live across the item: the backward).
template <class Cfg, typename T, bool kRelocate = false, class Args, class Block, class ItemFn>
MSTR_DEV void item_loop(const Block& blk, const Args& a, unsigned char* smem, int first, int stride,
                        ItemFn&& item_fn) {
  if (first >= a.n_items) return;
  float* pooled = pooled_area<Cfg>(smem);
  Item it = locate<Cfg>(a, first);
  issue_copies<Cfg>(blk, a, raw_stage<Cfg, T>(smem, 0), it);
  copy_commit();
  int stage = 0;
  for (int item = first; item < a.n_items; item += stride) {
    const int next = item + stride;
    if constexpr (kRelocate) it = locate<Cfg>(a, item);
    const Item it_next = locate<Cfg>(a, next < a.n_items ? next : item);
    if constexpr (Cfg::stages == 2) {
      if (next < a.n_items) issue_copies<Cfg>(blk, a, raw_stage<Cfg, T>(smem, stage ^ 1), it_next);
      copy_commit();
      copy_wait<1>();
    } else {
      copy_wait<0>();
    }
    blk.sync();
    item_fn(raw_stage<Cfg, T>(smem, stage), pooled, it, item);
    blk.sync();
    if constexpr (Cfg::stages == 2) {
      stage ^= 1;
    } else {
      if (next < a.n_items) issue_copies<Cfg>(blk, a, raw_stage<Cfg, T>(smem, 0), it_next);
      copy_commit();
    }
    if constexpr (!kRelocate) it = it_next;
  }
}

}  // namespace specialised
}  // namespace mstr_kernels
