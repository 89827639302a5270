/* lut_avx512.h - the AVX-512 vocabulary of lut_body.h, instantiated by two translation units:
 * lut_avx512.c (PYLUT_VBMI 0) and lut_avx512vbmi.c (PYLUT_VBMI 1). They are reached only
 * through the dispatch table when CPUID and XCR0 say zmm state is usable.
 *
 * One 64-byte load holds a whole k-group of a 64-row tile (2 planes), so the 16-entry table
 * is replicated in all four 128-bit lanes. Two flavours:
 *   - AVX-512BW (Skylake-SP/X, Cascade Lake): vpshufb, which needs the nibble masked to 4
 *     bits (bit 7 would zero the result);
 *   - AVX-512VBMI + VNNI (Ice Lake, Sapphire Rapids, Zen 4/5): vpermb reads only the low 6
 *     index bits, and with the table replicated 4x bits 4-5 don't matter: no masking at all. */
#define LUT_X86_W 512
#if PYLUT_VBMI /* the K-quant sub-scale products, 8 a group pair: one vpdpwssd. Same integers. */
#define LUT_MADD_ACC
#define madd_acc(acc, a, b) _mm512_dpwssd_epi32((acc), (a), (b))
#endif
#include <math.h>

#include "lut_x86.h"

/* ------------------------------------------------------------------ vocabulary */

/* 64 lookups of 4-bit indices (low nibble / high nibble of each byte) */
#if PYLUT_VBMI
#define lookup_lo(tbl, w, m0f) _mm512_permutexvar_epi8((w), (tbl))
#define lookup_hi(tbl, w, m0f) _mm512_permutexvar_epi8(_mm512_srli_epi16((w), 4), (tbl))
#else
#define lookup_lo(tbl, w, m0f) _mm512_shuffle_epi8((tbl), _mm512_and_si512((w), (m0f)))
#define lookup_hi(tbl, w, m0f) _mm512_shuffle_epi8((tbl), _mm512_and_si512(_mm512_srli_epi16((w), 4), (m0f)))
#endif

/* Pair block p of two consecutive k-groups (tables tbl, tbl1): the products of both, added
 * before they reach an accumulator. lo: rows 0..31, hi: rows 32..63 (int16). */
static ALWAYS_INLINE void pair_lookup2(__m512i tbl, __m512i tbl1, const uint8_t *blk, int kgb, int p,
                                       __m512i mul12, __m512i m0f, __m512i *lo, __m512i *hi) {
    const __m512i w = _mm512_loadu_si512((const void *)(blk + 64 * p));
    const __m512i w1 = _mm512_loadu_si512((const void *)(blk + kgb + 64 * p));
    (void)m0f;
    *lo = _mm512_add_epi16(_mm512_maddubs_epi16(mul12, lookup_lo(tbl, w, m0f)),
                           _mm512_maddubs_epi16(mul12, lookup_lo(tbl1, w1, m0f)));
    *hi = _mm512_add_epi16(_mm512_maddubs_epi16(mul12, lookup_hi(tbl, w, m0f)),
                           _mm512_maddubs_epi16(mul12, lookup_hi(tbl1, w1, m0f)));
}

/* One group's lookups (lut_body.h): pacc[p][h] += plane 2p + 2 * plane 2p+1 and lacc[h] +=
 * the lone plane, rows 32h..32h+31. Two k-groups per step: their products are added before
 * the accumulator, halving the loop overhead and the accumulators' dependency chains. */
static ALWAYS_INLINE void plane_sums(const uint8_t *blk, const int8_t *T, int kpg, const int bits,
                                     __m512i pacc[4][2], __m512i lacc[2]) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const __m512i m0f = _mm512_set1_epi8(0x0f), mul12 = MUL12;
    (void)m0f;
    for (int j = 0; j < kpg; j += 2, blk += 2 * kgb, T += 32) { /* kpg is even (group % 8 == 0) */
        const __m512i tbl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)T));
        const __m512i tbl1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(T + 16)));
        for (int o = 0; o < 2 * kgb; o += 64) _mm_prefetch((const char *)blk + PF_B_DIST + o, PF_B_HINT);
        for (int p = 0; p < npair; p++) {
            __m512i lo, hi;
            pair_lookup2(tbl, tbl1, blk, kgb, p, mul12, m0f, &lo, &hi);
            pacc[p][0] = _mm512_add_epi16(pacc[p][0], lo);
            pacc[p][1] = _mm512_add_epi16(pacc[p][1], hi);
        }
        if (lone) /* 32 bytes a k-group: rows 0..31 in the low nibbles, 32..63 in the high ones */
            for (int u = 0; u < 2; u++) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(blk + u * kgb + 64 * npair));
                __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(w), _mm256_srli_epi16(w, 4), 1);
                __m512i v = lookup_lo(u ? tbl1 : tbl, idx, m0f);
                lacc[0] = _mm512_add_epi16(lacc[0], _mm512_cvtepi8_epi16(_mm512_castsi512_si256(v)));
                lacc[1] = _mm512_add_epi16(lacc[1], _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(v, 1)));
            }
    }
}

