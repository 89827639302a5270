/* lut_x86.h - the x86 vocabulary of lut_body.h at one vector width: one algorithm at two
 * widths, shared by lut_avx2.c (LUT_X86_W 256) and lut_avx512.h (LUT_X86_W 512). The unit
 * defines LUT_X86_W, then includes this file, then defines what differs beyond the width
 * (plane_sums, t3_pair_sums, rows_lo, rows_hi; madd_acc unless LUT_MADD_ACC is set) and
 * includes lut_body.h.
 *
 * B-types: the 16-entry table of a k-group is replicated in every 128-bit lane, so one
 * vpshufb (or vpermb) looks up a whole vector of nibbles. A pair block (planes 2p, 2p+1) puts
 * each row's two plane nibbles in adjacent bytes, so vpmaddubsw with multipliers (1,2) folds
 * the planes and widens to int16 in one instruction. */
#ifndef PYLUT_LUT_X86_H
#define PYLUT_LUT_X86_H

#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Software prefetch of the code streams. B-types: every line, PF_B_DIST bytes ahead, into L2:
 * decode streams the weights from DRAM on one core with much compute per byte, and L1-bound
 * prefetches leave read bandwidth unused, since a few L1 miss buffers cap the bytes in flight.
 * T3 streams prefer a short distance into L1; on AVX-512 they take an L2 one PF_T3_L2 ahead
 * as well: without it a 2B4T decode step on Zen 5 waited on the code loads, 24 GB/s at one
 * thread where B2 streams 30 (with it T3 decodes ~15 % faster). Measured: docs/benchmarks.md. */
#ifndef PF_B_DIST
#define PF_B_DIST 8192
#endif
#ifndef PF_B_HINT
#define PF_B_HINT _MM_HINT_T1
#endif
#ifndef PF_T3_DIST
#define PF_T3_DIST 256
#endif
#ifndef PF_T3_L2
#define PF_T3_L2 8192
#endif

#if LUT_X86_W == 256
#define V(op) _mm256_##op
#define SI(op) _mm256_##op##_si256
typedef __m256 vf32;
typedef __m256i vi32;
typedef __m256i vi16;
#define LUT_NF 8
#define half_load(p) _mm_loadu_si128((const __m128i *)(p))       /* 16 bytes */
#define rows_load(p) _mm_loadl_epi64((const __m128i *)(p))       /* LUT_RF = 8 bytes */
#define lower_half(a) _mm256_castsi256_si128(a)
#define upper_half(a) _mm256_extracti128_si256((a), 1)
#elif LUT_X86_W == 512
#define V(op) _mm512_##op
#define SI(op) _mm512_##op##_si512
typedef __m512 vf32;
typedef __m512i vi32;
typedef __m512i vi16;
#define LUT_NF 4
#define half_load(p) _mm256_loadu_si256((const __m256i *)(p))    /* 32 bytes */
#define rows_load(p) _mm_loadu_si128((const __m128i *)(p))       /* LUT_RF = 16 bytes */
#define lower_half(a) _mm512_castsi512_si256(a)
#define upper_half(a) _mm512_extracti64x4_epi64((a), 1)
#else
#error "LUT_X86_W must be 256 or 512"
#endif

#define f_zero() V(setzero_ps)()
#define f_set1(x) V(set1_ps)(x)
#define f_fma(a, b, c) V(fmadd_ps)((a), (b), (c))
#define f_mul(a, b) V(mul_ps)((a), (b))
#define f_from_i32(a) V(cvtepi32_ps)(a)
#define f_store(p, a) V(storeu_ps)((p), (a))
#define f_load_h(p) V(cvtph_ps)(half_load(p))
#define i32_zero() SI(setzero)()
#define i16_zero() SI(setzero)()
#define i16_add(a, b) V(add_epi16)((a), (b))
#define i16_set1(x) V(set1_epi16)((short)(x))
#define i16_and(a, b) SI(and)((a), (b))
#define i16_shl(a, n) V(slli_epi16)((a), (n))
#define i16_shr(a, n) V(srli_epi16)((a), (n))
#define i16_load_s8(p) V(cvtepi8_epi16)(half_load(p))
#define i16_load_u8(p) V(cvtepu8_epi16)(half_load(p))
#define i16_pairs(lo, hi) V(set1_epi32)((int)(((uint32_t)(uint16_t)(hi) << 16) | (uint16_t)(lo)))
#define pair_lo(a, b) V(unpacklo_epi16)((a), (b))
#define pair_hi(a, b) V(unpackhi_epi16)((a), (b))
#define MUL12 V(set1_epi16)(0x0201) /* bytes (1, 2): plane 2p + 2 * plane 2p+1 in one maddubs */
#ifndef LUT_MADD_ACC
#define madd_acc(acc, a, b) V(add_epi32)((acc), V(madd_epi16)((a), (b)))
#endif

/* int16 rows -> int32 * 2^sh, added to r0 (the lower half's rows) and r1 */
static ALWAYS_INLINE void widen_add(vi16 a16, int sh, vi32 *r0, vi32 *r1) {
    *r0 = V(add_epi32)(*r0, V(slli_epi32)(V(cvtepi16_epi32)(lower_half(a16)), sh));
    *r1 = V(add_epi32)(*r1, V(slli_epi32)(V(cvtepi16_epi32)(upper_half(a16)), sh));
}

/* LUT_RF rows' (from LUT_RF*q) scale (bias 0) or bias (bias 1) of group g: fp16, or fp16
 * super-block value * int8 or nibble sub-value */
static ALWAYS_INLINE vf32 group_param(const pylut_qmatrix *qm, int bias, int64_t t, int64_t g, int q) {
    const uint16_t *base = bias ? qm->bias : qm->scale;
    const int64_t groups = qm->k_pad / qm->group;
    if (!qm->super) return f_load_h(base + (t * groups + g) * PYLUT_TILE_M + (PYLUT_TILE_M / LUT_NF) * q);
    const int64_t supers = qm->k_pad / qm->super, gps = qm->super / qm->group;
    const int64_t at = (t * groups + g) * PYLUT_TILE_M + (PYLUT_TILE_M / LUT_NF) * q;
    const vf32 d = f_load_h(base + (t * supers + g / gps) * PYLUT_TILE_M + (PYLUT_TILE_M / LUT_NF) * q);
    vi32 s;
    if (qm->sub_nibbles) {
        s = V(cvtepu8_epi32)(rows_load((const uint8_t *)qm->sub_scale + at));
        s = bias ? V(srli_epi32)(s, 4) : SI(and)(s, V(set1_epi32)(15));
    } else {
        s = V(cvtepi8_epi32)(rows_load((bias ? qm->sub_bias : qm->sub_scale) + at));
    }
    return f_mul(d, f_from_i32(s));
}

#endif
