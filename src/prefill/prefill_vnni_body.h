/* prefill_vnni_body.h - the int8-activation prefill GEMM on AVX-512 VNNI (vpdpbusd), one
 * body for two units: prefill_vnni_gfni.c (Ice Lake, Tiger Lake, Sapphire Rapids and later
 * Xeons, Zen 4/5: bit transposes through GFNI) and prefill_vnni.c (Cascade Lake, Cooper
 * Lake: AVX-512 VNNI without GFNI, shift-and-mask transposes). The including unit defines
 * PREFILL_FN (the kernel's name) and PREFILL_GFNI (0 or 1). Same arithmetic as
 * pylut_gemm_b_i8_scalar (prefill.c), in the same order: outputs are bit-identical. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "vnni_ops.h"

/* ------------------------------------------------------------------ unpacking */

/* Transpose the 8x8 bit matrix in each qword: bit j of byte i goes to bit i of byte j. A
 * qword holding plane bytes 0..7 (low nibbles row a, high nibbles row a+32) becomes the
 * codes of row a's 4 weights (bytes 0..3) and row a+32's (bytes 4..7). */
#if PREFILL_GFNI
#define transpose_bits transpose_bits_gfni /* vnni_ops.h */
#else
/* three delta swaps (Hacker's Delight's transpose8) */
static inline __m512i transpose_bits(__m512i x) {
    __m512i t = _mm512_and_si512(_mm512_xor_si512(x, _mm512_srli_epi64(x, 7)),
                                 _mm512_set1_epi64(0x00AA00AA00AA00AAll));
    x = _mm512_xor_si512(x, _mm512_xor_si512(t, _mm512_slli_epi64(t, 7)));
    t = _mm512_and_si512(_mm512_xor_si512(x, _mm512_srli_epi64(x, 14)), _mm512_set1_epi64(0x0000CCCC0000CCCCll));
    x = _mm512_xor_si512(x, _mm512_xor_si512(t, _mm512_slli_epi64(t, 14)));
    t = _mm512_and_si512(_mm512_xor_si512(x, _mm512_srli_epi64(x, 28)), _mm512_set1_epi64(0x00000000F0F0F0F0ll));
    return _mm512_xor_si512(x, _mm512_xor_si512(t, _mm512_slli_epi64(t, 28)));
}
#endif

/* One k-group's 64 rows: w[64] dword codes. A pair block's 16-bit word a (bytes 2a, 2a+1)
 * holds both of its planes for rows a and a+32, so word a of every block, stacked into a
 * qword, is the plane-byte column transpose_bits() wants. */
static inline __attribute__((always_inline)) void unpack_kgroup(const uint8_t *blk, int bits, uint32_t *w) {
    const __m512i z = _mm512_setzero_si512();
    __m512i v[4]; /* v[i] word a: planes 2i, 2i+1 of rows a, a+32 (bits is a constant here) */
    for (int i = 0; i < 4; i++)
        v[i] = 2 * i + 1 < bits ? _mm512_loadu_si512(blk + 64 * i)
               : 2 * i + 1 == bits ? _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 64 * i)))
                                   : z;
    const __m512i wlo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                         39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i whi = _mm512_add_epi16(wlo, _mm512_set1_epi16(16));
    const __m512i d0 = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i d1 = _mm512_add_epi32(d0, _mm512_set1_epi32(8));
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    /* dwords (v0[a], v1[a]) and (v2[a], v3[a]) for a = 0..15 (lo) and 16..31 (hi) */
    const __m512i a_lo = _mm512_permutex2var_epi16(v[0], wlo, v[1]);
    const __m512i a_hi = _mm512_permutex2var_epi16(v[0], whi, v[1]);
    const __m512i b_lo = bits > 4 ? _mm512_permutex2var_epi16(v[2], wlo, v[3]) : z;
    const __m512i b_hi = bits > 4 ? _mm512_permutex2var_epi16(v[2], whi, v[3]) : z;
    /* qwords of rows a = 0..7, 8..15, 16..23, 24..31 */
    const __m512i q0 = transpose_bits(_mm512_permutex2var_epi32(a_lo, d0, b_lo));
    const __m512i q1 = transpose_bits(_mm512_permutex2var_epi32(a_lo, d1, b_lo));
    const __m512i q2 = transpose_bits(_mm512_permutex2var_epi32(a_hi, d0, b_hi));
    const __m512i q3 = transpose_bits(_mm512_permutex2var_epi32(a_hi, d1, b_hi));
    _mm512_store_si512(w + 0, _mm512_permutex2var_epi32(q0, even, q1));
    _mm512_store_si512(w + 16, _mm512_permutex2var_epi32(q2, even, q3));
    _mm512_store_si512(w + 32, _mm512_permutex2var_epi32(q0, odd, q1));
    _mm512_store_si512(w + 48, _mm512_permutex2var_epi32(q2, odd, q3));
}

