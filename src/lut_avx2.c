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
 * T3: per triple an accumulator gains at most 127, 64 triples per table group and 2 lanes
 * folded together at the end: 2*64*127 = 16256 < 32767. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE __m256i lut_lookup_lo(__m256i tbl, __m256i w, __m256i m0f) {
    return _mm256_shuffle_epi8(tbl, _mm256_and_si256(w, m0f));
}
static ALWAYS_INLINE __m256i lut_lookup_hi(__m256i tbl, __m256i w, __m256i m0f) {
    return _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(w, 4), m0f));
}

/* int16 rows 0..15 -> two int32 x8, shifted left by sh */
static ALWAYS_INLINE void widen_add(__m256i a16, int sh, __m256i *r0, __m256i *r1) {
    __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a16));
    __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a16, 1));
    *r0 = _mm256_add_epi32(*r0, _mm256_slli_epi32(lo, sh));
    *r1 = _mm256_add_epi32(*r1, _mm256_slli_epi32(hi, sh));
}

/* Apply one scale group's integer sums A (rows 0..31 as 4 x int32x8) to the float acc. */
static ALWAYS_INLINE void group_apply(const pylut_qmatrix *qm, int64_t si, float f, float h,
                                      float sx, const __m256i A[4], __m256 acc[4]) {
    const __m256 vf = _mm256_set1_ps(f);
    for (int q = 0; q < 4; q++) {
        __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(qm->scale + si + 8 * q)));
        acc[q] = _mm256_fmadd_ps(_mm256_mul_ps(s, vf), _mm256_cvtepi32_ps(A[q]), acc[q]);
        if (qm->has_bias) {
            __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(qm->bias + si + 8 * q)));
            acc[q] = _mm256_fmadd_ps(_mm256_fmadd_ps(s, _mm256_set1_ps(h), b), _mm256_set1_ps(sx), acc[q]);
        }
    }
}

static ALWAYS_INLINE void store_tile(float *y, int64_t row0, int64_t m, const __m256 acc[4]) {
    if (row0 + PYLUT_TILE_M <= m) {
        for (int q = 0; q < 4; q++) _mm256_storeu_ps(y + row0 + 8 * q, acc[q]);
    } else {
        float tmp[PYLUT_TILE_M];
        for (int q = 0; q < 4; q++) _mm256_storeu_ps(tmp + 8 * q, acc[q]);
        memcpy(y + row0, tmp, (size_t)(m - row0) * sizeof(float));
    }
}

/* ------------------------------------------------------------------ B-type GEMM */

