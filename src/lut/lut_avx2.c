/* lut_avx2.c - AVX2 table-lookup kernels (compiled with -mavx2 -mfma -mf16c; reached only
 * through the dispatch table when the CPU and OS support AVX2+FMA+F16C).
 *
 * B-types: one 128-bit table duplicated in both lanes, so one vpshufb looks up 32 nibbles.
 * A pair block (planes 2p, 2p+1) puts each row's two plane nibbles in adjacent bytes, so
 * vpmaddubsw with multipliers (1,2) folds the planes and widens to int16 in one instruction.
 *
 * int16 bound: a table entry is in [-127, 127]; per k-group a pair accumulator gains at most
 * 127*1 + 127*2 = 381 and a lone-plane accumulator 127. A scale group has at most
 * PYLUT_MAX_GROUP/4 = 64 k-groups, so |acc| <= 64*381 = 24384 < 32767: no overflow, and the
 * planes' weights 4^p are applied only after widening to int32 at the end of the group.
 * T3: a row accumulator gains at most 2*127 per pair of triples, at most 128 pairs per
 * scale group (PYLUT_T3_MAX_GROUP): 128*254 = 32512 < 32767. */
#if defined(__x86_64__) || defined(_M_X64) /* other architectures get nothing */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "lut_prefetch_x86.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE __m256i lut_lookup_lo(__m256i tbl, __m256i w, __m256i m0f) {
    return _mm256_shuffle_epi8(tbl, _mm256_and_si256(w, m0f));
}
static ALWAYS_INLINE __m256i lut_lookup_hi(__m256i tbl, __m256i w, __m256i m0f) {
    return _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(w, 4), m0f));
}

/* int16 x16 (rows r..r+15) -> two int32 x8, shifted left by sh, added to r0, r1 */
static ALWAYS_INLINE void widen_add(__m256i a16, int sh, __m256i *r0, __m256i *r1) {
    __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16));
    __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16, 1));
    *r0 = _mm256_add_epi32(*r0, _mm256_slli_epi32(lo, sh));
    *r1 = _mm256_add_epi32(*r1, _mm256_slli_epi32(hi, sh));
}

static ALWAYS_INLINE __m256 load_f16x8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* 8 rows' scale (bias 0) or bias (bias 1) of group g: fp16, or fp16 super-block value *
 * int8 or nibble sub-value */
static ALWAYS_INLINE __m256 group_param(const pylut_qmatrix *qm, int bias, int64_t t, int64_t g, int q) {
    const uint16_t *base = bias ? qm->bias : qm->scale;
    const int64_t groups = qm->k_pad / qm->group;
    if (!qm->super) return load_f16x8(base + (t * groups + g) * PYLUT_TILE_M + 8 * q);
    const int64_t supers = qm->k_pad / qm->super, gps = qm->super / qm->group;
    const int64_t at = (t * groups + g) * PYLUT_TILE_M + 8 * q;
    const __m256 d = load_f16x8(base + (t * supers + g / gps) * PYLUT_TILE_M + 8 * q);
    __m256i s;
    if (qm->sub_nibbles) {
        s = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)qm->sub_scale + at)));
        s = bias ? _mm256_srli_epi32(s, 4) : _mm256_and_si256(s, _mm256_set1_epi32(15));
    } else {
        s = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((bias ? qm->sub_bias : qm->sub_scale) + at)));
    }
    return _mm256_mul_ps(d, _mm256_cvtepi32_ps(s));
}

