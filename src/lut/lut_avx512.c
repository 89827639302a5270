/* lut_avx512.c - AVX-512BW kernels (vpshufb): Skylake-SP/X, Cascade Lake, Cooper Lake. */
#if defined(__x86_64__) || defined(_M_X64)
#define PYLUT_VBMI 0
#define PYLUT_AVX512_TABLE pylut_kernels_avx512
#include "lut_avx512.h"
#endif
