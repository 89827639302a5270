/* attn_body.h - the online-softmax attention kernel, written once against a tiny per-ISA
 * vocabulary and instantiated by attn_scalar.c, attn_avx2.c, attn_avx512.c and attn_neon.c
 * (llamafile tinyBLAS's pattern). The including unit defines, before including this file:
 *
 *   ATTN_FN                 the kernel's name (pylut_attn_rows_<isa>)
 *   VL, vf                  lanes and the float vector type (VL divides 16)
 *   NACC                    accumulators the value pass keeps in registers (NACC*VL floats)
 *   FUSED_ACC               the same per row when 4 rows share the registers (fp16 path)
 *   vf_zero() vf_load(p) vf_store(p, a) vf_set1(x) vf_fma(a, b, c) = a*b + c
 *   vf_add(a, b) vf_sub(a, b) vf_mul(a, b)
 *   vf_max(a, b) vf_hmax(a) vf_hsum(a) vf_exp2(a) (exactly 0 below -126)
 *   sum8(const vf a[8], float out[8])   the horizontal sums of 8 vectors
 *   h2f(uint16_t h)                                         one fp16 -> fp32
 *   vf_load_h(const uint16_t *h)                            VL fp16 -> a vector
 *   vf_load_i8(const int8_t *c)                             VL int8 codes -> a vector
 *   vf_load_q4(const uint8_t *c, int hi)                    VL nibbles (hi: the high ones) - 8
 *   dec_f16(const uint16_t *h, int n, float *out)           n fp16 -> fp32
 *   dec_i8(const int8_t *c, float scale, int n, float *out)  n codes * scale
 *   unpack_q4(const uint8_t *c, int n, int8_t *out)          n 4-bit codes (byte i: element
 *                                                            i low nibble, i+n/2 high) - 8
 *
 * Work per block of PYLUT_ATTN_BLOCK cache positions: decode the keys into kbuf once, score
 * every query row against them (8 keys per reduction tree), update each row's running max,
 * sum and accumulator, then decode the values into the same buffer and accumulate. A row
 * never sees past its causal limit, nor (sliding-window layers) before its lower limit; rows
 * that see nothing of a block skip it. */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "pylut/attention.h"

/* A quantized row's fp16 block scales, after its codes (hd bytes for q8, hd/2 for q4). */
static inline const uint8_t *row_scale_bytes(int type, int hd, const uint8_t *row) {
    return row + (type == PYLUT_KV_Q8 ? hd : hd / 2);
}

/* One cache row (hd elements, type's encoding) -> dst[hd]. */
static inline void decode_row(int type, int hd, const uint8_t *row, float *dst) {
    if (type == PYLUT_KV_F16) {
        dec_f16((const uint16_t *)row, hd, dst);
        return;
    }
    const uint8_t *scales = row_scale_bytes(type, hd, row);
    for (int b = 0; b * PYLUT_KV_BLOCK < hd; b++) {
        const int e0 = b * PYLUT_KV_BLOCK, n = hd - e0 < PYLUT_KV_BLOCK ? hd - e0 : PYLUT_KV_BLOCK;
        uint16_t h;
        memcpy(&h, scales + 2 * b, 2); /* scales follow odd-length code runs: unaligned */
        const float scale = h2f(h);
        if (type == PYLUT_KV_Q8) {
            dec_i8((const int8_t *)row + e0, scale, n, dst + e0);
        } else {
            int8_t codes[PYLUT_KV_BLOCK];
            unpack_q4(row + e0 / 2, n, codes);
            dec_i8(codes, scale, n, dst + e0);
        }
    }
}

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* ------------------------------------------------------------------ scores */

/* Scratch path: rows against keys already decoded into kbuf, 8 keys per reduction tree.
 * Rows of kbuf past the block hold finite stale data; the caller masks what they give. */
static ALWAYS_INLINE void scores_decoded(const float *qr, const float *kbuf, int hd_pad, int see, float *s) {
    for (int j = 0; j < see; j += 8) {
        vf a[8];
        for (int u = 0; u < 8; u++) a[u] = vf_zero();
        for (int i = 0; i < hd_pad; i += VL) {
            const vf qv = vf_load(qr + i);
            for (int u = 0; u < 8; u++) a[u] = vf_fma(qv, vf_load(kbuf + (int64_t)(j + u) * hd_pad + i), a[u]);
        }
        sum8(a, s + j);
    }
}