/* Apply one scale group's integer sums A (rows 0..63 as 8 x int32x8) to the float acc. */
static ALWAYS_INLINE void group_apply(const pylut_qmatrix *qm, int64_t t, int64_t g, float f, float h,
                                      float sx, const __m256i A[8], __m256 acc[8]) {
    const __m256 vf = _mm256_set1_ps(f);
    /* implied bias -scale*zero (no bias buffer): scale * (f*A + (h - zero) * sx) */
    const __m256 zc = _mm256_set1_ps(qm->has_bias ? 0.0f : (h - qm->zero) * sx);
    for (int q = 0; q < 8; q++) {
        const __m256 s = group_param(qm, 0, t, g, q);
        if (!qm->has_bias) {
            acc[q] = _mm256_fmadd_ps(s, _mm256_fmadd_ps(vf, _mm256_cvtepi32_ps(A[q]), zc), acc[q]);
            continue;
        }
        const __m256 b = group_param(qm, 1, t, g, q);
        acc[q] = _mm256_fmadd_ps(_mm256_mul_ps(s, vf), _mm256_cvtepi32_ps(A[q]), acc[q]);
        acc[q] = _mm256_fmadd_ps(_mm256_fmadd_ps(s, _mm256_set1_ps(h), b), _mm256_set1_ps(sx), acc[q]);
    }
}

static ALWAYS_INLINE void store_tile(float *y, int64_t row0, int64_t m, const __m256 acc[8]) {
    if (row0 + PYLUT_TILE_M <= m) {
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(y + row0 + 8 * q, acc[q]);
    } else {
        float tmp[PYLUT_TILE_M];
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(tmp + 8 * q, acc[q]);
        memcpy(y + row0, tmp, (size_t)(m - row0) * sizeof(float));
    }
}

/* ------------------------------------------------------------------ B-type GEMM */

/* One k-group, 32-byte half `half` of pair block p: the (1,2)-weighted plane-pair products
 * of its low-nibble rows (lo) and its high-nibble rows (hi), int16. */
static ALWAYS_INLINE void pair_lookup(__m256i tbl, const uint8_t *blk, int p, int half,
                                     __m256i mul12, __m256i m0f, __m256i *lo, __m256i *hi) {
    const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 64 * p + 32 * half));
    *lo = _mm256_maddubs_epi16(mul12, lut_lookup_lo(tbl, w, m0f));
    *hi = _mm256_maddubs_epi16(mul12, lut_lookup_hi(tbl, w, m0f));
}

/* One group's lookups, planes not yet weighted: pacc[p][q] = plane 2p + 2 * plane 2p+1 and
 * lacc[q] = the lone plane (odd bits), rows 16q..16q+15, int16. Advances blk and T. */
static ALWAYS_INLINE void group_plane_sums(const uint8_t **pblk, const int8_t **pT, int kpg, const int bits,
                                           __m256i pacc[4][4], __m256i lacc[4]) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    const __m256i mul12 = _mm256_set1_epi16(0x0201); /* bytes (1, 2): plane 2p + 2*plane 2p+1 */
    const uint8_t *blk = *pblk;
    const int8_t *T = *pT;
    for (int q = 0; q < 4; q++) {
        for (int p = 0; p < npair; p++) pacc[p][q] = _mm256_setzero_si256();
        lacc[q] = _mm256_setzero_si256();
    }
    for (int j = 0; j < kpg; j++, blk += kgb, T += 16) {
        const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)T));
        for (int o = 0; o < kgb; o += 64) _mm_prefetch((const char *)blk + PF_B_DIST + o, PF_B_HINT);
        for (int p = 0; p < npair; p++)
            for (int half = 0; half < 2; half++) {
                __m256i lo, hi;
                pair_lookup(tbl, blk, p, half, mul12, m0f, &lo, &hi);
                pacc[p][half] = _mm256_add_epi16(pacc[p][half], lo);
                pacc[p][2 + half] = _mm256_add_epi16(pacc[p][2 + half], hi);
            }
        if (lone) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 64 * npair));
            __m256i vlo = lut_lookup_lo(tbl, w, m0f), vhi = lut_lookup_hi(tbl, w, m0f);
            lacc[0] = _mm256_add_epi16(lacc[0], _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vlo)));
            lacc[1] = _mm256_add_epi16(lacc[1], _mm256_cvtepi8_epi16(_mm256_extracti128_si256(vlo, 1)));
            lacc[2] = _mm256_add_epi16(lacc[2], _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vhi)));
            lacc[3] = _mm256_add_epi16(lacc[3], _mm256_cvtepi8_epi16(_mm256_extracti128_si256(vhi, 1)));
        }
    }
    *pblk = blk;
    *pT = T;
}

