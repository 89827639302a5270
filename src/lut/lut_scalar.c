/* lut_scalar.c - portable C: table builders, and the scalar twins of the table-lookup kernels.
 * This unit is compiled for the baseline ISA only (no -mavx2 etc.): it is what old CPUs run
 * and what the tests compare every SIMD variant against. It reads the packed layouts
 * nibble by nibble, so it is also the executable definition of those layouts; that is why it
 * is not an instance of lut_body.h. */
#include <math.h>

#include "kernels.h"

/* ------------------------------------------------------------------ table builders */


/* B-type tables: T[idx] = sum_e (bit_e(idx) ? x_e : -x_e) for 4 activations. Only idx 0..7
 * are computed; T[15-idx] = -T[idx] because 15-idx flips every bit. The table scale of a
 * scale group is max |T| / 127 = max over its k-groups of sum |x_e|, so no entry clips. */
/* max over k-groups [j0, j1) of sum |x_e| */
static float kgroup_amax(const float *x, int64_t k, int64_t j0, int64_t j1) {
    float amax = 0.0f;
    for (int64_t j = j0; j < j1; j++) {
        float a = 0.0f;
        for (int e = 0; e < 4; e++) a += j * 4 + e < k ? fabsf(x[j * 4 + e]) : 0.0f;
        if (a > amax) amax = a;
    }
    return amax;
}

void pylut_b_entries_scalar(const float *x, int64_t k, int64_t j0, int64_t j1, float inv, int8_t *tbl) {
    for (int64_t j = j0; j < j1; j++) {
        float v[4];
        for (int e = 0; e < 4; e++) v[e] = j * 4 + e < k ? x[j * 4 + e] : 0.0f;
        int8_t *t = tbl + j * 16;
        for (int idx = 0; idx < 8; idx++) {
            float s = ((idx & 1) ? v[0] : -v[0]) + ((idx & 2) ? v[1] : -v[1]) + ((idx & 4) ? v[2] : -v[2]) - v[3];
            t[idx] = pylut_round_i8(s, inv);
            t[15 - idx] = (int8_t)-t[idx];
        }
    }
}

void pylut_lut_build_b_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1, pylut_b_entries_fn entries) {
    const int64_t kg_per_group = lut->group / PYLUT_KGROUP;
    /* int-super tables share one scale per super-block (which [g0, g1) may cut: the block's
     * max is taken over all of it whoever builds it, so every thread finds the same) */
    const int64_t kg_per_scale = lut->super ? lut->super / PYLUT_KGROUP : kg_per_group;
    int16_t *sumq = lut->super ? pylut_lut_sumq(lut) : NULL;
    int64_t scale_j0 = -1;
    float amax = 0.0f;
    for (int64_t g = g0; g < g1; g++) {
        float sum = 0.0f;
        for (int64_t col = g * lut->group; col < (g + 1) * lut->group && col < lut->k; col++) sum += x[col];
        const int64_t j0 = g * kg_per_group / kg_per_scale * kg_per_scale;
        if (j0 != scale_j0) amax = kgroup_amax(x, lut->k, scale_j0 = j0, j0 + kg_per_scale);
        float tscale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        lut->tscale[g] = tscale;
        lut->sumx[g] = sum;
        if (sumq) { /* |sum * inv| <= 127 * group/4 <= 8128: no clipping beyond float noise */
            const float lim = 127.0f * (float)kg_per_group, magic = 12582912.0f;
            float r = (sum * inv + magic) - magic;
            r = r > lim ? lim : r < -lim ? -lim : r;
            sumq[g] = (int16_t)(int)r;
            lut->sumx[g] = r * tscale; /* what the int sums use, for per-group float kernels */
        }
        (entries ? entries : pylut_b_entries_scalar)(x, lut->k, g * kg_per_group, (g + 1) * kg_per_group, inv, lut->tbl);
    }
}

