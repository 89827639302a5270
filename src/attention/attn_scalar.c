/* attn_scalar.c - the portable attention twin: attn_body.h with one-lane "vectors". Every
 * SIMD instantiation is tested against it; it is also what CPUs without one run. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "pylut/attention.h"
#include "pylut/pylut.h"

#define ATTN_FN pylut_attn_rows_scalar
#define VL 1
#define NACC 4
#define FUSED_ACC 4
typedef float vf;
static inline vf vf_zero(void) { return 0.0f; }
static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf a) { *p = a; }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_max(vf a, vf b) { return a > b ? a : b; }
static inline float vf_hmax(vf a) { return a; }
static inline float vf_hsum(vf a) { return a; }
static inline vf vf_exp2(vf a) { return a < -126.0f ? 0.0f : exp2f(a); }
static inline vf vf_load_h(const uint16_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return pylut_fp16_to_fp32(h);
}
static inline vf vf_load_i8(const int8_t *c) { return (float)*c; }
static inline vf vf_load_q4(const uint8_t *c, int hi) { return (float)(((*c >> (hi ? 4 : 0)) & 15) - 8); }
static inline void sum8(const vf a[8], float out[8]) {
    for (int u = 0; u < 8; u++) out[u] = a[u];
}
static inline float h2f(uint16_t h) { return pylut_fp16_to_fp32(h); }
static inline void dec_f16(const uint16_t *h, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = pylut_fp16_to_fp32(h[i]);
}
static inline void dec_i8(const int8_t *c, float scale, int n, float *out) {
    for (int i = 0; i < n; i++) out[i] = scale * (float)c[i];
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push /* gcc -O3 for aarch64 still sees a write past out once this is */
#pragma GCC diagnostic ignored "-Wstringop-overflow" /* inlined into attn_body.h: half <= 16 */
#endif
static inline void unpack_q4(const uint8_t *c, int n, int8_t *out) {
    /* n <= PYLUT_KV_BLOCK (out is one block); the clamp lets gcc -O3 on aarch64 see that
     * i + half stays inside out (it warns -Wstringop-overflow otherwise) */
    const int half = (n < PYLUT_KV_BLOCK ? n : PYLUT_KV_BLOCK) / 2;
    for (int i = 0; i < half; i++) {
        out[i] = (int8_t)((c[i] & 15) - 8);
        out[i + half] = (int8_t)((c[i] >> 4) - 8);
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include "attn_body.h"
