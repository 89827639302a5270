/* lut_neon.c - aarch64 NEON table-lookup kernels (vqtbl1q_s8): lut_body.h over NEON's
 * vocabulary.
 *
 * Compiled on aarch64 only (vqtbl1q and vaddvq do not exist on 32-bit ARM, which keeps the
 * scalar path). Advanced SIMD is part of every aarch64 core, so this unit needs no flags and
 * uses no dotprod instruction: pylut_kernels_neon and pylut_kernels_neon_dot share it.
 *
 * B-types: a 16-byte lane of a pair block holds rows 8L..8L+7 (low nibbles) and
 * 32+8L..32+8L+7 (high nibbles), each row's two plane nibbles in adjacent bytes 2r, 2r+1.
 * After the lookup, int16 lane r must gain T[plane 2p] + 2*T[plane 2p+1]:
 *   vpadalq_s8(acc, v)          adds v[2r] + v[2r+1]   (pairwise, sign-extended)
 *   vsraq_n_s16(acc, v16, 8)    adds v16[r] >> 8 = v[2r+1] (arithmetic: the high byte, signed)
 * so the odd byte counts twice, as maddubs(1,2) does on x86, and rows stay in order.
 *
 * NEON takes the int-super path too (the same decision as x86): its tables are built with one
 * scale per super-block anyway, and pair sums by vmull + vpaddq replace a per-group float
 * epilogue that decodes sub-values four rows at a time. Its int16 vectors hold rows in order,
 * so pair_lo / pair_hi are zips and rows_lo / rows_hi are nothing. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#ifndef PF_DIST
#define PF_DIST 256 /* bytes ahead of the code stream (as on x86; untuned on ARM) */
#endif

/* ------------------------------------------------------------------ vocabulary */

typedef float32x4_t vf32;
typedef int32x4_t vi32;
typedef int16x8_t vi16;
#define LUT_NF 16

/* fp16 bits -> 4 x fp32; aarch64 always has the fp16 <-> fp32 conversion (FCVTL). Exact,
 * like pylut_fp16_to_fp32, for every input including subnormals, inf and NaN. */
