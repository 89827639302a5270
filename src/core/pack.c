/* pack.c - layouts of packed matrices and tables, code packing/unpacking, fp16 helpers. */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ fp16 */

float pylut_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t pylut_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf / nan */
        return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (ax < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        if (ax < 0x33000000u) return sign; /* < 2^-25 rounds to 0 */
        uint32_t e = ax >> 23, man = (ax & 0x7fffff) | 0x800000;
        int shift = 126 - (int)e; /* 14 + (113 - e) */
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t r = ax - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t half = r >> 13, rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return sign | (uint16_t)half;
}

/* ------------------------------------------------------------------ layouts */

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* Sizes are capped so every product below fits int64 with room to spare. */
#define PYLUT_MAX_DIM ((int64_t)1 << 31)

int pylut_qmatrix_layout(pylut_qmatrix *qm, int type, int64_t m, int64_t k, int group, int has_bias) {
    if (!qm || m <= 0 || k <= 0 || m > PYLUT_MAX_DIM || k > PYLUT_MAX_DIM) return PYLUT_EINVAL;
    memset(qm, 0, sizeof(*qm));
    qm->post = 1.0f;
    qm->type = type;
    qm->m = m;
    qm->k = k;
    qm->m_pad = round_up(m, PYLUT_TILE_M);
    if (type >= PYLUT_TYPE_B1 && type <= PYLUT_TYPE_B8) {
        if (group < PYLUT_MIN_GROUP || group > PYLUT_MAX_GROUP || group % 8) return PYLUT_EINVAL;
        qm->bits = type;
        qm->group = group;
        qm->has_bias = has_bias ? 1 : 0;
        qm->zero = (float)((1 << qm->bits) - 1) * 0.5f;
        qm->k_pad = round_up(k, group);
        qm->codes_bytes = (qm->m_pad / PYLUT_TILE_M) * (qm->k_pad / PYLUT_KGROUP) * pylut_b_kgroup_bytes(qm->bits);
        qm->scale_count = qm->m_pad * (qm->k_pad / group);
    } else if (type == PYLUT_TYPE_T3) {
        if (has_bias || group < 6 || group > PYLUT_T3_MAX_GROUP) return PYLUT_EINVAL;
        qm->bits = 0;
        qm->group = group;
        qm->k_pad = round_up(k, group);
        qm->codes_bytes = (qm->m_pad / PYLUT_TILE_M) * (qm->k_pad / group) * (pylut_t3_triples(group) / 2) *
                          PYLUT_T3_PAIR_BYTES;
        qm->scale_count = qm->m_pad * (qm->k_pad / group);
    } else if (type == PYLUT_TYPE_F16) {
        if (has_bias || (group != 0 && group != PYLUT_F16_KALIGN)) return PYLUT_EINVAL;
        qm->group = PYLUT_F16_KALIGN;
        qm->k_pad = round_up(k, PYLUT_F16_KALIGN);
        qm->codes_bytes = qm->m_pad * qm->k_pad * 2;
    } else {
        return PYLUT_EINVAL;
    }
    return PYLUT_OK;
}

int pylut_qmatrix_set_super(pylut_qmatrix *qm, int super) {
    if (!qm || qm->type < PYLUT_TYPE_B1 || qm->type > PYLUT_TYPE_B8) return PYLUT_EINVAL;
    if (super == 0) return PYLUT_OK;
    if (super < qm->group || super % qm->group || super > 4096) return PYLUT_EINVAL;
    qm->super = super;
    qm->k_pad = round_up(qm->k, super);
    qm->codes_bytes = (qm->m_pad / PYLUT_TILE_M) * (qm->k_pad / PYLUT_KGROUP) * pylut_b_kgroup_bytes(qm->bits);
    qm->scale_count = qm->m_pad * (qm->k_pad / super);
    qm->sub_count = qm->m_pad * (qm->k_pad / qm->group);
    return PYLUT_OK;
}

int pylut_qmatrix_set_post(pylut_qmatrix *qm, float post) {
    if (!qm || !pylut_post_ok(post)) return PYLUT_EINVAL;
    qm->post = post;
    return PYLUT_OK;
}

