/* prefill_avx2.c - the int8-activation prefill GEMM on AVX2 (vpmaddubsw): Haswell to Comet
 * Lake, Alder/Raptor Lake, Zen 1-3; the AVX-512 VNNI units serve the rest. Same arithmetic
 * as pylut_gemm_b_i8_scalar (prefill.c), in the same order: outputs are bit-identical.
 *
 * Without vpdpbusd a dword of four u8 x s8 products costs vpmaddubsw (pairs to int16) plus
 * vpmaddwd (pairs to int32). The second is paid once per scale group instead of once per
 * k-group: the int16 pair sums of a whole group add up without overflow while
 * 2 * kgroups * (2^bits - 1) * 127 <= 32767 (Q4_0's group of 32: 8 k-groups, exactly the
 * limit). Larger groups or wider codes widen in runs of that many k-groups (one k-group per
 * run for 7-bit codes). Codes of 8 bits would saturate vpmaddubsw's pair sum: the twin
 * serves them. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ unpacking */

/* Transpose the 8x8 bit matrix in each qword (three delta swaps, Hacker's Delight's
 * transpose8): a qword of plane bytes 0..7 for rows (a, a+32) becomes row a's 4 codes in
 * its low dword and row a+32's in its high dword. */
static inline __m256i transpose_bits(__m256i x) {
    __m256i t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 7)), _mm256_set1_epi64x(0x00AA00AA00AA00AAll));
    x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 7)));
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 14)), _mm256_set1_epi64x(0x0000CCCC0000CCCCll));
    x = _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 14)));
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 28)), _mm256_set1_epi64x(0x00000000F0F0F0F0ll));
    return _mm256_xor_si256(x, _mm256_xor_si256(t, _mm256_slli_epi64(t, 28)));
}

/* Plane-pair block i's words for row pairs 16h..16h+15 (a lone top plane: its bytes as the
 * words' low halves; planes past the top: zero). */
static inline __m256i pair_words(const uint8_t *blk, int bits, int i, int h) {
    if (2 * i + 1 < bits) return _mm256_loadu_si256((const __m256i *)(blk + 64 * i + 32 * h));
    if (2 * i + 1 == bits) return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(blk + 64 * i + 16 * h)));
    return _mm256_setzero_si256();
}

/* One k-group's 64 rows into w [64] dword codes (bits is a constant here). Unpacks within
 * 128-bit lanes gather each row pair's 8 plane bytes into a qword: lane 0 of half h holds
 * row pairs 16h+0..7, lane 1 16h+8..15, in the order the comments give. */
static inline __attribute__((always_inline)) void unpack_kgroup(const uint8_t *blk, int bits, uint32_t *w) {
    for (int h = 0; h < 2; h++) {
        const __m256i v0 = pair_words(blk, bits, 0, h), v1 = pair_words(blk, bits, 1, h);
        const __m256i v2 = pair_words(blk, bits, 2, h), v3 = pair_words(blk, bits, 3, h);
        const __m256i a_lo = _mm256_unpacklo_epi16(v0, v1), a_hi = _mm256_unpackhi_epi16(v0, v1); /* pairs 0-3 | 4-7 */
        const __m256i b_lo = _mm256_unpacklo_epi16(v2, v3), b_hi = _mm256_unpackhi_epi16(v2, v3);
        const __m256i q0 = transpose_bits(_mm256_unpacklo_epi32(a_lo, b_lo)); /* pairs 0,1 */
        const __m256i q1 = transpose_bits(_mm256_unpackhi_epi32(a_lo, b_lo)); /* pairs 2,3 */
        const __m256i q2 = transpose_bits(_mm256_unpacklo_epi32(a_hi, b_hi)); /* pairs 4,5 */
        const __m256i q3 = transpose_bits(_mm256_unpackhi_epi32(a_hi, b_hi)); /* pairs 6,7 */
        /* even dwords are rows a, odd dwords rows a+32: per lane rows 0-3 and 4-7 */
        const __m256 lo03 = _mm256_shuffle_ps(_mm256_castsi256_ps(q0), _mm256_castsi256_ps(q1), 0x88);
        const __m256 lo47 = _mm256_shuffle_ps(_mm256_castsi256_ps(q2), _mm256_castsi256_ps(q3), 0x88);
        const __m256 hi03 = _mm256_shuffle_ps(_mm256_castsi256_ps(q0), _mm256_castsi256_ps(q1), 0xDD);
        const __m256 hi47 = _mm256_shuffle_ps(_mm256_castsi256_ps(q2), _mm256_castsi256_ps(q3), 0xDD);
        float *wf = (float *)w + 16 * h;
        _mm256_store_ps(wf + 0, _mm256_permute2f128_ps(lo03, lo47, 0x20));
        _mm256_store_ps(wf + 8, _mm256_permute2f128_ps(lo03, lo47, 0x31));
        _mm256_store_ps(wf + 32, _mm256_permute2f128_ps(hi03, hi47, 0x20));
        _mm256_store_ps(wf + 40, _mm256_permute2f128_ps(hi03, hi47, 0x31));
    }
}

