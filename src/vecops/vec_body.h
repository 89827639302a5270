/* vec_body.h - the forward pass's element-wise ops (RMSNorm, the gated FFN activations,
 * residual add, RoPE), written once against a tiny per-ISA vocabulary and instantiated by
 * vec_scalar.c, vec_avx2.c, vec_avx512.c and vec_neon.c, as attn_body.h is. The including
 * unit defines, before including this file:
 *
 *   VEC_TABLE             the name of the pylut_vecops table to define (pylut_vecops_<isa>)
 *   VL, vf, vu            lanes, the float vector type and a 32-bit integer vector of VL lanes
 *   vf_load(p) vf_store(p, a) vf_set1(x) vf_add(a, b) vf_sub(a, b) vf_mul(a, b) vf_div(a, b)
 *   vf_swap_pairs(a)      lanes 2i and 2i+1 exchanged (VL >= 2 only: the scalar twin rotates
 *                         pair by pair instead)
 *   vu_of(a) vf_of(u)     bit casts float <-> uint32 lanes
 *   vu_set1(x) vu_and(a, b) vu_or(a, b) vu_andnot(a, b) = ~a & b  vu_add(a, b)
 *   vu_sign(a)            each lane's sign bit spread over the lane (arithmetic shift by 31)
 *   vu_min(a, b)          unsigned minimum
 *   vu_shl23(a)           a << 23
 *   vu_cvtt(a)            float -> int32, rounded toward zero (inputs are in int32 range)
 *   vf_cvt(u)             int32 -> float
 *   sumsq(x, n)           sum of x[i]^2 over n floats in double (the order is the unit's own)
 *   vh_store(out, a)      VL floats -> VL fp16 at out (2 VL bytes, any alignment), rounded to
 *                         nearest even, every NaN as sign | 0x7e00 (pylut_fp32_to_fp16's)
 *
 * Why bit-exact twins: every unit is compiled with -ffp-contract=off (setup.py) and performs
 * the same IEEE operations in the same order per element as the scalar twin, so the SIMD
 * results equal the scalar ones bit for bit for every op except RMSNorm's sum of squares
 * (summed in double in another order: the normalizer 1/rms may differ by one float ulp, in
 * practice never seen). So no element's value depends on the vector width, the position of a
 * thread's range boundary (tails run the same vector code on a zero-padded copy) or the ISA;
 * batch_invariant=True relies on the first two. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ sigmoid */

/* sigmoid(y) without libm or float compares, the scalar twin's lanes exactly (glibc's tanhf,
 * ~30 ns an element, once made Gemma's GELU most of a prompt's time). e = exp(-|y|)
 * keeps the exponent in range without a float clamp; sigmoid(y) is 1/(1+e) for y >= 0 and
 * e/(1+e) below, picked by the sign bit. exp(a), a in [-80, 0]: a*log2(e) = n + f with n an
 * integer and |f| <= 1/2, 2^n from the exponent bits, e^(f ln 2) by its degree-6 Taylor series
 * (|f ln 2| <= 0.347: truncation below 2e-7). Measured against double: absolute error < 1e-7,
 * relative < 4e-6 over [-80, 80] (the rounding of n + f grows with |y|). |y| is capped at 80
 * by its bit pattern (ordered as the value for non-negative floats; a NaN's pattern is above
 * the cap), so sigmoid(-100) gives sigmoid(-80) = 1.8e-35; a NaN input still gives NaN once
 * multiplied by x. */
