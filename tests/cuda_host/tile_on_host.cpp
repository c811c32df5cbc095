// Runs the CUDA kernels' per-tile code (csrc/cuda/fractal_tile.cuh, and the specialised forward
// of csrc/cuda/fractal_spec_tile.cuh) on the host: each thread block is emulated by `nthreads`
// std::threads meeting at a std::barrier for __syncthreads; lane shuffles are emulated per warp
// of 32 threads through a shared buffer and a barrier of that warp.
// Lets CI test the kernels' indexing, chunking and synchronisation without a GPU. The launch
// geometry comes from the same plan_geometry as the CUDA launcher, with a shared-memory budget
// chosen by the test (to force chunks of the head dim).
#include <torch/extension.h>

#include <barrier>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "cuda/fractal_spec_configs.h"
#include "cuda/fractal_spec_bwd_tile.cuh"
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

// `work`: a packed-sequence work list (2, entries) of the `cuda` backend (q, k, v then are
// (1, H, total, D) views), or undefined.
template <typename T>
Geometry plan(const at::Tensor& q, const c10::optional<at::Tensor>& lengths, int64_t p,
              int64_t levels, double scale, int64_t budget, int n_pyramids, bool dscores,
              SmemLayout* layout, const at::Tensor& work) {
  Geometry g = plan_geometry(
      q.size(0), q.size(1), q.size(2), int(q.size(3)), int(p), int(levels), float(scale),
      lengths.has_value() ? lengths->data_ptr<int>() : nullptr, n_pyramids, dscores,
      VecWidth<T>::value, budget, 227 * 1024, layout);
  TORCH_CHECK(g.DC > 0, "no chunk of the head dim fits");
  if (work.defined()) {
    use_work_list(g, work.data_ptr<int>(), work.size(1), mstr_kernels::varlen_item_frames(p, levels));
  }
  return g;
}

template <typename T>
std::vector<at::Tensor> forward_t(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const c10::optional<at::Tensor>& lengths, int64_t p,
                                  int64_t levels, double scale, int64_t budget,
                                  int64_t nthreads, const at::Tensor& work) {
  ForwardArgs<T> a;
  a.g = plan<T>(q, lengths, p, levels, scale, budget, 2, false, &a.sl, work);
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
                                   int64_t nthreads, const at::Tensor& work) {
  BackwardArgs<T> a;
  a.g = plan<T>(q, lengths, p, levels, scale, budget, 4, true, &a.sl, work);
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
                                int64_t levels, double scale, int64_t budget, int64_t nthreads,
                                const at::Tensor& work = {}) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return forward_t<float>(q, k, v, lengths, p, levels, scale, budget, nthreads, work);
    case at::kHalf:
      return forward_t<c10::Half>(q, k, v, lengths, p, levels, scale, budget, nthreads, work);
    case at::kBFloat16:
      return forward_t<c10::BFloat16>(q, k, v, lengths, p, levels, scale, budget, nthreads, work);
    default: TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not float32, float16 or bfloat16");
  }
}

// Returns (dq, dk, dv, chunk width).
std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const c10::optional<at::Tensor>& lengths,
                                 int64_t p, int64_t levels, double scale, int64_t budget,
                                 int64_t nthreads, const at::Tensor& work = {}) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return backward_t<float>(dout, q, k, v, lengths, p, levels, scale, budget, nthreads, work);
    case at::kHalf:
      return backward_t<c10::Half>(dout, q, k, v, lengths, p, levels, scale, budget, nthreads,
                                   work);
    case at::kBFloat16:
      return backward_t<c10::BFloat16>(dout, q, k, v, lengths, p, levels, scale, budget, nthreads,
                                       work);
    default: TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not float32, float16 or bfloat16");
  }
}

// ---- the specialised forward ------------------------------------------------------------------

namespace spec = mstr_kernels::specialised;

constexpr int kMaxShuffled = 64;  // values per lane in one exchange: p * p <= 16

