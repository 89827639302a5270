/* f16_avx2.c - the F16 GEMM for AVX2 + FMA + F16C CPUs (Haswell and later, Zen 1-3):
 * f16_body.h over 8-lane ymm vectors. Reached only through dispatch.c when CPUID and XCR0 allow. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define F16_FN pylut_gemm_f16_avx2
#define VL 8
#define F16_TB 3 /* 4 rows x 3 tokens = 12 accumulators + a weight vector of 16 ymm */
typedef __m256 vf;
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vf vf_load_h(const uint16_t *h) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vf_hsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

#include "f16_body.h"
#endif
