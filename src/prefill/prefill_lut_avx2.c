/* prefill_lut_avx2.c - the table-lookup GEMM of 2-bit B matrices for many tokens on AVX2
 * (ternary weights as two planes: TQ2_0, I2_S, BitNet). Same tables, same integer sums and
 * the same float epilogue as lut_gemm_b (lut/lut_body.h over lut/lut_x86.h), in the same
 * order: outputs are bit-identical to it and to the scalar twin, for any chunking.
 *
 * lut_gemm_b walks one token at a time over a row tile: every token reloads the tile's
 * codes and splits them into nibbles again, which for 2-bit codes costs as much as the
 * lookups themselves. Here four tokens share each k-group's nibbles: per k-group and 32-byte
 * half of the pair block, one load and three ops of nibble extraction, then per token a table
 * broadcast, two vpshufb, two vpmaddubsw (the (1,2) plane fold) and two vpaddw. vpshufb and
 * vpmaddubsw issue on different ports, so the lookups run at about twice the rate of
 * int8 multiply-adds (vpmaddubsw plus vpaddw per 32 products): on AVX2 2-bit matrices stay on
 * the tables for prefill, and this kernel is why.
 *
 * int16 bound: as lut_body.h, a row gains at most 127 + 2 * 127 = 381 per k-group, at most
 * 64 k-groups per group (PYLUT_MAX_GROUP): 24384 < 32767, so a group sums in int16 and
 * widens once. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ lookups */

/* acc += the (1,2)-folded lookups of nibbles nib in tbl. Inline asm: with intrinsics GCC
 * kept the eight accumulators in an array on the stack (perf annotate: a spill and a reload
 * per lookup); the asm leaves them in registers. */
static inline __attribute__((always_inline)) __m256i lookup_add(__m256i acc, __m256i tbl, __m256i nib, __m256i mul12) {
    __m256i t;
    __asm__("vpshufb %3, %2, %1\n\t"
            "vpmaddubsw %1, %4, %1\n\t"
            "vpaddw %1, %0, %0"
            : "+x"(acc), "=&x"(t)
            : "x"(tbl), "x"(nib), "x"(mul12));
    return acc;
}

#define TBL(tok) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(T##tok + 16 * j)))
#define TOKEN(tok, A, B)                                                                   \
    if (NT > tok) {                                                                        \
        const __m256i tbl = TBL(tok);                                                      \
        A = lookup_add(A, tbl, lo, mul12), B = lookup_add(B, tbl, hi, mul12);              \
    }

/* NT tokens' int16 sums of one group over half h of the tile: acc[2 * tok] rows 16h..16h+15
 * (low nibbles), acc[2 * tok + 1] rows 32+16h.. (high nibbles). blk: the group's first
 * k-group; T0..T3: its tables. Eight accumulators, the two nibble vectors, a table, a
 * scratch and the two constants fit the 16 registers at NT = 4. */
static inline __attribute__((always_inline)) void group_lookups(const uint8_t *blk, const int8_t *T0,
                                                                 const int8_t *T1, const int8_t *T2,
                                                                 const int8_t *T3, int kpg, int h, const int NT,
                                                                 __m256i acc[8]) {
    const __m256i m0f = _mm256_set1_epi8(0x0f), mul12 = _mm256_set1_epi16(0x0201);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
    for (int j = 0; j < kpg; j++) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 64 * j + 32 * h));
        const __m256i lo = _mm256_and_si256(w, m0f), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m0f);
        TOKEN(0, a0, a1)
        TOKEN(1, b0, b1)
        TOKEN(2, c0, c1)
        TOKEN(3, d0, d1)
    }
    acc[0] = a0, acc[1] = a1, acc[2] = b0, acc[3] = b1, acc[4] = c0, acc[5] = c1, acc[6] = d0, acc[7] = d1;
}
#undef TOKEN
#undef TBL

/* ------------------------------------------------------------------ epilogue */

/* acc[q] of one token += group g's contribution, rows 8q.. for the four q that half h's two
 * int16 vectors cover (lut_body.h group_apply, the same float operations) */
