/* lut_neon.c - aarch64 NEON table-lookup kernels (vqtbl1q_s8) and the int8 baseline.
 *
 * Compiled on aarch64 only (vqtbl1q and vaddvq do not exist on 32-bit ARM, which keeps the
 * scalar path). Advanced SIMD is part of every aarch64 core, so this unit needs no flags;
 * only the sdot functions carry a target attribute. They are reached solely through
 * pylut_kernels_neon_dot, which dispatch.c hands out only when HWCAP_ASIMDDP is set: the
 * whole file must never be compiled with +dotprod (a Pi 4 / Cortex-A72 would SIGILL).
 *
 * B-types: a 16-byte lane of a pair block holds rows 8L..8L+7 (low nibbles) and
 * 32+8L..32+8L+7 (high nibbles), each row's two plane nibbles in adjacent bytes 2r, 2r+1.
 * After the lookup, int16 lane r must gain T[plane 2p] + 2*T[plane 2p+1]:
 *   vpadalq_s8(acc, v)          adds v[2r] + v[2r+1]   (pairwise, sign-extended)
 *   vsraq_n_s16(acc, v16, 8)    adds v16[r] >> 8 = v[2r+1] (arithmetic: the high byte, signed)
 * so the odd byte counts twice, as maddubs(1,2) does on x86, and rows stay in order.
 *
 * int16 bound (same argument as lut_avx2.c): a table entry is in [-127, 127]; per k-group a
 * pair accumulator gains at most 127 + 2*127 = 381 (each partial step is smaller) and a
 * lone-plane accumulator 127. A scale group has at most PYLUT_MAX_GROUP/4 = 64 k-groups, so
 * |acc| <= 64*381 = 24384 < 32767, whatever b (1..8) is: each pair has its own accumulator.
 * The plane weights 4^p (and 2^(b-1) for the lone plane) are applied only after widening to
 * int32 at the end of the group (|A| <= 64*127*255 < 2^21): the integer sum equals the scalar
 * twin's A exactly.
 * T3: a row accumulator gains at most 2*127 per pair of triples, at most 128 pairs per
 * scale group (PYLUT_T3_MAX_GROUP): 128*254 = 32512 < 32767.
 * int8 baseline: codes <= 15, |x| <= 127; vmull+vmlal put two products (<= 3810) in an int16
 * lane before vpadal widens to int32; sdot accumulates in int32 directly. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#ifndef PF_DIST
#define PF_DIST 256 /* bytes ahead of the code stream (as on x86; untuned on ARM) */
#endif

/* fp16 bits -> 4 x fp32; aarch64 always has the fp16 <-> fp32 conversion (FCVTL). Exact,
 * like pylut_fp16_to_fp32, for every input including subnormals, inf and NaN. */