/* T3 tables: entry v (0..13) = a*x0 + b*x1 + c*x2 with v = 9(a+1)+3(b+1)+(c+1); entries for
 * v > 13 are the negatives of 26-v and come from the sign bit. Entries 14, 15 are unused. */
void pylut_lut_build_t3_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1) {
    const int gw = lut->group, tg = pylut_t3_triples(gw);
    for (int64_t g = g0; g < g1; g++) {
        float v[PYLUT_T3_MAX_GROUP / 3 + 2][3]; /* the group's triples, zero-padded */
        float amax = 0.0f;
        for (int j = 0; j < tg; j++) {
            float a = 0.0f;
            for (int e = 0; e < 3; e++) {
                int64_t o = 3 * j + e, col = g * gw + o;
                v[j][e] = o < gw && col < lut->k ? x[col] : 0.0f;
                a += fabsf(v[j][e]);
            }
            if (a > amax) amax = a;
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        lut->tscale[g] = amax / 127.0f;
        for (int j = 0; j < tg; j++) {
            /* entry idx = a*x0 + b*x1 + c*x2 with idx = 9(a+1) + 3(b+1) + (c+1): the nine
             * (b, c) sums once, then a = -1 for idx 0..8 and a = 0 for idx 9..13 */
            const float x0 = v[j][0], x1 = v[j][1], x2 = v[j][2];
            const float bc[9] = {-x1 - x2, -x1, -x1 + x2, -x2, 0.0f, x2, x1 - x2, x1, x1 + x2};
            int8_t *t = lut->tbl + (g * tg + j) * 16;
            for (int i = 0; i < 9; i++) t[i] = pylut_round_i8(bc[i] - x0, inv);
            for (int i = 0; i < 5; i++) t[9 + i] = pylut_round_i8(bc[i], inv);
            t[14] = t[15] = 0;
        }
    }
}

/* ------------------------------------------------------------------ B-type GEMM twin */

static int nibble(const uint8_t *blk, int64_t off, int hi) {
    return hi ? blk[off] >> 4 : blk[off] & 15;
}

static void gemm_b_scalar(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                          int64_t ldy, int64_t tile0, int64_t tile1) {
    const int bits = qm->bits, kgb = pylut_b_kgroup_bytes(bits);
    const int64_t kgroups = qm->k_pad / PYLUT_KGROUP, groups = qm->k_pad / qm->group;
    const int kg_per_group = qm->group / PYLUT_KGROUP;
    const float h = (float)((1 << bits) - 1) * 0.5f;
    const int isup = pylut_b_int_super(qm), coef = isup ? pylut_b_sumq_coef(qm) : 0;
    const int64_t gps = isup ? qm->super / qm->group : 1;
    for (int64_t t = tile0; t < tile1; t++) {
        const uint8_t *tile = qm->codes + t * kgroups * kgb;
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            float acc[PYLUT_TILE_M] = {0};
            int32_t S[PYLUT_TILE_M] = {0}, B[PYLUT_TILE_M] = {0}; /* int-super sums */
            for (int64_t g = 0; g < groups; g++) {
                int32_t A[PYLUT_TILE_M] = {0};
                for (int64_t j = g * kg_per_group; j < (g + 1) * kg_per_group; j++) {
                    const uint8_t *blk = tile + j * kgb;
                    const int8_t *T = L->tbl + j * 16;
                    for (int r = 0; r < PYLUT_TILE_M; r++) {
                        int hi = r >= 32, rr = r & 31, p;
                        for (p = 0; p + 1 < bits; p += 2) { /* pair blocks */
                            int64_t off = 64 * (p / 2) + 16 * (rr / 8) + 2 * (rr % 8);
                            A[r] += (T[nibble(blk, off, hi)] + 2 * T[nibble(blk, off + 1, hi)]) * (1 << p); /* multiply: the sum may be negative (<< would be UB) */
                        }
                        if (p < bits) /* lone top plane */
                            A[r] += T[nibble(blk, 64 * (p / 2) + rr, hi)] * (1 << p);
                    }
                }
                if (isup) { /* see kernels.h: ints over the super-block, floats once */
                    const int64_t at = (t * groups + g) * PYLUT_TILE_M, sq = pylut_lut_sumq(L)[g];
                    for (int r = 0; r < PYLUT_TILE_M; r++) {
                        S[r] += pylut_b_sub(qm, 0, at + r) * (A[r] + coef * (int32_t)sq);
                        if (qm->has_bias) B[r] += pylut_b_sub(qm, 1, at + r) * (int32_t)sq;
                    }
                    if ((g + 1) % gps) continue;
                    const int64_t sat = (t * (qm->k_pad / qm->super) + g / gps) * PYLUT_TILE_M;
                    const float ts = L->tscale[g], f = 0.5f * ts;
                    for (int r = 0; r < PYLUT_TILE_M; r++) {
                        acc[r] += (pylut_fp16_to_fp32(qm->scale[sat + r]) * f) * (float)S[r];
                        if (qm->has_bias) acc[r] += (pylut_fp16_to_fp32(qm->bias[sat + r]) * ts) * (float)B[r];
                        S[r] = B[r] = 0;
                    }
                    continue;
                }
                const float f = 0.5f * L->tscale[g], sx = L->sumx[g];
                for (int r = 0; r < PYLUT_TILE_M; r++) {
                    float s = pylut_b_param(qm, 0, t, g, r);
                    acc[r] += (s * f) * (float)A[r];
                    if (qm->has_bias) acc[r] += (pylut_b_param(qm, 1, t, g, r) + s * h) * sx;
                    else if (h != qm->zero) acc[r] += (s * (h - qm->zero)) * sx;
                }
            }
            for (int r = 0; r < PYLUT_TILE_M && t * PYLUT_TILE_M + r < qm->m; r++)
                y[tok * ldy + t * PYLUT_TILE_M + r] = acc[r];
        }
    }
}