/* One group's int16 lookup sums A_g = sum_i 2^i T[idx_i], rows 16q..16q+15 in a[q], when
 * (2^b-1) * group <= 1032 keeps every partial sum in int16 (kernels.h): the planes are
 * weighted before any widening. Advances blk and T. */
static ALWAYS_INLINE void group_sums16(const uint8_t **pblk, const int8_t **pT, int kpg, const int bits,
                                       __m256i a[4]) {
    const int npair = bits / 2, lone = bits & 1;
    __m256i pacc[4][4], lacc[4];
    group_plane_sums(pblk, pT, kpg, bits, pacc, lacc);
    for (int q = 0; q < 4; q++) {
        a[q] = lone ? _mm256_slli_epi16(lacc[q], bits - 1) : _mm256_setzero_si256();
        for (int p = 0; p < npair; p++) a[q] = _mm256_add_epi16(a[q], _mm256_slli_epi16(pacc[p][q], 2 * p));
    }
}

/* One row tile (64 rows), one token. bits is a compile-time constant at every call site. */
static ALWAYS_INLINE void gemm_b_tile(const pylut_qmatrix *qm, const pylut_lut *L, float *y,
                                      int64_t t, const int bits) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const int64_t groups = qm->k_pad / qm->group;
    const int kpg = qm->group / PYLUT_KGROUP;
    const float h = (float)((1 << bits) - 1) * 0.5f;
    const int small = ((1 << bits) - 1) * qm->group <= 1032; /* a group's weighted sum fits int16 (kernels.h) */
    __m256 acc[8];
    for (int q = 0; q < 8; q++) acc[q] = _mm256_setzero_ps();
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t g = 0; g < groups; g++) {
        __m256i A[8];
        for (int q = 0; q < 8; q++) A[q] = _mm256_setzero_si256();
        if (small) { /* weight the planes in int16, widen once */
            __m256i a16[4];
            group_sums16(&blk, &T, kpg, bits, a16);
            for (int q = 0; q < 4; q++) widen_add(a16[q], 0, &A[2 * q], &A[2 * q + 1]);
        } else {
            __m256i pacc[4][4], lacc[4]; /* [pair][16-row quarter], lone [quarter] */
            group_plane_sums(&blk, &T, kpg, bits, pacc, lacc);
            for (int q = 0; q < 4; q++) {
                for (int p = 0; p < npair; p++) widen_add(pacc[p][q], 2 * p, &A[2 * q], &A[2 * q + 1]);
                if (lone) widen_add(lacc[q], bits - 1, &A[2 * q], &A[2 * q + 1]);
            }
        }
        group_apply(qm, t, g, 0.5f * L->tscale[g], h, L->sumx[g], A, acc);
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

/* Rows 16q..16q+15 of int8 sub-values of groups g, g+1 (absent: zeros), interleaved per row
 * like unpacklo/hi of the two groups' int16 sums: lo/hi pairs for vpmaddwd. */
static ALWAYS_INLINE void sub_pairs(const int8_t *sub, int has1, __m256i *lo, __m256i *hi) {
    const __m256i s0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sub));
    const __m256i s1 = has1 ? _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(sub + PYLUT_TILE_M)))
                            : _mm256_setzero_si256();
    *lo = _mm256_unpacklo_epi16(s0, s1);
    *hi = _mm256_unpackhi_epi16(s0, s1);
}

/* The same from nibble bytes: one load per group gives the sub-scales (low nibbles: sl, sh)
 * and the sub-biases' magnitudes (high nibbles: bl, bh) */
