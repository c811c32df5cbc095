// Dispatch of the forward and backward specialised on (p, levels, D) (fractal_spec_kernel.cuh):
// covers the configurations listed in fractal_spec_configs.h whose tensors allow 16-byte copies;
// the general kernels (fractal_attention_cuda.cu) take everything else.
// MSTR_KERNELS_CUDA_GENERAL=1 in the environment (read once) makes every input take the general
// kernels (for A/B measurements).
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
  static const bool forced = [] {
    const char* env = std::getenv("MSTR_KERNELS_CUDA_GENERAL");
    return env != nullptr && std::strcmp(env, "0") != 0 && env[0] != '\0';
  }();
  return forced;
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
