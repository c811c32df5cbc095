// Entry points of mstr_kernels._C: every input check in one place, then dispatch to the CPU or
// CUDA kernels (fractal_attention.h).
//
// The ops are registered with the dispatcher (TORCH_LIBRARY): mstr_kernels::fractal_attention_ext_fwd
// carries its autograd here in C++, so an eager call costs one dispatcher hop and no Python
// (the Python custom-op layer alone cost more than SDPA's whole call); torch.compile sees the two
// ops as opaque nodes (their fake kernels are registered by mstr_kernels/ops/extension.py). The
// pybind functions of the same names are the fused-backend contract of ops/backends.py.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/output_cache.h"
#include "cuda/fractal_spec_configs.h"
#include "fractal_attention.h"
#include "fractal_range.h"

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
  TORCH_CHECK_VALUE(p >= spec::kMinP && p <= spec::kMaxP, "p=", p, " is out of range ",
                    spec::kMinP, " <= p <= ", spec::kMaxP);
  int64_t tile = 1;
  for (int64_t l = 0; l < levels && tile <= spec::kMaxTile; ++l) tile *= p;
  TORCH_CHECK_VALUE(levels >= 1 && tile <= spec::kMaxTile, "levels=", levels,
                    " is out of range: 1 <= levels, p**levels <= ", spec::kMaxTile);
  TORCH_CHECK_VALUE(q.size(3) >= spec::kMinHeadDim && q.size(3) <= spec::kMaxHeadDim,
                    "head dim D=", q.size(3), " is out of range ", spec::kMinHeadDim,
                    " <= D <= ", spec::kMaxHeadDim);
  TORCH_CHECK_VALUE(q.size(2) >= 1, "T=", q.size(2), " must be >= 1");
  if (lengths.has_value() && lengths->defined()) {
    TORCH_CHECK_TYPE(lengths->scalar_type() == at::kInt || lengths->scalar_type() == at::kLong,
                     "lengths.dtype must be int32 or int64, got ", lengths->scalar_type());
    TORCH_CHECK_VALUE(lengths->dim() == 1 && lengths->size(0) == q.size(0),
                      "lengths must have shape (B,) = (", q.size(0), ",)");
    TORCH_CHECK_VALUE(lengths->device() == q.device(), "lengths must be on q's device");
  }
}

// 0 <= lengths[b] <= T checked on the given values (int64 before any narrowing), then the
// int32 contiguous lengths the kernels read (undefined for none). CPU: read on the host (no
// device sync); CUDA: a device-side assertion, no host read. The words match
// mstr_kernels/ops/validation.py's lengths_range_message.
at::Tensor checked_lengths(const c10::optional<at::Tensor>& lengths, int64_t T) {
  if (!lengths.has_value() || !lengths->defined()) return at::Tensor();
  const at::Tensor& len = *lengths;
  if (len.is_cpu()) {
    // One pass over the values: the check, and the int32 copy when they are int64 (no
    // dispatched conversion: this runs on every call).
    const at::Tensor c = len.contiguous();
    const bool narrow = c.scalar_type() != at::kInt;
    at::Tensor out = narrow ? at::empty({c.numel()}, c.options().dtype(at::kInt)) : c;
    int32_t* dst = out.data_ptr<int32_t>();
    AT_DISPATCH_INDEX_TYPES(c.scalar_type(), "fractal_attention lengths", [&] {
      const index_t* d = c.data_ptr<index_t>();
      for (int64_t b = 0; b < c.numel(); ++b) {
        TORCH_CHECK_VALUE(d[b] >= 0 && d[b] <= T, "lengths contains ", int64_t(d[b]),
                          ", out of range: every entry must satisfy 0 <= lengths[b] <= T = ", T);
        if (narrow) dst[b] = int32_t(d[b]);
      }
    });
    return out;
  }
  at::_assert_async(at::logical_and(len.ge(0), len.le(T)).all(),
                    "lengths has an entry out of range: every entry must satisfy "
                    "0 <= lengths[b] <= T = " + std::to_string(T));
  return len.scalar_type() == at::kInt ? len.contiguous() : len.to(at::kInt).contiguous();
}