static ALWAYS_INLINE float32x4_t load_f16x4(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

#define f_zero() vdupq_n_f32(0.0f)
#define f_set1(x) vdupq_n_f32(x)
#define f_fma(a, b, c) vfmaq_f32((c), (a), (b))
#define f_mul(a, b) vmulq_f32((a), (b))
#define f_from_i32(a) vcvtq_f32_s32(a)
#define f_store(p, a) vst1q_f32((p), (a))
#define f_load_h(p) load_f16x4(p)
#define i32_zero() vdupq_n_s32(0)
#define i16_zero() vdupq_n_s16(0)
#define i16_add(a, b) vaddq_s16((a), (b))
#define i16_set1(x) vdupq_n_s16((int16_t)(x))
#define i16_and(a, b) vandq_s16((a), (b))
/* register counts (vshlq), so n need not be an immediate; i16_shr only sees values >= 0 */
#define i16_shl(a, n) vshlq_s16((a), vdupq_n_s16((int16_t)(n)))
#define i16_shr(a, n) vshlq_s16((a), vdupq_n_s16((int16_t)-(n)))
#define i16_load_s8(p) vmovl_s8(vld1_s8(p))
#define i16_load_u8(p) vreinterpretq_s16_u16(vmovl_u8(vld1_u8(p)))
#define i16_pairs(lo, hi) vreinterpretq_s16_s32(vdupq_n_s32((int)(((uint32_t)(uint16_t)(hi) << 16) | (uint16_t)(lo))))
#define pair_lo(a, b) vzip1q_s16((a), (b))
#define pair_hi(a, b) vzip2q_s16((a), (b))
#define madd_acc(acc, a, b) \
    vaddq_s32((acc), vpaddq_s32(vmull_s16(vget_low_s16(a), vget_low_s16(b)), vmull_high_s16((a), (b))))
#define rows_lo(s0, s1) (s0)
#define rows_hi(s0, s1) (s1)

/* int16 x8 (8 rows) -> int32 x4 twice, times 2^sh, added to r0, r1 */
static ALWAYS_INLINE void widen_add(int16x8_t v, int sh, int32x4_t *r0, int32x4_t *r1) {
    const int32x4_t s = vdupq_n_s32(sh);
    *r0 = vaddq_s32(*r0, vshlq_s32(vmovl_s16(vget_low_s16(v)), s));
    *r1 = vaddq_s32(*r1, vshlq_s32(vmovl_high_s16(v), s));
}

/* 4 rows' (from row 4q of the tile) scale (bias 0) or bias (bias 1) of group g: fp16, or
 * fp16 super-block value * int8 or nibble sub-value */
static ALWAYS_INLINE float32x4_t group_param(const pylut_qmatrix *qm, int bias, int64_t t, int64_t g, int q) {
    const uint16_t *base = bias ? qm->bias : qm->scale;
    const int64_t groups = qm->k_pad / qm->group;
    if (!qm->super) return load_f16x4(base + (t * groups + g) * PYLUT_TILE_M + 4 * q);
    const int64_t supers = qm->k_pad / qm->super, gps = qm->super / qm->group;
    const int64_t at = (t * groups + g) * PYLUT_TILE_M + 4 * q;
    const float32x4_t d = load_f16x4(base + (t * supers + g / gps) * PYLUT_TILE_M + 4 * q);
    const uint8_t *sub = (const uint8_t *)(bias && !qm->sub_nibbles ? qm->sub_bias : qm->sub_scale);
    uint8_t v[8] = {0};
    memcpy(v, sub + at, 4);
    int16x8_t s16;
    if (qm->sub_nibbles) {
        const uint8x8_t u = vld1_u8(v);
        s16 = vreinterpretq_s16_u16(vmovl_u8(bias ? vshr_n_u8(u, 4) : vand_u8(u, vdup_n_u8(15))));
    } else {
        s16 = vmovl_s8(vreinterpret_s8_u8(vld1_u8(v)));
    }
    return vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(s16))));
}

static ALWAYS_INLINE int8x16_t lookup_lo(int8x16_t tbl, uint8x16_t w) {
    return vqtbl1q_s8(tbl, vandq_u8(w, vdupq_n_u8(0x0f)));
}
static ALWAYS_INLINE int8x16_t lookup_hi(int8x16_t tbl, uint8x16_t w) {
    return vqtbl1q_s8(tbl, vshrq_n_u8(w, 4)); /* < 16 after the shift: no mask needed */
}

/* acc16[r] += v[2r] + 2*v[2r+1] (see the header) */
static ALWAYS_INLINE int16x8_t fold_pair(int16x8_t acc, int8x16_t v) {
    acc = vpadalq_s8(acc, v);
    return vsraq_n_s16(acc, vreinterpretq_s16_s8(v), 8);
}

/* One group's lookups (lut_body.h) added to rows 8q..8q+7 of pacc[p][q] / lacc[q]: pair lane L's low
 * nibbles -> q = L, high nibbles -> q = 4 + L; the lone block's 32 bytes are rows 0..31 /
 * 32..63 in order. 8 planes = 32 accumulators, all 32 vector registers: the compiler spills
 * some for b >= 7 (rare formats: lossless Q6/Q8 homes). */
static ALWAYS_INLINE void plane_sums(const uint8_t *blk, const int8_t *T, int kpg, const int bits,
                                     int16x8_t pacc[4][8], int16x8_t lacc[8]) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    for (int j = 0; j < kpg; j++, blk += kgb, T += 16) {
        const int8x16_t tbl = vld1q_s8(T);
        __builtin_prefetch(blk + PF_DIST);
        for (int p = 0; p < npair; p++)
            for (int l = 0; l < 4; l++) {
                const uint8x16_t w = vld1q_u8(blk + 64 * p + 16 * l);
                pacc[p][l] = fold_pair(pacc[p][l], lookup_lo(tbl, w));
                pacc[p][4 + l] = fold_pair(pacc[p][4 + l], lookup_hi(tbl, w));
            }
        if (lone)
            for (int l = 0; l < 2; l++) { /* bytes 16l..16l+15: rows 16l.. and 32+16l.. */
                const uint8x16_t w = vld1q_u8(blk + 64 * npair + 16 * l);
                const int8x16_t vlo = lookup_lo(tbl, w), vhi = lookup_hi(tbl, w);
                lacc[2 * l] = vaddw_s8(lacc[2 * l], vget_low_s8(vlo));
                lacc[2 * l + 1] = vaddw_high_s8(lacc[2 * l + 1], vlo);
                lacc[4 + 2 * l] = vaddw_s8(lacc[4 + 2 * l], vget_low_s8(vhi));
                lacc[5 + 2 * l] = vaddw_high_s8(lacc[5 + 2 * l], vhi);
            }
    }
}

