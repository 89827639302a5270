/* prefill_driver.h - the int8 prefill kernels' walk over row tiles, passes of
 * PYLUT_I8_TOKENS tokens and k-chunks, one body for every SIMD unit (the scalar twin in
 * prefill.c walks the same way). The including unit defines, before including this file:
 *
 *   PREFILL_ALIGN        the vector alignment of the scratch buffers
 *   PREFILL_MAX_BITS     the widest codes the unit takes (7 or 8)
 *   unpack_kgroup(blk, bits, w)                     one k-group's 64 rows -> w [64] dwords
 *   params(qm, t, g0, g1, s, b)                     groups' floats -> s, b [g][64]
 *   run_chunk(w, s, b, ng, gw, bits, act, nt, k0, g0, yacc)  nt tokens over the chunk: yacc +=
 *   PREFILL_T3_UNPACK    optional, 1: the unit's unpack_t3(blk, pairs, w) turns pairs (even)
 *                        of T3 triple blocks into dword codes trit + 1; without it T3 matrices
 *                        unpack through the portable pylut_i8_unpack (right, slower) */

/* kgroups k-groups of a tile's codes from blk into w [kgroups][64]; each width gets its own
 * copy, so unpack_kgroup inlines with constant bits */
static void unpack_chunk(const uint8_t *blk, int bits, int64_t kgroups, uint32_t *w) {
    const int kgb = pylut_b_kgroup_bytes(bits);
    if (bits > PREFILL_MAX_BITS) return;
    PYLUT_FOR_BITS(bits, BITS,
                   for (int64_t j = 0; j < kgroups; j++) unpack_kgroup(blk + j * kgb, BITS, w + j * PYLUT_TILE_M))
}

#if !PREFILL_T3_UNPACK
static void unpack_t3_portable(const pylut_qmatrix *qm, int64_t t, int64_t k0, int64_t kl, uint32_t *w) {
    pylut_i8_unpack(qm, t, k0 / PYLUT_KGROUP, (k0 + kl) / PYLUT_KGROUP, w);
}
#endif

/* Every line of the bytes [p, p + len) toward L2. The chunk after the one being multiplied:
 * unpacking reads a chunk once and then the dot products run for a whole pass, long enough
 * for the hardware prefetchers to lose the stream, so each chunk's first loads waited on
 * DRAM (perf: a ternary 2B4T prompt spent a fifth of its GEMM time there on Zen 5). */
static inline void prefetch_chunk(const uint8_t *p, int64_t len) {
    for (int64_t o = 0; o < len; o += 64) __builtin_prefetch(p + o, 0, 2);
}

/* y[tok][tiles' rows] for row tiles [tile0, tile1) of qm, tokens [0, n) of act */
static void prefill_tiles(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy,
                          int64_t tile0, int64_t tile1) {
    const int gw = qm->group, kc = pylut_i8_chunk(gw), bits = qm->bits, kgb = pylut_b_kgroup_bytes(bits);
    /* code bytes per k: B-types kgb a k-group of 4; T3 80 a pair of triples, 6 (whole pairs a
     * group: pylut_t3_i8_group) */
    const int t3 = qm->type == PYLUT_TYPE_T3, kper = t3 ? 6 : PYLUT_KGROUP, bper = t3 ? PYLUT_T3_PAIR_BYTES : kgb;
    const int cbits = t3 ? 2 : bits; /* the codes' width for run_chunk's bounds: T3's are 0..2 */
    _Alignas(PREFILL_ALIGN) uint32_t w[PYLUT_I8_CHUNK / PYLUT_KGROUP * PYLUT_TILE_M]; /* [k-groups][64] */
    _Alignas(PREFILL_ALIGN) float s[PYLUT_I8_CHUNK / PYLUT_MIN_GROUP * PYLUT_TILE_M]; /* [groups][64] */
    _Alignas(PREFILL_ALIGN) float b[PYLUT_I8_CHUNK / PYLUT_MIN_GROUP * PYLUT_TILE_M];
    _Alignas(PREFILL_ALIGN) float yacc[PYLUT_I8_TOKENS * PYLUT_TILE_M];             /* [tokens][64] */
    for (int64_t t = tile0; t < tile1; t++) {
        const uint8_t *tile = qm->codes + t * (qm->k_pad / kper) * bper;
        const int64_t rows = qm->m - t * PYLUT_TILE_M < PYLUT_TILE_M ? qm->m - t * PYLUT_TILE_M : PYLUT_TILE_M;
        for (int tb = 0; tb < n; tb += PYLUT_I8_TOKENS) {
            const int nt = n - tb < PYLUT_I8_TOKENS ? n - tb : PYLUT_I8_TOKENS;
            memset(yacc, 0, (size_t)nt * PYLUT_TILE_M * sizeof(float));
            for (int64_t k0 = 0; k0 < qm->k_pad; k0 += kc) {
                const int64_t kl = qm->k_pad - k0 < kc ? qm->k_pad - k0 : kc, ng = kl / gw, g0 = k0 / gw;
                if (!t3) unpack_chunk(tile + k0 / PYLUT_KGROUP * kgb, bits, kl / PYLUT_KGROUP, w);
#if PREFILL_T3_UNPACK
                else unpack_t3(tile + k0 / 6 * PYLUT_T3_PAIR_BYTES, kl / 6, w);
#else
                else unpack_t3_portable(qm, t, k0, kl, w);
#endif
                params(qm, t, g0, g0 + ng, s, b);
                const int64_t k1 = k0 + kc; /* the next chunk: this tile's, or the next tile's first */
                if (k1 < qm->k_pad) /* (a later pass finds the tile in cache) */
                    prefetch_chunk(tile + k1 / kper * bper, (qm->k_pad - k1 < kc ? qm->k_pad - k1 : kc) / kper * bper);
                else if (tb + PYLUT_I8_TOKENS >= n && t + 1 < tile1)
                    prefetch_chunk(tile + qm->k_pad / kper * bper, (qm->k_pad < kc ? qm->k_pad : kc) / kper * bper);
                run_chunk(w, s, b, ng, gw, cbits, act + tb, nt, k0, g0, yacc);
                if (act->parts == 2) { /* the residual part reuses the unpacked chunk */
                    pylut_lut lo[PYLUT_I8_TOKENS];
                    pylut_act8_residual_views(act + tb, nt, lo);
                    run_chunk(w, s, b, ng, gw, cbits, lo, nt, k0, g0, yacc);
                }
            }
            for (int tok = 0; tok < nt; tok++) /* the tile's rows < m only */
                memcpy(y + (tb + tok) * ldy + t * PYLUT_TILE_M, yacc + tok * PYLUT_TILE_M, (size_t)rows * sizeof(float));
        }
    }
}
