/* lut_body.h - the table-lookup GEMV/GEMM kernels (B-types and T3), written once against a
 * small per-ISA vocabulary and instantiated by lut_avx2.c, lut_avx512.c, lut_avx512vbmi.c
 * (through lut_x86.h) and lut_neon.c. This file owns the walk (row tile -> token -> super-block
 * -> group -> k-group), the float epilogues, store_tile and the bit dispatch; an ISA supplies
 * how one group's lookups are summed and how integer vectors are widened and reordered.
 * The scalar twin (lut_scalar.c) is not an instance on purpose: it reads the layouts nibble by
 * nibble and is what every instance is tested against.
 *
 * The including unit defines, before including this file:
 *
 *   LUT_NF                 float (and int32) vectors per 64-row tile, rows in order:
 *                          vector q holds rows LUT_RF*q .. LUT_RF*q + LUT_RF-1
 *   vf32, vi32, vi16       float, int32 and int16 vector types
 *   f_zero() f_set1(x) f_fma(a, b, c) = a*b + c   f_mul(a, b)   f_from_i32(a)
 *   f_store(float *p, a)   f_load_h(const uint16_t *p)       LUT_RF fp16 -> floats
 *   i32_zero() i16_zero() i16_add(a, b) i16_set1(x) i16_and(a, b) i16_shl(a, n) i16_shr(a, n)
 *   i16_load_s8(p) i16_load_u8(p)   LUT_RH int8 / uint8 (rows of one int16 vector) -> int16
 *   i16_pairs(lo, hi)      int16 lanes alternating lo, hi (lo in the even lanes)
 *   pair_lo(a, b) pair_hi(a, b)   two int16 vectors interleaved lane by lane (unpacklo/hi)
 *   madd_acc(acc, a, b)    acc + the int32 sums of adjacent int16 products a*b
 *   rows_lo(S0, S1) rows_hi(S0, S1)   madd_acc sums of pair_lo (S0) and pair_hi (S1) of one
 *                          int16 vector, back in row order: its first and second LUT_RF rows
 *   widen_add(a, sh, vi32 *r0, vi32 *r1)   int16 rows -> int32 * 2^sh, added to r0 (first
 *                          half of a's rows) and r1
 *   group_param(qm, bias, t, g, q)         vector q's scale (bias 0) or bias (bias 1) of
 *                          group g: fp16, or fp16 super-block value * sub-value
 *   plane_sums(blk, T, kpg, bits, pacc[4][LUT_NH], lacc[LUT_NH])   one group's lookups
 *                          (codes blk, tables T), planes not yet weighted, added to the
 *                          zeroed int16 sums: pacc[p] += plane 2p + 2 * plane 2p+1,
 *                          lacc += the lone plane (odd bits)
 *   t3_pair_sums(blk, tbl, a[LUT_NH])      one T3 pair block (two triples a row, tables
 *                          tbl[0..31]) added to the int16 row sums a, signs applied
 *   LUT_WALK_PER_WIDTH     optional, 1: the B-type walk is instantiated once per bit width
 *                          (lut_gemm_b below says when that pays)
 *
 * LUT_NH = LUT_NF / 2 int16 vectors cover the tile, vector h rows LUT_RH*h.. ; widening
 * vector h gives int32 vectors 2h and 2h+1. The int16 bounds: kernels.h (int-super) and below.
 *
 * int16 bound of the per-group path: a table entry is in [-127, 127]; per k-group a pair
 * accumulator gains at most 127 + 2*127 = 381 and a lone-plane one 127. A scale group has at
 * most PYLUT_MAX_GROUP/4 = 64 k-groups, so |acc| <= 64*381 = 24384 < 32767 whatever b is, and
 * the planes' weights 4^p are applied after widening to int32, unless (2^b-1) * group <= 1032
 * keeps the weighted sum in int16 too (kernels.h).
 * T3: a row gains at most 2*127 per pair of triples, at most 128 pairs per scale group
 * (PYLUT_T3_MAX_GROUP): 128*254 = 32512 < 32767. */