/* The 16 sign bytes of a pair block (lo mask = bytes 0..7, hi mask = bytes 8..15) are
 * expanded to one 0x00/0xff byte per lookup: nibble vector k (bytes 16k.., rows 8k..8k+7,
 * both triples) reads sign byte 8n + 2k + i/8, bit i%8, for its byte i (n = 0 for the low
 * nibbles, 1 for the high ones). vqtbl1q gathers the bytes, vtstq the bits. */
static ALWAYS_INLINE uint8x16_t sign_mask(uint8x16_t signs, int byte0) {
    static const uint8_t sel[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t idx = vaddq_u8(vld1q_u8(sel), vdupq_n_u8((uint8_t)byte0));
    return vtstq_u8(vqtbl1q_u8(signs, idx), vld1q_u8(bit));
}

/* v where the mask is clear, -v where set: (v ^ m) - m with m in {0, -1} */
static ALWAYS_INLINE int8x16_t negate_where(int8x16_t v, uint8x16_t m) {
    const int8x16_t ms = vreinterpretq_s8_u8(m);
    return vsubq_s8(veorq_s8(v, ms), ms);
}

/* One T3 pair block: a[q] += the signed lookups of rows 8q.., both triples */
static ALWAYS_INLINE void t3_pair_sums(const uint8_t *blk, const int8_t *tbl, int16x8_t a[8]) {
    /* odd bytes hold triple j+1: index bit 4 picks its table in vqtbl2q */
    const uint8x16_t odd = vreinterpretq_u8_u16(vdupq_n_u16(0x1000));
    const uint8x16_t m0f = vdupq_n_u8(0x0f);
    __builtin_prefetch(blk + PF_DIST);
    const uint8x16_t signs = vld1q_u8(blk + 64);
    const int8x16x2_t t = vld1q_s8_x2(tbl); /* triples 2p, 2p+1 */
    for (int k = 0; k < 4; k++) {
        const uint8x16_t w = vld1q_u8(blk + 16 * k);
        const uint8x16_t ilo = vorrq_u8(vandq_u8(w, m0f), odd);
        const uint8x16_t ihi = vorrq_u8(vshrq_n_u8(w, 4), odd);
        const int8x16_t vlo = negate_where(vqtbl2q_s8(t, ilo), sign_mask(signs, 2 * k));
        const int8x16_t vhi = negate_where(vqtbl2q_s8(t, ihi), sign_mask(signs, 8 + 2 * k));
        a[k] = vpadalq_s8(a[k], vlo);         /* rows 8k..8k+7: both triples */
        a[4 + k] = vpadalq_s8(a[4 + k], vhi); /* rows 32+8k.. */
    }
}

#include "lut_body.h"

/* The baselines live in baseline/baseline_neon.c; the int8 prefill (prefill_neon.c) needs sdot. */
const pylut_kernels pylut_kernels_neon = {
    LUT_BODY_KERNELS,
    .dq8_gemv = pylut_dq8_gemv_neon,
};

const pylut_kernels pylut_kernels_neon_dot = {
    LUT_BODY_KERNELS,
    .dq8_gemv = pylut_dq8_gemv_neon_dot,
    .gemm_b_i8 = pylut_gemm_b_i8_neon_dot,
    .i8_from = PYLUT_I8_FROM_NEON_DOT,
};

#endif /* __aarch64__ */
