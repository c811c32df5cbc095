// Which instruction-set variants of the CPU kernels this build compiles. The x86 variants are
// compiled under `#pragma GCC target` (GCC on x86-64 only), so the package needs no -march flag:
// the dispatcher in fractal_attention_cpu.cpp picks the best variant the running CPU supports.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MSTR_CPU_X86_VARIANTS 1
#else
#define MSTR_CPU_X86_VARIANTS 0
#endif

#include "fractal_attention.h"

namespace mstr_kernels {
namespace cpu_kernels {

#define MSTR_DECLARE_CPU_VARIANT(ISA)                                                          \
  namespace ISA {                                                                              \
  void fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,                      \
           const at::Tensor& lengths, const FractalParams& params, at::Tensor& out);           \
  void bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,                   \
           const at::Tensor& v, const at::Tensor& lengths, const FractalParams& params,        \
           at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);                                    \
  void fwd_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,               \
                  const at::Tensor& tiles, const FractalParams& params, at::Tensor& out);      \
  void bwd_varlen(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,            \
                  const at::Tensor& v, const at::Tensor& tiles, const FractalParams& params,   \
                  at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);                             \
  }

MSTR_DECLARE_CPU_VARIANT(DEFAULT)
#if MSTR_CPU_X86_VARIANTS
MSTR_DECLARE_CPU_VARIANT(AVX2)
MSTR_DECLARE_CPU_VARIANT(AVX512)
#endif
#undef MSTR_DECLARE_CPU_VARIANT

}  // namespace cpu_kernels
}  // namespace mstr_kernels