/* A quantized row's block scales as floats: sc[b] for elements [32b, 32b+32) of the row. */
static ALWAYS_INLINE void row_scales(int type, const uint8_t *row, int hd, float *sc) {
    const uint8_t *scales = row_scale_bytes(type, hd, row);
    for (int b = 0; b * PYLUT_KV_BLOCK < hd; b++) {
        uint16_t h;
        memcpy(&h, scales + 2 * b, 2); /* scales follow the codes: unaligned */
        sc[b] = h2f(h);
    }
}

/* VL elements from i of a cache row in registers: fp16, or codes times the scale of their
 * block (VL divides 16, so one scale and one nibble half per vector), the decoded path's
 * values. A whole 4-bit block's byte o holds elements o (low nibble) and o + 16 (high). */
static ALWAYS_INLINE vf row_vec(const int type, const uint8_t *row, int i, const float *sc) {
    const float s = type == PYLUT_KV_F16 ? 0.0f : sc[i / PYLUT_KV_BLOCK];
    if (type == PYLUT_KV_Q8) return vf_mul(vf_load_i8((const int8_t *)row + i), vf_set1(s));
    if (type == PYLUT_KV_Q4) {
        const int o = i % PYLUT_KV_BLOCK;
        return vf_mul(vf_load_q4(row + (i - o) / 2 + o % 16, o >= 16), vf_set1(s));
    }
    return vf_load_h((const uint16_t *)row + i);
}

/* Fused path (every cache type): RC rows x KG keys (RC*KG = 8 accumulators, one reduction tree), each
 * key converted once in registers and used by every row - no store and reload through
 * kbuf. Keys past nk repeat the last one (never read past the block). */
static ALWAYS_INLINE void scores_fused(const int type, const int RC, const int KG, const float *qs, int hd_pad, int hd,
                                       const uint8_t *k0, int64_t ld, int see, int nk, float *sbuf) {
    float sc[8][PYLUT_ATTN_MAX_HD / PYLUT_KV_BLOCK]; /* quantized: [key][block] scales */
    for (int j = 0; j < see; j += KG) {
        vf a[8];
        const uint8_t *kr[8];
        for (int u = 0; u < KG; u++) kr[u] = k0 + (int64_t)(j + u < nk ? j + u : nk - 1) * ld;
        if (type != PYLUT_KV_F16)
            for (int u = 0; u < KG; u++) row_scales(type, kr[u], hd, sc[u]);
        for (int u = 0; u < 8; u++) a[u] = vf_zero();
        for (int i = 0; i < hd; i += VL) {
            vf kv[8];
            for (int u = 0; u < KG; u++) kv[u] = row_vec(type, kr[u], i, sc[u]);
            for (int r = 0; r < RC; r++) {
                const vf qv = vf_load(qs + (int64_t)r * hd_pad + i);
                for (int u = 0; u < KG; u++) a[r * KG + u] = vf_fma(qv, kv[u], a[r * KG + u]);
            }
        }
        float t[8];
        sum8(a, t);
        for (int r = 0; r < RC; r++)
            for (int u = 0; u < KG && j + u < PYLUT_ATTN_BLOCK; u++) sbuf[r * PYLUT_ATTN_BLOCK + j + u] = t[r * KG + u];
    }
}

/* ------------------------------------------------------------------ values */

/* Fused path: RC (<= 4) rows, FUSED_ACC vectors of each accumulator row in registers.
 * vsc: quantized types, the block's value rows' scales [nv][blocks]. */
