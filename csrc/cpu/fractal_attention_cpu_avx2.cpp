// The CPU kernels compiled for AVX2 + FMA (chosen at run time by fractal_attention_cpu.cpp).
#include "cpu/fractal_attention_cpu_isa.h"

#if MSTR_CPU_X86_VARIANTS
#include "cpu/fractal_attention_cpu_x86.h"
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// g++ does not update the ISA macros after `#pragma GCC target` in C++, and sleef.h
// declares its vector functions (exported by libtorch_cpu) only under them.
#define __AVX__ 1
#include <sleef.h>
#undef __AVX__
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/fractal_attention_cpu_kernel.h"
#pragma GCC pop_options
#endif
