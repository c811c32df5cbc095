// Runs the CUDA kernels' per-tile code (csrc/cuda/fractal_tile.cuh) on the host: each thread
// block is emulated by `nthreads` std::threads meeting at a std::barrier for __syncthreads.
// Lets CI test the kernels' indexing, chunking and synchronisation without a GPU. The launch
// geometry comes from the same plan_geometry as the CUDA launcher, with a shared-memory budget
// chosen by the test (to force chunks of the head dim).
#include <torch/extension.h>

#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

#include "cuda/fractal_tile.cuh"

namespace {

using namespace mstr_kernels::tile;

struct HostBlock {
  int tid, nthreads;
  std::barrier<>* barrier;
  void sync() const { barrier->arrive_and_wait(); }
};

template <typename T>
TensorRef<T> tensor_ref(const at::Tensor& x) {
  constexpr int W = VecWidth<std::remove_const_t<T>>::value;
  TensorRef<T> r{static_cast<T*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(2),
                 x.stride(3), false};
  r.vec = r.sd == 1 && x.size(3) % W == 0 && r.sb % W == 0 && r.sh % W == 0 && r.st % W == 0 &&
          reinterpret_cast<uintptr_t>(x.data_ptr()) % kVecBytes == 0;
  return r;
}

at::Tensor poisoned_out(const at::Tensor& q) {  // (B, T, H, D) memory, NaN until written
  return at::full({q.size(0), q.size(2), q.size(1), q.size(3)}, NAN, q.options()).transpose(1, 2);
}

// Every (b, h, tile) item on one emulated block of `nthreads` threads.
template <typename Body>
void run_blocks(int64_t n_items, int nthreads, int64_t smem_bytes, Body body) {
  std::vector<float> smem(smem_bytes / sizeof(float) + 4, NAN);  // poisoned shared memory
  std::barrier<> barrier(nthreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < nthreads; ++t) {
    threads.emplace_back([&, t] {
      const HostBlock blk{t, nthreads, &barrier};
      for (int64_t item = 0; item < n_items; ++item) body(blk, smem.data(), item);
    });
  }
  for (auto& th : threads) th.join();
}

template <typename T>
Geometry plan(const at::Tensor& q, const c10::optional<at::Tensor>& lengths, int64_t p,
              int64_t levels, double scale, int64_t budget, int n_pyramids, bool dscores,
              SmemLayout* layout) {
  const Geometry g = plan_geometry(
      q.size(0), q.size(1), q.size(2), int(q.size(3)), int(p), int(levels), float(scale),
      lengths.has_value() ? lengths->data_ptr<int>() : nullptr, n_pyramids, dscores,
      VecWidth<T>::value, budget, 227 * 1024, layout);
  TORCH_CHECK(g.DC > 0, "no chunk of the head dim fits");
  return g;
}

template <typename T>
std::vector<at::Tensor> forward_t(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const c10::optional<at::Tensor>& lengths, int64_t p,
                                  int64_t levels, double scale, int64_t budget,
                                  int64_t nthreads) {
  ForwardArgs<T> a;
  a.g = plan<T>(q, lengths, p, levels, scale, budget, 2, false, &a.sl);
  at::Tensor out = poisoned_out(q);
  a.q = tensor_ref<const T>(q);
  a.k = tensor_ref<const T>(k);
  a.v = tensor_ref<const T>(v);
  a.out = tensor_ref<T>(out);
  run_blocks(a.g.B * a.g.H * a.g.n_tiles, int(nthreads), a.sl.bytes,
             [&](const HostBlock& blk, float* smem, int64_t item) {
               forward_tile(blk, a, smem, item);
             });
  return {out, at::tensor({int64_t(a.g.DC)})};
}

template <typename T>
std::vector<at::Tensor> backward_t(const at::Tensor& dout, const at::Tensor& q,
                                   const at::Tensor& k, const at::Tensor& v,
                                   const c10::optional<at::Tensor>& lengths, int64_t p,
                                   int64_t levels, double scale, int64_t budget,
                                   int64_t nthreads) {
  BackwardArgs<T> a;
  a.g = plan<T>(q, lengths, p, levels, scale, budget, 4, true, &a.sl);
  at::Tensor dq = poisoned_out(q), dk = poisoned_out(q), dv = poisoned_out(q);
  a.dout = tensor_ref<const T>(dout);
  a.q = tensor_ref<const T>(q);
  a.k = tensor_ref<const T>(k);
  a.v = tensor_ref<const T>(v);
  a.dq = tensor_ref<T>(dq);
  a.dk = tensor_ref<T>(dk);
  a.dv = tensor_ref<T>(dv);
  run_blocks(a.g.B * a.g.H * a.g.n_tiles, int(nthreads), a.sl.bytes,
             [&](const HostBlock& blk, float* smem, int64_t item) {
               backward_tile(blk, a, smem, item);
             });
  return {dq, dk, dv, at::tensor({int64_t(a.g.DC)})};
}

// Returns (out, chunk width).
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& lengths, int64_t p,
                                int64_t levels, double scale, int64_t budget, int64_t nthreads) {
  switch (q.scalar_type()) {
    case at::kFloat: return forward_t<float>(q, k, v, lengths, p, levels, scale, budget, nthreads);
    case at::kHalf: return forward_t<c10::Half>(q, k, v, lengths, p, levels, scale, budget, nthreads);
    case at::kBFloat16:
      return forward_t<c10::BFloat16>(q, k, v, lengths, p, levels, scale, budget, nthreads);
    default: TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not float32, float16 or bfloat16");
  }
}

// Returns (dq, dk, dv, chunk width).
std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const c10::optional<at::Tensor>& lengths,
                                 int64_t p, int64_t levels, double scale, int64_t budget,
                                 int64_t nthreads) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return backward_t<float>(dout, q, k, v, lengths, p, levels, scale, budget, nthreads);
    case at::kHalf:
      return backward_t<c10::Half>(dout, q, k, v, lengths, p, levels, scale, budget, nthreads);
    case at::kBFloat16:
      return backward_t<c10::BFloat16>(dout, q, k, v, lengths, p, levels, scale, budget, nthreads);
    default: TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not float32, float16 or bfloat16");
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