static inline vf vsigmoid(vf y) {
    const vu b = vu_of(y), neg = vu_sign(b);
    const vf a = vf_of(vu_min(vu_and(b, vu_set1(0x7fffffffu)), vu_set1(0x42a00000u /* 80.0f */)));
    const vf t = vf_mul(a, vf_set1(-1.44269504f));    /* log2(e^-|y|), in [-115.5, 0] */
    const vu n = vu_cvtt(vf_sub(t, vf_set1(0.5f)));    /* round to nearest: toward zero of t - 1/2 */
    const vf u = vf_mul(vf_sub(t, vf_cvt(n)), vf_set1(0.693147181f)); /* f ln 2, |u| <= 0.347 */
    vf p = vf_add(vf_set1(1.0f / 120), vf_mul(u, vf_set1(1.0f / 720)));
    p = vf_add(vf_set1(1.0f / 24), vf_mul(u, p));
    p = vf_add(vf_set1(1.0f / 6), vf_mul(u, p));
    p = vf_add(vf_set1(0.5f), vf_mul(u, p));
    p = vf_add(vf_set1(1.0f), vf_mul(u, p));
    p = vf_add(vf_set1(1.0f), vf_mul(u, p));
    const vf two_n = vf_of(vu_shl23(vu_add(n, vu_set1(127)))); /* n in [-116, 0]: a normal float */
    const vf e = vf_mul(p, two_n), r = vf_div(vf_set1(1.0f), vf_add(vf_set1(1.0f), e)), er = vf_mul(e, r);
    return vf_of(vu_or(vu_and(vu_of(er), neg), vu_andnot(neg, vu_of(r))));
}

/* ------------------------------------------------------------------ one vector of each op */

/* max(g, 0) as a sign mask (-0 gives +0; a NaN with the sign bit set gives +0 too), squared,
 * times u */
static inline vf relu2_1(vf g, vf u) {
    const vu b = vu_of(g);
    const vf r = vf_of(vu_andnot(vu_sign(b), b));
    return vf_mul(vf_mul(r, r), u);
}

/* GELU's tanh form, as ggml_gelu and gelu_pytorch_tanh: x (1 + tanh z) / 2 = x sigmoid(2z),
 * 2z = 1.5957691216 x (1 + 0.044715 x^2); times u */
static inline vf gelu_1(vf g, vf u) {
    const vf z2 = vf_mul(vf_mul(vf_set1(1.5957691216f), g),
                         vf_add(vf_set1(1.0f), vf_mul(vf_mul(vf_set1(0.044715f), g), g)));
    return vf_mul(vf_mul(g, vsigmoid(z2)), u);
}

static inline vf silu_1(vf g, vf u) { return vf_mul(vf_mul(g, vsigmoid(g)), u); }

/* g[i] = op(g[i], u[i]) over n floats; the tail (n % VL) runs the same vector code on a
 * zero-padded copy, so its lanes round exactly as a full vector's */
#define GATE_LOOP(op, g, u)                                                     \
    int64_t i = 0;                                                              \
    for (; i + VL <= n; i += VL) vf_store(g + i, op(vf_load(g + i), vf_load(u + i))); \
    if (i < n) {                                                                \
        float tg[VL] = {0}, tu[VL] = {0};                                       \
        memcpy(tg, g + i, (size_t)(n - i) * sizeof(float));                     \
        memcpy(tu, u + i, (size_t)(n - i) * sizeof(float));                     \
        vf_store(tg, op(vf_load(tg), vf_load(tu)));                             \
        memcpy(g + i, tg, (size_t)(n - i) * sizeof(float));                     \
    }

static void gate_silu(float *g, const float *u, int64_t n) { GATE_LOOP(silu_1, g, u) }
static void gate_gelu_tanh(float *g, const float *u, int64_t n) { GATE_LOOP(gelu_1, g, u) }
static void gate_relu2(float *g, const float *u, int64_t n) { GATE_LOOP(relu2_1, g, u) }

/* x[i] += y[i] (the residual stream) */
static void add(float *x, const float *y, int64_t n) { GATE_LOOP(vf_add, x, y) }

#undef GATE_LOOP

/* out[i] = x[i] * (1 / rms(x)) * w[i]; out may be x. The sum of squares is taken in double:
 * every square is exact there, and a float sum over a 2048-8192-wide row loses bits that the
 * normalizer would carry into every output. */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    const double ss = sumsq(x, n);
    const vf inv = vf_set1((float)(1.0 / sqrt(ss / (double)n + eps)));
    int64_t i = 0;
    for (; i + VL <= n; i += VL) vf_store(out + i, vf_mul(vf_mul(vf_load(x + i), inv), vf_load(w + i)));
    if (i < n) {
        float tx[VL] = {0}, tw[VL] = {0};
        memcpy(tx, x + i, (size_t)(n - i) * sizeof(float));
        memcpy(tw, w + i, (size_t)(n - i) * sizeof(float));
        vf_store(tx, vf_mul(vf_mul(vf_load(tx), inv), vf_load(tw)));
        memcpy(out + i, tx, (size_t)(n - i) * sizeof(float));
    }
}

