// The specialised forwards for c10::BFloat16 inputs (see fractal_spec_kernel.cuh).
#define MSTR_SPEC_T c10::BFloat16
#define MSTR_SPEC_FWD
#define MSTR_SPEC_VARIANTS  // and the A/B variants of the headline configuration
#include "fractal_spec_kernel.cuh"