#include <string.h>

#include "kernels.h"

#define LUT_NH (LUT_NF / 2)
#define LUT_RF (PYLUT_TILE_M / LUT_NF)
#define LUT_RH (PYLUT_TILE_M / LUT_NH)

/* ------------------------------------------------------------------ shared pieces */

/* The entry points, for the unit's pylut_kernels table */
#define LUT_BODY_KERNELS .gemm_b = lut_gemm_b, .gemm_t3 = lut_gemm_t3

static ALWAYS_INLINE void store_tile(float *y, int64_t row0, int64_t m, const vf32 acc[LUT_NF]) {
    if (row0 + PYLUT_TILE_M <= m) {
        for (int q = 0; q < LUT_NF; q++) f_store(y + row0 + LUT_RF * q, acc[q]);
    } else {
        float tmp[PYLUT_TILE_M];
        for (int q = 0; q < LUT_NF; q++) f_store(tmp + LUT_RF * q, acc[q]);
        memcpy(y + row0, tmp, (size_t)(m - row0) * sizeof(float));
    }
}

/* One group's plane sums (plane_sums on zeroed accumulators); advances blk and T */
static ALWAYS_INLINE void group_planes(const uint8_t **blk, const int8_t **T, int kpg, const int bits,
                                       vi16 pacc[4][LUT_NH], vi16 lacc[LUT_NH]) {
    for (int r = 0; r < LUT_NH; r++) {
        for (int p = 0; p < bits / 2; p++) pacc[p][r] = i16_zero();
        lacc[r] = i16_zero();
    }
    plane_sums(*blk, *T, kpg, bits, pacc, lacc);
    *blk += kpg * pylut_b_kgroup_bytes(bits);
    *T += 16 * kpg;
}

/* One group's int16 lookup sums A_g = sum_i 2^i T[idx_i] when (2^b-1) * group <= 1032 keeps
 * every partial sum in int16 (kernels.h): the planes are weighted before any widening. */
static ALWAYS_INLINE void group_sums16(const uint8_t **blk, const int8_t **T, int kpg, const int bits,
                                       vi16 a[LUT_NH]) {
    const int npair = bits / 2, lone = bits & 1;
    vi16 pacc[4][LUT_NH], lacc[LUT_NH];
    group_planes(blk, T, kpg, bits, pacc, lacc);
    for (int h = 0; h < LUT_NH; h++) {
        a[h] = lone ? i16_shl(lacc[h], bits - 1) : i16_zero();
        for (int p = 0; p < npair; p++) a[h] = i16_add(a[h], i16_shl(pacc[p][h], 2 * p));
    }
}

/* One group's float epilogue: acc += s * (f*A + (h - zero) * sx) without a bias array (its
 * implied bias is -scale*zero), else acc += (s*f)*A, then acc += (b + s*h) * sx. plain (a
 * constant): one fp16 scale a group and no bias array (Q4_0, Q8_0...), the common case,
 * without group_param's run-time tests: GCC 12 kept them, and the lookups' sums A went
 * through the stack, in the loop every token of a decode or batched step runs. */
static ALWAYS_INLINE void group_apply(const pylut_qmatrix *qm, int64_t t, int64_t g, float f, float h,
                                      float sx, const vi32 A[LUT_NF], vf32 acc[LUT_NF], const int plain) {
    const vf32 vf = f_set1(f);
    const vf32 zc = f_set1(qm->has_bias ? 0.0f : (h - qm->zero) * sx);
    if (plain) { /* group_param's !super load, the !has_bias arithmetic below */
        const uint16_t *sc = qm->scale + (t * (qm->k_pad / qm->group) + g) * PYLUT_TILE_M;
        for (int q = 0; q < LUT_NF; q++) acc[q] = f_fma(f_load_h(sc + LUT_RF * q), f_fma(vf, f_from_i32(A[q]), zc), acc[q]);
        return;
    }
    for (int q = 0; q < LUT_NF; q++) {
        const vf32 s = group_param(qm, 0, t, g, q);
        if (!qm->has_bias) {
            acc[q] = f_fma(s, f_fma(vf, f_from_i32(A[q]), zc), acc[q]);
            continue;
        }
        const vf32 b = group_param(qm, 1, t, g, q);
        acc[q] = f_fma(f_mul(s, vf), f_from_i32(A[q]), acc[q]);
        acc[q] = f_fma(f_fma(s, f_set1(h), b), f_set1(sx), acc[q]);
    }
}