static ALWAYS_INLINE void values_fused(const int type, int rc, const float *p, float *acc, int hd_pad, int hd,
                                       const uint8_t *v0, int64_t ld, int nv, const float (*vsc)[PYLUT_ATTN_MAX_HD / PYLUT_KV_BLOCK]) {
    int i0 = 0;
    for (; i0 + FUSED_ACC * VL <= hd; i0 += FUSED_ACC * VL) {
        vf a[4][FUSED_ACC];
        for (int r = 0; r < rc; r++)
            for (int u = 0; u < FUSED_ACC; u++) a[r][u] = vf_load(acc + (int64_t)r * hd_pad + i0 + u * VL);
        for (int j = 0; j < nv; j++) {
            vf vv[FUSED_ACC];
            for (int u = 0; u < FUSED_ACC; u++) vv[u] = row_vec(type, v0 + (int64_t)j * ld, i0 + u * VL, vsc[j]);
            for (int r = 0; r < rc; r++) {
                const vf pj = vf_set1(p[r * PYLUT_ATTN_BLOCK + j]);
                for (int u = 0; u < FUSED_ACC; u++) a[r][u] = vf_fma(pj, vv[u], a[r][u]);
            }
        }
        for (int r = 0; r < rc; r++)
            for (int u = 0; u < FUSED_ACC; u++) vf_store(acc + (int64_t)r * hd_pad + i0 + u * VL, a[r][u]);
    }
    for (; i0 < hd; i0 += VL)
        for (int r = 0; r < rc; r++) {
            vf a = vf_load(acc + (int64_t)r * hd_pad + i0);
            for (int j = 0; j < nv; j++)
                a = vf_fma(vf_set1(p[r * PYLUT_ATTN_BLOCK + j]), row_vec(type, v0 + (int64_t)j * ld, i0, vsc[j]), a);
            vf_store(acc + (int64_t)r * hd_pad + i0, a);
        }
}

/* Scratch path: one row against values decoded into vbuf. */
static ALWAYS_INLINE void values_decoded(const float *p, float *ar, const float *vbuf, int hd_pad, int nv) {
    int i0 = 0;
    for (; i0 + NACC * VL <= hd_pad; i0 += NACC * VL) {
        vf a[NACC];
        for (int u = 0; u < NACC; u++) a[u] = vf_load(ar + i0 + u * VL);
        for (int j = 0; j < nv; j++) {
            const vf pj = vf_set1(p[j]);
            const float *vj = vbuf + (int64_t)j * hd_pad + i0;
            for (int u = 0; u < NACC; u++) a[u] = vf_fma(pj, vf_load(vj + u * VL), a[u]);
        }
        for (int u = 0; u < NACC; u++) vf_store(ar + i0 + u * VL, a[u]);
    }
    for (; i0 < hd_pad; i0 += VL) {
        vf a = vf_load(ar + i0);
        for (int j = 0; j < nv; j++) a = vf_fma(vf_set1(p[j]), vf_load(vbuf + (int64_t)j * hd_pad + i0), a);
        vf_store(ar + i0, a);
    }
}

/* ------------------------------------------------------------------ the kernel */

/* The body, compiled twice: attn_rows_plain with no window and no cap (both constants, so it
 * is exactly the kernel without them: a Llama layer pays nothing for Gemma's) and
 * attn_rows_limited with them. Each is its own function, so neither copy's inlining or
 * unswitching budget is spent on the other. */
