/* prefill.c - the int8-activation GEMM for prefill, portable part: activation quantizer,
 * tile unpacking to dword codes, per-group float parameters, and the scalar twin every SIMD
 * prefill kernel is tested against. (Decode stays on the table lookups: one token cannot
 * pay for unpacking a tile; a batch of them can, see pylut.h "Prefill through int8".) */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ activations */

/* One group's int8 codes of v[c] = x[c] - sub[c] * sub_scale (sub NULL: v = x) into
 * tbl/tscale/sumx at group g. */
static void act8_group(const float *x, const int8_t *sub, float sub_scale, int64_t c0, int64_t c1, int64_t gw,
                       int8_t *tbl, float *tscale, float *sumx, int64_t g) {
    float amax = 0.0f; /* (not fmaxf: a libm call per element on the baseline ISA) */
    for (int64_t c = c0; c < c1; c++) {
        const float a = fabsf(sub ? x[c] - (float)sub[c] * sub_scale : x[c]);
        amax = a > amax ? a : amax;
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int64_t c = c0; c < c1; c++) {
        const int q = pylut_round_i8(sub ? x[c] - (float)sub[c] * sub_scale : x[c], inv);
        tbl[c] = (int8_t)q;
        sum += q;
    }
    for (int64_t c = c1; c < c0 + gw; c++) tbl[c] = 0; /* k padding */
    tscale[g] = amax / 127.0f;
    sumx[g] = tscale[g] * (float)sum;
}

void pylut_act8_build_range(const float *x, pylut_lut *act, int64_t g0, int64_t g1) {
    const int64_t gw = act->group;
    for (int64_t g = g0; g < g1; g++) {
        const int64_t c0 = g * gw, c1 = c0 + gw < act->k ? c0 + gw : act->k;
        act8_group(x, NULL, 0.0f, c0, c1, gw, act->tbl, act->tscale, act->sumx, g);
        if (act->parts == 2) /* what the first part's rounding left out, as a second part */
            act8_group(x, act->tbl, act->tscale[g], c0, c1, gw, act->tbl + act->k_pad, act->tscale + act->n_groups,
                       act->sumx + act->n_groups, g);
    }
}

/* ------------------------------------------------------------------ weights */

void pylut_i8_params(const pylut_qmatrix *qm, int64_t t, int64_t g0, int64_t g1, float *s, float *b) {
    for (int64_t g = g0; g < g1; g++)
        for (int r = 0; r < PYLUT_TILE_M; r++) {
            const float sc = pylut_b_param(qm, 0, t, g, r);
            s[(g - g0) * PYLUT_TILE_M + r] = sc;
            b[(g - g0) * PYLUT_TILE_M + r] = qm->has_bias ? pylut_b_param(qm, 1, t, g, r) : -pylut_i8_zero(qm) * sc;
        }
}

/* T3 (pylut_t3_i8_group: no padded triple): weight col's code trit + 1 = the base-3 digit of
 * its triple's combination (v = 9(a+1) + 3(b+1) + (c+1), the sign bit meaning 26 - v) */
static uint32_t t3_code(const uint8_t *tile, int r, int64_t col) {
    static const int pow3[3] = {9, 3, 1};
    const int64_t tri = col / 3; /* groups hold whole pairs of triples: triples run on across them */
    const uint8_t *blk = tile + (tri / 2) * PYLUT_T3_PAIR_BYTES;
    const int pos = pylut_t3_pos(r, (int)(tri % 2));
    const int idx = r >= 32 ? blk[pos] >> 4 : blk[pos] & 15;
    const int v = ((blk[64 + 8 * (r >= 32) + pos / 8] >> (pos % 8)) & 1) ? 26 - idx : idx;
    return (uint32_t)((v / pow3[col % 3]) % 3);
}

