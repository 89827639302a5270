/* vec_neon.c - the element-wise ops for aarch64 (Raspberry Pi 4/5, Graviton, Apple M under
 * Linux): vec_body.h over 4-lane NEON vectors, baseline armv8-a (vdivq_f32 and the f64
 * conversions are aarch64's; 32-bit ARM takes the scalar twin). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#define VEC_TABLE pylut_vecops_neon
#define VL 4
typedef float32x4_t vf;
typedef uint32x4_t vu;
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf a) { vst1q_f32(p, a); }
static inline vf vf_set1(float x) { return vdupq_n_f32(x); }
static inline vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_div(vf a, vf b) { return vdivq_f32(a, b); }
static inline vf vf_swap_pairs(vf a) { return vrev64q_f32(a); }
static inline vu vu_of(vf a) { return vreinterpretq_u32_f32(a); }
static inline vf vf_of(vu u) { return vreinterpretq_f32_u32(u); }
static inline vu vu_set1(uint32_t x) { return vdupq_n_u32(x); }
static inline vu vu_and(vu a, vu b) { return vandq_u32(a, b); }
static inline vu vu_or(vu a, vu b) { return vorrq_u32(a, b); }
static inline vu vu_andnot(vu a, vu b) { return vbicq_u32(b, a); }
static inline vu vu_add(vu a, vu b) { return vaddq_u32(a, b); }
static inline vu vu_sign(vu a) { return vreinterpretq_u32_s32(vshrq_n_s32(vreinterpretq_s32_u32(a), 31)); }
static inline vu vu_min(vu a, vu b) { return vminq_u32(a, b); }
static inline vu vu_shl23(vu a) { return vshlq_n_u32(a, 23); }
static inline vu vu_cvtt(vf a) { return vreinterpretq_u32_s32(vcvtq_s32_f32(a)); }
static inline vf vf_cvt(vu a) { return vcvtq_f32_s32(vreinterpretq_s32_u32(a)); }
/* 2 doubles x 2 accumulators; squares of floats are exact in double, so FMA changes nothing */
static inline double sumsq(const float *x, int64_t n) {
    float64x2_t a0 = vdupq_n_f64(0.0), a1 = vdupq_n_f64(0.0);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        const float64x2_t lo = vcvt_f64_f32(vget_low_f32(v)), hi = vcvt_high_f64_f32(v);
        a0 = vfmaq_f64(a0, lo, lo);
        a1 = vfmaq_f64(a1, hi, hi);
    }
    double ss = vaddvq_f64(vaddq_f64(a0, a1));
    for (; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

/* fcvtn, round to nearest even at the default FPCR; its NaNs keep their payload's top bits,
 * so NaN lanes are cut back to sign | 0x7e00 as on x86 */
static inline void vh_store(uint8_t *out, vf a) {
    const uint16x4_t nan = vmovn_u32(vmvnq_u32(vceqq_f32(a, a)));
    uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(a));
    h = vbic_u16(h, vand_u16(nan, vdup_n_u16(0x01ff)));
    uint16_t t[4];
    vst1_u16(t, h);
    memcpy(out, t, sizeof t);
}

#include "vec_body.h"
#endif