static ALWAYS_INLINE void attn_rows(int type, int hd, int hd_pad, const uint8_t *k, const uint8_t *v,
                                    const uint8_t *const *kp, const uint8_t *const *vp, int64_t ld, int rows, const float *qs, const int32_t *lim, const int32_t *lo, float softcap,
                                    int j0, int j1, float *mx, float *sum, float *acc, float *kbuf, float *sbuf) {
    enum { B = PYLUT_ATTN_BLOCK };
    int vis[PYLUT_ATTN_ROWS];
    int skip[PYLUT_ATTN_ROWS]; /* sliding window: the block's first positions a row must not see */
    int last = 0; /* no row sees position >= last */
    for (int r = 0; r < rows; r++) last = lim[r] > last ? lim[r] : last;
    if (j1 > last) j1 = last;
    if (lo) { /* no row sees position < first: the blocks before it are never read */
        int first = lo[0];
        for (int r = 1; r < rows; r++) first = lo[r] < first ? lo[r] : first;
        if (j0 < first) j0 = first;
        if (kp) j0 -= j0 % B; /* paged: steps start on a page (the rows before lo[r] are masked) */
    }
    /* Decode (1-8 rows: MHA, GQA; whole vectors per head; fp16 rows 2-byte aligned, 4-bit
     * heads whole blocks): convert in registers, once for all rows. Otherwise (prefill tiles)
     * decode each block once into kbuf, which many rows share. Measured: docs/benchmarks.md. */
    /* per row, the blocks' sums kept lane-wise and reduced once at the end (a horizontal sum
     * per row and block is a visible share of a GQA decode); carry holds the incoming sum */
    vf vsum[PYLUT_ATTN_ROWS];
    float carry[PYLUT_ATTN_ROWS];
    for (int r = 0; r < rows; r++) vsum[r] = vf_zero(), carry[r] = sum[r];
    const int fused = rows <= 8 && hd % VL == 0 && (type != PYLUT_KV_F16 || ld % 2 == 0) &&
                      (type != PYLUT_KV_Q4 || hd % PYLUT_KV_BLOCK == 0);
    float vsc[PYLUT_ATTN_BLOCK][PYLUT_ATTN_MAX_HD / PYLUT_KV_BLOCK]; /* quantized: the block's value scales */
    for (int jb = j0; jb < j1; jb += B) {
        const int nk = j1 - jb < B ? j1 - jb : B;
        /* this step's key and value rows: one run of nk rows ld apart */
        const uint8_t *kb = kp ? kp[jb / B] : k + (int64_t)jb * ld, *vb = vp ? vp[jb / B] : v + (int64_t)jb * ld;
        /* paged: where the run after next does not follow the next one in memory (another
         * chunk of the pool, another session's block), touch its first lines so the hardware
         * prefetcher has found it in time; a run that follows on is already being streamed,
         * and prefetching it anyway measured ~4 % slower decode at 3,500 positions */
        if (kp && jb + 2 * B < j1 && (kp[jb / B + 2] != kp[jb / B + 1] + B * ld || vp[jb / B + 2] != vp[jb / B + 1] + B * ld)) {
            const uint8_t *kn = kp[jb / B + 2], *vn = vp[jb / B + 2];
            for (int o = 0; o < 4 * 64; o += 64) {
                __builtin_prefetch(kn + o);
                __builtin_prefetch(vn + o);
            }
        }
        int most = 0; /* the longest row's view of this block */
        for (int r = 0; r < rows; r++) {
            vis[r] = lim[r] - jb < nk ? lim[r] - jb : nk;
            if (lo) { /* a sliding window: the row's first positions in this block may be too old */
                skip[r] = lo[r] > jb ? lo[r] - jb : 0;
                if (skip[r] >= vis[r]) vis[r] = 0; /* the window starts past this row's view */
            }
            most = vis[r] > most ? vis[r] : most;
        }

        /* ---- scores (log2 domain: qs carries scale * log2(e)) */
        /* (no software prefetch: the hardware prefetchers follow a head's contiguous rows on
         * their own, and prefetching ahead was slower) */
        if (fused) {
            const uint8_t *k0 = kb;
            for (int r0 = 0; r0 < rows; r0 += 4) {
                const int rc = rows - r0 < 4 ? rows - r0 : 4;
                const float *q0 = qs + (int64_t)r0 * hd_pad;
                float *s0 = sbuf + (int64_t)r0 * B;
                /* a constant type and shape per call: each inlines to its own loop */
#define SCORES(T) \
    (rc == 1   ? scores_fused(T, 1, 8, q0, hd_pad, hd, k0, ld, most, nk, s0) \
     : rc == 2 ? scores_fused(T, 2, 4, q0, hd_pad, hd, k0, ld, most, nk, s0) \
               : scores_fused(T, 4, 2, q0, hd_pad, hd, k0, ld, most, nk, s0)) /* rc 3: a spare row of qs */
                if (type == PYLUT_KV_Q8) SCORES(PYLUT_KV_Q8);
                else if (type == PYLUT_KV_Q4) SCORES(PYLUT_KV_Q4);
                else SCORES(PYLUT_KV_F16);
#undef SCORES
            }
        } else {
            for (int j = 0; j < nk; j++) decode_row(type, hd, kb + (int64_t)j * ld, kbuf + (int64_t)j * hd_pad);
            for (int r = 0; r < rows; r++)
                if (vis[r] > 0) scores_decoded(qs + (int64_t)r * hd_pad, kbuf, hd_pad, vis[r], sbuf + (int64_t)r * B);
        }

        /* ---- running max and sum; p = 2^(s - max) replaces the scores */
        for (int r = 0; r < rows; r++) {
            float *s = sbuf + (int64_t)r * B;
            const int see = vis[r] > 0 ? vis[r] : 0;
            for (int j = see; j < B; j++) s[j] = see ? -INFINITY : 0.0f;
            if (!see) continue; /* p stays 0: the fused value pass may still read this row */
            if (softcap > 0.0f) /* Gemma 2: c * tanh(s / c), before any mask */
                for (int j = 0; j < see; j++) s[j] = softcap * tanhf(s[j] / softcap);
            if (lo)
                for (int j = 0; j < skip[r]; j++) s[j] = -INFINITY; /* before the window */
            vf m = vf_set1(mx[r]);
            for (int j = 0; j < B; j += VL) m = vf_max(m, vf_load(s + j));
            const float mnew = vf_hmax(m), corr = mnew > mx[r] ? exp2f(mx[r] - mnew) : 1.0f; /* the max rarely moves */
            const vf mv = vf_set1(mnew);
            vf add = vf_zero();
            for (int j = 0; j < B; j += VL) {
                const vf p = vf_exp2(vf_sub(vf_load(s + j), mv));
                vf_store(s + j, p);
                add = vf_add(add, p);
            }
            if (corr != 1.0f) vsum[r] = vf_mul(vsum[r], vf_set1(corr)), carry[r] *= corr;
            vsum[r] = vf_add(vsum[r], add);
            mx[r] = mnew;
            if (corr != 1.0f) {
                const vf cv = vf_set1(corr);
                float *ar = acc + (int64_t)r * hd_pad;
                for (int i = 0; i < hd_pad; i += VL) vf_store(ar + i, vf_mul(vf_load(ar + i), cv));
            }
        }

        /* ---- values: acc[r] += sum_j p[r][j] * v[j] */
        if (fused) {
            const uint8_t *v0 = vb;
            if (type != PYLUT_KV_F16)
                for (int j = 0; j < most; j++) row_scales(type, v0 + (int64_t)j * ld, hd, vsc[j]);
            for (int r0 = 0; r0 < rows; r0 += 4) { /* a constant row count keeps acc in registers */
                const int rc = rows - r0 < 4 ? rows - r0 : 4;
                const float *p0 = sbuf + (int64_t)r0 * B;
                float *a0 = acc + (int64_t)r0 * hd_pad;
#define VALUES(T) \
    (rc == 4   ? values_fused(T, 4, p0, a0, hd_pad, hd, v0, ld, most, vsc) \
     : rc == 3 ? values_fused(T, 3, p0, a0, hd_pad, hd, v0, ld, most, vsc) \
     : rc == 2 ? values_fused(T, 2, p0, a0, hd_pad, hd, v0, ld, most, vsc) \
               : values_fused(T, 1, p0, a0, hd_pad, hd, v0, ld, most, vsc))
                if (type == PYLUT_KV_Q8) VALUES(PYLUT_KV_Q8);
                else if (type == PYLUT_KV_Q4) VALUES(PYLUT_KV_Q4);
                else VALUES(PYLUT_KV_F16);
#undef VALUES
            }
        } else {
            float *vbuf = kbuf; /* values reuse the keys' buffer: the smaller L1 footprint is faster */
            for (int j = 0; j < nk; j++) decode_row(type, hd, vb + (int64_t)j * ld, vbuf + (int64_t)j * hd_pad);
            for (int r = 0; r < rows; r++)
                if (vis[r] > 0)
                    values_decoded(sbuf + (int64_t)r * B, acc + (int64_t)r * hd_pad, vbuf, hd_pad, vis[r]);
        }
    }
    for (int r = 0; r < rows; r++) sum[r] = carry[r] + vf_hsum(vsum[r]);
}