static ALWAYS_INLINE float32x4_t load_f16x4(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
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

/* 4 rows' (from row r0 of the tile) scale (bias 0) or bias (bias 1) of group g: fp16, or
 * fp16 super-block value * int8 or nibble sub-value */
static ALWAYS_INLINE float32x4_t group_param(const pylut_qmatrix *qm, int bias, int64_t t, int64_t g, int r0) {
    const uint16_t *base = bias ? qm->bias : qm->scale;
    const int64_t groups = qm->k_pad / qm->group;
    if (!qm->super) return load_f16x4(base + (t * groups + g) * PYLUT_TILE_M + r0);
    const int64_t supers = qm->k_pad / qm->super, gps = qm->super / qm->group;
    const int64_t at = (t * groups + g) * PYLUT_TILE_M + r0;
    const float32x4_t d = load_f16x4(base + (t * supers + g / gps) * PYLUT_TILE_M + r0);
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

/* int16 x8 (8 rows) -> int32 x4 twice, times 2^sh, added to a[0], a[1]. vshlq with a
 * register count keeps sh a plain int (the _n forms want an immediate at every call site). */
static ALWAYS_INLINE void widen_add(int16x8_t v, int sh, int32x4_t a[2]) {
    const int32x4_t s = vdupq_n_s32(sh);
    a[0] = vaddq_s32(a[0], vshlq_s32(vmovl_s16(vget_low_s16(v)), s));
    a[1] = vaddq_s32(a[1], vshlq_s32(vmovl_high_s16(v), s));
}

/* 64 fp32 rows (16 x float32x4) -> y[row0 ..], clipped to m */
static ALWAYS_INLINE void store_tile(float *y, int64_t row0, int64_t m, const float32x4_t acc[16]) {
    if (row0 + PYLUT_TILE_M <= m) {
        for (int q = 0; q < 16; q++) vst1q_f32(y + row0 + 4 * q, acc[q]);
    } else {
        float tmp[PYLUT_TILE_M];
        for (int q = 0; q < 16; q++) vst1q_f32(tmp + 4 * q, acc[q]);
        memcpy(y + row0, tmp, (size_t)(m - row0) * sizeof(float));
    }
}

/* ------------------------------------------------------------------ B-type GEMM */

/* One row tile (64 rows), one token. bits is a compile-time constant at every call site.
 * Accumulators are indexed by q = rows 8q..8q+7: pair lane L low nibbles -> q = L, high
 * nibbles -> q = 4 + L; the lone block's 32 bytes are rows 0..31 / 32..63 in order. */
static ALWAYS_INLINE void gemm_b_tile(const pylut_qmatrix *qm, const pylut_lut *L, float *y,
                                      int64_t t, const int bits) {
    const int npair = bits / 2, lone = bits & 1, kgb = 32 * bits;
    const int64_t groups = qm->k_pad / qm->group;
    const int kpg = qm->group / PYLUT_KGROUP;
    const float h = (float)((1 << bits) - 1) * 0.5f;
    float32x4_t acc[16];
    for (int q = 0; q < 16; q++) acc[q] = vdupq_n_f32(0.0f);
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t g = 0; g < groups; g++) {
        /* [pair][q], lone [q]. 8 planes = 32 accumulators, all 32 vector registers: the
         * compiler spills some for b >= 7 (rare formats: lossless Q6/Q8 homes). */
        int16x8_t pacc[4][8], lacc[8];
        for (int q = 0; q < 8; q++) {
            for (int p = 0; p < npair; p++) pacc[p][q] = vdupq_n_s16(0);
            lacc[q] = vdupq_n_s16(0);
        }
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
        /* epilogue in the scalar twin's order: acc += (s*f)*A; acc += (bias + s*h)*sumx */
        const float f = 0.5f * L->tscale[g], sx = L->sumx[g];
        for (int q = 0; q < 8; q++) {
            int32x4_t A[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};
            for (int p = 0; p < npair; p++) widen_add(pacc[p][q], 2 * p, A);
            if (lone) widen_add(lacc[q], bits - 1, A);
            for (int e = 0; e < 2; e++) {
                const float32x4_t s = group_param(qm, 0, t, g, 8 * q + 4 * e);
                float32x4_t a = vfmaq_f32(acc[2 * q + e], vmulq_n_f32(s, f), vcvtq_f32_s32(A[e]));
                if (qm->has_bias) {
                    const float32x4_t b = group_param(qm, 1, t, g, 8 * q + 4 * e);
                    a = vfmaq_n_f32(a, vfmaq_n_f32(b, s, h), sx);
                } else if (h != qm->zero) { /* implied bias -scale*zero */
                    a = vfmaq_n_f32(a, vmulq_n_f32(s, h - qm->zero), sx);
                }
                acc[2 * q + e] = a;
            }
        }
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

static ALWAYS_INLINE void gemm_b_bits(const pylut_qmatrix *qm, const pylut_lut *lut, int n,
                                      float *y, int64_t ldy, int64_t tile0, int64_t tile1,
                                      const int bits) {
    for (int64_t t = tile0; t < tile1; t++)
        for (int tok = 0; tok < n; tok++) gemm_b_tile(qm, lut + tok, y + tok * ldy, t, bits);
}

static void gemm_b_neon(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                        int64_t ldy, int64_t tile0, int64_t tile1) {
    switch (qm->bits) { /* one specialised copy per bit width: loops over planes unroll */
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

static void gemm_t3_neon(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                         int64_t ldy, int64_t tile0, int64_t tile1) {
    const int64_t ppg = pylut_t3_triples(qm->group) / 2, groups = qm->k_pad / qm->group, pairs = groups * ppg;
    for (int64_t t = tile0; t < tile1; t++) {
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            const uint8_t *blk = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
            float32x4_t acc[16];
            for (int q = 0; q < 16; q++) acc[q] = vdupq_n_f32(0.0f);
            for (int64_t p0 = 0, g = 0; p0 < pairs; p0 += ppg, g++) {
                const int64_t p1 = p0 + ppg;
                int16x8_t a16[8]; /* rows 8q..8q+7 */
                for (int q = 0; q < 8; q++) a16[q] = vdupq_n_s16(0);
                /* odd bytes hold triple j+1: index bit 4 picks its table in vqtbl2q */
                const uint8x16_t odd = vreinterpretq_u8_u16(vdupq_n_u16(0x1000));
                const uint8x16_t m0f = vdupq_n_u8(0x0f);
                for (int64_t p = p0; p < p1; p++, blk += PYLUT_T3_PAIR_BYTES) {
                    __builtin_prefetch(blk + PF_DIST);
                    const uint8x16_t signs = vld1q_u8(blk + 64);
                    const int8x16x2_t tbl = vld1q_s8_x2(L->tbl + 32 * p); /* triples 2p, 2p+1 */
                    for (int k = 0; k < 4; k++) {
                        const uint8x16_t w = vld1q_u8(blk + 16 * k);
                        const uint8x16_t ilo = vorrq_u8(vandq_u8(w, m0f), odd);
                        const uint8x16_t ihi = vorrq_u8(vshrq_n_u8(w, 4), odd);
                        const int8x16_t vlo = negate_where(vqtbl2q_s8(tbl, ilo), sign_mask(signs, 2 * k));
                        const int8x16_t vhi = negate_where(vqtbl2q_s8(tbl, ihi), sign_mask(signs, 8 + 2 * k));
                        a16[k] = vpadalq_s8(a16[k], vlo);     /* rows 8k..8k+7: both triples */
                        a16[4 + k] = vpadalq_s8(a16[4 + k], vhi); /* rows 32+8k.. */
                    }
                }
                const float ts = L->tscale[g]; /* acc += (s * tscale) * A, as the scalar twin */
                const uint16_t *sc = qm->scale + (t * groups + g) * PYLUT_TILE_M;
                for (int q = 0; q < 8; q++) {
                    const float32x4_t s0 = vmulq_n_f32(load_f16x4(sc + 8 * q), ts);
                    const float32x4_t s1 = vmulq_n_f32(load_f16x4(sc + 8 * q + 4), ts);
                    acc[2 * q] = vfmaq_f32(acc[2 * q], s0, vcvtq_f32_s32(vmovl_s16(vget_low_s16(a16[q]))));
                    acc[2 * q + 1] = vfmaq_f32(acc[2 * q + 1], s1, vcvtq_f32_s32(vmovl_high_s16(a16[q])));
                }
            }
            store_tile(y + tok * ldy, t * PYLUT_TILE_M, qm->m, acc);
        }
    }
}

/* ------------------------------------------------------------------ int8 baseline */

/* Codes of block b (32 weights) as bytes: chunk b/slots, shifted right by slot*bits.
 * vshlq with a negative count shifts right, so the slot need not be an immediate. */
static ALWAYS_INLINE void i8_unpack(const uint8_t *row, int64_t b, int bits, uint8x16_t q[2]) {
    const int slots = 8 / bits;
    const uint8_t *c = row + b / slots * 32;
    const int8x16_t sh = vdupq_n_s8((int8_t)(-(int)(b % slots) * bits));
    const uint8x16_t mask = vdupq_n_u8((uint8_t)((1 << bits) - 1));
    q[0] = vandq_u8(vshlq_u8(vld1q_u8(c), sh), mask);
    q[1] = vandq_u8(vshlq_u8(vld1q_u8(c + 16), sh), mask);
}

/* Plain NEON dot of 32 codes (0..15, so also valid as int8) with 32 int8: 4 partial sums */
static ALWAYS_INLINE int32x4_t i8_dot32(const uint8x16_t q[2], const int8_t *x) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    const int8x16_t q0 = vreinterpretq_s8_u8(q[0]), q1 = vreinterpretq_s8_u8(q[1]);
    int16x8_t p0 = vmull_s8(vget_low_s8(q0), vget_low_s8(x0));
    p0 = vmlal_high_s8(p0, q0, x0);
    int16x8_t p1 = vmull_s8(vget_low_s8(q1), vget_low_s8(x1));
    p1 = vmlal_high_s8(p1, q1, x1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

/* sdot: each int32 lane gains 4 products; same integer dot, fewer instructions */
static TARGET_DOTPROD ALWAYS_INLINE int32x4_t i8_dot32_sdot(const uint8x16_t q[2], const int8_t *x) {
    int32x4_t d = pylut_sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(q[0]), vld1q_s8(x));
    return pylut_sdot(d, vreinterpretq_s8_u8(q[1]), vld1q_s8(x + 16));
}

/* One row. Four blocks at a time: their partial sums are reduced with two vpaddq into one
 * int32x4 holding the four block dots, so the per-block float scale s_w*s_x applies as one
 * vector FMA. k is a multiple of 256/bits, so blocks is even; a last pair of blocks (bits 4)
 * goes one at a time. Written as a macro because the sdot variant must live in a function
 * with the dotprod target (GCC refuses to inline it into a generic helper). */
#define I8_GEMV_ROWS(DOT32)                                                                      \
    const int bits = qm->bits;                                                                   \
    const int64_t blocks = qm->k / 32, vblocks = blocks / 4 * 4;                                 \
    for (int64_t r = r0; r < r1; r++) {                                                          \
        const uint8_t *row = qm->codes + r * qm->row_bytes;                                      \
        const uint16_t *sc = qm->scale + r * blocks, *bi = qm->bias + r * blocks;                \
        float32x4_t acc = vdupq_n_f32(0.0f), accb = vdupq_n_f32(0.0f);                           \
        for (int64_t b = 0; b < vblocks; b += 4) {                                               \
            int32x4_t d[4];                                                                      \
            for (int i = 0; i < 4; i++) {                                                        \
                uint8x16_t q[2];                                                                 \
                i8_unpack(row, b + i, bits, q);                                                  \
                d[i] = DOT32(q, xq + (b + i) * 32);                                              \
            }                                                                                    \
            const int32x4_t dots = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));  \
            const float32x4_t ds = vmulq_f32(load_f16x4(sc + b), vld1q_f32(xs + b));            \
            acc = vfmaq_f32(acc, ds, vcvtq_f32_s32(dots));                                       \
            accb = vfmaq_f32(accb, load_f16x4(bi + b), vld1q_f32(xsum + b));                     \
        }                                                                                        \
        float out = vaddvq_f32(acc) + vaddvq_f32(accb);                                          \
        for (int64_t b = vblocks; b < blocks; b++) {                                             \
            uint8x16_t q[2];                                                                     \
            i8_unpack(row, b, bits, q);                                                          \
            const float dot = (float)vaddvq_s32(DOT32(q, xq + b * 32));                          \
            out += (pylut_fp16_to_fp32(sc[b]) * xs[b]) * dot + pylut_fp16_to_fp32(bi[b]) * xsum[b]; \
        }                                                                                        \
        y[r] = out;                                                                              \
    }

static void i8_gemv_neon(const pylut_i8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1) {
    I8_GEMV_ROWS(i8_dot32)
}

static TARGET_DOTPROD void i8_gemv_neon_dot(const pylut_i8matrix *qm, const int8_t *xq,
                                            const float *xs, const float *xsum, float *y,
                                            int64_t r0, int64_t r1) {
    I8_GEMV_ROWS(i8_dot32_sdot)
}

/* The LUT kernels use no dotprod instruction, so both tables share them; the int8 prefill
 * (prefill_neon.c) needs sdot. */
const pylut_kernels pylut_kernels_neon = {
    .gemm_b = gemm_b_neon,
    .gemm_t3 = gemm_t3_neon,
    .i8_gemv = i8_gemv_neon,
};

const pylut_kernels pylut_kernels_neon_dot = {
    .gemm_b = gemm_b_neon,
    .gemm_t3 = gemm_t3_neon,
    .i8_gemv = i8_gemv_neon_dot,
    .gemm_b_i8 = pylut_gemm_b_i8_neon_dot,
    .i8_from = PYLUT_I8_FROM_NEON_DOT,
};

#endif /* __aarch64__ */
