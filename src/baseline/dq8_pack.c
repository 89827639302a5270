/* dq8_pack.c - layout, packing and activation quantization of the int8 dequant-dot baseline
 * (llama.cpp's way of doing low-bit GEMV: unpack codes to bytes, multiply-add with int8
 * activations). pylut keeps it as the yardstick its table-lookup kernels must beat. */
#include <math.h>
#include <string.h>

#include "kernels.h"

int pylut_dq8matrix_layout(pylut_dq8matrix *qm, int bits, int64_t m, int64_t k) {
    if (!qm || (bits != 2 && bits != 4) || m <= 0 || k <= 0 || m > ((int64_t)1 << 31) ||
        k > ((int64_t)1 << 31) || k % (256 / bits))
        return PYLUT_EINVAL;
    memset(qm, 0, sizeof(*qm));
    qm->bits = bits;
    qm->m = m;
    qm->k = k;
    qm->row_bytes = k * bits / 8;
    return PYLUT_OK;
}

/* One 32-byte chunk holds 256/bits weights: byte i, slot s (shift s*bits) is weight 32*s+i,
 * so unpacking slot s of a chunk is one shift + one AND over a whole 32-byte vector. */
int pylut_dq8_pack(pylut_dq8matrix *qm, const uint8_t *codes, int64_t ld) {
    if (!qm || !qm->codes || !codes || ld < qm->k) return PYLUT_EINVAL;
    const int bits = qm->bits, per_chunk = 256 / bits;
    memset(qm->codes, 0, (size_t)(qm->m * qm->row_bytes));
    for (int64_t r = 0; r < qm->m; r++)
        for (int64_t c = 0; c < qm->k; c++) {
            uint8_t v = codes[r * ld + c];
            if (v >> bits) return PYLUT_EINVAL;
            int64_t chunk = c / per_chunk;
            int within = (int)(c % per_chunk), slot = within / 32, i = within % 32;
            qm->codes[r * qm->row_bytes + chunk * 32 + i] |= (uint8_t)(v << (slot * bits));
        }
    return PYLUT_OK;
}

/* Q8_0-style: per 32 activations one scale amax/127; xsum holds the block's sum as the
 * kernel will see it (scale * sum of int8), so the bias term uses the same rounded x. */
int pylut_dq8_quantize_x(int64_t k, const float *x, int8_t *xq, float *xs, float *xsum) {
    if (k <= 0 || k % 32 || !x || !xq || !xs || !xsum) return PYLUT_EINVAL;
    for (int64_t b = 0; b < k / 32; b++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[b * 32 + i]));
        float s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            long q = lrintf(x[b * 32 + i] * inv);
            q = q > 127 ? 127 : q < -127 ? -127 : q;
            xq[b * 32 + i] = (int8_t)q;
            sum += (int)q;
        }
        xs[b] = s;
        xsum[b] = s * (float)sum;
    }
    return PYLUT_OK;
}