// The (B, T, H, D) memory of every output, returned as a (B, H, T, D) view; CPU outputs reuse
// cached buffers.
at::Tensor empty_out(const at::Tensor& q) {
  const std::vector<int64_t> sizes{q.size(0), q.size(2), q.size(1), q.size(3)};
  at::Tensor out = q.is_cpu() ? empty_cpu_cached(sizes, q.scalar_type()) : at::empty(sizes, q.options());
  return out.transpose(1, 2);
}

at::Tensor fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels, double scale) {
  check_inputs(q, k, v, lengths, p, levels);
  const at::Tensor len = checked_lengths(lengths, q.size(2));
  const FractalParams params{p, levels, scale};
  at::Tensor out = empty_out(q);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels, double scale) {
  check_inputs(q, k, v, lengths, p, levels);
  TORCH_CHECK_VALUE(dout.sizes() == q.sizes(), "dout.shape must equal q.shape=", q.sizes());
  TORCH_CHECK_VALUE(dout.device() == q.device(), "dout must be on q's device");
  // autograd may hand a gradient of another dtype
  const at::Tensor g = dout.scalar_type() == q.scalar_type() ? dout : dout.to(q.scalar_type());
  const at::Tensor len = checked_lengths(lengths, q.size(2));
  const FractalParams params{p, levels, scale};
  at::Tensor dq = empty_out(q), dk = empty_out(q), dv = empty_out(q);
  if (q.is_cuda()) {
#ifdef MSTR_WITH_CUDA
    fractal_attention_bwd_cuda(g, q, k, v, len, params, dq, dk, dv);
#else
    TORCH_CHECK(false, "mstr_kernels._C was built without CUDA");
#endif
  } else {
    TORCH_CHECK_VALUE(q.is_cpu(), "unsupported device ", q.device());
    fractal_attention_bwd_cpu(g, q, k, v, len, params, dq, dk, dv);
  }
  return {dq, dk, dv};
}

std::vector<at::Tensor> bwd_list(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const c10::optional<at::Tensor>& lengths,
                                 int64_t p, int64_t levels, double scale) {
  auto [dq, dk, dv] = bwd(dout, q, k, v, lengths, p, levels, scale);
  return {dq, dk, dv};
}

// Autograd of mstr_kernels::fractal_attention_ext_fwd: saves the inputs only (the backward
// recomputes the rest) and runs mstr_kernels::fractal_attention_ext_bwd, both through the
// dispatcher so that tracing (torch.compile) sees the two ops.
class FractalAttentionFunction : public torch::autograd::Function<FractalAttentionFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels,
                            double scale) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mstr_kernels::fractal_attention_ext_fwd", "")
                         .typed<decltype(fwd)>();
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(q, k, v, lengths, p, levels, scale);
    }
    ctx->save_for_backward({q, k, v, lengths.has_value() ? *lengths : at::Tensor()});
    ctx->saved_data["p"] = p;
    ctx->saved_data["levels"] = levels;
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("mstr_kernels::fractal_attention_ext_bwd", "")
                         .typed<decltype(bwd)>();
    const auto saved = ctx->get_saved_variables();
    const c10::optional<at::Tensor> lengths =
        saved[3].defined() ? c10::optional<at::Tensor>(saved[3]) : c10::nullopt;
    at::Tensor dq, dk, dv;
    if (grads[0].defined()) {
      std::tie(dq, dk, dv) = op.call(grads[0], saved[0], saved[1], saved[2], lengths,
                                     ctx->saved_data["p"].toInt(), ctx->saved_data["levels"].toInt(),
                                     ctx->saved_data["scale"].toDouble());
    }
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fwd_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const c10::optional<at::Tensor>& lengths, int64_t p, int64_t levels,
                        double scale) {
  return FractalAttentionFunction::apply(q, k, v, lengths, p, levels, scale);
}

