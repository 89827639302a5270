/* vecops.c - what the element-wise kernels share whatever the ISA: RoPE's cos/sin table, and
 * the checked entry points of include/pylut/vecops.h (tests reach the active table through
 * them; the forward pass calls the table itself with sizes it owns). */
#include <math.h>

#include "kernels.h"
#include "pylut/attention.h"
#include "pylut/vecops.h"

/* scale multiplies cos and sin, so q.k carries it squared, as YaRN's temperature asks.
 * libm's cosf/sinf of the float angle, as the per-head loop computed them before: a table is
 * made once per token and step and shared by every head and layer that has these inverse
 * frequencies, so its cost no longer matters and the values stay bit for bit the same */
void pylut_rope_table(float *cs, int n_rot, int pos, const float *inv_freq, float scale, int neox) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        const float a = (float)pos * inv_freq[i], c = cosf(a) * scale, s = sinf(a) * scale;
        if (neox) {
            cs[i] = c;
            cs[half + i] = s;
        } else {
            cs[2 * i] = cs[2 * i + 1] = c;
            cs[n_rot + 2 * i] = -s;
            cs[n_rot + 2 * i + 1] = s;
        }
    }
}

int pylut_vec_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    if (!out || !x || !w || n < 1 || !(eps >= 0.0f) || !isfinite(eps)) return PYLUT_EINVAL;
    pylut_vecops_active()->rmsnorm(out, x, w, n, eps);
    return PYLUT_OK;
}

int pylut_vec_gate(int act, float *g, const float *u, int64_t n) {
    if (!g || !u || n < 1) return PYLUT_EINVAL;
    const pylut_vecops *vo = pylut_vecops_active();
    switch (act) {
    case PYLUT_GATE_SILU: vo->gate_silu(g, u, n); return PYLUT_OK;
    case PYLUT_GATE_RELU2: vo->gate_relu2(g, u, n); return PYLUT_OK;
    case PYLUT_GATE_GELU_TANH: vo->gate_gelu_tanh(g, u, n); return PYLUT_OK;
    default: return PYLUT_EINVAL;
    }
}

int pylut_vec_add(float *x, const float *y, int64_t n) {
    if (!x || !y || n < 1) return PYLUT_EINVAL;
    pylut_vecops_active()->add(x, y, n);
    return PYLUT_OK;
}

int pylut_vec_to_f16(uint16_t *out, const float *x, int64_t n) {
    if (!out || !x || n < 1) return PYLUT_EINVAL;
    pylut_vecops_active()->to_f16((uint8_t *)out, x, n);
    return PYLUT_OK;
}

int pylut_vec_rope(float *v, int n_rot, int pos, const float *inv_freq, float scale, int neox, float *cs) {
    if (!v || !inv_freq || !cs || n_rot < 2 || n_rot > PYLUT_ATTN_MAX_HD || n_rot % 2 || pos < 0 || !isfinite(scale))
        return PYLUT_EINVAL;
    pylut_rope_table(cs, n_rot, pos, inv_freq, scale, neox != 0);
    pylut_vecops_active()->rope(v, n_rot, cs, neox != 0);
    return PYLUT_OK;
}
