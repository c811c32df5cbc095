// The specialised forwards for float inputs (see fractal_spec_kernel.cuh).
#define MSTR_SPEC_T float
#define MSTR_SPEC_FWD
#include "fractal_spec_kernel.cuh"
