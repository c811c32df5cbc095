// Device helpers of the kernels specialised on (p, levels, D) (fractal_spec_tile.cuh,
// fractal_spec_bwd_tile.cuh): compile-time loops, fast exp2 / reciprocal / tanh, the two GELU
// forms, 8-channel row loads and stores (raw T rows and fp32 pooled rows), cp.async copies. Each
// has a host version, for the emulation in tests/cuda_host.
#pragma once

#include <type_traits>

#include "fractal_tile_common.cuh"

namespace mstr_kernels {
namespace specialised {

using tile::float4;
using tile::kVecBytes;
using tile::TensorRef;
using tile::uint4;

constexpr int ipow(int b, int e) { return e == 0 ? 1 : b * ipow(b, e - 1); }
constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

// f(std::integral_constant<int, i>{}) for i = A .. B-1: compile-time loop indices.
template <int A, int B, class Fn>
MSTR_DEV void static_for(Fn&& fn) {
  if constexpr (A < B) {
    fn(std::integral_constant<int, A>{});
    static_for<A + 1, B>(fn);
  }
}

constexpr int kChannels = 8;                 // channels per thread
constexpr int kSmemTwoBlocks = 113 * 1024;   // per block, for 2 blocks per SM (sm_90: 228 KiB)
constexpr int kSmemLimit = 227 * 1024;       // sm_90 opt-in per block

enum class Gelu { kErf, kTanh };  // kTanh: hardware tanh form, bfloat16 only

// What a kernel does (A/B of the design in the GPU window; only kFull is correct): kMemory the
// copies in and the output rows out (each output row its input row), kArithmetic everything
// but the global copies and stores, kGeluErf the full kernel with the erf-form GELU.
enum class Variant { kFull, kMemory, kArithmetic, kGeluErf };

// ---- arithmetic -----------------------------------------------------------------------------

MSTR_DEV float ex2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

MSTR_DEV float rcp(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / x;
#endif
}

MSTR_DEV float tanh_fast(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return tanhf(x);
#endif
}

// GELU, erf form: Abramowitz-Stegun 7.1.26 for erfc (|error| < 1.5e-7), the negative tail as
// poly * exp(-z^2) directly (no cancellation).
// GELU(x) = x Phi(x); these give Phi.
MSTR_DEV float gelu_erf_phi(float x) {
  const float z = fabsf(x) * 0.70710678118654752f;
  const float t = rcp(fmaf(0.3275911f, z, 1.0f));
  float poly = 1.061405429f;
  poly = fmaf(poly, t, -1.453152027f);
  poly = fmaf(poly, t, 1.421413741f);
  poly = fmaf(poly, t, -0.284496736f);
  poly = fmaf(poly, t, 0.254829592f);
  const float tail = 0.5f * poly * t * ex2(-z * z * 1.4426950408889634f);  // erfc(z) / 2
  return x >= 0.0f ? 1.0f - tail : tail;
}

// GELU, tanh form: x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2. Its error (2.5e-4 of the
// norm of GELU', 9e-4 at most) is below bfloat16's own rounding but not float16's (whose
// gradients it takes past SPEC section 1's bound) nor float32's: used for bfloat16 only.
MSTR_DEV float gelu_tanh_phi(float x) {
  const float u = x * fmaf(0.0356774081f, x * x, 0.7978845608f);
  return fmaf(0.5f, tanh_fast(u), 0.5f);
}

// GELU(x) + add (one FMA: the sum of the levels rides on GELU's last multiply).
template <Gelu kForm>
MSTR_DEV float gelu_add(float x, float add) {
  return fmaf(x, kForm == Gelu::kTanh ? gelu_tanh_phi(x) : gelu_erf_phi(x), add);
}

template <Gelu kForm>
MSTR_DEV float gelu(float x) {
  return x * (kForm == Gelu::kTanh ? gelu_tanh_phi(x) : gelu_erf_phi(x));
}

// ---- division by a run-time constant ---------------------------------------------------------

// n / d for 0 <= n < 2**31 and 1 <= d < 2**31 as one 64-bit multiply and a shift, the
// multiplier set on the host (the kernels divide the item index by H and the tiles per
// sequence: an integer division is ~20 instructions). With L = ceil(log2 d),
// mul = ceil(2**(31+L) / d) < 2**32 and n * mul / 2**(31+L) = n / d + err, 0 <= err < 2**-L
// <= 1/d, while frac(n / d) <= 1 - 1/d: the floor is n / d's.
struct UDivisor {
  unsigned d = 1, mul = 1u << 31, shift = 31;
  MSTR_DEV unsigned div(unsigned n) const {
    return unsigned((static_cast<unsigned long long>(n) * mul) >> shift);
  }
};

inline UDivisor make_divisor(unsigned d) {
  UDivisor u;
  if (d == 0) return u;  // no items: never divided by
  unsigned L = 0;
  while ((1ull << L) < d) ++L;
  u.d = d;
  u.shift = 31 + L;
  u.mul = unsigned(((1ull << u.shift) + d - 1) / d);
  return u;
}

// ---- shared-memory rows ---------------------------------------------------------------------

MSTR_DEV float bits_to_float(unsigned w) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(w);
#else
  float f;
  std::memcpy(&f, &w, 4);
  return f;
#endif
}

// Raw rows (T, as in global memory): lane c's channels are the vectors c + G*u, u < U.
// bfloat16 -> float is a shift or a mask of each 32-bit word (one instruction per value).
template <class Cfg, typename T>
MSTR_DEV void load_raw(const T* row, int c, float (&x)[kChannels]) {
#pragma unroll
  for (int u = 0; u < Cfg::U; ++u) {
    const uint4 raw = *reinterpret_cast<const uint4*>(row + (c + Cfg::G * u) * Cfg::W);
    if constexpr (sizeof(T) == 4) {
      float4 f;
      memcpy(&f, &raw, kVecBytes);
      x[4 * u] = f.x; x[4 * u + 1] = f.y; x[4 * u + 2] = f.z; x[4 * u + 3] = f.w;
    } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        x[2 * e] = bits_to_float(words[e] << 16);
        x[2 * e + 1] = bits_to_float(words[e] & 0xffff0000u);
      }
    } else {
      T tmp[8];
      memcpy(tmp, &raw, kVecBytes);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = static_cast<float>(tmp[e]);
    }
  }
}