/* ------------------------------------------------------------------ float parameters */

#define PV __m256
#define PW 8
#define pv_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define pv_i8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define pv_nib_lo(p) \
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_loadl_epi64((const __m128i *)(p)), _mm_set1_epi8(15))))
#define pv_nib_hi(p) \
    _mm256_cvtepi32_ps(_mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p))), 4))
#define pv_mul _mm256_mul_ps
#define pv_set1 _mm256_set1_ps
#define pv_store _mm256_store_ps
#include "prefill_params.h"

/* ------------------------------------------------------------------ the dot products */

/* k-groups whose int16 pair sums may add up before vpmaddwd (see the top of the file):
 * at least 1 for the 1-7-bit codes this kernel takes */
static int int16_kgroups(int bits) { return 32767 / (2 * 127 * ((1 << bits) - 1)); }

#define BCAST(p) _mm256_broadcastd_epi32(_mm_loadu_si32(p)) /* x's 4 bytes of one k-group */

/* One token's group: int32 sums i0, i1 (rows 0-7, 8-15 of the quarter) into float f0, f1,
 * the twin's order: y = fma(I, s * xs, y); y = fma(b, sx, y). */
#define EPILOGUE(i0, i1, f0, f1, xs1, sx1)                                               \
    do {                                                                                 \
        const __m256 xs_ = _mm256_set1_ps(xs1), sx_ = _mm256_set1_ps(sx1);               \
        f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(_mm256_load_ps(sg), xs_), f0); \
        f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(_mm256_load_ps(sg + 8), xs_), f1); \
        f0 = _mm256_fmadd_ps(_mm256_load_ps(bg), sx_, f0);                               \
        f1 = _mm256_fmadd_ps(_mm256_load_ps(bg + 8), sx_, f1);                           \
    } while (0)

/* acc += the int16 pair sums of u8 w . s8 x. Inline asm: with intrinsics GCC re-associates
 * the int16 adds into trees and spills half the partial products (perf annotate). */
static inline __attribute__((always_inline)) __m256i maddubs_add(__m256i acc, __m256i w, __m256i x) {
    __m256i t;
    __asm__("vpmaddubsw %3, %2, %1\n\tvpaddw %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(x));
    return acc;
}

/* Integer sums of one group for 2 tokens (x0, x1) x 16 rows: kq k-groups in runs of lim,
 * each run summed in int16 and widened once. Inlined with constant kq and lim per call site
 * so the runs unroll. */
static inline __attribute__((always_inline)) void group2(const uint32_t *w, const int8_t *x0, const int8_t *x1,
                                                          int kq, int lim, __m256i *a0, __m256i *a1,
                                                          __m256i *c0, __m256i *c1) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, t0 = s0, t1 = s0; /* token 0: s, token 1: t */
    for (int run = 0; run < kq; run += lim) {
        __m256i p0 = _mm256_setzero_si256(), p1 = p0, r0 = p0, r1 = p0; /* int16 pair sums */
        const int end = run + lim < kq ? run + lim : kq;
        for (int kg = run; kg < end; kg++) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(w + kg * PYLUT_TILE_M));
            const __m256i w1 = _mm256_load_si256((const __m256i *)(w + kg * PYLUT_TILE_M + 8));
            const __m256i xa = BCAST(x0 + 4 * kg), xc = BCAST(x1 + 4 * kg);
            p0 = maddubs_add(p0, w0, xa), p1 = maddubs_add(p1, w1, xa);
            r0 = maddubs_add(r0, w0, xc), r1 = maddubs_add(r1, w1, xc);
        }
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(p0, ones));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(p1, ones));
        t0 = _mm256_add_epi32(t0, _mm256_madd_epi16(r0, ones));
        t1 = _mm256_add_epi32(t1, _mm256_madd_epi16(r1, ones));
    }
    *a0 = s0, *a1 = s1, *c0 = t0, *c1 = t1;
}

