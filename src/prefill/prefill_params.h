/* prefill_params.h - the int8 prefill kernels' per-group float parameters (what
 * pylut_i8_params in prefill.c computes, the same float operations in the same order), one
 * body for every vector width. The including unit defines, before including this file:
 *
 *   PV, PW                    the float vector type and its lanes (PW divides 64)
 *   pv_f16(p)                 PW fp16 -> floats          pv_i8(p)   PW int8 -> floats
 *   pv_nib_lo(p), pv_nib_hi(p) PW bytes' low / high nibbles -> floats
 *   pv_mul(a, b) pv_set1(x) pv_store(p, a)
 */

/* Groups [g0, g1) of tile t: s, b [g][64] floats, as pylut_i8_params computes them */
static void params(const pylut_qmatrix *qm, int64_t t, int64_t g0, int64_t g1, float *s, float *b) {
    const int64_t groups = qm->k_pad / qm->group;
    const int64_t supers = qm->super ? qm->k_pad / qm->super : 0, gps = qm->super ? qm->super / qm->group : 1;
    const PV negzero = pv_set1(-pylut_i8_zero(qm)); /* pylut_i8_params */
    for (int64_t g = g0; g < g1; g++)
        for (int q = 0; q < PYLUT_TILE_M / PW; q++) {
            const int64_t at = (t * groups + g) * PYLUT_TILE_M + PW * q;
            PV sc, bi;
            if (!qm->super) {
                sc = pv_f16(qm->scale + at);
                bi = qm->has_bias ? pv_f16(qm->bias + at) : pv_mul(negzero, sc);
            } else {
                const int64_t sat = (t * supers + g / gps) * PYLUT_TILE_M + PW * q;
                PV si, bsub;
                if (qm->sub_nibbles) {
                    si = pv_nib_lo((const uint8_t *)qm->sub_scale + at);
                    bsub = pv_nib_hi((const uint8_t *)qm->sub_scale + at);
                } else {
                    si = pv_i8(qm->sub_scale + at);
                    bsub = qm->has_bias ? pv_i8(qm->sub_bias + at) : si;
                }
                sc = pv_mul(pv_f16(qm->scale + sat), si);
                bi = qm->has_bias ? pv_mul(pv_f16(qm->bias + sat), bsub) : pv_mul(negzero, sc);
            }
            pv_store(s + (g - g0) * PYLUT_TILE_M + PW * q, sc);
            pv_store(b + (g - g0) * PYLUT_TILE_M + PW * q, bi);
        }
}
