/* attn_neon.c - attention for aarch64 (Raspberry Pi 4/5, Graviton, Apple M under Linux):
 * attn_body.h over 4-lane NEON vectors, baseline armv8-a only (fp16 conversion included). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#include "pylut/pylut.h"

#define ATTN_FN pylut_attn_rows_neon
#define VL 4
#define NACC 8
#define FUSED_ACC 4
typedef float32x4_t vf;
static inline vf vf_zero(void) { return vdupq_n_f32(0.0f); }
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf a) { vst1q_f32(p, a); }
static inline vf vf_set1(float x) { return vdupq_n_f32(x); }
static inline vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static inline vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); }
static inline float vf_hmax(vf a) { return vmaxvq_f32(a); }
static inline float vf_hsum(vf a) { return vaddvq_f32(a); }
/* 2^x for x <= 0, as on x86 (attn_vec_x86.h): degree-6 Taylor on [-1/2, 1/2] */
static inline vf vf_exp2(vf x) {
    const uint32x4_t keep = vcgeq_f32(x, vdupq_n_f32(-126.0f));
    x = vmaxq_f32(x, vdupq_n_f32(-126.0f));
    const vf n = vrndnq_f32(x), f = vsubq_f32(x, n);
    vf p = vfmaq_f32(vdupq_n_f32(0.00133336f), f, vdupq_n_f32(0.00015404f));
    p = vfmaq_f32(vdupq_n_f32(0.00961813f), p, f);
    p = vfmaq_f32(vdupq_n_f32(0.05550411f), p, f);
    p = vfmaq_f32(vdupq_n_f32(0.24022651f), p, f);
    p = vfmaq_f32(vdupq_n_f32(0.69314718f), p, f);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, f);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const vf r = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(r), keep));
}
static inline vf vf_load_h(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline vf vf_load_i8(const int8_t *c) {
    int32_t w; /* 4 codes: no 4-byte NEON load, so through a scalar lane */
    memcpy(&w, c, 4);
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(w))))));
}
static inline vf vf_load_q4(const uint8_t *c, int hi) {
    uint32_t w; /* 4 bytes through a scalar lane, as vf_load_i8 */
    memcpy(&w, c, 4);
    const uint32x4_t b = vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(w)))));
    const uint32x4_t n = vandq_u32(hi ? vshrq_n_u32(b, 4) : b, vdupq_n_u32(15));
    return vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(n), vdupq_n_s32(8)));
}
static inline void sum8(const vf a[8], float out[8]) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
    vst1q_f32(out + 4, vpaddq_f32(vpaddq_f32(a[4], a[5]), vpaddq_f32(a[6], a[7])));
}
static inline float h2f(uint16_t h) {
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}
static inline void dec_f16(const uint16_t *h, int n, float *out) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
    for (; i < n; i++) out[i] = pylut_fp16_to_fp32(h[i]);
}
static inline void dec_i8(const int8_t *c, float scale, int n, float *out) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const int16x8_t w = vmovl_s8(vld1_s8(c + i));
        vst1q_f32(out + i, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), scale));
        vst1q_f32(out + i + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), scale));
    }
    for (; i < n; i++) out[i] = scale * (float)c[i];
}
static inline void unpack_q4(const uint8_t *c, int n, int8_t *out) {
    if (n == 32) {
        const uint8x16_t b = vld1q_u8(c);
        const int8x16_t eight = vdupq_n_s8(8);
        vst1q_s8(out, vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(15))), eight));
        vst1q_s8(out + 16, vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), eight));
        return;
    }
    for (int i = 0; i < n / 2; i++) {
        out[i] = (int8_t)((c[i] & 15) - 8);
        out[i + n / 2] = (int8_t)((c[i] >> 4) - 8);
    }
}

#include "attn_body.h"
#endif
