// The specialised forward's and backward's kernels and their launch for one configuration
// (fractal_spec_tile.cuh, fractal_spec_bwd_tile.cuh). The definitions are seen only where
// MSTR_SPEC_T is defined: fractal_spec_{fwd,bwd}_{f32,f16,bf16}.cu instantiate every
// configuration of one pass (MSTR_SPEC_FWD or MSTR_SPEC_BWD) and dtype (six translation units
// that compile in parallel); the dispatcher (fractal_spec_cuda.cu) sees the declarations only.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <mutex>

#include "../fractal_attention.h"
#include "fractal_spec_bwd_tile.cuh"
#include "fractal_spec_configs.h"

namespace mstr_kernels {
namespace specialised {

// Launch the kernel of (T, p, levels, q.size(3)); false (nothing launched) when D is not in the
// list, the configuration does not fit the device's shared memory or the items overflow 32-bit
// indices.
template <typename T, int kP, int kL>
bool launch_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& lengths, const FractalParams& prm, at::Tensor& out);
template <typename T, int kP, int kL>
bool launch_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& lengths, const FractalParams& prm,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);

// The A/B variants of the headline configuration (Variant; bfloat16, p=3, levels=4, D=64
// only: fractal_spec_{fwd,bwd}_bf16.cu): false (nothing launched) for other inputs.
bool launch_forward_variant(Variant variant, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& lengths,
                            const FractalParams& prm, at::Tensor& out);
bool launch_backward_variant(Variant variant, const at::Tensor& dout, const at::Tensor& q,
                             const at::Tensor& k, const at::Tensor& v, const at::Tensor& lengths,
                             const FractalParams& prm, at::Tensor& dq, at::Tensor& dk,
                             at::Tensor& dv);

#if defined(MSTR_SPEC_T)
namespace detail {

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
    fractal_spec_fwd_kernel(const __grid_constant__ ForwardArgs<T> args) {
  extern __shared__ float4 smem_raw[];  // float4: 16-byte alignment
  __builtin_assume(threadIdx.x < unsigned(Cfg::threads));  // the launch's block size
  const SpecBlock blk{int(threadIdx.x)};
  forward_block<Cfg>(blk, args, reinterpret_cast<unsigned char*>(smem_raw), int(blockIdx.x),
                     int(gridDim.x));
}

template <class Cfg, typename T>
__global__ void __launch_bounds__(Cfg::threads, Cfg::min_blocks)
    fractal_spec_bwd_kernel(const __grid_constant__ BackwardArgs<T> args) {
  extern __shared__ float4 smem_raw[];
  __builtin_assume(threadIdx.x < unsigned(Cfg::threads));  // the launch's block size
  const SpecBlock blk{int(threadIdx.x)};
  backward_block<Cfg>(blk, args, reinterpret_cast<unsigned char*>(smem_raw), int(blockIdx.x),
                      int(gridDim.x));
}

template <typename T>
tile::TensorRef<T> ref(const at::Tensor& x) {
  return tile::TensorRef<T>{reinterpret_cast<T*>(x.data_ptr()), x.stride(0), x.stride(1),
                            x.stride(2), x.stride(3), true};
}

// Geometry of the launch into `a` (padded, or packed sequences when prm.work_list is defined);
// false where the items overflow 32-bit indices.
template <class Cfg, class Args>
bool set_geometry(Args& a, const at::Tensor& q, const at::Tensor& lengths,
                  const FractalParams& prm) {
  a.lengths = lengths.defined() ? lengths.data_ptr<int>() : nullptr;
  a.T_len = q.size(2);
  int64_t n_super = (a.T_len + Cfg::F - 1) / Cfg::F;
  const at::Tensor& work = prm.work_list;
  if (work.defined()) {  // packed sequences: one item per work-list entry and head (B = 1)
    static_assert(Cfg::F == Cfg::P * tiles_per_item(Cfg::P), "the work list's entries");
    a.work = work.data_ptr<int>();
    n_super = work.size(1);  // (2, entries)
  }
  const int64_t n_items = q.size(0) * q.size(1) * n_super;
  if (n_items >= INT_MAX) return false;
  a.H = int(q.size(1));
  a.n_super = int(n_super);
  a.n_items = int(n_items);
  set_divisors(a);
  a.scale_log2 = float(prm.scale * 1.4426950408889634);
  return true;
}

// As many blocks as fit on the device (persistent), at most one per item.
template <class Cfg, class Kernel, class Args>
void launch_kernel(Kernel kernel, const Args& a, int device) {
  if (a.n_items == 0) return;
  const cudaDeviceProp* props = at::cuda::getDeviceProperties(device);
  static std::once_flag attr_once[64];
  std::call_once(attr_once[device % 64], [&] {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        Cfg::smem_bytes));
  });
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Cfg::threads,
                                                               Cfg::smem_bytes));
  const int64_t blocks =
      std::min<int64_t>(a.n_items, int64_t(std::max(per_sm, 1)) * props->multiProcessorCount);
  kernel<<<unsigned(blocks), Cfg::threads, Cfg::smem_bytes, at::cuda::getCurrentCUDAStream()>>>(
      a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Cfg>
bool fits_device(int device) {
  return Cfg::fits &&
         int64_t(at::cuda::getDeviceProperties(device)->sharedMemPerBlockOptin) >= Cfg::smem_bytes;
}

template <class Cfg, typename T>
bool forward_config(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& lengths, const FractalParams& prm, at::Tensor& out) {
  if constexpr (!Cfg::fits) {
    return false;
  } else {
    if (!fits_device<Cfg>(q.get_device())) return false;
    ForwardArgs<T> a;
    if (!set_geometry<Cfg>(a, q, lengths, prm)) return false;
    a.q = ref<const T>(q);
    a.k = ref<const T>(k);
    a.v = ref<const T>(v);
    a.out = ref<T>(out);
    launch_kernel<Cfg>(fractal_spec_fwd_kernel<Cfg, T>, a, q.get_device());
    return true;
  }
}

template <class Cfg, typename T>
bool backward_config(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& lengths, const FractalParams& prm,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  if constexpr (!Cfg::fits) {
    return false;
  } else {
    if (!fits_device<Cfg>(q.get_device())) return false;
    BackwardArgs<T> a;
    if (!set_geometry<Cfg>(a, q, lengths, prm)) return false;
    a.scale = float(prm.scale);
    a.q = ref<const T>(q);
    a.k = ref<const T>(k);
    a.v = ref<const T>(v);
    a.dout = ref<const T>(dout);
    a.dq = ref<T>(dq);
    a.dk = ref<T>(dk);
    a.dv = ref<T>(dv);
    launch_kernel<Cfg>(fractal_spec_bwd_kernel<Cfg, T>, a, q.get_device());
    return true;
  }
}

}  // namespace detail