int pylut_qmatrix_set_sub_nibbles(pylut_qmatrix *qm, int on) {
    if (!qm) return PYLUT_EINVAL;
    if (on && (!qm->super || !qm->has_bias)) return PYLUT_EINVAL; /* the sign lives in dmin */
    qm->sub_nibbles = on ? 1 : 0;
    return PYLUT_OK;
}

int pylut_lut_layout(pylut_lut *lut, const pylut_qmatrix *qm) {
    if (!lut || !qm) return PYLUT_EINVAL;
    memset(lut, 0, sizeof(*lut));
    lut->k = qm->k;
    lut->k_pad = qm->k_pad;
    lut->group = qm->group;
    if (qm->type == PYLUT_TYPE_F16) {
        lut->kind = PYLUT_LUT_F32;
        lut->tbl_bytes = qm->k_pad * (int64_t)sizeof(float);
        lut->n_groups = qm->k_pad / qm->group;
    } else if (qm->type == PYLUT_TYPE_T3) {
        lut->kind = PYLUT_LUT_T3;
        lut->n_groups = qm->k_pad / qm->group;
        lut->tbl_bytes = lut->n_groups * pylut_t3_triples(qm->group) * 16;
    } else {
        lut->kind = PYLUT_LUT_B;
        lut->tbl_bytes = qm->k_pad / PYLUT_KGROUP * 16;
        lut->n_groups = qm->k_pad / qm->group;
        if (pylut_b_int_super(qm)) { /* one table scale per super-block, then int16 sumq */
            lut->super = qm->super;
            lut->tbl_bytes += round_up(lut->n_groups * 2, 64);
        }
    }
    return PYLUT_OK;
}

int pylut_lut_layout_i8(pylut_lut *lut, const pylut_qmatrix *qm, int parts) {
    if (!lut || !qm || parts < 1 || parts > 2) return PYLUT_EINVAL;
    if ((qm->type < PYLUT_TYPE_B1 || qm->type > PYLUT_TYPE_B8) && !(qm->type == PYLUT_TYPE_T3 && pylut_t3_i8_group(qm->group)))
        return PYLUT_EINVAL;
    memset(lut, 0, sizeof(*lut));
    lut->kind = PYLUT_LUT_I8;
    lut->k = qm->k;
    lut->k_pad = qm->k_pad;
    lut->group = qm->group;
    lut->parts = parts;
    lut->tbl_bytes = parts * qm->k_pad;
    lut->n_groups = qm->k_pad / qm->group;
    return PYLUT_OK;
}

/* ------------------------------------------------------------------ packing */

/* The trit (-1, 0, 1) of row r (in its tile) and column col of T3 tile data. */
static int t3_trit(const pylut_qmatrix *qm, const uint8_t *tile, int r, int64_t col) {
    static const int pow3[3] = {9, 3, 1};
    const int gw = qm->group, tg = pylut_t3_triples(gw);
    const int64_t g = col / gw, o = col % gw, tri = g * tg + o / 3;
    const uint8_t *blk = tile + (tri / 2) * PYLUT_T3_PAIR_BYTES;
    const int pos = pylut_t3_pos(r, (int)(tri % 2));
    const int idx = r >= 32 ? blk[pos] >> 4 : blk[pos] & 15;
    const int v = ((blk[64 + 8 * (r >= 32) + pos / 8] >> (pos % 8)) & 1) ? 26 - idx : idx;
    return (v / pow3[o % 3]) % 3 - 1;
}

int pylut_pack_f16(pylut_qmatrix *qm, const uint16_t *w, int64_t ld) {
    if (!qm || qm->type != PYLUT_TYPE_F16 || !qm->codes || !w || ld < qm->k) return PYLUT_EINVAL;
    uint16_t *dst = (uint16_t *)qm->codes;
    memset(dst, 0, (size_t)qm->codes_bytes);
    for (int64_t r = 0; r < qm->m; r++) memcpy(dst + r * qm->k_pad, w + r * ld, (size_t)qm->k * 2);
    return PYLUT_OK;
}

