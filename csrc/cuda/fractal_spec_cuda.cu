// Dispatch of the forward and backward specialised on (p, levels, D) (fractal_spec_kernel.cuh):
// covers the configurations listed in fractal_spec_configs.h whose tensors allow 16-byte copies;
// the general kernels (fractal_attention_cuda.cu) take everything else.
// For A/B measurements (benchmarks/cuda_variants_ab.py), read at each call so that one process
// can alternate: MSTR_KERNELS_CUDA_GENERAL=1 makes every input take the general kernels;
// MSTR_KERNELS_CUDA_VARIANT=memory|arithmetic|gelu-erf runs a variant of the specialised
// kernels (specialised::Variant; wrong results by design, except gelu-erf) and is refused for
// inputs other than bfloat16, p=3, levels=4, D=64 with 16-byte aligned rows.
#include <cstdlib>
#include <cstring>

#include "fractal_spec_kernel.cuh"
#include "fractal_spec_launch.h"

namespace mstr_kernels {
namespace {

template <typename T>
bool vectorizable(const at::Tensor& x) {
  constexpr int W = tile::VecWidth<T>::value;
  return x.stride(3) == 1 && x.stride(0) % W == 0 && x.stride(1) % W == 0 &&
         x.stride(2) % W == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % tile::kVecBytes == 0;
}

bool general_forced() {
  const char* env = std::getenv("MSTR_KERNELS_CUDA_GENERAL");
  return env != nullptr && std::strcmp(env, "0") != 0 && env[0] != '\0';
}

specialised::Variant requested_variant() {
  using specialised::Variant;
  const char* env = std::getenv("MSTR_KERNELS_CUDA_VARIANT");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "full") == 0) return Variant::kFull;
  if (std::strcmp(env, "memory") == 0) return Variant::kMemory;
  if (std::strcmp(env, "arithmetic") == 0) return Variant::kArithmetic;
  if (std::strcmp(env, "gelu-erf") == 0) return Variant::kGeluErf;
  TORCH_CHECK(false, "MSTR_KERNELS_CUDA_VARIANT=", env,
              ": expected full, memory, arithmetic or gelu-erf");
}

void check_variant_launched(bool launched) {
  TORCH_CHECK(launched, "MSTR_KERNELS_CUDA_VARIANT=", std::getenv("MSTR_KERNELS_CUDA_VARIANT"),
              " runs only bfloat16 inputs with p=3, levels=4, D=64, rows aligned to 16 bytes");
}

template <typename T>
bool dispatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& lengths, const FractalParams& prm, at::Tensor& out) {
  if (!(vectorizable<T>(q) && vectorizable<T>(k) && vectorizable<T>(v) && vectorizable<T>(out))) {
    return false;
  }
#define MSTR_SPEC_CASE_PL(pp, ll)                                                    \
  if (prm.p == pp && prm.levels == ll) {                                             \
    return specialised::launch_forward<T, pp, ll>(q, k, v, lengths, prm, out);              \
  }
  MSTR_SPEC_PL(MSTR_SPEC_CASE_PL)
#undef MSTR_SPEC_CASE_PL
  return false;
}

template <typename T>
bool dispatch_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const at::Tensor& lengths, const FractalParams& prm,
                       at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  if (!(vectorizable<T>(dout) && vectorizable<T>(q) && vectorizable<T>(k) &&
        vectorizable<T>(v) && vectorizable<T>(dq) && vectorizable<T>(dk) &&
        vectorizable<T>(dv))) {
    return false;
  }
#define MSTR_SPEC_CASE_PL(pp, ll)                                                             \
  if (prm.p == pp && prm.levels == ll) {                                                      \
    return specialised::launch_backward<T, pp, ll>(dout, q, k, v, lengths, prm, dq, dk, dv);  \
  }
  MSTR_SPEC_PL(MSTR_SPEC_CASE_PL)
#undef MSTR_SPEC_CASE_PL
  return false;
}

}  // namespace

bool fractal_attention_fwd_cuda_specialised(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& lengths,
                                            const FractalParams& params, at::Tensor& out) {
  if (general_forced()) return false;
  if (const auto variant = requested_variant(); variant != specialised::Variant::kFull) {
    using T = c10::BFloat16;
    check_variant_launched(
        q.scalar_type() == at::kBFloat16 && vectorizable<T>(q) && vectorizable<T>(k) &&
        vectorizable<T>(v) && vectorizable<T>(out) &&
        specialised::launch_forward_variant(variant, q, k, v, lengths, params, out));
    return true;
  }
  switch (q.scalar_type()) {
    case at::kFloat: return dispatch<float>(q, k, v, lengths, params, out);
    case at::kHalf: return dispatch<c10::Half>(q, k, v, lengths, params, out);
    case at::kBFloat16: return dispatch<c10::BFloat16>(q, k, v, lengths, params, out);
    default: return false;
  }
}

bool fractal_attention_bwd_cuda_specialised(const at::Tensor& dout, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& lengths,
                                            const FractalParams& params, at::Tensor& dq,
                                            at::Tensor& dk, at::Tensor& dv) {
  if (general_forced()) return false;
  if (const auto variant = requested_variant(); variant != specialised::Variant::kFull) {
    using T = c10::BFloat16;
    check_variant_launched(
        q.scalar_type() == at::kBFloat16 && vectorizable<T>(dout) && vectorizable<T>(q) &&
        vectorizable<T>(k) && vectorizable<T>(v) && vectorizable<T>(dq) && vectorizable<T>(dk) &&
        vectorizable<T>(dv) &&
        specialised::launch_backward_variant(variant, dout, q, k, v, lengths, params, dq, dk, dv));
    return true;
  }
  switch (q.scalar_type()) {
    case at::kFloat: return dispatch_backward<float>(dout, q, k, v, lengths, params, dq, dk, dv);
    case at::kHalf:
      return dispatch_backward<c10::Half>(dout, q, k, v, lengths, params, dq, dk, dv);
    case at::kBFloat16:
      return dispatch_backward<c10::BFloat16>(dout, q, k, v, lengths, params, dq, dk, dv);
    default: return false;
  }
}

}  // namespace mstr_kernels