template <typename T, int kP, int kL>
bool launch_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& lengths, const FractalParams& prm, at::Tensor& out) {
  const int64_t D = q.size(3);
#define MSTR_SPEC_CASE_D(d) \
  if (D == d) return detail::forward_config<Config<T, kP, kL, d>, T>(q, k, v, lengths, prm, out);
  MSTR_SPEC_D(MSTR_SPEC_CASE_D)
#undef MSTR_SPEC_CASE_D
  return false;
}

template <typename T, int kP, int kL>
bool launch_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& lengths, const FractalParams& prm,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t D = q.size(3);
#define MSTR_SPEC_CASE_D(d)                                                                    \
  if (D == d) {                                                                                \
    return detail::backward_config<BwdConfig<T, kP, kL, d>, T>(dout, q, k, v, lengths, prm, dq, \
                                                               dk, dv);                        \
  }
  MSTR_SPEC_D(MSTR_SPEC_CASE_D)
#undef MSTR_SPEC_CASE_D
  return false;
}

#if defined(MSTR_SPEC_FWD)
#define MSTR_SPEC_INSTANTIATE_PL(pp, ll)                                                  \
  template bool launch_forward<MSTR_SPEC_T, pp, ll>(const at::Tensor&, const at::Tensor&, \
                                                    const at::Tensor&, const at::Tensor&, \
                                                    const FractalParams&, at::Tensor&);
#else
#define MSTR_SPEC_INSTANTIATE_PL(pp, ll)                                            \
  template bool launch_backward<MSTR_SPEC_T, pp, ll>(                               \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,   \
      const at::Tensor&, const FractalParams&, at::Tensor&, at::Tensor&, at::Tensor&);
#endif
MSTR_SPEC_PL(MSTR_SPEC_INSTANTIATE_PL)
#undef MSTR_SPEC_INSTANTIATE_PL

#if defined(MSTR_SPEC_VARIANTS)
static_assert(std::is_same_v<MSTR_SPEC_T, c10::BFloat16>, "the variants are bfloat16's");
#if defined(MSTR_SPEC_FWD)
bool launch_forward_variant(Variant variant, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& lengths,
                            const FractalParams& prm, at::Tensor& out) {
  using T = c10::BFloat16;
  if (q.size(3) != 64 || prm.p != 3 || prm.levels != 4) return false;
  switch (variant) {
#define MSTR_SPEC_VARIANT(V)                                                                \
  case V:                                                                                   \
    return detail::forward_config<Config<T, 3, 4, 64, 3, 1, V>, T>(q, k, v, lengths, prm, out);
    MSTR_SPEC_VARIANT(Variant::kMemory)
    MSTR_SPEC_VARIANT(Variant::kArithmetic)
    MSTR_SPEC_VARIANT(Variant::kGeluErf)
#undef MSTR_SPEC_VARIANT
    default: return false;
  }
}
#else
bool launch_backward_variant(Variant variant, const at::Tensor& dout, const at::Tensor& q,
                             const at::Tensor& k, const at::Tensor& v, const at::Tensor& lengths,
                             const FractalParams& prm, at::Tensor& dq, at::Tensor& dk,
                             at::Tensor& dv) {
  using T = c10::BFloat16;
  if (q.size(3) != 64 || prm.p != 3 || prm.levels != 4) return false;
  switch (variant) {
#define MSTR_SPEC_VARIANT(V)                                                               \
  case V:                                                                                  \
    return detail::backward_config<BwdConfig<T, 3, 4, 64, V>, T>(dout, q, k, v, lengths, prm, \
                                                                  dq, dk, dv);
    MSTR_SPEC_VARIANT(Variant::kMemory)
    MSTR_SPEC_VARIANT(Variant::kArithmetic)
    MSTR_SPEC_VARIANT(Variant::kGeluErf)
#undef MSTR_SPEC_VARIANT
    default: return false;
  }
}
#endif
#endif  // MSTR_SPEC_VARIANTS
#endif  // MSTR_SPEC_T

}  // namespace specialised
}  // namespace mstr_kernels
