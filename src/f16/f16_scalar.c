/* f16_scalar.c - the portable F16 GEMM twin (f16_body.h with one-lane "vectors": each dot
 * product summed in order, in fp32) and the fp32 activation builder every ISA shares. Every
 * SIMD instantiation is tested against the twin, and the twin against numpy in float64. */
#include <string.h>

#include "kernels.h"

#define F16_FN pylut_gemm_f16_scalar
#define VL 1
#define F16_TB 4
typedef float vf;
static inline vf vf_zero(void) { return 0.0f; }
static inline vf vf_load(const float *p) { return *p; }
static inline vf vf_load_h(const uint16_t *h) { return pylut_fp16_to_fp32(*h); }
static inline vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
static inline float vf_hsum(vf a) { return a; }

#include "f16_body.h"

/* ------------------------------------------------------------------ activations */

/* Units [g0, g1) (of lut->group floats each) of x [k] into the set's buffer, zeros past k. */
void pylut_f32_build_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1) {
    float *dst = (float *)lut->tbl; /* [k_pad] */
    const int64_t a = g0 * lut->group, b = g1 * lut->group, copy_end = b < lut->k ? b : lut->k;
    if (copy_end > a) memcpy(dst + a, x + a, (size_t)(copy_end - a) * sizeof(float));
    for (int64_t i = copy_end > a ? copy_end : a; i < b; i++) dst[i] = 0.0f;
}