static inline __attribute__((always_inline)) void group_apply(const pylut_qmatrix *qm, int64_t t, int64_t g,
                                                               float f, float sx, __m256i lo16, __m256i hi16,
                                                               int h, float *acc) {
    const int64_t at = (t * (qm->k_pad / qm->group) + g) * PYLUT_TILE_M;
    const __m256i A[4] = {_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo16)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo16, 1)),
                          _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi16)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi16, 1))};
    const int qs[4] = {2 * h, 2 * h + 1, 4 + 2 * h, 5 + 2 * h};
    const __m256 vf = _mm256_set1_ps(f);
    const float hh = 1.5f; /* (2^bits - 1) / 2 */
    for (int i = 0; i < 4; i++) {
        const int q = qs[i];
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(qm->scale + at + 8 * q)));
        __m256 y = _mm256_loadu_ps(acc + 8 * q);
        if (!qm->has_bias) {
            const __m256 zc = _mm256_set1_ps((hh - qm->zero) * sx);
            y = _mm256_fmadd_ps(s, _mm256_fmadd_ps(vf, _mm256_cvtepi32_ps(A[i]), zc), y);
        } else {
            const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(qm->bias + at + 8 * q)));
            y = _mm256_fmadd_ps(_mm256_mul_ps(s, vf), _mm256_cvtepi32_ps(A[i]), y);
            y = _mm256_fmadd_ps(_mm256_fmadd_ps(s, _mm256_set1_ps(hh), b), _mm256_set1_ps(sx), y);
        }
        _mm256_storeu_ps(acc + 8 * q, y);
    }
}

/* ------------------------------------------------------------------ the walk */

/* NT tokens (lut[0..NT)) of row tile t into y: acc [NT][64] floats in memory, one group at a
 * time over both halves (the group's 4 KB of codes stay in L1 across them) */
static inline __attribute__((always_inline)) void tile_tokens(const pylut_qmatrix *qm, const pylut_lut *lut,
                                                               const int NT, float *y, int64_t ldy, int64_t t) {
    const int kpg = qm->group / PYLUT_KGROUP, kgb = pylut_b_kgroup_bytes(2);
    const int64_t groups = qm->k_pad / qm->group;
    _Alignas(32) float acc[4][PYLUT_TILE_M];
    memset(acc, 0, sizeof acc);
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    for (int64_t g = 0; g < groups; g++, blk += (int64_t)kpg * kgb) {
        const int64_t at = 16 * g * kpg; /* the group's tables; tokens past NT: never read */
        const int8_t *T0 = lut[0].tbl + at, *T1 = lut[NT > 1].tbl + at;
        const int8_t *T2 = lut[NT > 2 ? 2 : 0].tbl + at, *T3 = lut[NT > 3 ? 3 : 0].tbl + at;
        for (int h = 0; h < 2; h++) {
            __m256i a[8];
            group_lookups(blk, T0, T1, T2, T3, kpg, h, NT, a);
            for (int tok = 0; tok < NT; tok++)
                group_apply(qm, t, g, 0.5f * lut[tok].tscale[g], lut[tok].sumx[g], a[2 * tok], a[2 * tok + 1], h,
                            acc[tok]);
        }
    }
    const int64_t row0 = t * PYLUT_TILE_M, rows = qm->m - row0 < PYLUT_TILE_M ? qm->m - row0 : PYLUT_TILE_M;
    for (int tok = 0; tok < NT; tok++) memcpy(y + tok * ldy + row0, acc[tok], (size_t)rows * sizeof(float));
}

/* y[tok][m] for row tiles [tile0, tile1), tokens [0, n): a 2-bit B matrix with per-group fp16
 * scales (pylut_gemm_b_many_fits) */
void pylut_gemm_b2_many_avx2(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                             int64_t tile0, int64_t tile1) {
    for (int64_t t = tile0; t < tile1; t++) {
        int tok = 0;
        for (; tok + 4 <= n; tok += 4) tile_tokens(qm, lut + tok, 4, y + tok * ldy, ldy, t);
        switch (n - tok) {
        case 3: tile_tokens(qm, lut + tok, 3, y + tok * ldy, ldy, t); break;
        case 2: tile_tokens(qm, lut + tok, 2, y + tok * ldy, ldy, t); break;
        case 1: tile_tokens(qm, lut + tok, 1, y + tok * ldy, ldy, t); break;
        default: break;
        }
    }
}

#endif /* x86-64 */
