/* vec_avx2.c - the element-wise ops for AVX2 CPUs (Haswell and later, Zen 1-3): vec_body.h
 * over 8-lane ymm vectors. Reached only through dispatch.c when CPUID and XCR0 allow. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <stdint.h>

#define VEC_TABLE pylut_vecops_avx2
#define VL 8
typedef __m256 vf;
typedef __m256i vu;
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf a) { _mm256_storeu_ps(p, a); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_swap_pairs(vf a) { return _mm256_permute_ps(a, 0xB1); }
static inline vu vu_of(vf a) { return _mm256_castps_si256(a); }
static inline vf vf_of(vu u) { return _mm256_castsi256_ps(u); }
static inline vu vu_set1(uint32_t x) { return _mm256_set1_epi32((int)x); }
static inline vu vu_and(vu a, vu b) { return _mm256_and_si256(a, b); }
static inline vu vu_or(vu a, vu b) { return _mm256_or_si256(a, b); }
static inline vu vu_andnot(vu a, vu b) { return _mm256_andnot_si256(a, b); }
static inline vu vu_add(vu a, vu b) { return _mm256_add_epi32(a, b); }
static inline vu vu_sign(vu a) { return _mm256_srai_epi32(a, 31); }
static inline vu vu_min(vu a, vu b) { return _mm256_min_epu32(a, b); }
static inline vu vu_shl23(vu a) { return _mm256_slli_epi32(a, 23); }
static inline vu vu_cvtt(vf a) { return _mm256_cvttps_epi32(a); }
static inline vf vf_cvt(vu a) { return _mm256_cvtepi32_ps(a); }
/* 4 doubles x 2 accumulators; squares of floats are exact in double, so FMA changes nothing */
static inline double sumsq(const float *x, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        a0 = _mm256_fmadd_pd(lo, lo, a0);
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    const __m256d a = _mm256_add_pd(a0, a1);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    double ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

/* F16C; its NaNs keep their payload's top bits, so NaN lanes are cut back to sign | 0x7e00 */
static inline void vh_store(uint8_t *out, vf a) {
    __m128i h = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1));
    h = _mm_andnot_si128(_mm_and_si128(nan16, _mm_set1_epi16(0x01ff)), h);
    _mm_storeu_si128((__m128i *)out, h);
}

#include "vec_body.h"
#endif
