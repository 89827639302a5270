/* vecops.h - the forward pass's element-wise ops (RMSNorm, the gated FFN activations,
 * residual add, RoPE) on the active ISA's kernels, with every size checked: for tests and
 * tools (the model code calls the kernel table directly). float32 throughout; each returns
 * PYLUT_OK or PYLUT_EINVAL. Kernels know nothing of models. */
#ifndef PYLUT_VECOPS_H
#define PYLUT_VECOPS_H

#include "pylut/pylut.h"

#ifdef __cplusplus
extern "C" {
#endif

enum pylut_gate_act { PYLUT_GATE_SILU = 0, PYLUT_GATE_RELU2 = 1, PYLUT_GATE_GELU_TANH = 2 };

/* out[n] = x * (1 / sqrt(mean(x^2) + eps)) * w, the mean taken in double; out may be x.
 * eps must be finite and >= 0 */
int pylut_vec_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
/* g[n] = act(g) * u in place (act: enum pylut_gate_act) */
int pylut_vec_gate(int act, float *g, const float *u, int64_t n);
/* x[n] += y */
int pylut_vec_add(float *x, const float *y, int64_t n);
/* Rotates v[0, n_rot) for position pos (pairs: (2i, 2i+1), or (i, i + n_rot/2) with neox) by
 * angles (float)pos * inv_freq[i], cos and sin scaled by scale; n_rot even, 2..PYLUT_ATTN_MAX_HD.
 * cs: scratch of 2 * n_rot floats (the table the kernel reads, left there) */
int pylut_vec_rope(float *v, int n_rot, int pos, const float *inv_freq, float scale, int neox, float *cs);
/* out[n] = x[n] as IEEE fp16 bits (pylut_fp32_to_fp16's: round to nearest even, overflow to
 * inf, NaN as sign | 0x7e00): the fp16 KV cache's row conversion */
int pylut_vec_to_f16(uint16_t *out, const float *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
