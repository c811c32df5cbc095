// CPU entry points of fractal attention: the baseline (DEFAULT) build of the kernels, and the
// dispatch to the widest instruction-set variant that ATen reports for this CPU. ATen's report
// honours ATEN_CPU_CAPABILITY (default / avx2 / avx512), which the tests use to run each variant.
#include <ATen/Version.h>

#include <cstdint>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// The outputs are fresh allocations that the kernels touch first; at 4 KiB pages the page faults
// of a 33.5 MB output cost ~8 ms on the development machine (as long as the whole forward's
// compute), with transparent huge pages ~1.3 ms. Advising huge pages before the first touch is
// harmless where the memory is already mapped or THP is off.
void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const size_t bytes = static_cast<size_t>(out.numel()) * out.element_size();
  if (bytes < 4 * kHuge || !out.is_non_overlapping_and_dense()) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)out;
#endif
}

}  // namespace

void fractal_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& lengths, const FractalParams& params,
                               at::Tensor& out) {
  advise_huge_pages(out);
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
  for (const at::Tensor* grad : {&dq, &dk, &dv}) advise_huge_pages(*grad);
  switch (cpu_variant()) {
#if MSTR_CPU_X86_VARIANTS
    case Variant::kAvx512:
      return cpu_kernels::AVX512::bwd(dout, q, k, v, lengths, params, dq, dk, dv);
    case Variant::kAvx2: return cpu_kernels::AVX2::bwd(dout, q, k, v, lengths, params, dq, dk, dv);
#endif
    default: return cpu_kernels::DEFAULT::bwd(dout, q, k, v, lengths, params, dq, dk, dv);
  }
}

}  // namespace mstr_kernels
