// The specialised backwards for c10::Half inputs (see fractal_spec_kernel.cuh).
#define MSTR_SPEC_T c10::Half
#define MSTR_SPEC_BWD
#include "fractal_spec_kernel.cuh"
