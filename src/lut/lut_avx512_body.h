/* lut_avx512_body.h - AVX-512 table-lookup kernels, written once and instantiated by two
 * translation units: lut_avx512.c (PYLUT_VBMI 0) and lut_avx512vbmi.c (PYLUT_VBMI 1). They
 * are reached only through the dispatch table when CPUID and XCR0 say zmm state is usable.
 *
 * One 64-byte load holds a whole k-group of a 64-row tile (2 planes), so the 16-entry table
 * is replicated in all four 128-bit lanes. Two flavours share one body:
 *   - AVX-512BW (Skylake-SP/X, Cascade Lake): vpshufb, which needs the nibble masked to 4
 *     bits (bit 7 would zero the result);
 *   - AVX-512VBMI + VNNI (Ice Lake, Sapphire Rapids, Zen 4/5): vpermb reads only the low 6
 *     index bits, and with the table replicated 4x bits 4-5 don't matter: no masking at all.
 * The int16 bounds are the ones proved in lut_avx2.c (same accumulation order). */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "lut_prefetch_x86.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* acc + the int32 pair sums of a*b (int16): one vpdpwssd where VNNI comes with VBMI (the
 * K-quant sub-scale products, 8 a group pair), else vpmaddwd + vpaddd. Same integers. */
#if PYLUT_VBMI
#define madd_acc(acc, a, b) _mm512_dpwssd_epi32((acc), (a), (b))
#else
#define madd_acc(acc, a, b) _mm512_add_epi32((acc), _mm512_madd_epi16((a), (b)))
#endif

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

/* int16 x32 (rows r..r+31) -> two int32 x16, shifted left by sh, added to r0, r1 */
static ALWAYS_INLINE void widen_add(__m512i a16, int sh, __m512i *r0, __m512i *r1) {
    __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(a16));
    __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(a16, 1));
    *r0 = _mm512_add_epi32(*r0, _mm512_slli_epi32(lo, sh));
    *r1 = _mm512_add_epi32(*r1, _mm512_slli_epi32(hi, sh));
}

static ALWAYS_INLINE void store_tile(float *y, int64_t row0, int64_t m, const __m512 acc[4]) {
    if (row0 + PYLUT_TILE_M <= m) {
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(y + row0 + 16 * q, acc[q]);
    } else {
        float tmp[PYLUT_TILE_M];
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(tmp + 16 * q, acc[q]);
        memcpy(y + row0, tmp, (size_t)(m - row0) * sizeof(float));
    }
}

/* 16 rows' fp16 scale (or bias) of group g of a one-level matrix */
static ALWAYS_INLINE __m512 group_param(const pylut_qmatrix *qm, const uint16_t *base, int64_t t, int64_t g, int q) {
    const int64_t groups = qm->k_pad / qm->group;
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(base + (t * groups + g) * PYLUT_TILE_M + 16 * q)));
}

/* 16 rows' sub-scales (bias 0) or sub-biases (bias 1) of group g as floats: int8, or the
 * low / high nibbles */
static ALWAYS_INLINE __m512 sub_values(const pylut_qmatrix *qm, int bias, int64_t t, int64_t g, int64_t groups, int q) {
    const int64_t at = (t * groups + g) * PYLUT_TILE_M + 16 * q;
    if (qm->sub_nibbles) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)qm->sub_scale + at)));
        return _mm512_cvtepi32_ps(bias ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(15)));
    }
    const __m128i s8 = _mm_loadu_si128((const __m128i *)((bias ? qm->sub_bias : qm->sub_scale) + at));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s8));
}

/* ------------------------------------------------------------------ B-type GEMM */

/* One group's lookups, planes not yet weighted: pacc[p][h] = plane 2p + 2 * plane 2p+1 and
 * lacc[h] = the lone plane (odd bits), rows 32h..32h+31, int16. Two k-groups per step: their
 * products are added before the accumulator, halving the loop overhead and the
 * accumulators' dependency chains. Advances blk and T. */
static ALWAYS_INLINE void group_plane_sums(const uint8_t **pblk, const int8_t **pT, int kpg, const int bits,
                                           __m512i pacc[4][2], __m512i lacc[2]) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const __m512i m0f = _mm512_set1_epi8(0x0f);
    const __m512i mul12 = _mm512_set1_epi16(0x0201); /* bytes (1, 2): plane 2p + 2*plane 2p+1 */
    const uint8_t *blk = *pblk;
    const int8_t *T = *pT;
    (void)m0f;
    for (int p = 0; p < npair; p++) pacc[p][0] = pacc[p][1] = _mm512_setzero_si512();
    lacc[0] = lacc[1] = _mm512_setzero_si512();
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
    *pblk = blk;
    *pT = T;
}

