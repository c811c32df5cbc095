// Entries of the forward and backward specialised on (p, levels, D) (fractal_spec_cuda.cu):
// each launches its kernel and returns true when it covers the inputs, returns false (nothing
// launched) otherwise.
#pragma once
#include <ATen/ATen.h>

#include "../fractal_attention.h"

namespace mstr_kernels {

bool fractal_attention_fwd_cuda_specialised(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& lengths,
                                            const FractalParams& params, at::Tensor& out);
bool fractal_attention_bwd_cuda_specialised(const at::Tensor& dout, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& lengths,
                                            const FractalParams& params, at::Tensor& dq,
                                            at::Tensor& dk, at::Tensor& dv);

}  // namespace mstr_kernels