/* bits is a compile-time constant at every call site, so the plane loops unroll. */
static ALWAYS_INLINE void gemm_b_bits(const pylut_qmatrix *qm, const pylut_lut *lut, int n,
                                      float *y, int64_t ldy, int64_t tile0, int64_t tile1,
                                      const int bits) {
    const int npair = bits / 2, lone = bits & 1, kgb = 16 * bits;
    const int64_t kgroups = qm->k_pad / PYLUT_KGROUP, groups = qm->k_pad / qm->group;
    const int kpg = qm->group / PYLUT_KGROUP;
    const float h = (float)((1 << bits) - 1) * 0.5f;
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    const __m256i mul12 = _mm256_set1_epi16(0x0201); /* bytes (1, 2): plane 2p + 2*plane 2p+1 */
    for (int64_t t = tile0; t < tile1; t++) {
        const uint8_t *tile = qm->codes + t * kgroups * kgb;
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t g = 0; g < groups; g++) {
                __m256i plo[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                __m256i phi[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                __m256i llo = _mm256_setzero_si256(), lhi = _mm256_setzero_si256();
                const uint8_t *blk = tile + g * kpg * kgb;
                const int8_t *T = L->tbl + g * kpg * 16;
                for (int j = 0; j < kpg; j++, blk += kgb, T += 16) {
                    const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)T));
                    for (int p = 0; p < npair; p++) {
                        __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 32 * p));
                        plo[p] = _mm256_add_epi16(plo[p], _mm256_maddubs_epi16(mul12, lut_lookup_lo(tbl, w, m0f)));
                        phi[p] = _mm256_add_epi16(phi[p], _mm256_maddubs_epi16(mul12, lut_lookup_hi(tbl, w, m0f)));
                    }
                    if (lone) {
                        __m128i w = _mm_loadu_si128((const __m128i *)(blk + 32 * npair));
                        __m128i m = _mm256_castsi256_si128(m0f);
                        __m256i idx = _mm256_setr_m128i(_mm_and_si128(w, m), _mm_and_si128(_mm_srli_epi16(w, 4), m));
                        __m256i v = _mm256_shuffle_epi8(tbl, idx); /* lane 0: rows 0..15, lane 1: 16..31 */
                        llo = _mm256_add_epi16(llo, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
                        lhi = _mm256_add_epi16(lhi, _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)));
                    }
                }
                __m256i A[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
                for (int p = 0; p < npair; p++) {
                    widen_add(plo[p], 2 * p, &A[0], &A[1]);
                    widen_add(phi[p], 2 * p, &A[2], &A[3]);
                }
                if (lone) {
                    widen_add(llo, bits - 1, &A[0], &A[1]);
                    widen_add(lhi, bits - 1, &A[2], &A[3]);
                }
                group_apply(qm, (t * groups + g) * PYLUT_TILE_M, 0.5f * L->tscale[g], h, L->sumx[g], A, acc);
            }
            store_tile(y + tok * ldy, t * PYLUT_TILE_M, qm->m, acc);
        }
    }
}

static void gemm_b_avx2(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                        int64_t ldy, int64_t tile0, int64_t tile1) {
    switch (qm->bits) {
    case 1: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 1); break;
    case 2: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 2); break;
    case 3: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 3); break;
    default: gemm_b_bits(qm, lut, n, y, ldy, tile0, tile1, 4); break;
    }
}

/* ------------------------------------------------------------------ T3 GEMM */

static void gemm_t3_avx2(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                         int64_t ldy, int64_t tile0, int64_t tile1) {
    const int64_t pairs = qm->k_pad / 6, ppg = PYLUT_T3_TBL_GROUP / 2;
    const __m256i m0f = _mm256_set1_epi8(0x0f);
    /* sign bytes: lo nibbles of lane L read sign bytes 4L+0/1, hi nibbles 4L+2/3 */
    const __m256i sel_lo = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5);
    const __m256i sel_hi = _mm256_add_epi8(sel_lo, _mm256_set1_epi8(2));
    const __m256i bitsel = _mm256_set1_epi64x(0x8040201008040201LL);
    for (int64_t t = tile0; t < tile1; t++) {
        const uint8_t *tile = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t p0 = 0, g = 0; p0 < pairs; p0 += ppg, g++) {
                const int64_t p1 = p0 + ppg < pairs ? p0 + ppg : pairs;
                __m256i elo = _mm256_setzero_si256(), olo = elo, ehi = elo, ohi = elo;
                for (int64_t p = p0; p < p1; p++) {
                    const uint8_t *blk = tile + p * PYLUT_T3_PAIR_BYTES;
                    const __m256i tbl = _mm256_loadu_si256((const __m256i *)(L->tbl + 32 * p));
                    const __m256i w = _mm256_loadu_si256((const __m256i *)blk);
                    int64_t sbits;
                    memcpy(&sbits, blk + 32, 8);
                    const __m256i sv = _mm256_set1_epi64x(sbits);
                    __m256i nlo = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(sv, sel_lo), bitsel), bitsel);
                    __m256i nhi = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(sv, sel_hi), bitsel), bitsel);
                    __m256i vlo = lut_lookup_lo(tbl, w, m0f), vhi = lut_lookup_hi(tbl, w, m0f);
                    vlo = _mm256_sub_epi8(_mm256_xor_si256(vlo, nlo), nlo); /* negate where sign set */
                    vhi = _mm256_sub_epi8(_mm256_xor_si256(vhi, nhi), nhi);
                    elo = _mm256_add_epi16(elo, _mm256_srai_epi16(_mm256_slli_epi16(vlo, 8), 8));
                    olo = _mm256_add_epi16(olo, _mm256_srai_epi16(vlo, 8));
                    ehi = _mm256_add_epi16(ehi, _mm256_srai_epi16(_mm256_slli_epi16(vhi, 8), 8));
                    ohi = _mm256_add_epi16(ohi, _mm256_srai_epi16(vhi, 8));
                }
                /* lanes hold two triples of the same rows: fold them, then re-interleave
                 * even/odd rows into row order */
                __m128i e0 = _mm_add_epi16(_mm256_castsi256_si128(elo), _mm256_extracti128_si256(elo, 1));
                __m128i o0 = _mm_add_epi16(_mm256_castsi256_si128(olo), _mm256_extracti128_si256(olo, 1));
                __m128i e1 = _mm_add_epi16(_mm256_castsi256_si128(ehi), _mm256_extracti128_si256(ehi, 1));
                __m128i o1 = _mm_add_epi16(_mm256_castsi256_si128(ohi), _mm256_extracti128_si256(ohi, 1));
                const __m256 ts = _mm256_set1_ps(L->tscale[g]);
                __m128i rows[4] = {_mm_unpacklo_epi16(e0, o0), _mm_unpackhi_epi16(e0, o0),
                                   _mm_unpacklo_epi16(e1, o1), _mm_unpackhi_epi16(e1, o1)};
                for (int q = 0; q < 4; q++)
                    acc[q] = _mm256_fmadd_ps(ts, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(rows[q])), acc[q]);
            }
            const float *rs = qm->row_scale + t * PYLUT_TILE_M;
            for (int q = 0; q < 4; q++) acc[q] = _mm256_mul_ps(_mm256_loadu_ps(rs + 8 * q), acc[q]);
            store_tile(y + tok * ldy, t * PYLUT_TILE_M, qm->m, acc);
        }
    }
}

