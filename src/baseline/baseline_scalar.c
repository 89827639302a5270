/* baseline_scalar.c - the comparison kernels in portable C (and the twins of their SIMD
 * versions): the llama.cpp-style int8 dequant-dot GEMV and the naive per-head fp16 attention
 * (two passes over the cache). Yardsticks for tools/bench_kernels.py and
 * tools/bench_attention.py; the model runs neither. */
#include <math.h>

#include "kernels.h"

/* ------------------------------------------------------------------ int8 dequant-dot GEMV */

/* One 32-byte chunk holds 256/bits weights: byte i, slot s (shift s*bits) is weight 32*s + i. */
void pylut_dq8_gemv_scalar(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                           const float *xsum, float *y, int64_t r0, int64_t r1) {
    const int bits = qm->bits, per_chunk = 256 / bits, mask = (1 << bits) - 1;
    const int64_t blocks = qm->k / 32;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = qm->codes + r * qm->row_bytes;
        float acc = 0.0f;
        for (int64_t b = 0; b < blocks; b++) {
            int64_t chunk = b * 32 / per_chunk;
            int slot = (int)(b % (per_chunk / 32));
            const uint8_t *c = row + chunk * 32;
            int32_t dot = 0;
            for (int i = 0; i < 32; i++) dot += ((c[i] >> (slot * bits)) & mask) * xq[b * 32 + i];
            float s = pylut_fp16_to_fp32(qm->scale[r * blocks + b]);
            acc += (s * xs[b]) * (float)dot + pylut_fp16_to_fp32(qm->bias[r * blocks + b]) * xsum[b];
        }
        y[r] = acc;
    }
}

/* ------------------------------------------------------------------ naive per-head attention */

void pylut_attn_f16_scalar(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                           int hd, float scale, float *out, float *scores) {
    float mx = -INFINITY;
    for (int j = 0; j < len; j++) {
        const uint16_t *kj = k + (int64_t)j * ld;
        float d = 0.0f;
        for (int i = 0; i < hd; i++) d += q[i] * pylut_fp16_to_fp32(kj[i]);
        scores[j] = d * scale;
        if (scores[j] > mx) mx = scores[j];
    }
    float sum = 0.0f;
    for (int j = 0; j < len; j++) sum += (scores[j] = expf(scores[j] - mx));
    const float inv = 1.0f / sum;
    for (int i = 0; i < hd; i++) out[i] = 0.0f;
    for (int j = 0; j < len; j++) {
        const uint16_t *vj = v + (int64_t)j * ld;
        const float p = scores[j] * inv;
        for (int i = 0; i < hd; i++) out[i] += p * pylut_fp16_to_fp32(vj[i]);
    }
}