/* One group's int16 lookup sums A_g = sum_i 2^i T[idx_i] of rows 0..31 (a[0]) and 32..63
 * (a[1]) when (2^b-1) * group <= 1032 keeps every partial sum in int16 (kernels.h): the
 * planes are weighted before any widening. Advances blk and T. */
static ALWAYS_INLINE void group_sums16(const uint8_t **pblk, const int8_t **pT, int kpg, const int bits,
                                       __m512i a[2]) {
    const int npair = bits / 2, lone = bits & 1;
    __m512i pacc[4][2], lacc[2];
    group_plane_sums(pblk, pT, kpg, bits, pacc, lacc);
    for (int h = 0; h < 2; h++) {
        a[h] = lone ? _mm512_slli_epi16(lacc[h], bits - 1) : _mm512_setzero_si512();
        for (int p = 0; p < npair; p++) a[h] = _mm512_add_epi16(a[h], _mm512_slli_epi16(pacc[p][h], 2 * p));
    }
}

static ALWAYS_INLINE void gemm_b_tile(const pylut_qmatrix *qm, const pylut_lut *L, float *y,
                                      int64_t t, const int bits) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const int64_t groups = qm->k_pad / qm->group;
    const int kpg = qm->group / PYLUT_KGROUP;
    const float h = (float)((1 << bits) - 1) * 0.5f;
    const int small = ((1 << bits) - 1) * qm->group <= 1032; /* a group's weighted sum fits int16 (kernels.h) */
    __m512 acc[4], dsup[4], dmsup[4]; /* dsup/dmsup: the current super-block's d, dmin */
    const int64_t gps = qm->super ? qm->super / qm->group : 1;
    for (int q = 0; q < 4; q++) acc[q] = dsup[q] = dmsup[q] = _mm512_setzero_ps();
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t g = 0; g < groups; g++) {
        __m512i A[4];
        for (int q = 0; q < 4; q++) A[q] = _mm512_setzero_si512();
        if (small) { /* weight the planes in int16, widen once (Q4_0: 12 of ~190 ops a group) */
            __m512i a16[2];
            group_sums16(&blk, &T, kpg, bits, a16);
            for (int half = 0; half < 2; half++) widen_add(a16[half], 0, &A[2 * half], &A[2 * half + 1]);
        } else {
            __m512i pacc[4][2], lacc[2]; /* [pair][rows 0..31 | 32..63], lone [half] */
            group_plane_sums(&blk, &T, kpg, bits, pacc, lacc);
            for (int half = 0; half < 2; half++) {
                for (int p = 0; p < npair; p++) widen_add(pacc[p][half], 2 * p, &A[2 * half], &A[2 * half + 1]);
                if (lone) widen_add(lacc[half], bits - 1, &A[2 * half], &A[2 * half + 1]);
            }
        }
        const __m512 vf = _mm512_set1_ps(0.5f * L->tscale[g]);
        if (qm->super && g % gps == 0) { /* a new super-block: its d (and dmin) once */
            const int64_t at = (t * (qm->k_pad / qm->super) + g / gps) * PYLUT_TILE_M;
            for (int q = 0; q < 4; q++) {
                dsup[q] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(qm->scale + at + 16 * q)));
                if (qm->has_bias)
                    dmsup[q] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(qm->bias + at + 16 * q)));
            }
        }
        /* implied bias -scale*zero (no bias buffer): scale * (vf*A + (h - zero) * sumx) */
        const __m512 zc = _mm512_set1_ps(qm->has_bias ? 0.0f : (h - qm->zero) * L->sumx[g]);
        for (int q = 0; q < 4; q++) {
            __m512 s = qm->super ? _mm512_mul_ps(dsup[q], sub_values(qm, 0, t, g, groups, q))
                                 : group_param(qm, qm->scale, t, g, q);
            if (!qm->has_bias) {
                acc[q] = _mm512_fmadd_ps(s, _mm512_fmadd_ps(vf, _mm512_cvtepi32_ps(A[q]), zc), acc[q]);
                continue;
            }
            const __m512 b = qm->super ? _mm512_mul_ps(dmsup[q], sub_values(qm, 1, t, g, groups, q))
                                       : group_param(qm, qm->bias, t, g, q);
            acc[q] = _mm512_fmadd_ps(_mm512_mul_ps(s, vf), _mm512_cvtepi32_ps(A[q]), acc[q]);
            acc[q] = _mm512_fmadd_ps(_mm512_fmadd_ps(s, _mm512_set1_ps(h), b), _mm512_set1_ps(L->sumx[g]), acc[q]);
        }
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

