/* prefill_neon.c - the int8-activation prefill GEMM on aarch64 with the dot product
 * extension (sdot): Cortex-A76 (Pi 5), A55, A78, Neoverse N1 and later, Apple M1 and later.
 * Plain-NEON cores (Pi 3/4) keep the table lookups. Same arithmetic as
 * pylut_gemm_b_i8_scalar (prefill.c), in the same order: outputs are bit-identical.
 *
 * sdot multiplies signed bytes, so codes must fit int8: 1-7 bits here; 8-bit codes go to the
 * scalar twin (the model never asks: i8_from[..][8] is 0). Each int32 lane gains the four
 * products of one row's k-group, the same dword layout the x86 kernels use.
 *
 * Only the dot loop carries the dotprod target (its name holds "dot": tools/arm-test.sh
 * checks that no sdot lies outside such functions); unpacking and the float parameters are
 * plain NEON. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ unpacking */

/* Planes P[0..7] of 16 row pairs (byte a: row a's 4 weights in the low nibble, row a+32's in
 * the high one) -> E[0..7] with E[j] bit p = P[p] bit j: an 8x8 bit transpose per lane in
 * three butterfly stages. E[0..3] are then row a's codes of weights 0..3, E[4..7] row a+32's. */
static inline __attribute__((always_inline)) void transpose_planes(uint8x16_t P[8]) {
#define SWAP(i, j, d, m)                                                   \
    do {                                                                   \
        const uint8x16_t a_ = P[i], b_ = P[j], m_ = vdupq_n_u8(m);         \
        P[i] = vbslq_u8(m_, a_, vshlq_n_u8(b_, d));                        \
        P[j] = vbslq_u8(m_, vshrq_n_u8(a_, d), b_);                        \
    } while (0)
    SWAP(0, 1, 1, 0x55); SWAP(2, 3, 1, 0x55); SWAP(4, 5, 1, 0x55); SWAP(6, 7, 1, 0x55);
    SWAP(0, 2, 2, 0x33); SWAP(1, 3, 2, 0x33); SWAP(4, 6, 2, 0x33); SWAP(5, 7, 2, 0x33);
    SWAP(0, 4, 4, 0x0F); SWAP(1, 5, 4, 0x0F); SWAP(2, 6, 4, 0x0F); SWAP(3, 7, 4, 0x0F);
#undef SWAP
}

/* One k-group's 64 rows into w [64] dword codes (bits is a constant here). A pair block's
 * word a holds planes 2i, 2i+1 of row pair a: vld2q splits them; a lone top plane is a byte
 * per row pair. vst4q interleaves four code vectors into the rows' dwords. */
static inline __attribute__((always_inline)) void unpack_kgroup(const uint8_t *blk, int bits, uint32_t *w) {
    for (int h = 0; h < 2; h++) { /* row pairs 16h..16h+15 */
        uint8x16_t P[8];
        for (int i = 0; i < 4; i++) {
            if (2 * i + 1 < bits) {
                const uint8x16x2_t pr = vld2q_u8(blk + 64 * i + 32 * h);
                P[2 * i] = pr.val[0], P[2 * i + 1] = pr.val[1];
            } else if (2 * i + 1 == bits) {
                P[2 * i] = vld1q_u8(blk + 64 * i + 16 * h), P[2 * i + 1] = vdupq_n_u8(0);
            } else {
                P[2 * i] = P[2 * i + 1] = vdupq_n_u8(0);
            }
        }
        transpose_planes(P);
        const uint8x16x4_t lo = {{P[0], P[1], P[2], P[3]}}, hi = {{P[4], P[5], P[6], P[7]}};
        vst4q_u8((uint8_t *)(w + 16 * h), lo);
        vst4q_u8((uint8_t *)(w + 32 + 16 * h), hi);
    }
}

/* ------------------------------------------------------------------ float parameters */

#define PV float32x4_t
#define PW 4
#define pv_f16(p) vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(p))))
#define pv_i8(p) nv_i8(p)
#define pv_nib_lo(p) vcvtq_f32_u32(vandq_u32(nv_u8(p), vdupq_n_u32(15)))
#define pv_nib_hi(p) vcvtq_f32_u32(vshrq_n_u32(nv_u8(p), 4))
#define pv_mul vmulq_f32
#define pv_set1 vdupq_n_f32
#define pv_store vst1q_f32
static inline uint32x4_t nv_u8(const void *p) { /* 4 bytes -> 4 uint32 */
    uint32_t v;
    memcpy(&v, p, 4);
    return vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(v)))));
}
static inline float32x4_t nv_i8(const int8_t *p) { /* 4 int8 -> 4 floats */
    uint32_t v;
    memcpy(&v, p, 4);
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(v))))));
}
#include "prefill_params.h"

/* ------------------------------------------------------------------ the dot products */