/* 2 tokens x 16 rows (quarter q of the tile) over ng groups of the chunk: yacc [2][64] +=
 * their sums. Float accumulators stay in registers for the whole chunk: 4 float, 4 integer,
 * 2 weight, 1 activation and the ones vector fit AVX2's 16 registers. x1 == x0 for a lone
 * token (its second half of the work is thrown away). */
static inline __attribute__((always_inline)) void tokens2_body(const uint32_t *w, const float *s, const float *b,
                                                                int64_t ng, int kq, int lim, const pylut_lut *act,
                                                                int two, int64_t k0, int64_t g0, float *yacc) {
    const int8_t *x0 = act[0].tbl + k0, *x1 = act[two].tbl + k0;
    __m256 f0 = _mm256_load_ps(yacc), f1 = _mm256_load_ps(yacc + 8), h0 = f0, h1 = f1;
    if (two) h0 = _mm256_load_ps(yacc + PYLUT_TILE_M), h1 = _mm256_load_ps(yacc + PYLUT_TILE_M + 8);
    for (int64_t g = 0; g < ng; g++) {
        __m256i a0, a1, c0, c1;
        group2(w + g * kq * PYLUT_TILE_M, x0 + 4 * g * kq, x1 + 4 * g * kq, kq, lim, &a0, &a1, &c0, &c1);
        const float *sg = s + g * PYLUT_TILE_M, *bg = b + g * PYLUT_TILE_M;
        EPILOGUE(a0, a1, f0, f1, act[0].tscale[g0 + g], act[0].sumx[g0 + g]);
        if (two) EPILOGUE(c0, c1, h0, h1, act[1].tscale[g0 + g], act[1].sumx[g0 + g]);
    }
    _mm256_store_ps(yacc, f0), _mm256_store_ps(yacc + 8, f1);
    if (two) _mm256_store_ps(yacc + PYLUT_TILE_M, h0), _mm256_store_ps(yacc + PYLUT_TILE_M + 8, h1);
}

/* Instances with constant (k-groups per group, int16 run): Q4_0/Q4_K/Q4_1 (8, 8), Q3_K and
 * 16-weight 2-4-bit groups (4, 4+), 64- and 128-weight 2-bit groups; the rest generic. */
static void tokens2(const uint32_t *w, const float *s, const float *b, int64_t ng, int gw, int lim,
                    const pylut_lut *act, int two, int64_t k0, int64_t g0, float *yacc) {
    const int kq = gw / 4;
#define TOKENS2_CASE(KQ, LIM) \
    if (kq == KQ && lim >= LIM) return tokens2_body(w, s, b, ng, KQ, LIM, act, two, k0, g0, yacc);
    TOKENS2_CASE(8, 8) TOKENS2_CASE(4, 4) TOKENS2_CASE(16, 16) TOKENS2_CASE(32, 32)
#undef TOKENS2_CASE
    tokens2_body(w, s, b, ng, kq, lim < kq ? lim : kq, act, two, k0, g0, yacc);
}

/* Every token of a pass over one chunk: quarters of 16 rows, two tokens at a time (the
 * tokens re-read the quarter's codes from L1). */
static void run_chunk(const uint32_t *w, const float *s, const float *b, int64_t ng, int gw, int bits,
                      const pylut_lut *act, int nt, int64_t k0, int64_t g0, float *yacc) {
    const int lim = int16_kgroups(bits);
    for (int q = 0; q < 4; q++)
        for (int tok = 0; tok < nt; tok += 2)
            tokens2(w + 16 * q, s + 16 * q, b + 16 * q, ng, gw, lim, act + tok, tok + 1 < nt, k0, g0,
                    yacc + tok * PYLUT_TILE_M + 16 * q);
}

#define PREFILL_ALIGN 32
#define PREFILL_MAX_BITS 7
#include "prefill_driver.h"

void pylut_gemm_b_i8_avx2(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy,
                          int64_t tile0, int64_t tile1) {
    if (qm->bits > 7) /* vpmaddubsw would saturate; the model never asks (pylut_gemm_i8_preferred) */
        pylut_gemm_b_i8_scalar(qm, act, n, y, ldy, tile0, tile1);
    else
        prefill_tiles(qm, act, n, y, ldy, tile0, tile1);
}

#endif /* x86-64 */
