/* vec_scalar.c - the portable twin of the element-wise ops: vec_body.h with one-lane
 * "vectors". It is the reference every SIMD unit is tested against (bit for bit) and what
 * CPUs without one of them run; the compiler may still auto-vectorize it for the baseline
 * ISA (SSE2 / NEON), which changes no result (-ffp-contract=off, no fast-math). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "pylut/pylut.h"

#define VEC_TABLE pylut_vecops_scalar
#define VL 1
typedef float vf;
typedef uint32_t vu;
static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf a) { *p = a; }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline vu vu_of(vf a) {
    vu u;
    memcpy(&u, &a, sizeof u);
    return u;
}
static inline vf vf_of(vu u) {
    vf a;
    memcpy(&a, &u, sizeof a);
    return a;
}
static inline vu vu_set1(uint32_t x) { return x; }
static inline vu vu_and(vu a, vu b) { return a & b; }
static inline vu vu_or(vu a, vu b) { return a | b; }
static inline vu vu_andnot(vu a, vu b) { return ~a & b; }
static inline vu vu_add(vu a, vu b) { return a + b; }
static inline vu vu_sign(vu a) { return (uint32_t)((int32_t)a >> 31); }
/* a select, not a float compare: GCC if-converts it and vectorizes the loop */
static inline vu vu_min(vu a, vu b) { return a < b ? a : b; }
static inline vu vu_shl23(vu a) { return a << 23; }
static inline vu vu_cvtt(vf a) { return (uint32_t)(int32_t)a; }
static inline vf vf_cvt(vu a) { return (float)(int32_t)a; }
/* in index order, one accumulator: the reference the SIMD units' reorderings are held to */
static inline double sumsq(const float *x, int64_t n) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

/* the portable conversion (pack.c), which every unit matches */
static inline void vh_store(uint8_t *out, vf a) {
    const uint16_t h = pylut_fp32_to_fp16(a);
    memcpy(out, &h, 2);
}

#include "vec_body.h"