/* ------------------------------------------------------------------ int8 baseline */

static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static void i8_gemv_avx2(const pylut_i8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1) {
    const int bits = qm->bits, slots = 8 / bits;
    const int64_t blocks = qm->k / 32, vblocks = blocks / 8 * 8;
    const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = qm->codes + r * qm->row_bytes;
        const uint16_t *sc = qm->scale + r * blocks, *bi = qm->bias + r * blocks;
        __m256 acc = _mm256_setzero_ps(), accb = _mm256_setzero_ps();
        for (int64_t b0 = 0; b0 < vblocks; b0 += 8) {
            /* 8 blocks' combined scales s_w * s_x, one lane each */
            __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + b0))), _mm256_loadu_ps(xs + b0));
            accb = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(bi + b0))), _mm256_loadu_ps(xsum + b0), accb);
            for (int i = 0; i < 8; i++) {
                int64_t b = b0 + i;
                __m256i w = _mm256_loadu_si256((const __m256i *)(row + b / slots * 32));
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(w, (int)(b % slots) * bits), mask);
                __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * 32));
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
                __m256 di = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(i));
                acc = _mm256_fmadd_ps(di, _mm256_cvtepi32_ps(p), acc);
            }
        }
        float out = hsum256(acc) + hsum256(accb);
        for (int64_t b = vblocks; b < blocks; b++) { /* tail blocks */
            const uint8_t *c = row + b / slots * 32;
            int sh = (int)(b % slots) * bits, dot = 0;
            for (int i = 0; i < 32; i++) dot += ((c[i] >> sh) & ((1 << bits) - 1)) * xq[b * 32 + i];
            out += _cvtsh_ss(sc[b]) * xs[b] * (float)dot + _cvtsh_ss(bi[b]) * xsum[b];
        }
        y[r] = out;
    }
}

const pylut_kernels pylut_kernels_avx2 = {
    .gemm_b = gemm_b_avx2,
    .gemm_t3 = gemm_t3_avx2,
    .i8_gemv = i8_gemv_avx2,
};
