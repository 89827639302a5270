/* f16_avx512.c - the F16 GEMM for AVX-512 CPUs (every tier dispatch.c calls avx512: its float
 * work needs AVX-512F only): f16_body.h over 16-lane zmm vectors. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define F16_FN pylut_gemm_f16_avx512
#define VL 16
#define F16_TB 4 /* 16 accumulators of 32 zmm */
typedef __m512 vf;
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline vf vf_load_h(const uint16_t *h) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h)); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vf_hsum(vf a) { return _mm512_reduce_add_ps(a); }

#include "f16_body.h"
#endif