#if PREFILL_GFNI /* the GFNI unit serves the VBMI tier only: vpermt2b */
#define PREFILL_T3_UNPACK 1
/* Even pairs of T3 triple blocks -> dword codes trit + 1 (pylut_i8_unpack's T3 branch). Two
 * blocks hold 12 k's of 64 rows: 3 k-groups. A nibble plus 16 where its sign bit is set is a
 * 5-bit combination index; the k's digit position p in its triple selects 32 of a 128-byte
 * table of base-3 digits. Per output vector (16 rows, 4 k's): one vpermt2b gathers each byte's
 * index from the two blocks, an or adds 32p, one vpermt2b reads the digits. */
static void unpack_t3(const uint8_t *blk, int64_t pairs, uint32_t *w) {
    static const uint8_t digits[128] __attribute__((aligned(64))) = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 0, 0,
        0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 0, 0, 2, 2, 2, 1, 1, 1, 0, 0, 0, 2, 2, 2, 1, 1, 0, 0,
        0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0, 2, 1, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const __m512i tlo = _mm512_load_si512(digits), thi = _mm512_load_si512(digits + 64);
    const __m512i m0f = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(16);
    /* dword r of a selector: the bytes of row r (2r + h, from block 0 or + 64 from block 1) */
    const __m512i rows = _mm512_setr_epi32(0x00000000, 0x02020202, 0x04040404, 0x06060606, 0x08080808, 0x0a0a0a0a,
                                           0x0c0c0c0c, 0x0e0e0e0e, 0x10101010, 0x12121212, 0x14141414, 0x16161616,
                                           0x18181818, 0x1a1a1a1a, 0x1c1c1c1c, 0x1e1e1e1e);
    /* k-group j's 4 k's (12 per two blocks): byte e = 64 * block + triple h, and 32 * digit */
    static const int32_t at[3] = {0x01000000, 0x40400101, 0x41414140};
    static const int32_t pos[3] = {0x00402000, 0x20004020, 0x40200040};
    __m512i sel[2][3], pc[3];
    for (int j = 0; j < 3; j++) {
        pc[j] = _mm512_set1_epi32(pos[j]);
        for (int qq = 0; qq < 2; qq++) sel[qq][j] = _mm512_add_epi32(rows, _mm512_set1_epi32(at[j] + qq * 0x20202020));
    }
    for (int64_t p = 0; p + 2 <= pairs; p += 2, blk += 2 * PYLUT_T3_PAIR_BYTES, w += 3 * PYLUT_TILE_M) {
        __m512i idx[2][2]; /* [block][rows 0-31 / 32-63] */
        for (int b = 0; b < 2; b++) {
            const uint8_t *q = blk + b * PYLUT_T3_PAIR_BYTES;
            const __m512i v = _mm512_loadu_si512((const void *)q);
            uint64_t slo, shi;
            memcpy(&slo, q + 64, 8);
            memcpy(&shi, q + 72, 8);
            const __m512i lo = _mm512_and_si512(v, m0f), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
            idx[b][0] = _mm512_mask_add_epi8(lo, _cvtu64_mask64(slo), lo, sixteen);
            idx[b][1] = _mm512_mask_add_epi8(hi, _cvtu64_mask64(shi), hi, sixteen);
        }
        for (int j = 0; j < 3; j++)
            for (int hh = 0; hh < 2; hh++)
                for (int qq = 0; qq < 2; qq++) {
                    const __m512i x = _mm512_or_si512(_mm512_permutex2var_epi8(idx[0][hh], sel[qq][j], idx[1][hh]), pc[j]);
                    _mm512_store_si512(w + j * PYLUT_TILE_M + 32 * hh + 16 * qq, _mm512_permutex2var_epi8(tlo, x, thi));
                }
    }
}
#endif

/* ------------------------------------------------------------------ float parameters */

#define PV __m512
#define PW 16
#define pv_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define pv_i8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define pv_nib_lo(p) \
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_loadu_si128((const __m128i *)(p)), _mm_set1_epi8(15))))
#define pv_nib_hi(p) \
    _mm512_cvtepi32_ps(_mm512_srli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p))), 4))
#define pv_mul _mm512_mul_ps
#define pv_set1 _mm512_set1_ps
#define pv_store _mm512_store_ps
#include "prefill_params.h"

/* ------------------------------------------------------------------ the dot products */

