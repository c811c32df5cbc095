// CUDA launchers of the fused fractal attention forward and backward: one launch each for the
// whole batch. A thread block walks (batch, head, tile) items; the tile's work is in
// fractal_tile.cuh; packed sequences (params.work_list) take (entry, tile, head) items.
// Inputs are checked in fractal_attention.cpp. Forward and backward first
// offer the inputs to the kernels specialised on (p, levels, D) (fractal_spec_cuda.cu); these
// general kernels take whatever those do not cover.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <array>
#include <climits>
#include <mutex>

#include "../fractal_attention.h"
#include "fractal_spec_configs.h"
#include "fractal_spec_launch.h"
#include "fractal_tile.cuh"

namespace mstr_kernels {
namespace {

using tile::BackwardArgs;
using tile::ForwardArgs;
using tile::Geometry;
using tile::SmemLayout;
using tile::TensorRef;

constexpr int kMaxThreads = 256;
// At most 128 registers per thread (2 blocks of 256 threads per SM): ptxas then needs no
// spills (scripts/gpu_static_report.py); 3 blocks (80 registers) spill.
constexpr int kMinBlocksPerSM = 2;
// Shared memory a block aims for: 2 blocks per SM on A100 and H100 for the main configuration
// (forward 66 KiB with one chunk of D=64, backward 71 KiB with two chunks of 32). Bigger tiles fall back to narrower chunks of the head dim (see choose_chunk).
constexpr int64_t kPreferredSmemBytes = 100 * 1024;

struct CudaBlock {
  int tid, nthreads;
  __device__ __forceinline__ void sync() const { __syncthreads(); }
};

template <typename T>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocksPerSM)
    fractal_fwd_kernel(const __grid_constant__ ForwardArgs<T> args, int64_t n_items) {
  extern __shared__ float4 smem_raw[];  // float4: 16-byte alignment
  float* smem = reinterpret_cast<float*>(smem_raw);
  const CudaBlock blk{int(threadIdx.x), int(blockDim.x)};
  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    tile::forward_tile(blk, args, smem, item);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocksPerSM)
    fractal_bwd_kernel(const __grid_constant__ BackwardArgs<T> args, int64_t n_items) {
  extern __shared__ float4 smem_raw[];
  float* smem = reinterpret_cast<float*>(smem_raw);
  const CudaBlock blk{int(threadIdx.x), int(blockDim.x)};
  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    tile::backward_tile(blk, args, smem, item);
  }
}

template <typename T>
TensorRef<T> tensor_ref(const at::Tensor& x) {
  constexpr int W = tile::VecWidth<T>::value;
  TensorRef<T> r;
  r.ptr = reinterpret_cast<T*>(x.data_ptr());
  r.sb = x.stride(0);
  r.sh = x.stride(1);
  r.st = x.stride(2);
  r.sd = x.stride(3);
  r.vec = r.sd == 1 && x.size(3) % W == 0 && r.sb % W == 0 && r.sh % W == 0 && r.st % W == 0 &&
          reinterpret_cast<uintptr_t>(x.data_ptr()) % tile::kVecBytes == 0;
  return r;
}

template <typename T>
TensorRef<const T> const_ref(const at::Tensor& x) {
  const TensorRef<T> r = tensor_ref<T>(x);
  return TensorRef<const T>{r.ptr, r.sb, r.sh, r.st, r.sd, r.vec};
}

int max_optin_smem(int device) {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

Geometry make_geometry(const at::Tensor& q, const at::Tensor& lengths, const FractalParams& prm,
                       int n_pyramids, bool with_dscores, int vec_width, SmemLayout& layout) {
  const int64_t device_limit = max_optin_smem(q.get_device());
  Geometry g = tile::plan_geometry(
      q.size(0), q.size(1), q.size(2), int(q.size(3)), int(prm.p), int(prm.levels),
      float(prm.scale), lengths.defined() ? lengths.data_ptr<int>() : nullptr, n_pyramids,
      with_dscores, vec_width, kPreferredSmemBytes, device_limit, &layout);
  TORCH_CHECK(g.DC > 0, "fractal attention (cuda): p**levels=", g.P, " needs more shared memory"
              " than the device has (", device_limit, " bytes per block)");
  if (prm.work_list.defined()) {  // packed sequences: the entries' tiles (B = 1)
    tile::use_work_list(g, prm.work_list.data_ptr<int>(), prm.work_list.size(1),
                        varlen_item_frames(prm.p, prm.levels));
  }
  return g;
}

struct Launch {
  dim3 grid, block;
  int64_t n_items;
  size_t smem;
};

Launch launch_shape(const Geometry& g, const SmemLayout& sl, int vec_width) {
  Launch ls;
  ls.n_items = g.B * g.H * g.n_tiles;
  const int64_t work = int64_t(g.P) * g.DC / vec_width;  // widest phase: frames x vectors
  int threads = int(std::min<int64_t>(kMaxThreads, std::max<int64_t>(64, (work + 31) / 32 * 32)));
  ls.block = dim3(threads);
  ls.grid = dim3(unsigned(std::min<int64_t>(ls.n_items, INT_MAX)));
  ls.smem = size_t(sl.bytes);
  return ls;
}

// Opt a kernel in to more than 48 KB of dynamic shared memory, once per device and kernel.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, int device) {
  static std::mutex mutex;
  static std::array<size_t, 64> allowed{};
  std::lock_guard<std::mutex> lock(mutex);
  if (device < 64 && allowed[device] >= bytes) return;
  const int limit = max_optin_smem(device);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit));
  if (device < 64) allowed[device] = size_t(limit);
}