static __attribute__((noinline)) void attn_rows_plain(int type, int hd, int hd_pad, const uint8_t *k, const uint8_t *v,
                                                      const uint8_t *const *kp, const uint8_t *const *vp,
                                                      int64_t ld, int rows, const float *qs, const int32_t *lim, int j0,
                                                      int j1, float *mx, float *sum, float *acc, float *kbuf,
                                                      float *sbuf) {
    attn_rows(type, hd, hd_pad, k, v, kp, vp, ld, rows, qs, lim, NULL, 0.0f, j0, j1, mx, sum, acc, kbuf, sbuf);
}

static __attribute__((noinline)) PYLUT_ATTN_ROWS_DECL(attn_rows_limited) {
    attn_rows(type, hd, hd_pad, k, v, kp, vp, ld, rows, qs, lim, lo, softcap, j0, j1, mx, sum, acc, kbuf, sbuf);
}

PYLUT_ATTN_ROWS_DECL(ATTN_FN) {
    if (lo || softcap > 0.0f)
        attn_rows_limited(type, hd, hd_pad, k, v, kp, vp, ld, rows, qs, lim, lo, softcap, j0, j1, mx, sum, acc, kbuf,
                          sbuf);
    else
        attn_rows_plain(type, hd, hd_pad, k, v, kp, vp, ld, rows, qs, lim, j0, j1, mx, sum, acc, kbuf, sbuf);
}
