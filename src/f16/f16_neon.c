/* f16_neon.c - the F16 GEMM for aarch64 Advanced SIMD (every aarch64 core: fcvtl widens fp16
 * in the base ISA, no FEAT_FP16 needed): f16_body.h over 4-lane q registers. */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "kernels.h"

#define F16_FN pylut_gemm_f16_neon
#define VL 4
#define F16_TB 4 /* 16 accumulators of 32 q registers */
typedef float32x4_t vf;
static inline vf vf_zero(void) { return vdupq_n_f32(0.0f); }
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline vf vf_load_h(const uint16_t *h) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h))); }
static inline vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static inline float vf_hsum(vf a) { return vaddvq_f32(a); }

#include "f16_body.h"
#endif
