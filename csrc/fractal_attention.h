// Kernel entry points behind mstr_kernels._C. All input checks live in
// fractal_attention.cpp; the kernels assume checked inputs:
//   q, k, v: (B, H, T, D), same dtype and device, any strides (including 0 for dout);
//   lengths: undefined, or int32 contiguous (B,) on the same device, 0 <= lengths[b] <= T;
//   outputs: allocated by the caller as (B, T, H, D) memory viewed as (B, H, T, D).
#pragma once
#include <ATen/ATen.h>

namespace mstr_kernels {

struct FractalParams {
  int64_t p;
  int64_t levels;
  double scale;
  // CUDA, packed sequences only (fractal_attention_{fwd,bwd}_cuda): the int32 contiguous
  // (2, entries) work list on q's device, entry e = rows work_list[0][e] .. + work_list[1][e]
  // (all valid, inside one sequence, at most varlen_item_frames(p, levels) rows:
  // cuda/fractal_spec_configs.h).
  at::Tensor work_list = {};
};

void fractal_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& lengths, const FractalParams& params,
                               at::Tensor& out);
void fractal_attention_bwd_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& lengths,
                               const FractalParams& params, at::Tensor& dq, at::Tensor& dk,
                               at::Tensor& dv);
// Packed sequences: q, k, v are (1, H, total, D) views of (total, H, D) tensors, outputs too;
// tiles: int32 contiguous (2, items), item i = rows tiles[0][i] .. + tiles[1][i] (all valid,
// at most p**levels, inside one sequence); rows of no item are not written.
void fractal_attention_varlen_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& tiles,
                                      const FractalParams& params, at::Tensor& out);
void fractal_attention_varlen_bwd_cpu(const at::Tensor& dout, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& tiles, const FractalParams& params,
                                      at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);
#ifdef MSTR_WITH_CUDA
// Padded batches, or packed sequences where params.work_list is defined: then q, k, v are
// (1, H, total, D) views of (total, H, D), outputs too, and lengths is undefined.
void fractal_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& lengths, const FractalParams& params,
                                at::Tensor& out);
void fractal_attention_bwd_cuda(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                const at::Tensor& v, const at::Tensor& lengths,
                                const FractalParams& params, at::Tensor& dq, at::Tensor& dk,
                                at::Tensor& dv);
#endif

}  // namespace mstr_kernels