// Packed sequences (ops/varlen.py): q, k, v (total, H, D), any strides; `tiles` the (2, items)
// int32 work list built from cu_seqlens (entries of at most p**levels rows on the CPU,
// varlen_item_frames(p, levels) on CUDA). The kernels see (1, H, total, D) views.
at::Tensor as_batch_of_one(const at::Tensor& x) { return x.transpose(0, 1).unsqueeze(0); }

// Every entry inside 0 <= start, 0 <= rows <= max_rows, start + rows <= total: read on the host
// for CPU tensors, a device-side assertion on CUDA (no sync).
void check_work_list(const at::Tensor& tiles, int64_t max_rows, int64_t total) {
  const int64_t items = tiles.size(1);
  if (!tiles.is_cpu()) {
    const at::Tensor start = tiles[0], rows = tiles[1];
    at::_assert_async(rows.ge(0).logical_and_(rows.le(max_rows)).logical_and_(start.ge(0))
                          .logical_and_((start + rows).le(total)).all(),
                      "tiles has an entry outside 0 <= start, 0 <= rows <= " +
                          std::to_string(max_rows) + ", start + rows <= total = " +
                          std::to_string(total));
    return;
  }
  const int32_t* start = tiles.data_ptr<int32_t>();
  for (int64_t i = 0; i < items; ++i) {
    const int64_t s = start[i], n = start[items + i];
    TORCH_CHECK_VALUE(s >= 0 && n >= 0 && n <= max_rows && s + n <= total, "tiles item ", i,
                      " = (start ", s, ", rows ", n, ") is outside 0 <= start, 0 <= rows <= ",
                      max_rows, ", start + rows <= total = ", total);
  }
}

void check_varlen_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& tiles, int64_t p, int64_t levels) {
  TORCH_CHECK_VALUE(q.dim() == 3, "q must be (total, H, D), got ", q.dim(), " dimensions");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                    "k.shape and v.shape must equal q.shape=", q.sizes());
  TORCH_CHECK_VALUE(q.is_cpu() || q.is_cuda(), "unsupported device ", q.device());
#ifndef MSTR_WITH_CUDA
  TORCH_CHECK(q.is_cpu(), "mstr_kernels._C was built without CUDA");
#endif
  check_inputs(as_batch_of_one(q), as_batch_of_one(k), as_batch_of_one(v), c10::nullopt, p,
               levels);
  TORCH_CHECK_TYPE(tiles.scalar_type() == at::kInt, "tiles must be int32");
  TORCH_CHECK_VALUE(tiles.dim() == 2 && tiles.size(0) == 2 && tiles.is_contiguous() &&
                        tiles.device() == q.device(),
                    "tiles must be a contiguous (2, items) tensor on q's device");
  const int64_t tile = static_cast<int64_t>(std::llround(std::pow(double(p), double(levels))));
  check_work_list(tiles, q.is_cuda() ? varlen_item_frames(p, levels) : tile, q.size(0));
}

at::Tensor empty_packed(const at::Tensor& q) {
  return q.is_cpu() ? empty_cpu_cached({q.size(0), q.size(1), q.size(2)}, q.scalar_type())
                    : at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
}

at::Tensor fwd_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& tiles, int64_t p, int64_t levels, double scale) {
  check_varlen_inputs(q, k, v, tiles, p, levels);
  at::Tensor out = empty_packed(q);
  at::Tensor out_view = as_batch_of_one(out);
  if (q.is_cuda()) {
#ifdef MSTR_WITH_CUDA
    fractal_attention_fwd_cuda(as_batch_of_one(q), as_batch_of_one(k), as_batch_of_one(v),
                               at::Tensor(), FractalParams{p, levels, scale, tiles}, out_view);
#endif
    return out;
  }
  fractal_attention_varlen_fwd_cpu(as_batch_of_one(q), as_batch_of_one(k), as_batch_of_one(v),
                                   tiles, FractalParams{p, levels, scale}, out_view);
  return out;
}

