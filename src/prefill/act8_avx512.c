/* act8_avx512.c - the int8 activations of the prefill kernels (PYLUT_LUT_I8) on AVX-512F:
 * what pylut_act8_build_range (prefill.c, the twin) writes, byte for byte. A 2B4T prompt
 * spent ~8 % of its time in the twin's scalar loops on Zen 5; here 16 values a step.
 *
 * Why the bytes are the twin's:
 *   - the group maximum of |v| is exact whatever the order;
 *   - 127 / amax, amax / 127 and tscale * sum are the same scalar float operations;
 *   - v = x - sub * sub_scale is a product rounded to float, then a difference (the twin's
 *     unit has no FMA on x86-64), and round(v * inv) is the twin's magic-number rounding:
 *     adding and removing 1.5 * 2^23 rounds to the nearest integer, ties to even, as
 *     vrndscaleps does. The products use the explicit-rounding intrinsics, which the
 *     compiler may not contract into an FMA (plain vector * and + may be, under GCC's
 *     default -ffp-contract=fast);
 *   - the sums of the codes are exact int32. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "kernels.h"

#define RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* Values [c, c + 16) masked by mk (lanes past c1 read 0): x, or x - sub * sub_scale */
static inline __m512 values(const float *x, const int8_t *sub, __m512 ss, int64_t c, __mmask16 mk) {
    const __m512 v = _mm512_maskz_loadu_ps(mk, x + c);
    if (!sub) return v;
    const __m512 s = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, sub + c)));
    return _mm512_sub_round_ps(v, _mm512_mul_round_ps(s, ss, RN), RN);
}

static inline __mmask16 tail_mask(int64_t c, int64_t c1) {
    return c1 - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (c1 - c)) - 1u);
}

/* One group's codes (act8_group in prefill.c) */
static void group_avx512(const float *x, const int8_t *sub, float sub_scale, int64_t c0, int64_t c1, int64_t gw,
                         int8_t *tbl, float *tscale, float *sumx, int64_t g) {
    const __m512 ss = _mm512_set1_ps(sub_scale);
    __m512 mx = _mm512_setzero_ps();
    for (int64_t c = c0; c < c1; c += 16)
        mx = _mm512_max_ps(_mm512_abs_ps(values(x, sub, ss, c, tail_mask(c, c1))), mx); /* a > amax ? a : amax */
    const float amax = _mm512_reduce_max_ps(mx);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; c += 16) {
        const __mmask16 mk = tail_mask(c, c1);
        __m512 r = _mm512_roundscale_ps(_mm512_mul_round_ps(values(x, sub, ss, c, mk), vinv, RN), RN);
        r = _mm512_max_ps(_mm512_min_ps(r, hi), lo);
        const __m512i q = _mm512_maskz_cvtps_epi32(mk, r);
        _mm_mask_storeu_epi8(tbl + c, mk, _mm512_cvtepi32_epi8(q));
        sum = _mm512_add_epi32(sum, q);
    }
    for (int64_t c = c1; c < c0 + gw; c++) tbl[c] = 0; /* k padding */
    tscale[g] = amax / 127.0f;
    sumx[g] = tscale[g] * (float)_mm512_reduce_add_epi32(sum);
}

void pylut_act8_build_range_avx512(const float *x, pylut_lut *act, int64_t g0, int64_t g1) {
    const int64_t gw = act->group;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t c0 = g * gw, c1 = c0 + gw < act->k ? c0 + gw : act->k;
        group_avx512(x, NULL, 0.0f, c0, c1, gw, act->tbl, act->tscale, act->sumx, g);
        if (act->parts == 2) /* the first part's rounding residual, as the twin */
            group_avx512(x, act->tbl, act->tscale[g], c0, c1, gw, act->tbl + act->k_pad,
                         act->tscale + act->n_groups, act->sumx + act->n_groups, g);
    }
}

#endif /* x86-64 */
