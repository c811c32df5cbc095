// Vector helpers of the fused CPU kernels (fractal_attention_cpu_kernel.h): row loads and
// stores, dot products, horizontal sums, the GELU and its derivative, prefetch. Compiled once per
// instruction set like the kernels: the including file defines CPU_CAPABILITY first.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mstr_kernels {
namespace cpu_kernels {
namespace CPU_CAPABILITY {
namespace {

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

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

// One cache line into L2. g++ 12 drops __builtin_prefetch from these kernels (its IPA passes
// remove them; objdump showed none), so x86 gets the instruction itself.
inline void prefetch_l2(const char* address) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*address));
#else
  __builtin_prefetch(address, 0, 2);
#endif
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu_kernels
}  // namespace mstr_kernels