void pylut_i8_unpack(const pylut_qmatrix *qm, int64_t t, int64_t j0, int64_t j1, uint32_t *w) {
    if (qm->type == PYLUT_TYPE_T3) {
        const uint8_t *tile = qm->codes + t * (qm->k_pad / 6) * PYLUT_T3_PAIR_BYTES;
        for (int64_t j = j0; j < j1; j++)
            for (int r = 0; r < PYLUT_TILE_M; r++) {
                uint32_t d = 0;
                for (int e = 0; e < 4; e++) d |= t3_code(tile, r, 4 * j + e) << (8 * e);
                w[(j - j0) * PYLUT_TILE_M + r] = d;
            }
        return;
    }
    const int bits = qm->bits, kgb = pylut_b_kgroup_bytes(bits);
    const uint8_t *tile = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    for (int64_t j = j0; j < j1; j++)
        for (int r = 0; r < PYLUT_TILE_M; r++) {
            uint32_t d = 0;
            for (int p = 0; p < bits; p++) { /* the nibble's bit e is weight 4j+e */
                int hi;
                const int64_t off = pylut_b_nibble_pos(bits, r, p, &hi);
                const uint32_t nib = (uint32_t)(tile[j * kgb + off] >> (hi ? 4 : 0)) & 15u;
                for (int e = 0; e < 4; e++) d |= ((nib >> e) & 1u) << (8 * e + p);
            }
            w[(j - j0) * PYLUT_TILE_M + r] = d;
        }
}

/* ------------------------------------------------------------------ the scalar twin */

void pylut_gemm_b_i8_scalar(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                            int64_t ldy, int64_t tile0, int64_t tile1) {
    const int gw = qm->group, kc = pylut_i8_chunk(gw);
    float s[PYLUT_I8_CHUNK / PYLUT_MIN_GROUP * PYLUT_TILE_M]; /* [groups in chunk][64] */
    float b[PYLUT_I8_CHUNK / PYLUT_MIN_GROUP * PYLUT_TILE_M];
    uint32_t w[PYLUT_I8_CHUNK / PYLUT_KGROUP * PYLUT_TILE_M]; /* [k-groups in chunk][64] */
    float acc[PYLUT_I8_TOKENS * PYLUT_TILE_M];                  /* [tokens of a pass][64] */
    for (int64_t t = tile0; t < tile1; t++)
        for (int tb = 0; tb < n; tb += PYLUT_I8_TOKENS) { /* passes as in the SIMD kernels */
            const int nt = n - tb < PYLUT_I8_TOKENS ? n - tb : PYLUT_I8_TOKENS;
            memset(acc, 0, (size_t)nt * PYLUT_TILE_M * sizeof(float));
            for (int64_t k0 = 0; k0 < qm->k_pad; k0 += kc) {
                const int64_t kl = qm->k_pad - k0 < kc ? qm->k_pad - k0 : kc, g0 = k0 / gw;
                pylut_i8_unpack(qm, t, k0 / 4, (k0 + kl) / 4, w);
                pylut_i8_params(qm, t, g0, (k0 + kl) / gw, s, b);
                pylut_lut lo[PYLUT_I8_TOKENS]; /* the residual part, after the first (as the kernels) */
                if (act->parts == 2) pylut_act8_residual_views(act + tb, nt, lo);
                for (int pt = 0; pt < act->parts * nt; pt++) {
                    const int tok = pt % nt;
                    const pylut_lut *A = pt >= nt ? lo + tok : act + tb + tok;
                    float *ar = acc + tok * PYLUT_TILE_M;
                    for (int64_t g = 0; g < kl / gw; g++) {
                        const float xs = A->tscale[g0 + g], sx = A->sumx[g0 + g];
                        for (int r = 0; r < PYLUT_TILE_M; r++) {
                            int32_t I = 0;
                            for (int64_t c = g * gw; c < (g + 1) * gw; c++)
                                I += (int32_t)((w[c / 4 * PYLUT_TILE_M + r] >> (8 * (c % 4))) & 255) *
                                     A->tbl[k0 + c];
                            ar[r] = fmaf((float)I, s[g * PYLUT_TILE_M + r] * xs, ar[r]);
                            ar[r] = fmaf(b[g * PYLUT_TILE_M + r], sx, ar[r]);
                        }
                    }
                }
            }
            for (int tok = 0; tok < nt; tok++)
                for (int r = 0; r < PYLUT_TILE_M && t * PYLUT_TILE_M + r < qm->m; r++)
                    y[(tb + tok) * ldy + t * PYLUT_TILE_M + r] = acc[tok * PYLUT_TILE_M + r];
        }
}