static ALWAYS_INLINE void sub_pairs_nib(const uint8_t *sub, int has1, __m256i *sl, __m256i *sh,
                                        __m256i *bl, __m256i *bh) {
    const __m256i m = _mm256_set1_epi16(15);
    const __m256i s0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)sub));
    const __m256i s1 = has1 ? _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(sub + PYLUT_TILE_M)))
                            : _mm256_setzero_si256();
    const __m256i lo = _mm256_unpacklo_epi16(s0, s1), hi = _mm256_unpackhi_epi16(s0, s1);
    *sl = _mm256_and_si256(lo, m);
    *sh = _mm256_and_si256(hi, m);
    *bl = _mm256_srli_epi16(lo, 4);
    *bh = _mm256_srli_epi16(hi, 4);
}

/* int-super B-type tile (kernels.h): per super-block, S and B in int32 by vpmaddwd over pairs
 * of groups, one float conversion per super-block. unpacklo/hi leave the int32 rows of a
 * 16-row quarter as lo = rows {0-3, 8-11}, hi = {4-7, 12-15}: put back in order once per
 * super-block. */
static ALWAYS_INLINE void gemm_b_tile_isup(const pylut_qmatrix *qm, const pylut_lut *L, float *y,
                                           int64_t t, const int bits, const int nib) {
    const int kgb = 32 * bits, top = (1 << bits) - 1;
    const int64_t groups = qm->k_pad / qm->group, supers = qm->k_pad / qm->super;
    const int kpg = qm->group / PYLUT_KGROUP, gps = qm->super / qm->group;
    const int coef = pylut_b_sumq_coef(qm);
    const int fold = top * qm->group <= 516; /* A_g + coef * sumq_g still fits int16 */
    const int16_t *sumq = pylut_lut_sumq(L);
    __m256 acc[8];
    for (int q = 0; q < 8; q++) acc[q] = _mm256_setzero_ps();
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t sb = 0; sb < supers; sb++) {
        __m256i S[8], B[8]; /* [2*quarter + lo/hi] */
        for (int q = 0; q < 8; q++) S[q] = B[q] = _mm256_setzero_si256();
        for (int gg = 0; gg < gps; gg += 2) {
            const int64_t g = sb * gps + gg;
            const int has1 = gg + 1 < gps;
            __m256i a0[4], a1[4];
            group_sums16(&blk, &T, kpg, bits, a0);
            if (has1) group_sums16(&blk, &T, kpg, bits, a1);
            else for (int q = 0; q < 4; q++) a1[q] = _mm256_setzero_si256();
            const int q0 = sumq[g], q1 = has1 ? sumq[g + 1] : 0;
            const __m256i cpair = _mm256_set1_epi32((int)(((uint32_t)(uint16_t)(coef * q1) << 16) | (uint16_t)(coef * q0)));
            const __m256i qpair = _mm256_set1_epi32((int)(((uint32_t)(uint16_t)q1 << 16) | (uint16_t)q0));
            const int8_t *scp = qm->sub_scale + (t * groups + g) * PYLUT_TILE_M;
            const int8_t *sbp = qm->has_bias && !nib ? qm->sub_bias + (t * groups + g) * PYLUT_TILE_M : NULL;
            for (int q = 0; q < 4; q++) {
                if (fold) {
                    a0[q] = _mm256_add_epi16(a0[q], _mm256_set1_epi16((short)(coef * q0)));
                    a1[q] = _mm256_add_epi16(a1[q], _mm256_set1_epi16((short)(coef * q1)));
                }
                __m256i sl, sh, bl, bh;
                if (nib) sub_pairs_nib((const uint8_t *)scp + 16 * q, has1, &sl, &sh, &bl, &bh);
                else sub_pairs(scp + 16 * q, has1, &sl, &sh);
                S[2 * q] = _mm256_add_epi32(S[2 * q], _mm256_madd_epi16(_mm256_unpacklo_epi16(a0[q], a1[q]), sl));
                S[2 * q + 1] = _mm256_add_epi32(S[2 * q + 1], _mm256_madd_epi16(_mm256_unpackhi_epi16(a0[q], a1[q]), sh));
                if (!fold) {
                    S[2 * q] = _mm256_add_epi32(S[2 * q], _mm256_madd_epi16(cpair, sl));
                    S[2 * q + 1] = _mm256_add_epi32(S[2 * q + 1], _mm256_madd_epi16(cpair, sh));
                }
                if (nib || sbp) {
                    if (!nib) sub_pairs(sbp + 16 * q, has1, &bl, &bh);
                    B[2 * q] = _mm256_add_epi32(B[2 * q], _mm256_madd_epi16(qpair, bl));
                    B[2 * q + 1] = _mm256_add_epi32(B[2 * q + 1], _mm256_madd_epi16(qpair, bh));
                }
            }
        }
        const float ts = L->tscale[sb * gps];
        const __m256 vf = _mm256_set1_ps(0.5f * ts), vts = _mm256_set1_ps(ts);
        const int64_t at = (t * supers + sb) * PYLUT_TILE_M;
        /* rows 8q..8q+7 sit in one 128-bit lane of S[2*(q/2)] and S[2*(q/2)+1]: the low lanes
         * for even q, the high ones for odd q. The lane selector of vperm2i128 is an immediate,
         * so the two cases are spelled out rather than computed from q. */
        for (int qq = 0; qq < 4; qq++) {
            const int q0 = 2 * qq, q1 = 2 * qq + 1;
            const __m256i s0 = _mm256_permute2x128_si256(S[2 * qq], S[2 * qq + 1], 0x20);
            const __m256i s1 = _mm256_permute2x128_si256(S[2 * qq], S[2 * qq + 1], 0x31);
            acc[q0] = _mm256_fmadd_ps(_mm256_mul_ps(load_f16x8(qm->scale + at + 8 * q0), vf), _mm256_cvtepi32_ps(s0), acc[q0]);
            acc[q1] = _mm256_fmadd_ps(_mm256_mul_ps(load_f16x8(qm->scale + at + 8 * q1), vf), _mm256_cvtepi32_ps(s1), acc[q1]);
            if (qm->has_bias) {
                const __m256i b0 = _mm256_permute2x128_si256(B[2 * qq], B[2 * qq + 1], 0x20);
                const __m256i b1 = _mm256_permute2x128_si256(B[2 * qq], B[2 * qq + 1], 0x31);
                acc[q0] = _mm256_fmadd_ps(_mm256_mul_ps(load_f16x8(qm->bias + at + 8 * q0), vts), _mm256_cvtepi32_ps(b0), acc[q0]);
                acc[q1] = _mm256_fmadd_ps(_mm256_mul_ps(load_f16x8(qm->bias + at + 8 * q1), vts), _mm256_cvtepi32_ps(b1), acc[q1]);
            }
        }
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

static ALWAYS_INLINE void gemm_b_bits(const pylut_qmatrix *qm, const pylut_lut *lut, int n,
                                      float *y, int64_t ldy, int64_t tile0, int64_t tile1,
                                      const int bits) {
    if (pylut_b_int_super(qm)) { /* nibbles as a constant: the int8 loop stays as it was */
        for (int64_t t = tile0; t < tile1; t++)
            for (int tok = 0; tok < n; tok++)
                if (qm->sub_nibbles) gemm_b_tile_isup(qm, lut + tok, y + tok * ldy, t, bits, 1);
                else gemm_b_tile_isup(qm, lut + tok, y + tok * ldy, t, bits, 0);
        return;
    }
    for (int64_t t = tile0; t < tile1; t++)
        for (int tok = 0; tok < n; tok++) gemm_b_tile(qm, lut + tok, y + tok * ldy, t, bits);
}

static void gemm_b_avx2(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                        int64_t ldy, int64_t tile0, int64_t tile1) {
    switch (qm->bits) {
    case 1: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 1); break;
    case 2: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 2); break;
    case 3: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 3); break;
    case 4: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 4); break;
    case 5: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 5); break;
    case 6: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 6); break;
    case 7: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 7); break;
    default: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 8); break;
    }
}

