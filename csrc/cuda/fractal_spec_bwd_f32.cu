// The specialised backwards for float inputs (see fractal_spec_kernel.cuh).
#define MSTR_SPEC_T float
#define MSTR_SPEC_BWD
#include "fractal_spec_kernel.cuh"
