/* vec_avx512.c - the element-wise ops for AVX-512F CPUs (Skylake-SP and later Xeons, Ice Lake,
 * Zen 4/5): vec_body.h over 16-lane zmm vectors. Reached only through dispatch.c when CPUID
 * and XCR0 say the zmm state is usable. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <stdint.h>

#define VEC_TABLE pylut_vecops_avx512
#define VL 16
typedef __m512 vf;
typedef __m512i vu;
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf a) { _mm512_storeu_ps(p, a); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_swap_pairs(vf a) { return _mm512_permute_ps(a, 0xB1); }
static inline vu vu_of(vf a) { return _mm512_castps_si512(a); }
static inline vf vf_of(vu u) { return _mm512_castsi512_ps(u); }
static inline vu vu_set1(uint32_t x) { return _mm512_set1_epi32((int)x); }
static inline vu vu_and(vu a, vu b) { return _mm512_and_si512(a, b); }
static inline vu vu_or(vu a, vu b) { return _mm512_or_si512(a, b); }
static inline vu vu_andnot(vu a, vu b) { return _mm512_andnot_si512(a, b); }
static inline vu vu_add(vu a, vu b) { return _mm512_add_epi32(a, b); }
static inline vu vu_sign(vu a) { return _mm512_srai_epi32(a, 31); }
static inline vu vu_min(vu a, vu b) { return _mm512_min_epu32(a, b); }
static inline vu vu_shl23(vu a) { return _mm512_slli_epi32(a, 23); }
static inline vu vu_cvtt(vf a) { return _mm512_cvttps_epi32(a); }
static inline vf vf_cvt(vu a) { return _mm512_cvtepi32_ps(a); }
/* 8 doubles x 2 accumulators; squares of floats are exact in double, so FMA changes nothing */
static inline double sumsq(const float *x, int64_t n) {
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512d lo = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), hi = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        a0 = _mm512_fmadd_pd(lo, lo, a0);
        a1 = _mm512_fmadd_pd(hi, hi, a1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    for (; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

/* AVX-512F's vcvtps2ph; NaN lanes cut back to sign | 0x7e00 as in the AVX2 unit (a dword
 * mask narrowed by vpmovdw: the 16-bit masked forms would need AVX-512BW) */
static inline void vh_store(uint8_t *out, vf a) {
    __m256i h = _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    const __m256i cut = _mm512_cvtepi32_epi16(_mm512_maskz_mov_epi32(nan, _mm512_set1_epi32(0x01ff)));
    h = _mm256_andnot_si256(cut, h);
    _mm256_storeu_si256((__m256i *)out, h);
}

#include "vec_body.h"
#endif