/* ------------------------------------------------------------------ T3 GEMM */

static void gemm_t3_avx2(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                         int64_t ldy, int64_t tile0, int64_t tile1) {
    const int64_t ppg = pylut_t3_triples(qm->group) / 2, groups = qm->k_pad / qm->group, pairs = groups * ppg;
    const __m256i m0f = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi8(1);
    const __m256i odd = _mm256_set1_epi16((short)0xff00); /* odd bytes: triple j+1 */
    /* byte i of a 32-byte half reads sign byte i/8 of its 32-bit mask */
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bitsel = _mm256_set1_epi64x(0x8040201008040201LL);
    for (int64_t t = tile0; t < tile1; t++) {
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            const uint8_t *blk = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
            __m256 acc[8];
            for (int q = 0; q < 8; q++) acc[q] = _mm256_setzero_ps();
            for (int64_t p0 = 0, g = 0; p0 < pairs; p0 += ppg, g++) {
                const int64_t p1 = p0 + ppg;
                __m256i a[4]; /* int16 rows 16q..16q+15 */
                for (int q = 0; q < 4; q++) a[q] = _mm256_setzero_si256();
                for (int64_t p = p0; p < p1; p++, blk += PYLUT_T3_PAIR_BYTES) {
                    _mm_prefetch((const char *)blk + PF_T3_DIST, _MM_HINT_T0);
                    const __m256i t0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(L->tbl + 32 * p)));
                    const __m256i t1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(L->tbl + 32 * p + 16)));
                    for (int half = 0; half < 2; half++) {
                        const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 32 * half));
                        const __m256i ilo = _mm256_and_si256(w, m0f);
                        const __m256i ihi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m0f);
                        __m256i vlo = _mm256_blendv_epi8(_mm256_shuffle_epi8(t0, ilo), _mm256_shuffle_epi8(t1, ilo), odd);
                        __m256i vhi = _mm256_blendv_epi8(_mm256_shuffle_epi8(t0, ihi), _mm256_shuffle_epi8(t1, ihi), odd);
                        uint32_t slo, shi;
                        memcpy(&slo, blk + 64 + 4 * half, 4);
                        memcpy(&shi, blk + 72 + 4 * half, 4);
                        __m256i nlo = _mm256_shuffle_epi8(_mm256_set1_epi32((int)slo), sel);
                        __m256i nhi = _mm256_shuffle_epi8(_mm256_set1_epi32((int)shi), sel);
                        nlo = _mm256_cmpeq_epi8(_mm256_and_si256(nlo, bitsel), bitsel);
                        nhi = _mm256_cmpeq_epi8(_mm256_and_si256(nhi, bitsel), bitsel);
                        vlo = _mm256_sub_epi8(_mm256_xor_si256(vlo, nlo), nlo); /* negate where set */
                        vhi = _mm256_sub_epi8(_mm256_xor_si256(vhi, nhi), nhi);
                        /* a row's two triples are adjacent bytes: one maddubs sums them */
                        a[half] = _mm256_add_epi16(a[half], _mm256_maddubs_epi16(ones, vlo));
                        a[2 + half] = _mm256_add_epi16(a[2 + half], _mm256_maddubs_epi16(ones, vhi));
                    }
                }
                __m256i A[8];
                for (int q = 0; q < 8; q++) A[q] = _mm256_setzero_si256();
                for (int q = 0; q < 4; q++) widen_add(a[q], 0, &A[2 * q], &A[2 * q + 1]);
                const __m256 ts = _mm256_set1_ps(L->tscale[g]);
                const uint16_t *sc = qm->scale + (t * groups + g) * PYLUT_TILE_M;
                for (int q = 0; q < 8; q++) {
                    __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8 * q)));
                    acc[q] = _mm256_fmadd_ps(_mm256_mul_ps(s, ts), _mm256_cvtepi32_ps(A[q]), acc[q]);
                }
            }
            store_tile(y + tok * ldy, t * PYLUT_TILE_M, qm->m, acc);
        }
    }
}

