/* attn_body.h - the online-softmax attention kernel, written once against a tiny per-ISA
 * vocabulary and instantiated by attn_scalar.c, attn_avx2.c, attn_avx512.c and attn_neon.c
 * (llamafile tinyBLAS's pattern). The including unit defines, before including this file:
 *
 *   ATTN_FN                 the kernel's name (pylut_attn_rows_<isa>)
 *   VL, vf                  lanes and the float vector type (VL divides 16)
 *   NACC                    accumulators the value pass keeps in registers (NACC*VL floats)
 *   vf_zero() vf_load(p) vf_store(p, a) vf_set1(x) vf_fma(a, b, c) = a*b + c
 *   vf_add(a, b) vf_sub(a, b) vf_mul(a, b)
 *   vf_max(a, b) vf_hmax(a) vf_hsum(a) vf_exp2(a) (exactly 0 below -126)
 *   sum8(const vf a[8], float out[8])   the horizontal sums of 8 vectors
 *   h2f(uint16_t h)                                         one fp16 -> fp32
 *   dec_f16(const uint16_t *h, int n, float *out)           n fp16 -> fp32
 *   dec_i8(const int8_t *c, float scale, int n, float *out)  n codes * scale
 *   unpack_q4(const uint8_t *c, int n, int8_t *out)          n 4-bit codes (byte i: element
 *                                                            i low nibble, i+n/2 high) - 8
 *
 * Work per block of PYLUT_ATTN_BLOCK cache positions: decode the keys into kbuf once, score
 * every query row against them (8 keys per reduction tree), update each row's running max,
 * sum and accumulator, then decode the values into the same buffer and accumulate. A row
 * never sees past its causal limit; rows that see nothing of a block skip it. */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "pylut/attention.h"

/* One cache row (hd elements, type's encoding) -> dst[hd]. */
static inline void decode_row(int type, int hd, const uint8_t *row, float *dst) {
    if (type == PYLUT_KV_F16) {
        dec_f16((const uint16_t *)row, hd, dst);
        return;
    }
    const uint8_t *scales = row + (type == PYLUT_KV_Q8 ? hd : hd / 2);
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

void ATTN_FN(int type, int hd, int hd_pad, const uint8_t *k, const uint8_t *v, int64_t ld, int rows,
             const float *qs, const int32_t *lim, int j0, int j1, float *mx, float *sum, float *acc,
             float *kbuf, float *sbuf) {
    enum { B = PYLUT_ATTN_BLOCK };
    int vis[PYLUT_ATTN_ROWS];
    int last = 0; /* no row sees position >= last */
    for (int r = 0; r < rows; r++) last = lim[r] > last ? lim[r] : last;
    if (j1 > last) j1 = last;
    for (int jb = j0; jb < j1; jb += B) {
        const int nk = j1 - jb < B ? j1 - jb : B;
        float *vbuf = kbuf; /* values reuse the keys' buffer: the smaller L1 footprint is faster */
        /* (software prefetch 32-128 rows ahead measured 1.5-2x slower: the hardware
         * prefetchers follow a head's contiguous rows on their own) */
        for (int j = 0; j < nk; j++) decode_row(type, hd, k + (int64_t)(jb + j) * ld, kbuf + (int64_t)j * hd_pad);

        /* ---- scores, running max and sum (log2 domain: qs carries scale * log2(e)) */
        for (int r = 0; r < rows; r++) {
            const int see = lim[r] - jb < nk ? lim[r] - jb : nk;
            vis[r] = see;
            if (see <= 0) continue;
            const float *qr = qs + (int64_t)r * hd_pad;
            float *s = sbuf + (int64_t)r * B;
            for (int j = 0; j < see; j += 8) { /* rows past nk hold finite stale data: masked below */
                vf a[8];
                for (int u = 0; u < 8; u++) a[u] = vf_zero();
                for (int i = 0; i < hd_pad; i += VL) {
                    const vf qv = vf_load(qr + i);
                    for (int u = 0; u < 8; u++) a[u] = vf_fma(qv, vf_load(kbuf + (int64_t)(j + u) * hd_pad + i), a[u]);
                }
                sum8(a, s + j);
            }
            for (int j = see; j < B; j++) s[j] = -INFINITY;
            vf m = vf_set1(mx[r]);
            for (int j = 0; j < B; j += VL) m = vf_max(m, vf_load(s + j));
            const float mnew = vf_hmax(m), corr = exp2f(mx[r] - mnew);
            const vf mv = vf_set1(mnew);
            vf add = vf_zero();
            for (int j = 0; j < B; j += VL) {
                const vf p = vf_exp2(vf_sub(vf_load(s + j), mv));
                vf_store(s + j, p);
                add = vf_add(add, p);
            }
            sum[r] = sum[r] * corr + vf_hsum(add);
            mx[r] = mnew;
            if (corr != 1.0f) {
                const vf cv = vf_set1(corr);
                float *ar = acc + (int64_t)r * hd_pad;
                for (int i = 0; i < hd_pad; i += VL) vf_store(ar + i, vf_mul(vf_load(ar + i), cv));
            }
        }

        /* ---- values: acc[r] += sum_j p[r][j] * v[j] */
        for (int j = 0; j < nk; j++) decode_row(type, hd, v + (int64_t)(jb + j) * ld, vbuf + (int64_t)j * hd_pad);
        for (int r = 0; r < rows; r++) {
            if (vis[r] <= 0) continue;
            const float *p = sbuf + (int64_t)r * B;
            float *ar = acc + (int64_t)r * hd_pad;
            int i0 = 0;
            for (; i0 + NACC * VL <= hd_pad; i0 += NACC * VL) {
                vf a[NACC];
                for (int u = 0; u < NACC; u++) a[u] = vf_load(ar + i0 + u * VL);
                for (int j = 0; j < vis[r]; j++) {
                    const vf pj = vf_set1(p[j]);
                    const float *vj = vbuf + (int64_t)j * hd_pad + i0;
                    for (int u = 0; u < NACC; u++) a[u] = vf_fma(pj, vf_load(vj + u * VL), a[u]);
                }
                for (int u = 0; u < NACC; u++) vf_store(ar + i0 + u * VL, a[u]);
            }
            for (; i0 < hd_pad; i0 += VL) {
                vf a = vf_load(ar + i0);
                for (int j = 0; j < vis[r]; j++) a = vf_fma(vf_set1(p[j]), vf_load(vbuf + (int64_t)j * hd_pad + i0), a);
                vf_store(ar + i0, a);
            }
        }
    }
}