/* ------------------------------------------------------------------ RoPE */

/* The two rotated halves x0, x1 -> x0 c - x1 s, x0 s + x1 c (NEOX pairs: element i with
 * element i + n_rot/2) */
static inline void rot_halves(float *v0, float *v1, const float *c, const float *s) {
    const vf x0 = vf_load(v0), x1 = vf_load(v1), cv = vf_load(c), sv = vf_load(s);
    vf_store(v0, vf_sub(vf_mul(x0, cv), vf_mul(x1, sv)));
    vf_store(v1, vf_add(vf_mul(x0, sv), vf_mul(x1, cv)));
}

/* Rotates v[0, n_rot) by the table cs that pylut_rope_table wrote for this pair layout
 * (neox: cos[n_rot/2] then sin[n_rot/2]; adjacent pairs: each cos twice, then (-sin, sin)
 * per pair, so a pair is v*cos + swap(v)*sin' in whole vectors: x0 c + x1 (-s) rounds as
 * x0 c - x1 s, and x1 c + x0 s as x0 s + x1 c). Dims past n_rot are not touched. */
static void rope(float *v, int n_rot, const float *cs, int neox) {
    if (neox) {
        const int half = n_rot / 2;
        int i = 0;
        for (; i + VL <= half; i += VL) rot_halves(v + i, v + half + i, cs + i, cs + half + i);
        if (i < half) {
            float t0[VL] = {0}, t1[VL] = {0}, tc[VL] = {0}, ts[VL] = {0};
            const size_t b = (size_t)(half - i) * sizeof(float);
            memcpy(t0, v + i, b);
            memcpy(t1, v + half + i, b);
            memcpy(tc, cs + i, b);
            memcpy(ts, cs + half + i, b);
            rot_halves(t0, t1, tc, ts);
            memcpy(v + i, t0, b);
            memcpy(v + half + i, t1, b);
        }
        return;
    }
    const float *c = cs, *s = cs + n_rot;
#if VL == 1 /* one lane has no neighbour to swap with: the scalar twin rotates pair by pair */
    for (int i = 0; i < n_rot; i += 2) {
        const float x0 = v[i], x1 = v[i + 1], cc = c[i], ss = s[i + 1];
        v[i] = x0 * cc - x1 * ss;
        v[i + 1] = x0 * ss + x1 * cc;
    }
#else
    int i = 0;
    for (; i + VL <= n_rot; i += VL) {
        const vf x = vf_load(v + i);
        vf_store(v + i, vf_add(vf_mul(x, vf_load(c + i)), vf_mul(vf_swap_pairs(x), vf_load(s + i))));
    }
    if (i < n_rot) { /* n_rot and VL are even: the tail holds whole pairs */
        float tx[VL] = {0}, tc[VL] = {0}, ts[VL] = {0};
        const size_t b = (size_t)(n_rot - i) * sizeof(float);
        memcpy(tx, v + i, b);
        memcpy(tc, c + i, b);
        memcpy(ts, s + i, b);
        const vf x = vf_load(tx);
        vf_store(tx, vf_add(vf_mul(x, vf_load(tc)), vf_mul(vf_swap_pairs(x), vf_load(ts))));
        memcpy(v + i, tx, b);
    }
#endif
}

/* ------------------------------------------------------------------ fp16 rows */

/* out[2n bytes] = x[n] in fp16 (the fp16 KV cache's rows: with F16C / NEON's fcvtn one
 * instruction per vector where the portable conversion took ~4 ns an element, 2.6 % of a
 * prompt); the tail goes through a padded vector like the ops above */
static void to_f16(uint8_t *out, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) vh_store(out + 2 * i, vf_load(x + i));
    if (i < n) {
        float t[VL] = {0};
        uint8_t h[2 * VL];
        memcpy(t, x + i, (size_t)(n - i) * sizeof(float));
        vh_store(h, vf_load(t));
        memcpy(out + 2 * i, h, (size_t)(n - i) * 2);
    }
}

const pylut_vecops VEC_TABLE = {rmsnorm, gate_silu, gate_gelu_tanh, gate_relu2, add, rope, to_f16};