/* ------------------------------------------------------------------ table entries */

/* pylut_b_entries_scalar with a k-group's 8 entries in one vector: the same float operations
 * in the same order (the sign flips are exact), cvtps2dq's round-half-even where the portable
 * loop adds and removes 1.5 * 2^23, the same clamp: the same bytes. */
void pylut_b_entries_avx2(const float *x, int64_t k, int64_t j0, int64_t j1, float inv, int8_t *tbl) {
    /* lane idx: -0.0f (flip x_e's sign) where bit e of idx is clear */
    const __m256 f0 = _mm256_setr_ps(-0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f, -0.0f, 0.0f);
    const __m256 f1 = _mm256_setr_ps(-0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -0.0f, 0.0f, 0.0f);
    const __m256 f2 = _mm256_setr_ps(-0.0f, -0.0f, -0.0f, -0.0f, 0.0f, 0.0f, 0.0f, 0.0f);
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    const __m128i reverse = _mm_setr_epi8(14, 15, 12, 13, 10, 11, 8, 9, 6, 7, 4, 5, 2, 3, 0, 1);
    int64_t j = j0;
    for (; j < j1 && 4 * j + 4 <= k; j++) { /* whole k-groups; the ragged last one below */
        const float *v = x + 4 * j;
        __m256 s = _mm256_add_ps(_mm256_xor_ps(_mm256_broadcast_ss(v), f0), _mm256_xor_ps(_mm256_broadcast_ss(v + 1), f1));
        s = _mm256_sub_ps(_mm256_add_ps(s, _mm256_xor_ps(_mm256_broadcast_ss(v + 2), f2)), _mm256_broadcast_ss(v + 3));
        __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(s, vinv));
        r = _mm256_max_epi32(_mm256_min_epi32(r, hi), lo);
        const __m128i t = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)); /* T[0..7] */
        const __m128i neg = _mm_shuffle_epi8(_mm_sub_epi16(_mm_setzero_si128(), t), reverse); /* -T[7..0] */
        _mm_storeu_si128((__m128i *)(tbl + 16 * j), _mm_packs_epi16(t, neg));
    }
    if (j < j1) pylut_b_entries_scalar(x, k, j, j1, inv, tbl);
}

