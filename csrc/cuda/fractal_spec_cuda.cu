// CUDA launcher of the forward specialised on (p, levels, D) (fractal_spec_tile.cuh): one
// persistent launch for the whole batch, as many blocks as fit on the device. Covers the
// configurations listed in fractal_spec_configs.h whose inputs allow 16-byte copies; the general
// kernels (fractal_attention_cuda.cu) take everything else. MSTR_CUDA_GENERAL=1 in the
// environment makes every input take the general kernels (for A/B measurements).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "fractal_spec_configs.h"
#include "fractal_spec_launch.h"
#include "fractal_spec_tile.cuh"

namespace mstr_kernels {
namespace {

using tile::TensorRef;

struct SpecBlock {
  int tid;
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  template <int N>
  __device__ __forceinline__ void xor_add(float (&v)[N], int mask) const {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], mask);
  }
};

template <class Cfg, typename T>
__global__ void __launch_bounds__(Cfg::threads, Cfg::min_blocks)
    fractal_spec_fwd_kernel(const __grid_constant__ spec::ForwardArgs<T> args) {
  extern __shared__ float4 smem_raw[];  // float4: 16-byte alignment
  const SpecBlock blk{int(threadIdx.x)};
  spec::forward_block<Cfg>(blk, args, reinterpret_cast<unsigned char*>(smem_raw),
                           int(blockIdx.x), int(gridDim.x));
}

template <typename T>
bool vectorizable(const at::Tensor& x) {
  constexpr int W = tile::VecWidth<T>::value;
  return x.stride(3) == 1 && x.stride(0) % W == 0 && x.stride(1) % W == 0 &&
         x.stride(2) % W == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % tile::kVecBytes == 0;
}

template <typename T>
TensorRef<T> ref(const at::Tensor& x) {
  return TensorRef<T>{reinterpret_cast<T*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(2),
                      x.stride(3), true};
}

bool general_forced() {
  static const bool forced = [] {
    const char* env = std::getenv("MSTR_CUDA_GENERAL");
    return env != nullptr && std::strcmp(env, "0") != 0 && env[0] != '\0';
  }();
  return forced;
}

template <class Cfg, typename T>
bool launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& lengths, const FractalParams& prm, at::Tensor& out) {
  if constexpr (!Cfg::fits) {
    return false;
  } else {
    const int device = q.get_device();
    const cudaDeviceProp* props = at::cuda::getDeviceProperties(device);
    if (int64_t(props->sharedMemPerBlockOptin) < Cfg::smem_bytes) return false;
    spec::ForwardArgs<T> a;
    a.q = ref<const T>(q);
    a.k = ref<const T>(k);
    a.v = ref<const T>(v);
    a.out = ref<T>(out);
    a.lengths = lengths.defined() ? lengths.data_ptr<int>() : nullptr;
    a.T_len = q.size(2);
    const int64_t n_super = (a.T_len + Cfg::F - 1) / Cfg::F;
    const int64_t n_items = q.size(0) * q.size(1) * n_super;
    if (n_items >= INT_MAX) return false;  // 32-bit item indices
    if (n_items == 0) return true;
    a.H = int(q.size(1));
    a.n_super = int(n_super);
    a.n_items = int(n_items);
    a.scale_log2 = float(prm.scale * 1.4426950408889634);
    auto kernel = fractal_spec_fwd_kernel<Cfg, T>;
    static std::once_flag attr_once[64];
    std::call_once(attr_once[device % 64], [&] {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          Cfg::smem_bytes));
    });
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Cfg::threads,
                                                                 Cfg::smem_bytes));
    const int64_t blocks = std::min<int64_t>(a.n_items,
                                             int64_t(std::max(per_sm, 1)) * props->multiProcessorCount);
    kernel<<<unsigned(blocks), Cfg::threads, Cfg::smem_bytes,
             at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  }
}

template <typename T>
bool dispatch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& lengths, const FractalParams& prm, at::Tensor& out) {
  if (!(vectorizable<T>(q) && vectorizable<T>(k) && vectorizable<T>(v) && vectorizable<T>(out))) {
    return false;
  }
  const int64_t D = q.size(3);
#define MSTR_SPEC_CASE_D(d)                                                              \
  if (D == d) return launch<spec::Config<T, P_, L_, d>, T>(q, k, v, lengths, prm, out);
#define MSTR_SPEC_CASE_PL(pp, ll)                   \
  if (prm.p == pp && prm.levels == ll) {            \
    constexpr int P_ = pp, L_ = ll;                 \
    MSTR_SPEC_D(MSTR_SPEC_CASE_D)                   \
    return false;                                   \
  }
  MSTR_SPEC_PL(MSTR_SPEC_CASE_PL)
#undef MSTR_SPEC_CASE_PL
#undef MSTR_SPEC_CASE_D
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

}  // namespace mstr_kernels