template <typename T>
void launch_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& lengths, const FractalParams& params, at::Tensor& out) {
  constexpr int W = tile::VecWidth<T>::value;
  ForwardArgs<T> args;
  args.g = make_geometry(q, lengths, params, 2, false, W, args.sl);
  args.q = const_ref<T>(q);
  args.k = const_ref<T>(k);
  args.v = const_ref<T>(v);
  args.out = tensor_ref<T>(out);
  const Launch ls = launch_shape(args.g, args.sl, W);
  if (ls.n_items == 0) return;
  allow_smem(fractal_fwd_kernel<T>, ls.smem, q.get_device());
  fractal_fwd_kernel<T><<<ls.grid, ls.block, ls.smem, at::cuda::getCurrentCUDAStream()>>>(
      args, ls.n_items);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& lengths, const FractalParams& params,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  constexpr int W = tile::VecWidth<T>::value;
  BackwardArgs<T> args;
  args.g = make_geometry(q, lengths, params, 4, true, W, args.sl);
  args.dout = const_ref<T>(dout);
  args.q = const_ref<T>(q);
  args.k = const_ref<T>(k);
  args.v = const_ref<T>(v);
  args.dq = tensor_ref<T>(dq);
  args.dk = tensor_ref<T>(dk);
  args.dv = tensor_ref<T>(dv);
  const Launch ls = launch_shape(args.g, args.sl, W);
  if (ls.n_items == 0) return;
  allow_smem(fractal_bwd_kernel<T>, ls.smem, q.get_device());
  fractal_bwd_kernel<T><<<ls.grid, ls.block, ls.smem, at::cuda::getCurrentCUDAStream()>>>(
      args, ls.n_items);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void fractal_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& lengths, const FractalParams& params,
                                at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(q.device());
  if (fractal_attention_fwd_cuda_specialised(q, k, v, lengths, params, out)) return;
  AT_DISPATCH_SWITCH(q.scalar_type(), "fractal_attention_fwd_cuda",
    AT_DISPATCH_CASE(at::kFloat, [&] { launch_forward<scalar_t>(q, k, v, lengths, params, out); })
    AT_DISPATCH_CASE(at::kHalf, [&] { launch_forward<scalar_t>(q, k, v, lengths, params, out); })
    AT_DISPATCH_CASE(at::kBFloat16,
                     [&] { launch_forward<scalar_t>(q, k, v, lengths, params, out); }));
}


void fractal_attention_bwd_cuda(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                const at::Tensor& v, const at::Tensor& lengths,
                                const FractalParams& params, at::Tensor& dq, at::Tensor& dk,
                                at::Tensor& dv) {
  const c10::cuda::CUDAGuard guard(q.device());
  if (fractal_attention_bwd_cuda_specialised(dout, q, k, v, lengths, params, dq, dk, dv)) return;
  AT_DISPATCH_SWITCH(q.scalar_type(), "fractal_attention_bwd_cuda",
    AT_DISPATCH_CASE(at::kFloat,
                     [&] { launch_backward<scalar_t>(dout, q, k, v, lengths, params, dq, dk, dv); })
    AT_DISPATCH_CASE(at::kHalf,
                     [&] { launch_backward<scalar_t>(dout, q, k, v, lengths, params, dq, dk, dv); })
    AT_DISPATCH_CASE(at::kBFloat16,
                     [&] { launch_backward<scalar_t>(dout, q, k, v, lengths, params, dq, dk, dv); }));
}

}  // namespace mstr_kernels