/* ------------------------------------------------------------------ int8 baseline */

float hsum256(__m256 v);
float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

void pylut_i8_gemv_avx2(const pylut_i8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1) {
    const int bits = qm->bits, slots = 8 / bits;
    const int64_t blocks = qm->k / 32, vblocks = blocks / 8 * 8;
    const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = qm->codes + r * qm->row_bytes;
        const uint16_t *sc = qm->scale + r * blocks, *bi = qm->bias + r * blocks;
        /* one accumulator per slot: a single FMA chain would wait 4 cycles per block */
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        __m256 accb = _mm256_setzero_ps();
        float d[8];
        for (int64_t b0 = 0; b0 < vblocks; b0 += 8) {
            /* 8 blocks' combined scales s_w * s_x, broadcast from memory one by one (a load
             * port op rather than a shuffle, as llama.cpp's Q4_0 loop does) */
            _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + b0))), _mm256_loadu_ps(xs + b0)));
            accb = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(bi + b0))), _mm256_loadu_ps(xsum + b0), accb);
            for (int i = 0; i < 8; i += slots) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(row + (b0 + i) / slots * 32));
                for (int sl = 0; sl < slots; sl++) {
                    __m256i q = _mm256_and_si256(_mm256_srli_epi16(w, sl * bits), mask);
                    __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (b0 + i + sl) * 32));
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
                    acc[sl] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + i + sl), _mm256_cvtepi32_ps(p), acc[sl]);
                }
            }
        }
        float out = hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + hsum256(accb);
        for (int64_t b = vblocks; b < blocks; b++) { /* tail blocks */
            const uint8_t *c = row + b / slots * 32;
            int sh = (int)(b % slots) * bits, dot = 0;
            for (int i = 0; i < 32; i++) dot += ((c[i] >> sh) & ((1 << bits) - 1)) * xq[b * 32 + i];
            out += _cvtsh_ss(sc[b]) * xs[b] * (float)dot + _cvtsh_ss(bi[b]) * xsum[b];
        }
        y[r] = out;
    }
}