/* Rows 32h..32h+31 of int8 sub-values of groups g, g+1 (g+1 absent: zeros), interleaved per
 * row like unpacklo/hi of the two groups' int16 sums: lo/hi pairs for vpmaddwd. */
static ALWAYS_INLINE void sub_pairs(const int8_t *sub, int has1, __m512i *lo, __m512i *hi) {
    const __m512i s0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)sub));
    const __m512i s1 = has1 ? _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(sub + PYLUT_TILE_M)))
                            : _mm512_setzero_si512();
    *lo = _mm512_unpacklo_epi16(s0, s1);
    *hi = _mm512_unpackhi_epi16(s0, s1);
}

/* The same from nibble bytes: one 32-byte load per group gives the sub-scales (low nibbles:
 * sl, sh) and the sub-biases' magnitudes (high nibbles: bl, bh) */
static ALWAYS_INLINE void sub_pairs_nib(const uint8_t *sub, int has1, __m512i *sl, __m512i *sh,
                                        __m512i *bl, __m512i *bh) {
    const __m512i m = _mm512_set1_epi16(15);
    const __m512i s0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)sub));
    const __m512i s1 = has1 ? _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(sub + PYLUT_TILE_M)))
                            : _mm512_setzero_si512();
    const __m512i lo = _mm512_unpacklo_epi16(s0, s1), hi = _mm512_unpackhi_epi16(s0, s1);
    *sl = _mm512_and_si512(lo, m);
    *sh = _mm512_and_si512(hi, m);
    *bl = _mm512_srli_epi16(lo, 4);
    *bh = _mm512_srli_epi16(hi, 4);
}

/* int-super B-type tile (kernels.h): per super-block, S and B in int32 by vpmaddwd over pairs
 * of groups, one float conversion per super-block. unpacklo/hi leave the int32 rows of a
 * 32-row half as lo = rows {0-3, 8-11, 16-19, 24-27}, hi = {4-7, ...}: put back in order once
 * per super-block, before the float epilogue. */