/* One token's group sums (rows 0-15 of the quarter as 4 x int32x4) into yacc [16]: the
 * twin's order, y = fma(I, s * xs, y); y = fma(b, sx, y). */
static inline __attribute__((always_inline)) void group_epilogue(const int32x4_t a[4], const float *s, const float *b,
                                                               float xs1, float sx1, float *yacc) {
    for (int i = 0; i < 4; i++) {
        const float32x4_t p = vmulq_f32(vld1q_f32(s + 4 * i), vdupq_n_f32(xs1));
        float32x4_t y = vfmaq_f32(vld1q_f32(yacc + 4 * i), vcvtq_f32_s32(a[i]), p);
        y = vfmaq_f32(y, vld1q_f32(b + 4 * i), vdupq_n_f32(sx1));
        vst1q_f32(yacc + 4 * i, y);
    }
}

/* NT (1 or 4) tokens x 16 rows (quarter q of the tile) over ng groups of the chunk: yacc
 * [NT][64] += their sums. A k-group costs four code loads, one 4-byte broadcast per token
 * and 4 * NT sdot. */
static TARGET_DOTPROD inline __attribute__((always_inline)) void tokens_quarter_dot(const int NT, const uint32_t *w, const float *s,
                                                                const float *b, int64_t ng, int gw,
                                                                const pylut_lut *act, int64_t k0, int64_t g0,
                                                                float *yacc) {
    const int kq = gw / 4;
    for (int64_t g = 0; g < ng; g++) {
        int32x4_t a[4][4]; /* [token][4 rows] */
        for (int t = 0; t < NT; t++)
            for (int i = 0; i < 4; i++) a[t][i] = vdupq_n_s32(0);
        for (int64_t kg = g * kq; kg < (g + 1) * kq; kg++) {
            const int8_t *wj = (const int8_t *)(w + kg * PYLUT_TILE_M);
            const int8x16_t w0 = vld1q_s8(wj), w1 = vld1q_s8(wj + 16), w2 = vld1q_s8(wj + 32), w3 = vld1q_s8(wj + 48);
            for (int t = 0; t < NT; t++) {
                int32_t x4;
                memcpy(&x4, act[t].tbl + k0 + 4 * kg, 4);
                const int8x16_t x = vreinterpretq_s8_s32(vdupq_n_s32(x4));
                a[t][0] = pylut_sdot(a[t][0], w0, x), a[t][1] = pylut_sdot(a[t][1], w1, x);
                a[t][2] = pylut_sdot(a[t][2], w2, x), a[t][3] = pylut_sdot(a[t][3], w3, x);
            }
        }
        for (int t = 0; t < NT; t++)
            group_epilogue(a[t], s + g * PYLUT_TILE_M, b + g * PYLUT_TILE_M, act[t].tscale[g0 + g],
                           act[t].sumx[g0 + g], yacc + t * PYLUT_TILE_M);
    }
}

/* Every token of a pass over one chunk: per quarter of 16 rows, 4 tokens at a time (they
 * share the quarter's code loads), then the rest one by one. */
static TARGET_DOTPROD __attribute__((noinline)) void run_chunk_sdot(const uint32_t *w, const float *s, const float *b,
                                                                   int64_t ng, int gw, const pylut_lut *act, int nt,
                                                                   int64_t k0, int64_t g0, float *yacc) {
    for (int q = 0; q < 4; q++) {
        int tok = 0;
        for (; tok + 4 <= nt; tok += 4)
            tokens_quarter_dot(4, w + 16 * q, s + 16 * q, b + 16 * q, ng, gw, act + tok, k0, g0,
                           yacc + tok * PYLUT_TILE_M + 16 * q);
        for (; tok < nt; tok++)
            tokens_quarter_dot(1, w + 16 * q, s + 16 * q, b + 16 * q, ng, gw, act + tok, k0, g0,
                           yacc + tok * PYLUT_TILE_M + 16 * q);
    }
}

static inline void run_chunk(const uint32_t *w, const float *s, const float *b, int64_t ng, int gw, int bits,
                             const pylut_lut *act, int nt, int64_t k0, int64_t g0, float *yacc) {
    (void)bits;
    run_chunk_sdot(w, s, b, ng, gw, act, nt, k0, g0, yacc);
}

#define PREFILL_ALIGN 16
#define PREFILL_MAX_BITS 7
#include "prefill_driver.h"

void pylut_gemm_b_i8_neon_dot(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy,
                              int64_t tile0, int64_t tile1) {
    if (qm->bits > 7) /* sdot's operands are signed bytes; the model never asks (i8_from) */
        pylut_gemm_b_i8_scalar(qm, act, n, y, ldy, tile0, tile1);
    else
        prefill_tiles(qm, act, n, y, ldy, tile0, tile1);
}

#endif /* __aarch64__ */