/* unpacklo/hi leave the int32 pair sums of a 32-row vector as lo = rows {0-3, 8-11, 16-19,
 * 24-27}, hi = {4-7, ...}: one two-source qword permute each puts them back in order */
#define rows_lo(s0, s1) _mm512_permutex2var_epi64((s0), _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), (s1))
#define rows_hi(s0, s1) _mm512_permutex2var_epi64((s0), _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), (s1))

/* One T3 pair block: a[h] += the signed lookups of rows 32h.., both triples; the sign bits
 * are a mask register each */
static ALWAYS_INLINE void t3_pair_sums(const uint8_t *blk, const int8_t *tbl, __m512i a[2]) {
    const __m512i m0f = _mm512_set1_epi8(0x0f), ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    _mm_prefetch((const char *)blk + PF_T3_DIST, _MM_HINT_T0);
    _mm_prefetch((const char *)blk + PF_T3_L2, _MM_HINT_T1); /* lut_x86.h */
    const __m512i w = _mm512_loadu_si512((const void *)blk);
    __m512i vlo, vhi;
#if PYLUT_VBMI
    { /* (w & 0x0f) | tsel in one vpternlog; one vpermb reads both tables */
        const __m512i tsel = _mm512_set1_epi16(0x1000); /* odd bytes: index bit 4 -> triple j+1 */
        const __m512i t = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)tbl));
        vlo = _mm512_permutexvar_epi8(_mm512_ternarylogic_epi32(w, m0f, tsel, 0xEA), t);
        vhi = _mm512_permutexvar_epi8(_mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), m0f, tsel, 0xEA), t);
    }
#else
    { /* one table per vpshufb: look up in both, keep triple j+1's on odd bytes */
        const __mmask64 odd = 0xAAAAAAAAAAAAAAAAull;
        const __m512i t0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)tbl));
        const __m512i t1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tbl + 16)));
        const __m512i ilo = _mm512_and_si512(w, m0f), ihi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m0f);
        vlo = _mm512_mask_blend_epi8(odd, _mm512_shuffle_epi8(t0, ilo), _mm512_shuffle_epi8(t1, ilo));
        vhi = _mm512_mask_blend_epi8(odd, _mm512_shuffle_epi8(t0, ihi), _mm512_shuffle_epi8(t1, ihi));
    }
#endif
    uint64_t slo, shi;
    memcpy(&slo, blk + 64, 8);
    memcpy(&shi, blk + 72, 8);
    vlo = _mm512_mask_sub_epi8(vlo, _cvtu64_mask64(slo), zero, vlo);
    vhi = _mm512_mask_sub_epi8(vhi, _cvtu64_mask64(shi), zero, vhi);
    /* a row's two triples are adjacent bytes: one maddubs sums them */
    a[0] = _mm512_add_epi16(a[0], _mm512_maddubs_epi16(ones, vlo));
    a[1] = _mm512_add_epi16(a[1], _mm512_maddubs_epi16(ones, vhi));
}

/* T3 tables (pylut_lut_build_t3_range, the twin, writes the same bytes): a triple's 16 entries
 * in one vector, lane i = a*x0 + b*x1 + c*x2 with the twin's float operations in its order.
 * Its sums (-x1) - x2, -x1 + x2, ..., then - x0, are sums of sign-flipped operands, and a
 * flip or an added +-0 is exact: lane i adds x1 ^ sign (or 0), x2 ^ sign (or 0), then -x0 (or
 * 0). cvtps2dq rounds half to even like the twin's 1.5 * 2^23 trick; then the same clamp. */