struct HostWarpBlock {
  int tid;
  std::barrier<>* block;
  std::vector<std::unique_ptr<std::barrier<>>>* warps;
  float* exchange;  // [threads][kMaxShuffled]
  void sync() const { block->arrive_and_wait(); }
  template <int N>
  void xor_add(float (&v)[N], int mask) const {  // __shfl_xor_sync within the warp of 32
    static_assert(N <= kMaxShuffled);
    std::barrier<>& warp = *(*warps)[tid / 32];
    for (int i = 0; i < N; ++i) exchange[tid * kMaxShuffled + i] = v[i];
    warp.arrive_and_wait();
    float other[N];
    for (int i = 0; i < N; ++i) other[i] = exchange[(tid ^ mask) * kMaxShuffled + i];
    warp.arrive_and_wait();
    for (int i = 0; i < N; ++i) v[i] += other[i];
  }
};

// The grid's blocks one after another, each on Cfg::threads std::threads with its own
// NaN-poisoned shared memory, walking items first = block, stride = grid as on the GPU.
template <class Cfg, class Body>
void run_spec_grid(int64_t grid, Body body) {
  for (int b = 0; b < int(grid); ++b) {
    std::vector<float> smem(Cfg::smem_bytes / sizeof(float) + 4, NAN);
    std::vector<float> exchange(size_t(Cfg::threads) * kMaxShuffled, NAN);
    std::barrier<> block(Cfg::threads);
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    for (int w = 0; w < Cfg::threads / 32; ++w) {
      warps.push_back(std::make_unique<std::barrier<>>(32));
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < Cfg::threads; ++t) {
      threads.emplace_back([&, t] {
        const HostWarpBlock blk{t, &block, &warps, exchange.data()};
        body(blk, reinterpret_cast<unsigned char*>(smem.data()), b, int(grid));
      });
    }
    for (auto& th : threads) th.join();
  }
}

template <class Cfg>
at::Tensor spec_info() {
  return at::tensor({int64_t(Cfg::threads), int64_t(Cfg::smem_bytes), int64_t(Cfg::F),
                     int64_t(Cfg::stages)});
}

// As the launcher's set_geometry (fractal_spec_kernel.cuh); `work` as for plan().
template <class Args>
void spec_geometry(Args& a, const at::Tensor& q, const c10::optional<at::Tensor>& lengths,
                   double scale, int F, const at::Tensor& work) {
  a.lengths = lengths.has_value() ? lengths->data_ptr<int>() : nullptr;
  a.scale_log2 = float(scale * 1.4426950408889634);
  a.T_len = q.size(2);
  a.H = int(q.size(1));
  a.n_super = int((a.T_len + F - 1) / F);
  if (work.defined()) {
    a.work = work.data_ptr<int>();
    a.n_super = int(work.size(1));
  }
  a.n_items = int(q.size(0)) * a.H * a.n_super;
  spec::set_divisors(a);
}

template <class Cfg, typename T>
std::vector<at::Tensor> spec_forward_cfg(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v,
                                         const c10::optional<at::Tensor>& lengths, double scale,
                                         int64_t grid, const at::Tensor& work) {
  if constexpr (!Cfg::fits) {
    TORCH_CHECK(false, "configuration does not fit shared memory");
  } else {
    at::Tensor out = poisoned_out(q);
    spec::ForwardArgs<T> a;
    a.q = tensor_ref<const T>(q);
    a.k = tensor_ref<const T>(k);
    a.v = tensor_ref<const T>(v);
    a.out = tensor_ref<T>(out);
    TORCH_CHECK(a.q.vec && a.k.vec && a.v.vec && a.out.vec, "inputs do not allow 16-byte copies");
    spec_geometry(a, q, lengths, scale, Cfg::F, work);
    run_spec_grid<Cfg>(grid, [&](const HostWarpBlock& blk, unsigned char* smem, int b, int g) {
      spec::forward_block<Cfg>(blk, a, smem, b, g);
    });
    return {out, spec_info<Cfg>()};
  }
}

