// Python entry points of mstr_kernels._C: every input check in one place, then dispatch to
// the CPU or CUDA kernels (fractal_attention.h).
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "cpu/output_cache.h"
#include "fractal_attention.h"

namespace mstr_kernels {
namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels) {
  TORCH_CHECK_VALUE(q.dim() == 4, "q must be (B, H, T, D), got ", q.dim(), " dimensions");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                    "k.shape and v.shape must equal q.shape=", q.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "q, k, v must share one dtype");
  TORCH_CHECK_VALUE(k.device() == q.device() && v.device() == q.device(),
                    "q, k, v must be on one device");
  const auto dt = q.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 ||
                       (dt == at::kDouble && q.is_cpu()),
                   "dtype ", dt, " is not supported: float32, float16, bfloat16 (float64 on CPU)");
  TORCH_CHECK_VALUE(p >= 2 && p <= 8, "p=", p, " is out of range 2 <= p <= 8");
  TORCH_CHECK_VALUE(levels >= 1 && std::pow(double(p), double(levels)) <= 1024.0,
                    "levels=", levels, " is out of range: 1 <= levels, p**levels <= 1024");
  TORCH_CHECK_VALUE(q.size(3) >= 1 && q.size(3) <= 256, "head dim D=", q.size(3),
                    " is out of range 1 <= D <= 256");
  TORCH_CHECK_VALUE(q.size(2) >= 1, "T=", q.size(2), " must be >= 1");
  if (lengths.has_value() && lengths->defined()) {
    TORCH_CHECK_TYPE(lengths->scalar_type() == at::kInt, "lengths must be int32");
    TORCH_CHECK_VALUE(lengths->dim() == 1 && lengths->size(0) == q.size(0),
                      "lengths must have shape (B,) = (", q.size(0), ",)");
    TORCH_CHECK_VALUE(lengths->is_contiguous(), "lengths must be contiguous");
    TORCH_CHECK_VALUE(lengths->device() == q.device(), "lengths must be on q's device");
  }
}

at::Tensor empty_out(const at::Tensor& q) {
  // (B, T, H, D) memory returned as a (B, H, T, D) view; CPU outputs reuse cached buffers.
  const std::vector<int64_t> sizes{q.size(0), q.size(2), q.size(1), q.size(3)};
  at::Tensor out = q.is_cpu() ? empty_cpu_cached(sizes, q.scalar_type()) : at::empty(sizes, q.options());
  return out.transpose(1, 2);
}

at::Tensor lengths_or_undefined(const c10::optional<at::Tensor>& lengths) {
  return (lengths.has_value() && lengths->defined()) ? *lengths : at::Tensor();
}

at::Tensor fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels, double scale) {
  check_inputs(q, k, v, lengths, p, levels);
  const FractalParams params{p, levels, scale};
  at::Tensor out = empty_out(q);
  const at::Tensor len = lengths_or_undefined(lengths);
  if (q.is_cuda()) {
#ifdef MSTR_WITH_CUDA
    fractal_attention_fwd_cuda(q, k, v, len, params, out);
#else
    TORCH_CHECK(false, "mstr_kernels._C was built without CUDA");
#endif
  } else {
    TORCH_CHECK_VALUE(q.is_cpu(), "unsupported device ", q.device());
    fractal_attention_fwd_cpu(q, k, v, len, params, out);
  }
  return out;
}

std::vector<at::Tensor> bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const c10::optional<at::Tensor>& lengths,
                            int64_t p, int64_t levels, double scale) {
  check_inputs(q, k, v, lengths, p, levels);
  TORCH_CHECK_VALUE(dout.sizes() == q.sizes(), "dout.shape must equal q.shape=", q.sizes());
  TORCH_CHECK_TYPE(dout.scalar_type() == q.scalar_type(), "dout must have q's dtype");
  TORCH_CHECK_VALUE(dout.device() == q.device(), "dout must be on q's device");
  const FractalParams params{p, levels, scale};
  at::Tensor dq = empty_out(q), dk = empty_out(q), dv = empty_out(q);
  const at::Tensor len = lengths_or_undefined(lengths);
  if (q.is_cuda()) {
#ifdef MSTR_WITH_CUDA
    fractal_attention_bwd_cuda(dout, q, k, v, len, params, dq, dk, dv);
#else
    TORCH_CHECK(false, "mstr_kernels._C was built without CUDA");
#endif
  } else {
    TORCH_CHECK_VALUE(q.is_cpu(), "unsupported device ", q.device());
    fractal_attention_bwd_cpu(dout, q, k, v, len, params, dq, dk, dv);
  }
  return {dq, dk, dv};
}

bool cuda_built() {
#ifdef MSTR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace mstr_kernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mstr-kernels: fused fractal attention kernels (CPU and CUDA)";
  m.def("fractal_attention_fwd", &mstr_kernels::fwd, "fused forward", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("lengths"), py::arg("p"), py::arg("levels"), py::arg("scale"));
  m.def("fractal_attention_bwd", &mstr_kernels::bwd, "fused backward (recomputes from q, k, v)",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("lengths"),
        py::arg("p"), py::arg("levels"), py::arg("scale"));
  m.def("cpu_output_cache_stats", [] {
    const auto s = mstr_kernels::cpu_output_cache_stats();
    py::dict d;
    d["limit_bytes"] = s.limit_bytes;
    d["cached_bytes"] = s.cached_bytes;
    d["live_bytes"] = s.live_bytes;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    return d;
  }, "the CPU output cache: limit, cached and live bytes, hits and misses");
  m.def("empty_cpu_output_cache", &mstr_kernels::empty_cpu_output_cache,
        "frees the cached CPU output buffers; returns the bytes given back");
  m.def("cuda_built", &mstr_kernels::cuda_built, "whether the CUDA kernels were compiled in");
}
