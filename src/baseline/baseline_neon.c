/* baseline_neon.c - the llama.cpp-style int8 dequant-dot GEMV on aarch64 NEON, plain and with
 * sdot: a yardstick for the table-lookup kernels (tools/bench_kernels.py), not run by the model.
 * The sdot function carries the dotprod target attribute and is reached only through
 * pylut_kernels_neon_dot (HWCAP_ASIMDDP); the unit itself is compiled for plain Armv8.
 *
 * Bounds: codes <= 15, |x| <= 127; vmull+vmlal put two products (<= 3810) in an int16 lane
 * before vpadal widens to int32; sdot accumulates in int32 directly. */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE float32x4_t load_f16x4(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

/* Codes of block b (32 weights) as bytes: chunk b/slots, shifted right by slot*bits.
 * vshlq with a negative count shifts right, so the slot need not be an immediate. */
static ALWAYS_INLINE void dq8_unpack(const uint8_t *row, int64_t b, int bits, uint8x16_t q[2]) {
    const int slots = 8 / bits;
    const uint8_t *c = row + b / slots * 32;
    const int8x16_t sh = vdupq_n_s8((int8_t)(-(int)(b % slots) * bits));
    const uint8x16_t mask = vdupq_n_u8((uint8_t)((1 << bits) - 1));
    q[0] = vandq_u8(vshlq_u8(vld1q_u8(c), sh), mask);
    q[1] = vandq_u8(vshlq_u8(vld1q_u8(c + 16), sh), mask);
}

/* Plain NEON dot of 32 codes (0..15, so also valid as int8) with 32 int8: 4 partial sums */
static ALWAYS_INLINE int32x4_t dq8_dot32(const uint8x16_t q[2], const int8_t *x) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    const int8x16_t q0 = vreinterpretq_s8_u8(q[0]), q1 = vreinterpretq_s8_u8(q[1]);
    int16x8_t p0 = vmull_s8(vget_low_s8(q0), vget_low_s8(x0));
    p0 = vmlal_high_s8(p0, q0, x0);
    int16x8_t p1 = vmull_s8(vget_low_s8(q1), vget_low_s8(x1));
    p1 = vmlal_high_s8(p1, q1, x1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

/* sdot: each int32 lane gains 4 products; same integer dot, fewer instructions */
static TARGET_DOTPROD ALWAYS_INLINE int32x4_t dq8_dot32_sdot(const uint8x16_t q[2], const int8_t *x) {
    int32x4_t d = pylut_sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(q[0]), vld1q_s8(x));
    return pylut_sdot(d, vreinterpretq_s8_u8(q[1]), vld1q_s8(x + 16));
}

/* One row. Four blocks at a time: their partial sums are reduced with two vpaddq into one
 * int32x4 holding the four block dots, so the per-block float scale s_w*s_x applies as one
 * vector FMA. k is a multiple of 256/bits, so blocks is even; a last pair of blocks (bits 4)
 * goes one at a time. Written as a macro because the sdot variant must live in a function
 * with the dotprod target (GCC refuses to inline it into a generic helper). */
#define DQ8_GEMV_ROWS(DOT32)                                                                      \
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
                dq8_unpack(row, b + i, bits, q);                                                  \
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
            dq8_unpack(row, b, bits, q);                                                          \
            const float dot = (float)vaddvq_s32(DOT32(q, xq + b * 32));                          \
            out += (pylut_fp16_to_fp32(sc[b]) * xs[b]) * dot + pylut_fp16_to_fp32(bi[b]) * xsum[b]; \
        }                                                                                        \
        y[r] = out;                                                                              \
    }

void pylut_dq8_gemv_neon(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1) {
    DQ8_GEMV_ROWS(dq8_dot32)
}

TARGET_DOTPROD void pylut_dq8_gemv_neon_dot(const pylut_dq8matrix *qm, const int8_t *xq,
                                            const float *xs, const float *xsum, float *y,
                                            int64_t r0, int64_t r1) {
    DQ8_GEMV_ROWS(dq8_dot32_sdot)
}

#endif /* __aarch64__ */
