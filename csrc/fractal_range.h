// The range of inputs the op accepts (SPEC section 1), for the C++ entry and the kernels. The
// Python copy, read by validation and the backend registry, is mstr_kernels/ops/validation.py's
// SPEC; tests/test_op_api.py checks that the two agree (and mstr_kernels._C.spec_range()).
#pragma once
#include <cstdint>

namespace mstr_kernels {
namespace spec {

constexpr int64_t kMinP = 2;
constexpr int64_t kMaxP = 8;
constexpr int64_t kMaxTile = 1024;  // p ** levels
constexpr int64_t kMinHeadDim = 1;
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxLevels = 10;  // of p = kMinP: 2 ** 10 = kMaxTile

}  // namespace spec
}  // namespace mstr_kernels