static ALWAYS_INLINE void gemm_b_tile_isup(const pylut_qmatrix *qm, const pylut_lut *L, float *y,
                                           int64_t t, const int bits, const int nib) {
    const int kgb = 32 * bits, top = (1 << bits) - 1;
    const int64_t groups = qm->k_pad / qm->group, supers = qm->k_pad / qm->super;
    const int kpg = qm->group / PYLUT_KGROUP, gps = qm->super / qm->group;
    const int coef = pylut_b_sumq_coef(qm);
    const int fold = top * qm->group <= 516; /* A_g + coef * sumq_g still fits int16 */
    const __m512i ord0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i ord1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    const int16_t *sumq = pylut_lut_sumq(L);
    __m512 acc[4];
    for (int q = 0; q < 4; q++) acc[q] = _mm512_setzero_ps();
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t sb = 0; sb < supers; sb++) {
        __m512i S[4], B[4]; /* [2*half + lo/hi] */
        for (int q = 0; q < 4; q++) S[q] = B[q] = _mm512_setzero_si512();
        for (int gg = 0; gg < gps; gg += 2) {
            const int64_t g = sb * gps + gg;
            const int has1 = gg + 1 < gps;
            __m512i a0[2], a1[2];
            group_sums16(&blk, &T, kpg, bits, a0);
            if (has1) group_sums16(&blk, &T, kpg, bits, a1);
            else a1[0] = a1[1] = _mm512_setzero_si512();
            const int q0 = sumq[g], q1 = has1 ? sumq[g + 1] : 0;
            const int8_t *scp = qm->sub_scale + (t * groups + g) * PYLUT_TILE_M;
            const __m512i cpair = _mm512_set1_epi32((int)(((uint32_t)(uint16_t)(coef * q1) << 16) | (uint16_t)(coef * q0)));
            const __m512i qpair = _mm512_set1_epi32((int)(((uint32_t)(uint16_t)q1 << 16) | (uint16_t)q0));
            if (fold) {
                a0[0] = _mm512_add_epi16(a0[0], _mm512_set1_epi16((short)(coef * q0)));
                a0[1] = _mm512_add_epi16(a0[1], _mm512_set1_epi16((short)(coef * q0)));
                a1[0] = _mm512_add_epi16(a1[0], _mm512_set1_epi16((short)(coef * q1)));
                a1[1] = _mm512_add_epi16(a1[1], _mm512_set1_epi16((short)(coef * q1)));
            }
            for (int h = 0; h < 2; h++) {
                __m512i sl, sh, bl, bh;
                if (nib) sub_pairs_nib((const uint8_t *)scp + 32 * h, has1, &sl, &sh, &bl, &bh);
                else sub_pairs(scp + 32 * h, has1, &sl, &sh);
                S[2 * h] = madd_acc(S[2 * h], _mm512_unpacklo_epi16(a0[h], a1[h]), sl);
                S[2 * h + 1] = madd_acc(S[2 * h + 1], _mm512_unpackhi_epi16(a0[h], a1[h]), sh);
                if (!fold) {
                    S[2 * h] = madd_acc(S[2 * h], cpair, sl);
                    S[2 * h + 1] = madd_acc(S[2 * h + 1], cpair, sh);
                }
                if (qm->has_bias) {
                    if (!nib) sub_pairs(qm->sub_bias + (t * groups + g) * PYLUT_TILE_M + 32 * h, has1, &bl, &bh);
                    B[2 * h] = madd_acc(B[2 * h], qpair, bl);
                    B[2 * h + 1] = madd_acc(B[2 * h + 1], qpair, bh);
                }
            }
        }
        const float ts = L->tscale[sb * gps];
        const __m512 vf = _mm512_set1_ps(0.5f * ts), vts = _mm512_set1_ps(ts);
        const int64_t at = (t * supers + sb) * PYLUT_TILE_M;
        for (int q = 0; q < 4; q++) {
            const __m512i ord = q & 1 ? ord1 : ord0;
            const int h = q / 2;
            const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(qm->scale + at + 16 * q)));
            const __m512i s = _mm512_permutex2var_epi64(S[2 * h], ord, S[2 * h + 1]);
            acc[q] = _mm512_fmadd_ps(_mm512_mul_ps(d, vf), _mm512_cvtepi32_ps(s), acc[q]);
            if (qm->has_bias) {
                const __m512 dm = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(qm->bias + at + 16 * q)));
                const __m512i b = _mm512_permutex2var_epi64(B[2 * h], ord, B[2 * h + 1]);
                acc[q] = _mm512_fmadd_ps(_mm512_mul_ps(dm, vts), _mm512_cvtepi32_ps(b), acc[q]);
            }
        }
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

/* The bit count as a compile-time constant, so each width gets its own inlined body. */
#define FOR_BITS(tile, qm, L, yt, t)                 \
    switch ((qm)->bits) {                            \
    case 1: tile(qm, L, yt, t, 1); break;            \
    case 2: tile(qm, L, yt, t, 2); break;            \
    case 3: tile(qm, L, yt, t, 3); break;            \
    case 4: tile(qm, L, yt, t, 4); break;            \
    case 5: tile(qm, L, yt, t, 5); break;            \
    case 6: tile(qm, L, yt, t, 6); break;            \
    case 7: tile(qm, L, yt, t, 7); break;            \
    default: tile(qm, L, yt, t, 8); break;           \
    }

/* The nibble form as a constant too: the int8 loop stays as it was */
static ALWAYS_INLINE void tile_isup_int8(const pylut_qmatrix *qm, const pylut_lut *L, float *y, int64_t t,
                                         const int bits) {
    gemm_b_tile_isup(qm, L, y, t, bits, 0);
}
static ALWAYS_INLINE void tile_isup_nib(const pylut_qmatrix *qm, const pylut_lut *L, float *y, int64_t t,
                                        const int bits) {
    gemm_b_tile_isup(qm, L, y, t, bits, 1);
}

