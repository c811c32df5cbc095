// Preamble of the x86 variants (fractal_attention_cpu_avx2.cpp, _avx512.cpp). Everything that
// other translation units may also instantiate (ATen, c10, the C++ library) is included here,
// BEFORE the `#pragma GCC target` of the variant, so those inline functions are compiled for the
// baseline ISA: the linker may keep any one copy of them and it must run on every x86-64 CPU.
// Only code in the variant's own namespace (ATen's at::vec::<ISA> and ours) sees the pragma.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/MathConstants.h>
#include <c10/util/TypeCast.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>
#include <c10/util/complex.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <type_traits>
#include <vector>