template <class Cfg, typename T>
std::vector<at::Tensor> spec_backward_cfg(const at::Tensor& dout, const at::Tensor& q,
                                          const at::Tensor& k, const at::Tensor& v,
                                          const c10::optional<at::Tensor>& lengths,
                                          double scale, int64_t grid, const at::Tensor& work) {
  if constexpr (!Cfg::fits) {
    TORCH_CHECK(false, "configuration does not fit shared memory");
  } else {
    at::Tensor dq = poisoned_out(q), dk = poisoned_out(q), dv = poisoned_out(q);
    spec::BackwardArgs<T> a;
    a.q = tensor_ref<const T>(q);
    a.k = tensor_ref<const T>(k);
    a.v = tensor_ref<const T>(v);
    a.dout = tensor_ref<const T>(dout);
    a.dq = tensor_ref<T>(dq);
    a.dk = tensor_ref<T>(dk);
    a.dv = tensor_ref<T>(dv);
    TORCH_CHECK(a.q.vec && a.k.vec && a.v.vec && a.dout.vec && a.dq.vec,
                "inputs do not allow 16-byte copies");
    spec_geometry(a, q, lengths, scale, Cfg::F, work);
    a.scale = float(scale);
    run_spec_grid<Cfg>(grid, [&](const HostWarpBlock& blk, unsigned char* smem, int b, int g) {
      spec::backward_block<Cfg>(blk, a, smem, b, g);
    });
    return {dq, dk, dv, spec_info<Cfg>()};
  }
}

template <typename T>
std::vector<at::Tensor> spec_forward_t(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v,
                                       const c10::optional<at::Tensor>& lengths, int64_t p,
                                       int64_t levels, double scale, int64_t grid,
                                       const at::Tensor& work) {
  const int64_t D = q.size(3);
#define MSTR_HOST_CASE_D(d) \
  if (D == d)                                                                                   \
    return spec_forward_cfg<spec::Config<T, P_, L_, d>, T>(q, k, v, lengths, scale, grid, work);
#define MSTR_HOST_CASE_PL(pp, ll)        \
  if (p == pp && levels == ll) {         \
    constexpr int P_ = pp, L_ = ll;      \
    MSTR_SPEC_D(MSTR_HOST_CASE_D)        \
  }
  MSTR_SPEC_PL(MSTR_HOST_CASE_PL)
#undef MSTR_HOST_CASE_PL
#undef MSTR_HOST_CASE_D
  TORCH_CHECK(false, "no specialised forward for p=", p, " levels=", levels, " D=", D);
}

template <typename T>
std::vector<at::Tensor> spec_backward_t(const at::Tensor& dout, const at::Tensor& q,
                                        const at::Tensor& k, const at::Tensor& v,
                                        const c10::optional<at::Tensor>& lengths, int64_t p,
                                        int64_t levels, double scale, int64_t grid,
                                        const at::Tensor& work) {
  const int64_t D = q.size(3);
#define MSTR_HOST_CASE_D(d)                                                                  \
  if (D == d)                                                                                \
    return spec_backward_cfg<spec::BwdConfig<T, P_, L_, d>, T>(dout, q, k, v, lengths, scale, \
                                                               grid, work);
#define MSTR_HOST_CASE_PL(pp, ll)        \
  if (p == pp && levels == ll) {         \
    constexpr int P_ = pp, L_ = ll;      \
    MSTR_SPEC_D(MSTR_HOST_CASE_D)        \
  }
  MSTR_SPEC_PL(MSTR_HOST_CASE_PL)
#undef MSTR_HOST_CASE_PL
#undef MSTR_HOST_CASE_D
  TORCH_CHECK(false, "no specialised backward for p=", p, " levels=", levels, " D=", D);
}

// An A/B variant (spec::Variant, by its value) of the headline configuration, bfloat16 p=3
// levels=4 D=64: the forward's (out, info) or the backward's (dq, dk, dv, info).
template <spec::Variant V>
std::vector<at::Tensor> spec_variant_v(bool backward, const at::Tensor& dout, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v,
                                       const c10::optional<at::Tensor>& lengths, double scale,
                                       int64_t grid) {
  using T = c10::BFloat16;
  if (backward) {
    return spec_backward_cfg<spec::BwdConfig<T, 3, 4, 64, V>, T>(dout, q, k, v, lengths, scale,
                                                                 grid, at::Tensor());
  }
  return spec_forward_cfg<spec::Config<T, 3, 4, 64, 3, 1, V>, T>(q, k, v, lengths, scale, grid,
                                                                at::Tensor());
}