int pylut_pack_codes(pylut_qmatrix *qm, const uint8_t *codes, int64_t ld) {
    if (!qm || !qm->codes || !codes || ld < qm->k || qm->type == PYLUT_TYPE_F16) return PYLUT_EINVAL;
    memset(qm->codes, 0, (size_t)qm->codes_bytes);
    int64_t tiles = qm->m_pad / PYLUT_TILE_M;
    if (qm->type == PYLUT_TYPE_T3) {
        const int gw = qm->group, tg = pylut_t3_triples(gw);
        const int64_t pairs = qm->k_pad / gw * (tg / 2);
        for (int64_t t = 0; t < tiles; t++)
            for (int64_t p = 0; p < pairs; p++) {
                uint8_t *blk = qm->codes + (t * pairs + p) * PYLUT_T3_PAIR_BYTES;
                for (int r = 0; r < PYLUT_TILE_M; r++) {
                    int64_t row = t * PYLUT_TILE_M + r;
                    for (int h = 0; h < 2; h++) {
                        int64_t tri = 2 * p + h, g = tri / tg, o0 = (tri % tg) * 3;
                        int v = 0;
                        for (int j = 0; j < 3; j++) {
                            int64_t o = o0 + j, col = g * gw + o;
                            int c = 1; /* padding: trit 0 */
                            if (row < qm->m && o < gw && col < qm->k) {
                                c = codes[row * ld + col];
                                if (c > 2) return PYLUT_EINVAL;
                            }
                            v = v * 3 + c;
                        }
                        int sign = v > PYLUT_T3_ZERO, idx = sign ? 26 - v : v;
                        int pos = pylut_t3_pos(r, h);
                        blk[pos] |= (uint8_t)(r >= 32 ? idx << 4 : idx);
                        if (sign) /* bit pos of the lo (rows 0..31) or hi (32..63) sign mask */
                            blk[64 + 8 * (r >= 32) + pos / 8] |= (uint8_t)(1u << (pos % 8));
                    }
                }
            }
        return PYLUT_OK;
    }
    int bits = qm->bits, kgb = pylut_b_kgroup_bytes(bits);
    int64_t kgroups = qm->k_pad / PYLUT_KGROUP;
    for (int64_t row = 0; row < qm->m; row++) /* padded rows: all-zero codes, zero scale */
        for (int64_t col = 0; col < qm->k; col++)
            if (codes[row * ld + col] >> bits) return PYLUT_EINVAL;
    for (int64_t t = 0; t < tiles; t++)
        for (int r = 0; r < PYLUT_TILE_M; r++) {
            int64_t row = t * PYLUT_TILE_M + r;
            if (row >= qm->m) break;
            const uint8_t *src = codes + row * ld;
            int64_t off[8];
            int shift[8];
            for (int i = 0; i < bits; i++) {
                int hi;
                off[i] = pylut_b_nibble_pos(bits, r, i, &hi);
                shift[i] = hi ? 4 : 0;
            }
            uint8_t *blk = qm->codes + t * kgroups * kgb;
            for (int64_t j = 0; j < kgroups; j++, blk += kgb) {
                uint32_t c4; /* the k-group's 4 codes, one per byte (0 past the end of a row) */
                if ((j + 1) * PYLUT_KGROUP <= qm->k) {
                    memcpy(&c4, src + j * PYLUT_KGROUP, 4);
                } else {
                    uint8_t tmp[4] = {0};
                    for (int e = 0; e < 4 && j * 4 + e < qm->k; e++) tmp[e] = src[j * 4 + e];
                    memcpy(&c4, tmp, 4);
                }
                for (int i = 0; i < bits; i++) {
                    uint32_t p = (c4 >> i) & 0x01010101u; /* bit i of each code */
                    uint32_t nib = (p | p >> 7 | p >> 14 | p >> 21) & 15u;
                    blk[off[i]] |= (uint8_t)(nib << shift[i]);
                }
            }
        }
    return PYLUT_OK;
}