#define BCAST(p) _mm512_broadcastd_epi32(_mm_loadu_si32(p))
#define DOT4(A, X)                                                      \
    A##0 = dpbusd(A##0, w0, X), A##1 = dpbusd(A##1, w1, X), \
    A##2 = dpbusd(A##2, w2, X), A##3 = dpbusd(A##3, w3, X)

/* 4 tokens x 64 rows over ng groups of the chunk: yacc [4][64] += their sums. Sixteen named
 * accumulators (an array of them made GCC shuffle registers every k-group). */
static void tokens4(const uint32_t *w, const float *s, const float *b, int64_t ng, int gw,
                    const pylut_lut *act, int64_t k0, int64_t g0, float *yacc) {
    const int kq = gw / 4;
    const int8_t *x0 = act[0].tbl + k0, *x1 = act[1].tbl + k0, *x2 = act[2].tbl + k0, *x3 = act[3].tbl + k0;
    for (int64_t g = 0; g < ng; g++) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        __m512i c0 = a0, c1 = a0, c2 = a0, c3 = a0, d0 = a0, d1 = a0, d2 = a0, d3 = a0;
        for (int64_t kg = g * kq; kg < (g + 1) * kq; kg++) {
            const uint32_t *wj = w + kg * PYLUT_TILE_M;
            const __m512i w0 = _mm512_load_si512(wj), w1 = _mm512_load_si512(wj + 16);
            const __m512i w2 = _mm512_load_si512(wj + 32), w3 = _mm512_load_si512(wj + 48);
            DOT4(a, BCAST(x0 + 4 * kg));
            DOT4(b, BCAST(x1 + 4 * kg));
            DOT4(c, BCAST(x2 + 4 * kg));
            DOT4(d, BCAST(x3 + 4 * kg));
        }
        const float *sg = s + g * PYLUT_TILE_M, *bg = b + g * PYLUT_TILE_M;
        group_epilogue(a0, a1, a2, a3, sg, bg, act[0].tscale[g0 + g], act[0].sumx[g0 + g], yacc);
        group_epilogue(b0, b1, b2, b3, sg, bg, act[1].tscale[g0 + g], act[1].sumx[g0 + g], yacc + PYLUT_TILE_M);
        group_epilogue(c0, c1, c2, c3, sg, bg, act[2].tscale[g0 + g], act[2].sumx[g0 + g], yacc + 2 * PYLUT_TILE_M);
        group_epilogue(d0, d1, d2, d3, sg, bg, act[3].tscale[g0 + g], act[3].sumx[g0 + g], yacc + 3 * PYLUT_TILE_M);
    }
}

/* The same for one token (the n % 4 tail). */
static void tokens1(const uint32_t *w, const float *s, const float *b, int64_t ng, int gw,
                    const pylut_lut *act, int64_t k0, int64_t g0, float *yacc) {
    const int kq = gw / 4;
    const int8_t *x0 = act[0].tbl + k0;
    for (int64_t g = 0; g < ng; g++) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t kg = g * kq; kg < (g + 1) * kq; kg++) {
            const uint32_t *wj = w + kg * PYLUT_TILE_M;
            const __m512i w0 = _mm512_load_si512(wj), w1 = _mm512_load_si512(wj + 16);
            const __m512i w2 = _mm512_load_si512(wj + 32), w3 = _mm512_load_si512(wj + 48);
            DOT4(a, BCAST(x0 + 4 * kg));
        }
        group_epilogue(a0, a1, a2, a3, s + g * PYLUT_TILE_M, b + g * PYLUT_TILE_M, act[0].tscale[g0 + g],
                       act[0].sumx[g0 + g], yacc);
    }
}

/* Every token of a pass over one chunk: 4 at a time, then the rest one by one. */
static void run_chunk(const uint32_t *w, const float *s, const float *b, int64_t ng, int gw, int bits,
                      const pylut_lut *act, int nt, int64_t k0, int64_t g0, float *yacc) {
    (void)bits;
    int tok = 0;
    for (; tok + 4 <= nt; tok += 4) tokens4(w, s, b, ng, gw, act + tok, k0, g0, yacc + tok * PYLUT_TILE_M);
    for (; tok < nt; tok++) tokens1(w, s, b, ng, gw, act + tok, k0, g0, yacc + tok * PYLUT_TILE_M);
}

#define PREFILL_ALIGN 64
#define PREFILL_MAX_BITS 8
#include "prefill_driver.h"

void PREFILL_FN(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy, int64_t tile0,
                int64_t tile1) {
    prefill_tiles(qm, act, n, y, ldy, tile0, tile1);
}