std::vector<at::Tensor> bwd_varlen(const at::Tensor& dout, const at::Tensor& q,
                                   const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& tiles, int64_t p, int64_t levels,
                                   double scale) {
  check_varlen_inputs(q, k, v, tiles, p, levels);
  TORCH_CHECK_VALUE(dout.sizes() == q.sizes(), "dout.shape must equal q.shape=", q.sizes());
  TORCH_CHECK_VALUE(dout.device() == q.device(), "dout must be on q's device");
  TORCH_CHECK_TYPE(dout.scalar_type() == q.scalar_type(), "dout must have q's dtype");
  std::vector<at::Tensor> grads, views;
  for (int i = 0; i < 3; ++i) {
    grads.push_back(empty_packed(q));
    views.push_back(as_batch_of_one(grads.back()));
  }
  if (q.is_cuda()) {
#ifdef MSTR_WITH_CUDA
    fractal_attention_bwd_cuda(as_batch_of_one(dout), as_batch_of_one(q), as_batch_of_one(k),
                               as_batch_of_one(v), at::Tensor(),
                               FractalParams{p, levels, scale, tiles}, views[0], views[1],
                               views[2]);
#endif
    return grads;
  }
  fractal_attention_varlen_bwd_cpu(as_batch_of_one(dout), as_batch_of_one(q), as_batch_of_one(k),
                                   as_batch_of_one(v), tiles, FractalParams{p, levels, scale},
                                   views[0], views[1], views[2]);
  return grads;
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

TORCH_LIBRARY_FRAGMENT(mstr_kernels, m) {
  m.def("fractal_attention_ext_fwd(Tensor q, Tensor k, Tensor v, Tensor? lengths, int p, "
        "int levels, float scale) -> Tensor");
  m.def("fractal_attention_ext_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? lengths, "
        "int p, int levels, float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mstr_kernels, CPU, m) {
  m.impl("fractal_attention_ext_fwd", TORCH_FN(mstr_kernels::fwd));
  m.impl("fractal_attention_ext_bwd", TORCH_FN(mstr_kernels::bwd));
}

TORCH_LIBRARY_IMPL(mstr_kernels, CUDA, m) {
  m.impl("fractal_attention_ext_fwd", TORCH_FN(mstr_kernels::fwd));
  m.impl("fractal_attention_ext_bwd", TORCH_FN(mstr_kernels::bwd));
}

TORCH_LIBRARY_IMPL(mstr_kernels, Autograd, m) {
  m.impl("fractal_attention_ext_fwd", TORCH_FN(mstr_kernels::fwd_autograd));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mstr-kernels: fused fractal attention kernels (CPU and CUDA)";
  m.def("fractal_attention_fwd", &mstr_kernels::fwd, "fused forward", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("lengths"), py::arg("p"), py::arg("levels"), py::arg("scale"));
  m.def("fractal_attention_bwd", &mstr_kernels::bwd_list, "fused backward (recomputes from q, k, v)",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("lengths"),
        py::arg("p"), py::arg("levels"), py::arg("scale"));
  m.def("spec_range", [] {
    namespace s = mstr_kernels::spec;
    py::dict d;
    d["p_min"] = s::kMinP;
    d["p_max"] = s::kMaxP;
    d["max_tile"] = s::kMaxTile;
    d["head_dim_min"] = s::kMinHeadDim;
    d["head_dim_max"] = s::kMaxHeadDim;
    d["max_levels"] = s::kMaxLevels;
    return d;
  }, "the supported range compiled in (csrc/fractal_range.h)");
  m.def("fractal_attention_varlen_fwd", &mstr_kernels::fwd_varlen,
        "fused forward of packed sequences (CPU and CUDA)", py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("tiles"), py::arg("p"), py::arg("levels"), py::arg("scale"));
  m.def("fractal_attention_varlen_bwd", &mstr_kernels::bwd_varlen,
        "fused backward of packed sequences (CPU and CUDA)", py::arg("dout"), py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("tiles"), py::arg("p"), py::arg("levels"), py::arg("scale"));
  m.def("varlen_item_frames",
        [](int64_t p, int64_t levels) { return mstr_kernels::varlen_item_frames(p, levels); },
        "rows per entry of the cuda backend's packed-sequence work list", py::arg("p"),
        py::arg("levels"));
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