/* ------------------------------------------------------------------ B-type, per-group scales */

/* One row tile (64 rows), one token. bits and plain (group_apply) are compile-time constants. */
static ALWAYS_INLINE void b_tile(const pylut_qmatrix *qm, const pylut_lut *L, float *y, int64_t t,
                                 const int bits, const int plain) {
    const int npair = bits / 2, lone = bits & 1, kgb = pylut_b_kgroup_bytes(bits);
    const int64_t groups = qm->k_pad / qm->group;
    const int kpg = qm->group / PYLUT_KGROUP;
    const float h = (float)((1 << bits) - 1) * 0.5f;
    const int small = ((1 << bits) - 1) * qm->group <= 1032; /* the weighted sum fits int16 */
    vf32 acc[LUT_NF];
    for (int q = 0; q < LUT_NF; q++) acc[q] = f_zero();
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t g = 0; g < groups; g++) {
        vi32 A[LUT_NF];
        for (int q = 0; q < LUT_NF; q++) A[q] = i32_zero();
        if (small) { /* weight the planes in int16, widen once */
            vi16 a16[LUT_NH];
            group_sums16(&blk, &T, kpg, bits, a16);
            for (int r = 0; r < LUT_NH; r++) widen_add(a16[r], 0, &A[2 * r], &A[2 * r + 1]);
        } else {
            vi16 pacc[4][LUT_NH], lacc[LUT_NH];
            group_planes(&blk, &T, kpg, bits, pacc, lacc);
            for (int r = 0; r < LUT_NH; r++) {
                for (int p = 0; p < npair; p++) widen_add(pacc[p][r], 2 * p, &A[2 * r], &A[2 * r + 1]);
                if (lone) widen_add(lacc[r], bits - 1, &A[2 * r], &A[2 * r + 1]);
            }
        }
        group_apply(qm, t, g, 0.5f * L->tscale[g], h, L->sumx[g], A, acc, plain);
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

/* ------------------------------------------------------------------ B-type, int-super */

/* Sub-values of groups g, g+1 (sub, sub + 64; g+1 absent: zeros) of one int16 vector's rows,
 * in pair_lo / pair_hi order: int8 sub-scales or sub-biases ... */
static ALWAYS_INLINE void sub_pairs(const int8_t *sub, int has1, vi16 *lo, vi16 *hi) {
    const vi16 s0 = i16_load_s8(sub), s1 = has1 ? i16_load_s8(sub + PYLUT_TILE_M) : i16_zero();
    *lo = pair_lo(s0, s1);
    *hi = pair_hi(s0, s1);
}

/* ... or nibble bytes: one load per group gives the sub-scales (low nibbles: sl, sh) and the
 * sub-biases' magnitudes (high nibbles: bl, bh) */
static ALWAYS_INLINE void sub_pairs_nib(const uint8_t *sub, int has1, vi16 *sl, vi16 *sh, vi16 *bl, vi16 *bh) {
    const vi16 m = i16_set1(15);
    const vi16 s0 = i16_load_u8(sub), s1 = has1 ? i16_load_u8(sub + PYLUT_TILE_M) : i16_zero();
    const vi16 lo = pair_lo(s0, s1), hi = pair_hi(s0, s1);
    *sl = i16_and(lo, m);
    *sh = i16_and(hi, m);
    *bl = i16_shr(lo, 4);
    *bh = i16_shr(hi, 4);
}

/* The parameter streams of super-block sb + PF_PARAM_SUPERS of tile t (running on into the
 * next tiles, which are laid out after it): the sub-scales, sub-biases and fp16 d/dmin, into
 * L1. The codes have their own prefetch; the hardware prefetchers alone fed these four
 * streams late: cold Q4_K gate/up matrices (2048 wide) took 0.239 ms each at 1 thread against
 * 0.215 with this, Q4_0 ones 0.195 (Zen 5; L2 instead of L1 or 2 super-blocks ahead gained
 * less). */
#ifndef PF_PARAM_SUPERS
#define PF_PARAM_SUPERS 1
#endif
#ifndef PF_PARAM_HINT
#define PF_PARAM_HINT 3
#endif
static ALWAYS_INLINE void isup_prefetch(const pylut_qmatrix *qm, int64_t t, int64_t sb, int64_t supers, int gps) {
    const int64_t s = t * supers + sb + PF_PARAM_SUPERS, subs = s * gps * PYLUT_TILE_M;
    if (!PF_PARAM_SUPERS || s >= qm->m_pad / PYLUT_TILE_M * supers) return; /* (the last tile's end) */
    for (int o = 0; o < gps * PYLUT_TILE_M; o += 64) {
        __builtin_prefetch((const char *)qm->sub_scale + subs + o, 0, PF_PARAM_HINT);
        if (qm->sub_bias) __builtin_prefetch((const char *)qm->sub_bias + subs + o, 0, PF_PARAM_HINT);
    }
    for (int o = 0; o < PYLUT_TILE_M * 2; o += 64) {
        __builtin_prefetch((const char *)(qm->scale + s * PYLUT_TILE_M) + o, 0, PF_PARAM_HINT);
        if (qm->bias) __builtin_prefetch((const char *)(qm->bias + s * PYLUT_TILE_M) + o, 0, PF_PARAM_HINT);
    }
}

/* int-super tile (kernels.h): per super-block, S and B in int32 by madd_acc over pairs of
 * groups, one float conversion per super-block; the epilogue's order (acc += (d*f)*S, then
 * acc += (dmin*ts)*B) is the scalar twin's. nib is a constant: the int8 loop stays lean. */
static ALWAYS_INLINE void b_tile_isup(const pylut_qmatrix *qm, const pylut_lut *L, float *y, int64_t t,
                                      const int bits, const int nib) {
    const int kgb = pylut_b_kgroup_bytes(bits), top = (1 << bits) - 1;
    const int64_t groups = qm->k_pad / qm->group, supers = qm->k_pad / qm->super;
    const int kpg = qm->group / PYLUT_KGROUP, gps = qm->super / qm->group;
    const int coef = pylut_b_sumq_coef(qm);
    const int fold = top * qm->group <= 516; /* A_g + coef * sumq_g still fits int16 */
    const int16_t *sumq = pylut_lut_sumq(L);
    vf32 acc[LUT_NF];
    for (int q = 0; q < LUT_NF; q++) acc[q] = f_zero();
    const uint8_t *blk = qm->codes + t * (qm->k_pad / PYLUT_KGROUP) * kgb;
    const int8_t *T = L->tbl;
    for (int64_t sb = 0; sb < supers; sb++) {
        isup_prefetch(qm, t, sb, supers, gps);
        vi32 S[LUT_NF], B[LUT_NF]; /* [2 * int16 vector + lo/hi] */
        for (int q = 0; q < LUT_NF; q++) S[q] = B[q] = i32_zero();
        for (int gg = 0; gg < gps; gg += 2) {
            const int64_t g = sb * gps + gg;
            const int has1 = gg + 1 < gps;
            vi16 a0[LUT_NH], a1[LUT_NH];
            group_sums16(&blk, &T, kpg, bits, a0);
            if (has1) group_sums16(&blk, &T, kpg, bits, a1);
            else for (int r = 0; r < LUT_NH; r++) a1[r] = i16_zero();
            const int q0 = sumq[g], q1 = has1 ? sumq[g + 1] : 0;
            const vi16 cpair = i16_pairs(coef * q0, coef * q1), qpair = i16_pairs(q0, q1);
            const int64_t at = (t * groups + g) * PYLUT_TILE_M;
            for (int r = 0; r < LUT_NH; r++) {
                if (fold) {
                    a0[r] = i16_add(a0[r], i16_set1(coef * q0));
                    a1[r] = i16_add(a1[r], i16_set1(coef * q1));
                }
                vi16 sl, sh, bl, bh;
                if (nib) sub_pairs_nib((const uint8_t *)qm->sub_scale + at + LUT_RH * r, has1, &sl, &sh, &bl, &bh);
                else sub_pairs(qm->sub_scale + at + LUT_RH * r, has1, &sl, &sh);
                S[2 * r] = madd_acc(S[2 * r], pair_lo(a0[r], a1[r]), sl);
                S[2 * r + 1] = madd_acc(S[2 * r + 1], pair_hi(a0[r], a1[r]), sh);
                if (!fold) {
                    S[2 * r] = madd_acc(S[2 * r], cpair, sl);
                    S[2 * r + 1] = madd_acc(S[2 * r + 1], cpair, sh);
                }
                if (qm->has_bias) {
                    if (!nib) sub_pairs(qm->sub_bias + at + LUT_RH * r, has1, &bl, &bh);
                    B[2 * r] = madd_acc(B[2 * r], qpair, bl);
                    B[2 * r + 1] = madd_acc(B[2 * r + 1], qpair, bh);
                }
            }
        }
        const float ts = L->tscale[sb * gps];
        const vf32 vf = f_set1(0.5f * ts), vts = f_set1(ts);
        const int64_t at = (t * supers + sb) * PYLUT_TILE_M;
        for (int q = 0; q < LUT_NF; q++) {
            const int r = q / 2; /* rows_lo / rows_hi, never a lane index computed from q */
            const vi32 s = q & 1 ? rows_hi(S[2 * r], S[2 * r + 1]) : rows_lo(S[2 * r], S[2 * r + 1]);
            acc[q] = f_fma(f_mul(f_load_h(qm->scale + at + LUT_RF * q), vf), f_from_i32(s), acc[q]);
            if (qm->has_bias) {
                const vi32 b = q & 1 ? rows_hi(B[2 * r], B[2 * r + 1]) : rows_lo(B[2 * r], B[2 * r + 1]);
                acc[q] = f_fma(f_mul(f_load_h(qm->bias + at + LUT_RF * q), vts), f_from_i32(b), acc[q]);
            }
        }
    }
    store_tile(y, t * PYLUT_TILE_M, qm->m, acc);
}

/* y[tok][m] for row tiles [tile0, tile1), tokens [0, n).
 * Where the width switch sits changes only GCC 12's register allocation, and the ISAs want
 * opposite places. AVX2 (16 ymm): with the switch and the int-super test inside the tile
 * loops, the 3- and 4-bit lookup loops reload spilled accumulators right behind the
 * vpmaddubsw that feeds them; with one walk per width (LUT_WALK_PER_WIDTH) every width gets
 * the pre-body kernel's loops, reloads after the lookups. AVX-512 (32 zmm) is the other way
 * round: one walk per width spills in more of its loops, 2-bit ones among them. */
#if LUT_WALK_PER_WIDTH
static ALWAYS_INLINE void b_walk(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                                 int64_t tile0, int64_t tile1, const int bits) {
    if (pylut_b_int_super(qm)) {
        for (int64_t t = tile0; t < tile1; t++)
            for (int tok = 0; tok < n; tok++)
                if (qm->sub_nibbles) b_tile_isup(qm, lut + tok, y + tok * ldy, t, bits, 1);
                else b_tile_isup(qm, lut + tok, y + tok * ldy, t, bits, 0);
        return;
    }
    const int plain = !qm->super && !qm->has_bias;
    for (int64_t t = tile0; t < tile1; t++)
        for (int tok = 0; tok < n; tok++)
            if (plain) b_tile(qm, lut + tok, y + tok * ldy, t, bits, 1);
            else b_tile(qm, lut + tok, y + tok * ldy, t, bits, 0);
}

static void lut_gemm_b(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                       int64_t tile0, int64_t tile1) {
    PYLUT_FOR_BITS(qm->bits, BITS, b_walk(qm, lut, n, y, ldy, tile0, tile1, BITS))
}
#else
static void lut_gemm_b(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                       int64_t tile0, int64_t tile1) {
    const int isup = pylut_b_int_super(qm), plain = !qm->super && !qm->has_bias;
    for (int64_t t = tile0; t < tile1; t++)
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            float *yt = y + tok * ldy;
            if (isup && qm->sub_nibbles) PYLUT_FOR_BITS(qm->bits, BITS, b_tile_isup(qm, L, yt, t, BITS, 1))
            else if (isup) PYLUT_FOR_BITS(qm->bits, BITS, b_tile_isup(qm, L, yt, t, BITS, 0))
            else if (plain) PYLUT_FOR_BITS(qm->bits, BITS, b_tile(qm, L, yt, t, BITS, 1))
            else PYLUT_FOR_BITS(qm->bits, BITS, b_tile(qm, L, yt, t, BITS, 0))
        }
}
#endif