std::vector<at::Tensor> spec_variant(bool backward, int64_t variant, const at::Tensor& dout,
                                     const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const c10::optional<at::Tensor>& lengths,
                                     double scale, int64_t grid) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && q.size(3) == 64, "bfloat16, D=64 only");
  switch (static_cast<spec::Variant>(variant)) {
    case spec::Variant::kFull:
      return spec_variant_v<spec::Variant::kFull>(backward, dout, q, k, v, lengths, scale, grid);
    case spec::Variant::kMemory:
      return spec_variant_v<spec::Variant::kMemory>(backward, dout, q, k, v, lengths, scale, grid);
    case spec::Variant::kArithmetic:
      return spec_variant_v<spec::Variant::kArithmetic>(backward, dout, q, k, v, lengths, scale,
                                                         grid);
    case spec::Variant::kGeluErf:
      return spec_variant_v<spec::Variant::kGeluErf>(backward, dout, q, k, v, lengths, scale,
                                                      grid);
  }
  TORCH_CHECK(false, "variant ", variant, " is not 0..3");
}

// Returns (out, [threads, shared-memory bytes, frames per item, stages]).
std::vector<at::Tensor> spec_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const c10::optional<at::Tensor>& lengths, int64_t p,
                                     int64_t levels, double scale, int64_t grid,
                                     const at::Tensor& work = {}) {
  switch (q.scalar_type()) {
    case at::kFloat: return spec_forward_t<float>(q, k, v, lengths, p, levels, scale, grid, work);
    case at::kHalf:
      return spec_forward_t<c10::Half>(q, k, v, lengths, p, levels, scale, grid, work);
    case at::kBFloat16:
      return spec_forward_t<c10::BFloat16>(q, k, v, lengths, p, levels, scale, grid, work);
    default: TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not float32, float16 or bfloat16");
  }
}

// Returns (dq, dk, dv, [threads, shared-memory bytes, frames per item, stages]).
std::vector<at::Tensor> spec_backward(const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v,
                                      const c10::optional<at::Tensor>& lengths, int64_t p,
                                      int64_t levels, double scale, int64_t grid,
                                      const at::Tensor& work = {}) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return spec_backward_t<float>(dout, q, k, v, lengths, p, levels, scale, grid, work);
    case at::kHalf:
      return spec_backward_t<c10::Half>(dout, q, k, v, lengths, p, levels, scale, grid, work);
    case at::kBFloat16:
      return spec_backward_t<c10::BFloat16>(dout, q, k, v, lengths, p, levels, scale, grid, work);
    default: TORCH_CHECK(false, "dtype ", q.scalar_type(), " is not float32, float16 or bfloat16");
  }
}

// Every specialised configuration that fits: rows of (pass 0 fwd / 1 bwd, itemsize, p, levels,
// D, threads, shared-memory bytes, frames per item, stages, blocks per SM aimed at).
std::vector<std::vector<int64_t>> spec_configs() {
  std::vector<std::vector<int64_t>> rows;
  auto add = [&](int64_t pass, auto cfg) {
    using Cfg = decltype(cfg);
    if (Cfg::fits) {
      rows.push_back({pass, int64_t(Cfg::W == 8 ? 2 : 4), Cfg::p, Cfg::levels, Cfg::D,
                      Cfg::threads, Cfg::smem_bytes, Cfg::F, Cfg::stages, Cfg::min_blocks});
    }
  };
#define MSTR_HOST_ROW_D(d)                              \
  add(0, spec::Config<c10::BFloat16, P_, L_, d>{});     \
  add(0, spec::Config<float, P_, L_, d>{});             \
  add(1, spec::BwdConfig<c10::BFloat16, P_, L_, d>{});  \
  add(1, spec::BwdConfig<float, P_, L_, d>{});
#define MSTR_HOST_ROW_PL(pp, ll) { constexpr int P_ = pp, L_ = ll; MSTR_SPEC_D(MSTR_HOST_ROW_D) }
  MSTR_SPEC_PL(MSTR_HOST_ROW_PL)
#undef MSTR_HOST_ROW_PL
#undef MSTR_HOST_ROW_D
  return rows;
}