// 16 bytes to global memory: `v`, or zeros when !valid, as one 16-byte store either way (a
// predicated pair rather than four selects; the compiler split selected words into 4-byte
// stores).
MSTR_DEV void store16(void* dst, const uint4& v, bool valid) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
      " @p st.global.v4.b32 [%0], {%1, %2, %3, %4};\n"
      " @!p st.global.v4.b32 [%0], {%6, %6, %6, %6};\n}\n" ::"l"(dst),
      "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(int(valid)), "r"(0u));
#else
  const uint4 out = valid ? v : uint4{0u, 0u, 0u, 0u};
  std::memcpy(dst, &out, kVecBytes);
#endif
}

// One output row of a lane: `lane_row` is the row's first element of the lane's channels (the
// row + c * W for lane c); the values, or zeros (padding frames), as whole 16-byte vectors.
template <class Cfg, typename T>
MSTR_DEV void store_out(T* lane_row, const float (&x)[kChannels], bool valid) {
#pragma unroll
  for (int u = 0; u < Cfg::U; ++u) {
    T tmp[Cfg::W];
#pragma unroll
    for (int e = 0; e < Cfg::W; ++e) tmp[e] = static_cast<T>(x[u * Cfg::W + e]);
    uint4 raw;
    memcpy(&raw, tmp, kVecBytes);
    store16(lane_row + Cfg::G * u * Cfg::W, raw, valid);
  }
}

// Pooled fp32 rows: lane c's 8 values are the quads c and c + G (conflict-free 16-byte access
// by the 8 lanes of a quarter warp).
template <class Cfg>
MSTR_DEV void load_pooled(const float* row, int c, float (&x)[kChannels]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float4 f = reinterpret_cast<const float4*>(row)[c + Cfg::G * h];
    x[4 * h] = f.x; x[4 * h + 1] = f.y; x[4 * h + 2] = f.z; x[4 * h + 3] = f.w;
  }
}

template <class Cfg>
MSTR_DEV void store_pooled(float* row, int c, const float (&x)[kChannels]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    reinterpret_cast<float4*>(row)[c + Cfg::G * h] =
        float4{x[4 * h], x[4 * h + 1], x[4 * h + 2], x[4 * h + 3]};
  }
}

// ---- async copies ---------------------------------------------------------------------------

// 16 bytes global -> shared, zero-filled when !valid (the source is then not read).
MSTR_DEV void copy16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__)
  const unsigned dst_s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_s), "l"(src), "r"(n));
#else
  if (valid) {
    std::memcpy(dst, src, kVecBytes);
  } else {
    std::memset(dst, 0, kVecBytes);
  }
#endif
}

MSTR_DEV void copy_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int kPending>
MSTR_DEV void copy_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

}  // namespace specialised
}  // namespace mstr_kernels