/* ------------------------------------------------------------------ attention */

/* Two passes over the cache (scores, then the weighted sum of values): at decode a head's
 * keys are read once and the [len] scores stay in L1/L2. F16C widens 8 halves per load. */
void pylut_attn_f16_avx2(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                         int hd, float scale, float *out, float *scores) {
    const int hv = hd / 8 * 8;
    float mx = -INFINITY;
    int j = 0;
    /* 8 keys at a time: their 8 partial-product vectors are summed by one hadd tree
     * instead of 8 separate horizontal sums */
    for (; j + 8 <= len; j += 8) {
        __m256 acc[8];
        for (int u = 0; u < 8; u++) {
            const uint16_t *kj = k + (int64_t)(j + u) * ld;
            acc[u] = _mm256_setzero_ps();
            for (int i = 0; i < hv; i += 8)
                acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + i))), acc[u]);
        }
        const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
        const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
        const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
        __m256 d = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
        _mm256_storeu_ps(scores + j, d);
        for (int u = 0; u < 8; u++) {
            const uint16_t *kj = k + (int64_t)(j + u) * ld;
            float tail = 0.0f;
            for (int i = hv; i < hd; i++) tail += q[i] * _cvtsh_ss(kj[i]);
            scores[j + u] = (scores[j + u] + tail) * scale;
            if (scores[j + u] > mx) mx = scores[j + u];
        }
    }
    for (; j < len; j++) {
        const uint16_t *kj = k + (int64_t)j * ld;
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < hv; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + i))), acc);
        float d = hsum256(acc);
        for (int i = hv; i < hd; i++) d += q[i] * _cvtsh_ss(kj[i]);
        scores[j] = d * scale;
        if (scores[j] > mx) mx = scores[j];
    }
    float sum = 0.0f;
    for (j = 0; j < len; j++) sum += (scores[j] = expf(scores[j] - mx));
    const float inv = 1.0f / sum;
    for (int i0 = 0; i0 < hd; i0 += 64) { /* 8 accumulators of 8 lanes cover 64 dims */
        const int w = hd - i0 < 64 ? hd - i0 : 64, wv = w / 8 * 8;
        __m256 acc[8];
        for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
        float tail[8] = {0};
        for (int j = 0; j < len; j++) {
            const uint16_t *vj = v + (int64_t)j * ld + i0;
            const __m256 p = _mm256_set1_ps(scores[j] * inv);
            for (int u = 0; u < wv / 8; u++)
                acc[u] = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * u))), acc[u]);
            for (int i = wv; i < w; i++) tail[i - wv] += scores[j] * inv * _cvtsh_ss(vj[i]);
        }
        for (int u = 0; u < wv / 8; u++) _mm256_storeu_ps(out + i0 + 8 * u, acc[u]);
        for (int i = wv; i < w; i++) out[i0 + i] = tail[i - wv];
    }
}

const pylut_kernels pylut_kernels_avx2 = {
    .attn_f16 = pylut_attn_f16_avx2,
    .gemm_b = gemm_b_avx2,
    .gemm_t3 = gemm_t3_avx2,
    .i8_gemv = pylut_i8_gemv_avx2,
    .gemm_b_i8 = pylut_gemm_b_i8_avx2,
    .b_entries = pylut_b_entries_avx2,
    .i8_from = PYLUT_I8_FROM_AVX2,
    /* T3's sign bits cost a broadcast, a shuffle and a compare per 32 lookups in ymm, where
     * AVX-512 reads them as a mask register: one Zen 4 core in L2, weights/s, T3 89 G against
     * B2 140 G (AVX-512VBMI: 149 G and 152 G). Decode streams at ~25 GB/s: T3 there ~54 G/s,
     * B2 ~95 G/s despite 18 % more bytes. */
    .ternary_planes = 1,
};

#endif /* x86-64 */