// ---- packed sequences: the work list of the `cuda` backend (fractal_attention.cpp's varlen entry)

at::Tensor batch_of_one(const at::Tensor& x) { return x.transpose(0, 1).unsqueeze(0); }  // (1, H, total, D)
at::Tensor packed(const at::Tensor& x) { return x.squeeze(0).transpose(0, 1); }  // (total, H, D)

// q, k, v, dout (total, H, D), `tiles` the (2, entries) work list; `spec`: the specialised
// kernels with `grid` blocks, else the general ones with (budget, nthreads). Returns (out,) or
// (dq, dk, dv) (total, H, D), NaN where a row was not written.
std::vector<at::Tensor> varlen(bool backward_pass, bool spec, const at::Tensor& dout,
                               const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& tiles, int64_t p, int64_t levels, double scale,
                               int64_t budget, int64_t nthreads, int64_t grid) {
  TORCH_CHECK(tiles.scalar_type() == at::kInt && tiles.dim() == 2 && tiles.size(0) == 2 &&
              tiles.is_contiguous(), "tiles must be a contiguous int32 (2, entries) tensor");
  const at::Tensor g1 = batch_of_one(dout), q1 = batch_of_one(q), k1 = batch_of_one(k),
                   v1 = batch_of_one(v);
  std::vector<at::Tensor> r =
      backward_pass ? (spec ? spec_backward(g1, q1, k1, v1, c10::nullopt, p, levels, scale, grid, tiles)
                            : backward(g1, q1, k1, v1, c10::nullopt, p, levels, scale, budget,
                                       nthreads, tiles))
                    : (spec ? spec_forward(q1, k1, v1, c10::nullopt, p, levels, scale, grid, tiles)
                            : forward(q1, k1, v1, c10::nullopt, p, levels, scale, budget, nthreads,
                                      tiles));
  r.pop_back();  // the chunk width or the configuration
  for (at::Tensor& x : r) x = packed(x);
  return r;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("forward", [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels,
                      double scale, int64_t budget, int64_t nthreads) {
    return forward(q, k, v, lengths, p, levels, scale, budget, nthreads);
  });
  m.def("backward", [](const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const c10::optional<at::Tensor>& lengths, int64_t p,
                       int64_t levels, double scale, int64_t budget, int64_t nthreads) {
    return backward(dout, q, k, v, lengths, p, levels, scale, budget, nthreads);
  });
  m.def("spec_forward", [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels,
                           double scale, int64_t grid) {
    return spec_forward(q, k, v, lengths, p, levels, scale, grid);
  });
  m.def("spec_backward", [](const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const c10::optional<at::Tensor>& lengths,
                            int64_t p, int64_t levels, double scale, int64_t grid) {
    return spec_backward(dout, q, k, v, lengths, p, levels, scale, grid);
  });
  m.def("varlen", &varlen, py::arg("backward"), py::arg("spec"), py::arg("dout"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("tiles"), py::arg("p"), py::arg("levels"),
        py::arg("scale"), py::arg("budget") = 100 * 1024, py::arg("nthreads") = 64,
        py::arg("grid") = 2);
  m.def("spec_configs", &spec_configs);
  m.def("spec_variant", &spec_variant);
  m.def("udiv", [](const at::Tensor& n, int64_t d) {  // the kernels' division by a constant
    const spec::UDivisor u = spec::make_divisor(unsigned(d));
    at::Tensor q = n.to(at::kLong).contiguous().clone();
    int64_t* x = q.data_ptr<int64_t>();
    for (int64_t i = 0; i < q.numel(); ++i) x[i] = u.div(unsigned(x[i]));
    return q;
  });
}
