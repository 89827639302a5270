/* lut_avx512vbmi.c - AVX-512VBMI kernels (vpermb): Ice Lake+, Sapphire Rapids, Zen 4/5. */
#if defined(__x86_64__) || defined(_M_X64)
#define PYLUT_VBMI 1
#define PYLUT_AVX512_TABLE pylut_kernels_avx512vbmi
#include "lut_avx512.h"
#endif
