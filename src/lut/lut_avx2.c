/* lut_avx2.c - AVX2 table-lookup kernels (compiled with -mavx2 -mfma -mf16c; reached only
 * through the dispatch table when the CPU and OS support AVX2+FMA+F16C): lut_body.h over the
 * 256-bit x86 vocabulary (lut_x86.h), and the B-type table entries. */
#if defined(__x86_64__) || defined(_M_X64) /* other architectures get nothing */
#define LUT_X86_W 256
#include "lut_x86.h"

/* ------------------------------------------------------------------ vocabulary */

static ALWAYS_INLINE __m256i lookup_lo(__m256i tbl, __m256i w, __m256i m0f) {
    return _mm256_shuffle_epi8(tbl, _mm256_and_si256(w, m0f));
}
static ALWAYS_INLINE __m256i lookup_hi(__m256i tbl, __m256i w, __m256i m0f) {
    return _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(w, 4), m0f));
}

/* One group's lookups (lut_body.h): pacc[p][q] += plane 2p + 2 * plane 2p+1 and lacc[q] +=
 * the lone plane, rows 16q..16q+15. A 32-byte half of a pair block holds rows 8h.. (low
 * nibbles) and 32+8h.. (high nibbles) of both planes. */
static ALWAYS_INLINE void plane_sums(const uint8_t *blk, const int8_t *T, int kpg, const int bits,
                                     __m256i pacc[4][4], __m256i lacc[4]) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const __m256i m0f = _mm256_set1_epi8(0x0f), mul12 = MUL12;
    for (int j = 0; j < kpg; j++, blk += kgb, T += 16) {
        const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)T));
        for (int o = 0; o < kgb; o += 64) _mm_prefetch((const char *)blk + PF_B_DIST + o, PF_B_HINT);
        for (int p = 0; p < npair; p++)
            for (int half = 0; half < 2; half++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 64 * p + 32 * half));
                /* both lookups before either add: the order in which GCC 12 places the
                 * reloads of spilled accumulators after the lookups (lut_gemm_b) */
                const __m256i lo = _mm256_maddubs_epi16(mul12, lookup_lo(tbl, w, m0f));
                const __m256i hi = _mm256_maddubs_epi16(mul12, lookup_hi(tbl, w, m0f));
                pacc[p][half] = _mm256_add_epi16(pacc[p][half], lo);
                pacc[p][2 + half] = _mm256_add_epi16(pacc[p][2 + half], hi);
            }
        if (lone) {
            __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 64 * npair));
            __m256i vlo = lookup_lo(tbl, w, m0f), vhi = lookup_hi(tbl, w, m0f);
            lacc[0] = _mm256_add_epi16(lacc[0], _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vlo)));
            lacc[1] = _mm256_add_epi16(lacc[1], _mm256_cvtepi8_epi16(_mm256_extracti128_si256(vlo, 1)));
            lacc[2] = _mm256_add_epi16(lacc[2], _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vhi)));
            lacc[3] = _mm256_add_epi16(lacc[3], _mm256_cvtepi8_epi16(_mm256_extracti128_si256(vhi, 1)));
        }
    }
}

/* unpacklo/hi leave the int32 pair sums of a 16-row vector as lo = rows {0-3, 8-11},
 * hi = {4-7, 12-15}: one lane swap each puts them back in order */
#define rows_lo(s0, s1) _mm256_permute2x128_si256((s0), (s1), 0x20)
#define rows_hi(s0, s1) _mm256_permute2x128_si256((s0), (s1), 0x31)

/* One T3 pair block: a[q] += the signed lookups of rows 16q.., both triples. The sign bits
 * cost a broadcast, a shuffle and a compare per 32 lookups (AVX-512 reads them as a mask). */
static ALWAYS_INLINE void t3_pair_sums(const uint8_t *blk, const int8_t *tbl, __m256i a[4]) {
    const __m256i m0f = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi8(1);
    const __m256i odd = _mm256_set1_epi16((short)0xff00); /* odd bytes: triple j+1 */
    /* byte i of a 32-byte half reads sign byte i/8 of its 32-bit mask */
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bitsel = _mm256_set1_epi64x(0x8040201008040201LL);
    _mm_prefetch((const char *)blk + PF_T3_DIST, _MM_HINT_T0);
    const __m256i t0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)tbl));
    const __m256i t1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tbl + 16)));
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

#define LUT_WALK_PER_WIDTH 1 /* one B-type walk per bit width (lut_body.h, lut_gemm_b) */
#include "lut_body.h"

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

const pylut_kernels pylut_kernels_avx2 = {
    LUT_BODY_KERNELS,
    .gemm_b_i8 = pylut_gemm_b_i8_avx2,
    .b_entries = pylut_b_entries_avx2,
    .i8_from = PYLUT_I8_FROM_AVX2,
    /* T3's sign bits cost a broadcast, a shuffle and a compare per 32 lookups in ymm, where
     * AVX-512 reads them as a mask register: B2 beats T3 despite its extra bytes (measured:
     * docs/benchmarks.md) */
    .ternary_planes = 1,
    .attn_f16 = pylut_attn_f16_avx2, /* the baselines (baseline/baseline_avx2.c) */
    .dq8_gemv = pylut_dq8_gemv_avx2,
};

#endif /* x86-64 */