/* ------------------------------------------------------------------ T3 */

/* The walk and the epilogue are shared; how a pair block's signs are applied is not (x86
 * ymm: a shuffle and a compare per 32 lookups; AVX-512: a mask register; NEON: vtst), so
 * that sits in each ISA's t3_pair_sums. */
static void lut_gemm_t3(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                        int64_t tile0, int64_t tile1) {
    const int64_t ppg = pylut_t3_triples(qm->group) / 2, groups = qm->k_pad / qm->group, pairs = groups * ppg;
    for (int64_t t = tile0; t < tile1; t++)
        for (int tok = 0; tok < n; tok++) {
            const pylut_lut *L = lut + tok;
            const uint8_t *blk = qm->codes + t * pairs * PYLUT_T3_PAIR_BYTES;
            vf32 acc[LUT_NF];
            for (int q = 0; q < LUT_NF; q++) acc[q] = f_zero();
            for (int64_t p0 = 0, g = 0; p0 < pairs; p0 += ppg, g++) {
                /* The bound named (p1), not spelt p0 + ppg in the test: for AVX2's 16 ymm
                 * registers GCC 12 then spills an accumulator (off the critical path) rather
                 * than a lookup temporary, and the loop runs as fast as the pre-body kernel. */
                const int64_t p1 = p0 + ppg;
                vi16 a[LUT_NH];
                for (int r = 0; r < LUT_NH; r++) a[r] = i16_zero();
                for (int64_t p = p0; p < p1; p++, blk += PYLUT_T3_PAIR_BYTES) t3_pair_sums(blk, L->tbl + 32 * p, a);
                vi32 A[LUT_NF];
                for (int q = 0; q < LUT_NF; q++) A[q] = i32_zero();
                for (int r = 0; r < LUT_NH; r++) widen_add(a[r], 0, &A[2 * r], &A[2 * r + 1]);
                const vf32 ts = f_set1(L->tscale[g]); /* acc += (s * tscale) * A, as the scalar twin */
                const uint16_t *sc = qm->scale + (t * groups + g) * PYLUT_TILE_M;
                for (int q = 0; q < LUT_NF; q++) acc[q] = f_fma(f_mul(f_load_h(sc + LUT_RF * q), ts), f_from_i32(A[q]), acc[q]);
            }
            store_tile(y + tok * ldy, t * PYLUT_TILE_M, qm->m, acc);
        }
}