int pylut_unpack_codes(const pylut_qmatrix *qm, uint8_t *codes, int64_t ld) {
    if (!qm || !qm->codes || !codes || ld < qm->k || qm->type == PYLUT_TYPE_F16) return PYLUT_EINVAL;
    int64_t tiles = qm->m_pad / PYLUT_TILE_M;
    for (int64_t row = 0; row < qm->m; row++) {
        int64_t t = row / PYLUT_TILE_M;
        int r = (int)(row % PYLUT_TILE_M);
        (void)tiles;
        for (int64_t col = 0; col < qm->k; col++) {
            int c = 0;
            if (qm->type == PYLUT_TYPE_T3) {
                const int64_t pairs = qm->k_pad / qm->group * (pylut_t3_triples(qm->group) / 2);
                c = t3_trit(qm, qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES, r, col) + 1;
            } else {
                int64_t j = col / PYLUT_KGROUP;
                int e = (int)(col % PYLUT_KGROUP);
                const uint8_t *blk = qm->codes + (t * (qm->k_pad / PYLUT_KGROUP) + j) * pylut_b_kgroup_bytes(qm->bits);
                for (int i = 0; i < qm->bits; i++) {
                    int hi;
                    int64_t off = pylut_b_nibble_pos(qm->bits, r, i, &hi);
                    c |= ((blk[off] >> (e + (hi ? 4 : 0))) & 1) << i;
                }
            }
            codes[row * ld + col] = (uint8_t)c;
        }
    }
    return PYLUT_OK;
}

/* ------------------------------------------------------------------ one row */

static int qmatrix_row(const pylut_qmatrix *qm, int64_t row, float *out);

int pylut_qmatrix_row(const pylut_qmatrix *qm, int64_t row, float *out) {
    if (!qm || !qm->codes || !out || row < 0 || row >= qm->m) return PYLUT_EINVAL;
    const int rc = qmatrix_row(qm, row, out);
    if (rc == PYLUT_OK && qm->post != 1.0f)
        for (int64_t col = 0; col < qm->k; col++) out[col] *= qm->post;
    return rc;
}

/* Row `row` of the packed data, before the post-scale; arguments checked by the caller */
static int qmatrix_row(const pylut_qmatrix *qm, int64_t row, float *out) {
    if (qm->type == PYLUT_TYPE_F16) {
        const uint16_t *w = (const uint16_t *)qm->codes + row * qm->k_pad;
        for (int64_t col = 0; col < qm->k; col++) out[col] = pylut_fp16_to_fp32(w[col]);
        return PYLUT_OK;
    }
    int64_t t = row / PYLUT_TILE_M;
    int r = (int)(row % PYLUT_TILE_M);
    if (qm->type == PYLUT_TYPE_T3) {
        const int64_t pairs = qm->k_pad / qm->group * (pylut_t3_triples(qm->group) / 2);
        const uint8_t *tile = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
        for (int64_t col = 0; col < qm->k; col++) {
            float s = pylut_fp16_to_fp32(qm->scale[pylut_scale_index(qm, row, col / qm->group)]);
            out[col] = s * (float)t3_trit(qm, tile, r, col);
        }
        return PYLUT_OK;
    }
    const int bits = qm->bits, kgb = pylut_b_kgroup_bytes(bits);
    const int64_t kgroups = qm->k_pad / PYLUT_KGROUP;
    int offs[8], his[8];
    for (int i = 0; i < bits; i++) offs[i] = (int)pylut_b_nibble_pos(bits, r, i, &his[i]);
    for (int64_t col = 0; col < qm->k; col++) {
        int64_t j = col / PYLUT_KGROUP, g = col / qm->group;
        int e = (int)(col % PYLUT_KGROUP), c = 0;
        const uint8_t *blk = qm->codes + (t * kgroups + j) * kgb;
        for (int i = 0; i < bits; i++) c |= ((blk[offs[i]] >> (e + (his[i] ? 4 : 0))) & 1) << i;
        float s = pylut_b_param(qm, 0, t, g, r);
        float b = qm->has_bias ? pylut_b_param(qm, 1, t, g, r) : -s * qm->zero;
        out[col] = s * (float)c + b;
    }
    return PYLUT_OK;
}
