// CPU entry points of fractal attention: the baseline (DEFAULT) build of the kernels, and the
// dispatch to the widest instruction-set variant that ATen reports for this CPU. ATen's report
// honours ATEN_CPU_CAPABILITY (default / avx2 / avx512), which the tests use to run each variant.
#include <ATen/Version.h>

#include <string>

#include "cpu/fractal_attention_cpu_isa.h"

#define CPU_CAPABILITY DEFAULT
#include "cpu/fractal_attention_cpu_kernel.h"

namespace mstr_kernels {
namespace {

enum class Variant { kDefault, kAvx2, kAvx512 };

Variant cpu_variant() {
  static const Variant chosen = [] {
#if MSTR_CPU_X86_VARIANTS
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return Variant::kAvx512;
    if (capability == "AVX2") return Variant::kAvx2;
#endif
    return Variant::kDefault;
  }();
  return chosen;
}

}  // namespace

void fractal_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& lengths, const FractalParams& params,
                               at::Tensor& out) {
  switch (cpu_variant()) {
#if MSTR_CPU_X86_VARIANTS
    case Variant::kAvx512: return cpu_kernels::AVX512::fwd(q, k, v, lengths, params, out);
    case Variant::kAvx2: return cpu_kernels::AVX2::fwd(q, k, v, lengths, params, out);
#endif
    default: return cpu_kernels::DEFAULT::fwd(q, k, v, lengths, params, out);
  }
}

void fractal_attention_bwd_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& lengths,
                               const FractalParams& params, at::Tensor& dq, at::Tensor& dk,
                               at::Tensor& dv) {
  switch (cpu_variant()) {
#if MSTR_CPU_X86_VARIANTS
    case Variant::kAvx512:
      return cpu_kernels::AVX512::bwd(dout, q, k, v, lengths, params, dq, dk, dv);
    case Variant::kAvx2: return cpu_kernels::AVX2::bwd(dout, q, k, v, lengths, params, dq, dk, dv);
#endif
    default: return cpu_kernels::DEFAULT::bwd(dout, q, k, v, lengths, params, dq, dk, dv);
  }
}

void fractal_attention_varlen_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& tiles,
                                      const FractalParams& params, at::Tensor& out) {
  switch (cpu_variant()) {
#if MSTR_CPU_X86_VARIANTS
    case Variant::kAvx512: return cpu_kernels::AVX512::fwd_varlen(q, k, v, tiles, params, out);
    case Variant::kAvx2: return cpu_kernels::AVX2::fwd_varlen(q, k, v, tiles, params, out);
#endif
    default: return cpu_kernels::DEFAULT::fwd_varlen(q, k, v, tiles, params, out);
  }
}

void fractal_attention_varlen_bwd_cpu(const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& tiles, const FractalParams& params,
                                      at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  switch (cpu_variant()) {
#if MSTR_CPU_X86_VARIANTS
    case Variant::kAvx512:
      return cpu_kernels::AVX512::bwd_varlen(dout, q, k, v, tiles, params, dq, dk, dv);
    case Variant::kAvx2:
      return cpu_kernels::AVX2::bwd_varlen(dout, q, k, v, tiles, params, dq, dk, dv);
#endif
    default: return cpu_kernels::DEFAULT::bwd_varlen(dout, q, k, v, tiles, params, dq, dk, dv);
  }
}

}  // namespace mstr_kernels
