/* f16_body.h - the F16 GEMM (fp16 weights as stored, fp32 activations, fp32 sums), written once
 * against a tiny per-ISA vocabulary and instantiated by f16_scalar.c, f16_avx2.c, f16_avx512.c
 * and f16_neon.c (attn_body.h's pattern). The including unit defines, before including this file:
 *
 *   F16_FN                  the kernel's name (pylut_gemm_f16_<isa>)
 *   VL, vf                  lanes and the float vector type (VL divides PYLUT_F16_KALIGN)
 *   F16_TB                  tokens a pass keeps in registers (2..4): F16_RB x F16_TB accumulators
 *   vf_zero() vf_load(p) vf_fma(a, b, c) = a*b + c, vf_hsum(a)
 *   vf_load_h(const uint16_t *h)   VL fp16 -> fp32
 *
 * Work per block of F16_RB rows: every weight vector is converted once and multiplied into
 * the accumulators of up to F16_TB tokens; the block's rows (F16_RB x k_pad x 2 bytes) stay
 * in L1 while further token groups read them; a single token takes F16_RB_ONE rows a block.
 * Rows and k are padded with zeros (PYLUT_TILE_M, PYLUT_F16_KALIGN), so no loop has a tail;
 * only rows < m are stored.
 * A decode step streams the weights once: it is bound by memory, at 2 bytes a weight. */
#include <stdint.h>

#include "kernels.h"

#define F16_RB 4      /* rows per block with several tokens: divides PYLUT_TILE_M */
#define F16_RB_ONE 8  /* rows per block of a single token (decode): 8 fma chains hide the
                       * fma latency; divides PYLUT_TILE_M */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* out[r][t] = row r of w (stride k_pad) . x[t], for RB rows and TB tokens. Each (row, token)
 * sum runs over k in the same order whatever RB and TB are: a token's result does not depend
 * on the tokens beside it (chunking, batch invariance). */
static ALWAYS_INLINE void f16_block(const int RB, const int TB, const uint16_t *w, int64_t k_pad,
                                    const float *const *x, float out[F16_RB_ONE][F16_TB]) {
    vf acc[F16_RB_ONE][F16_TB];
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < TB; t++) acc[r][t] = vf_zero();
    for (int64_t i = 0; i < k_pad; i += VL)
        for (int r = 0; r < RB; r++) {
            const vf wv = vf_load_h(w + r * k_pad + i);
            for (int t = 0; t < TB; t++) acc[r][t] = vf_fma(wv, vf_load(x[t] + i), acc[r][t]);
        }
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < TB; t++) out[r][t] = vf_hsum(acc[r][t]);
}

/* y[t][row] for rows of tiles [tile0, tile1) of qm (rows < m), tokens [0, n) of x (PYLUT_LUT_F32) */
void F16_FN(const pylut_qmatrix *qm, const pylut_lut *x, int n, float *y, int64_t ldy, int64_t tile0, int64_t tile1) {
    const int64_t k_pad = qm->k_pad, r_end = tile1 * PYLUT_TILE_M < qm->m ? tile1 * PYLUT_TILE_M : qm->m;
    const uint16_t *W = (const uint16_t *)qm->codes; /* [m_pad][k_pad] */
    const int rb = n == 1 ? F16_RB_ONE : F16_RB;
    for (int64_t r = tile0 * PYLUT_TILE_M; r < r_end; r += rb) {
        const uint16_t *w = W + r * k_pad;
        const int rows = r_end - r < rb ? (int)(r_end - r) : rb;
        for (int t0 = 0; t0 < n; t0 += F16_TB) {
            const int tb = n - t0 < F16_TB ? n - t0 : F16_TB;
            const float *xs[F16_TB];
            for (int t = 0; t < F16_TB; t++) xs[t] = (const float *)x[t0 + (t < tb ? t : tb - 1)].tbl;
            float out[F16_RB_ONE][F16_TB] = {{0}}; /* (the compiler cannot see rows <= the block's) */
            if (n == 1) {
                f16_block(F16_RB_ONE, 1, w, k_pad, xs, out);
            } else {
                switch (tb) { /* RB and TB constants in each: the accumulators stay in registers */
#if F16_TB >= 4
                case 4: f16_block(F16_RB, 4, w, k_pad, xs, out); break;
#endif
#if F16_TB >= 3
                case 3: f16_block(F16_RB, 3, w, k_pad, xs, out); break;
#endif
                case 2: f16_block(F16_RB, 2, w, k_pad, xs, out); break;
                default: f16_block(F16_RB, 1, w, k_pad, xs, out); break;
                }
            }
            for (int rr = 0; rr < rows; rr++)
                for (int t = 0; t < tb; t++) y[(int64_t)(t0 + t) * ldy + r + rr] = out[rr][t];
        }
    }
}