static void lut_build_t3(const float *x, pylut_lut *lut, int64_t g0, int64_t g1) {
    const int gw = lut->group, tg = pylut_t3_triples(gw);
    /* per lane: which operands count (mask bits) and which are negated (sign bits); lanes
     * 0-8 are a = -1 with (b, c) = the nine pairs, 9-13 a = 0 with the first five, 14-15 0 */
    const __mmask16 use0 = 0x01ff, use1 = 0x0fc7, use2 = 0x1b6d;
    const __m512i sg1 = _mm512_setr_epi32(INT32_MIN, INT32_MIN, INT32_MIN, 0, 0, 0, 0, 0, 0,
                                          INT32_MIN, INT32_MIN, INT32_MIN, 0, 0, 0, 0);
    const __m512i sg2 = _mm512_setr_epi32(INT32_MIN, 0, 0, INT32_MIN, 0, 0, INT32_MIN, 0, 0,
                                          INT32_MIN, 0, 0, INT32_MIN, 0, 0, 0);
    const __m512i sg0 = _mm512_set1_epi32(INT32_MIN);
    const __m512i hi = _mm512_set1_epi32(127), lo = _mm512_set1_epi32(-127);
    for (int64_t g = g0; g < g1; g++) {
        float v[3 * (PYLUT_T3_MAX_GROUP / 3 + 2)]; /* the group's triples, zero-padded */
        const int64_t left = lut->k - g * gw;
        const int have = left <= 0 ? 0 : left < gw ? (int)left : gw;
        memcpy(v, x + g * gw, (size_t)have * sizeof(float));
        memset(v + have, 0, (size_t)(3 * tg - have) * sizeof(float));
        float amax = 0.0f;
        for (int j = 0; j < tg; j++) {
            float a = 0.0f;
            a += fabsf(v[3 * j]);
            a += fabsf(v[3 * j + 1]);
            a += fabsf(v[3 * j + 2]);
            if (a > amax) amax = a;
        }
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        lut->tscale[g] = amax / 127.0f;
        const __m512 vinv = _mm512_set1_ps(inv);
        int8_t *t = lut->tbl + g * tg * 16;
        for (int j = 0; j < tg; j++, t += 16) {
            const __m512i x0 = _mm512_castps_si512(_mm512_set1_ps(v[3 * j]));
            const __m512i x1 = _mm512_castps_si512(_mm512_set1_ps(v[3 * j + 1]));
            const __m512i x2 = _mm512_castps_si512(_mm512_set1_ps(v[3 * j + 2]));
            const __m512 bc = _mm512_add_ps(_mm512_castsi512_ps(_mm512_maskz_xor_epi32(use1, x1, sg1)),
                                            _mm512_castsi512_ps(_mm512_maskz_xor_epi32(use2, x2, sg2)));
            const __m512 e = _mm512_add_ps(bc, _mm512_castsi512_ps(_mm512_maskz_xor_epi32(use0, x0, sg0)));
            __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(e, vinv));
            r = _mm512_max_epi32(_mm512_min_epi32(r, hi), lo);
            _mm_storeu_si128((__m128i *)t, _mm512_cvtepi32_epi8(r));
        }
    }
}

#include "lut_body.h"

const pylut_kernels PYLUT_AVX512_TABLE = {
    LUT_BODY_KERNELS,
    .b_entries = pylut_b_entries_avx2, /* 8 entries a k-group: ymm is the natural width */
    .t3_build = lut_build_t3, /* 16 entries a triple: one zmm */
    .act8_build = pylut_act8_build_range_avx512,
#if PYLUT_VBMI
    .gemm_b_i8 = pylut_gemm_b_i8_gfni, /* the VBMI tier requires VNNI and GFNI */
    .i8_from = PYLUT_I8_FROM_VNNI_GFNI,
    .t3_i8_from = 16, /* B2's threshold: the same int8 kernel, T3 unpacked in SIMD */
    /* Ternary stays dense (T3): its prompts take the same int8 kernel as B2's (unpack_t3 in
     * prefill_vnni_body.h; groups of 12n, pylut_t3_i8_group), and with its codes prefetched
     * into L2 and its tables built in zmm its decode reads 10 % fewer bytes a token and wins:
     * Zen 5, 2B4T I2_S, 1 thread, T3 / B2 alternated on a loaded machine: decode 1.16x
     * (1.11x in CPU time), 128-token prefill 1.00x (docs/benchmarks.md).
     * TQ1_0/TQ2_0 files keep B2 (pylut.kernels.ternary_layout(tq=True)). */
    .ternary_planes = 0,
#endif /* (the BW tier's CPUs with VNNI get pylut_gemm_b_i8_vnni from dispatch.c) */
    /* the baselines (baseline/baseline_avx2.c): bandwidth-bound, 256-bit loads keep up */
    .attn_f16 = pylut_attn_f16_avx2,
    .dq8_gemv = pylut_dq8_gemv_avx2,
};