static void gemm_b_body(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                                      int64_t ldy, int64_t tile0, int64_t tile1) {
    const int int_super = pylut_b_int_super(qm);
    for (int64_t t = tile0; t < tile1; t++)
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            float *yt = y + tok * ldy;
            if (int_super && qm->sub_nibbles) FOR_BITS(tile_isup_nib, qm, L, yt, t)
            else if (int_super) FOR_BITS(tile_isup_int8, qm, L, yt, t)
            else FOR_BITS(gemm_b_tile, qm, L, yt, t)
        }
}

/* ------------------------------------------------------------------ T3 GEMM */

static void gemm_t3_body(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                         int64_t ldy, int64_t tile0, int64_t tile1) {
    const int64_t ppg = pylut_t3_triples(qm->group) / 2, groups = qm->k_pad / qm->group, pairs = groups * ppg;
    const __m512i m0f = _mm512_set1_epi8(0x0f), ones = _mm512_set1_epi8(1);
    const __m512i zero = _mm512_setzero_si512();
#if PYLUT_VBMI
    const __m512i tsel = _mm512_set1_epi16(0x1000); /* odd bytes: index bit 4 -> triple j+1 */
#else
    const __mmask64 odd = 0xAAAAAAAAAAAAAAAAull;
#endif
    for (int64_t t = tile0; t < tile1; t++) {
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            const uint8_t *blk = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
            __m512 acc[4];
            for (int q = 0; q < 4; q++) acc[q] = _mm512_setzero_ps();
            for (int64_t p0 = 0, g = 0; p0 < pairs; p0 += ppg, g++) {
                const int64_t p1 = p0 + ppg;
                __m512i alo = zero, ahi = zero; /* int16 rows 0..31, 32..63 */
                for (int64_t p = p0; p < p1; p++, blk += PYLUT_T3_PAIR_BYTES) {
                    _mm_prefetch((const char *)blk + PF_T3_DIST, _MM_HINT_T0);
                    const __m512i w = _mm512_loadu_si512((const void *)blk);
                    __m512i vlo, vhi;
#if PYLUT_VBMI
                    { /* (w & 0x0f) | tsel in one vpternlog; one vpermb reads both tables */
                        const __m512i tbl = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(L->tbl + 32 * p)));
                        vlo = _mm512_permutexvar_epi8(_mm512_ternarylogic_epi32(w, m0f, tsel, 0xEA), tbl);
                        vhi = _mm512_permutexvar_epi8(_mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), m0f, tsel, 0xEA), tbl);
                    }
#else
                    { /* one table per vpshufb: look up in both, keep triple j+1's on odd bytes */
                        const __m512i t0 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(L->tbl + 32 * p)));
                        const __m512i t1 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(L->tbl + 32 * p + 16)));
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
                    alo = _mm512_add_epi16(alo, _mm512_maddubs_epi16(ones, vlo));
                    ahi = _mm512_add_epi16(ahi, _mm512_maddubs_epi16(ones, vhi));
                }
                __m512i A[4] = {zero, zero, zero, zero};
                widen_add(alo, 0, &A[0], &A[1]);
                widen_add(ahi, 0, &A[2], &A[3]);
                const __m512 ts = _mm512_set1_ps(L->tscale[g]);
                const uint16_t *sc = qm->scale + (t * groups + g) * PYLUT_TILE_M;
                for (int q = 0; q < 4; q++) {
                    __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 16 * q)));
                    acc[q] = _mm512_fmadd_ps(_mm512_mul_ps(s, ts), _mm512_cvtepi32_ps(A[q]), acc[q]);
                }
            }
            store_tile(y + tok * ldy, t * PYLUT_TILE_M, qm->m, acc);
        }
    }
}

const pylut_kernels PYLUT_AVX512_TABLE = {
    .attn_f16 = pylut_attn_f16_avx2, /* bandwidth-bound: 256-bit F16C loads keep up */
    .gemm_b = gemm_b_body,
    .gemm_t3 = gemm_t3_body,
    .i8_gemv = pylut_i8_gemv_avx2, /* the baseline stays the llama.cpp-style AVX2 loop */
    .b_entries = pylut_b_entries_avx2, /* 8 entries a k-group: ymm is the natural width */
#if PYLUT_VBMI
    .gemm_b_i8 = pylut_gemm_b_i8_vnni_gfni, /* the VBMI tier requires VNNI and GFNI */
    .i8_from = PYLUT_I8_FROM_VNNI,
#endif /* (the BW tier's CPUs with VNNI get pylut_gemm_b_i8_vnni from dispatch.c) */
};