/* ------------------------------------------------------------------ T3 GEMM twin */

static void gemm_t3_scalar(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y,
                           int64_t ldy, int64_t tile0, int64_t tile1) {
    const int ppg = pylut_t3_triples(qm->group) / 2;
    const int64_t groups = qm->k_pad / qm->group, pairs = groups * ppg;
    for (int64_t t = tile0; t < tile1; t++) {
        const uint8_t *tile = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            float acc[PYLUT_TILE_M] = {0};
            for (int64_t g = 0; g < groups; g++) {
                int32_t A[PYLUT_TILE_M] = {0};
                for (int64_t p = g * ppg; p < (g + 1) * ppg; p++) {
                    const uint8_t *blk = tile + p * PYLUT_T3_PAIR_BYTES;
                    for (int hh = 0; hh < 2; hh++) {
                        const int8_t *T = L->tbl + (2 * p + hh) * 16;
                        for (int r = 0; r < PYLUT_TILE_M; r++) {
                            int bit = pylut_t3_pos(r, hh);
                            int v = T[nibble(blk, bit, r >= 32)];
                            int neg = (blk[64 + 8 * (r >= 32) + bit / 8] >> (bit % 8)) & 1;
                            A[r] += neg ? -v : v;
                        }
                    }
                }
                for (int r = 0; r < PYLUT_TILE_M; r++) {
                    float s = pylut_fp16_to_fp32(qm->scale[(t * groups + g) * PYLUT_TILE_M + r]);
                    acc[r] += (s * L->tscale[g]) * (float)A[r];
                }
            }
            for (int r = 0; r < PYLUT_TILE_M && t * PYLUT_TILE_M + r < qm->m; r++)
                y[tok * ldy + t * PYLUT_TILE_M + r] = acc[r];
        }
    }
}

const pylut_kernels pylut_kernels_scalar = {
    .gemm_b = gemm_b_scalar,
    .gemm_t3 = gemm_t3_scalar,
    .attn_f16 = pylut_attn_f16_scalar, /* the baselines (baseline/baseline_scalar.c) */
    .dq8_gemv = pylut_dq8_gemv_scalar,
};
