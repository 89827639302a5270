/* prefill_few_gfni.c - the int8 GEMM for a few tokens (batched decode steps of 2..47
 * sequences) on AVX-512 VNNI + GFNI. Same arithmetic as pylut_gemm_b_i8_scalar (prefill.c),
 * in the same order per output: results are bit-identical to the twin and to the
 * many-token driver (prefill_vnni_body.h), whichever of the two a call takes.
 *
 * Why a second kernel: the driver unpacks a 256-wide k-chunk of a tile into dword codes in
 * row order (ten cross-lane permutes and four stores a k-group) and then reads them back for
 * every 4-token block. With 1..8 tokens that unpacking is most of the work (1B Q4_0, Zen 5:
 * ~5 tokens' worth of dot products), so below ~12 tokens the table lookups won. Here a
 * k-group of 2..8 planes is decoded in registers with in-lane shuffles only - two row pairs
 * share one 8x8 bit transpose, whose output nibbles (4 bits) or crumbs (2 bits) are masked
 * apart; planes 4, 5 (Q5_K, Q6_K) come from one more transpose, planes 4..7 from two - and
 * goes straight into vpdpbusd for a block of up to 4 tokens. The rows come out in a fixed
 * non-natural order (row_of below): the per-group scales (or two-level sub-values) are
 * permuted into it once per group, and the outputs back once per tile. The build gives this
 * unit VBMI (vpermb): only the VBMI tier calls it. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "vnni_ops.h"

/* tokens held at once (their float sums [tokens][64] stay in L1); more tokens take passes */
#define FEW_MAX 16
/* Bytes of codes fetched ahead of the decoding (toward L2). A k-group's dot products for a
 * few tokens take long enough that the hardware prefetcher lost the stream: without it half
 * of the kernel's cycles sat on the codes' loads (perf, 1B Q4_0 8-sequence steps, Zen 5);
 * 2 KB ahead gave back a third of the loss, 8-32 KB all of it (model steps, alternated). */
#define FEW_AHEAD 16384

/* Row of lane d of decoded vector z (z = 0..3, d = 0..15) for b planes. The bit transpose
 * turns a qword of plane bytes of two row-pair words into bytes = codes at k = 4j..4j+3,
 * low nibbles row A (bytes 0..3) and row A + 32 (bytes 4..7), high nibbles (3+ bits) row
 * B = A + 1; with 2 bits a qword holds four row pairs, one per crumb m. 5..8 bits keep the
 * 4-bit order (decode() moves planes 4.. into it). */
static inline int row_of(int bits, int z, int d) {
    const int h = d & 1;
    if (bits == 2) return 4 * (d >> 1) + z + 32 * h;
    /* z = 2 * (unpackhi) + (high nibble); 128-bit lane L = d / 4, qword q = (d / 2) % 2 */
    return 8 * (d >> 2) + 4 * (z >> 1) + 2 * ((d >> 1) & 1) + (z & 1) + 32 * h;
}

/* One k-group (4 weights x 64 rows) of b planes at blk into w[4], rows in row_of order */
static inline __attribute__((always_inline)) void decode(const uint8_t *blk, int bits, __m512i w[4]) {
    if (bits == 2) { /* word a = planes 0, 1 of rows a, a + 32: a qword is four row pairs */
        const __m512i t = transpose_bits_gfni(_mm512_loadu_si512(blk)), m3 = _mm512_set1_epi8(3);
        w[0] = _mm512_and_si512(t, m3);
        w[1] = _mm512_and_si512(_mm512_srli_epi16(t, 2), m3);
        w[2] = _mm512_and_si512(_mm512_srli_epi16(t, 4), m3);
        w[3] = _mm512_and_si512(_mm512_srli_epi16(t, 6), m3);
        return;
    }
    /* planes 2, 3 as words beside planes 0, 1: a qword is two row pairs' four plane bytes */
    const __m512i v0 = _mm512_loadu_si512(blk);
    const __m512i v1 = bits >= 4 ? _mm512_loadu_si512(blk + 64)
                                 : _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 64)));
    const __m512i lo = transpose_bits_gfni(_mm512_unpacklo_epi16(v0, v1));
    const __m512i hi = transpose_bits_gfni(_mm512_unpackhi_epi16(v0, v1));
    const __m512i m15 = _mm512_set1_epi8(15);
    if (bits <= 4) {
        w[0] = _mm512_and_si512(lo, m15);
        w[1] = _mm512_and_si512(_mm512_srli_epi16(lo, 4), m15);
        w[2] = _mm512_and_si512(hi, m15);
        w[3] = _mm512_and_si512(_mm512_srli_epi16(hi, 4), m15);
        return;
    }
    if (bits >= 7) { /* planes 4..7 as a second 4-bit decoding, its nibbles the high ones */
        const __m512i v2 = _mm512_loadu_si512(blk + 128);
        const __m512i v3 = bits == 8 ? _mm512_loadu_si512(blk + 192)
                                     : _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 192)));
        const __m512i lo2 = transpose_bits_gfni(_mm512_unpacklo_epi16(v2, v3));
        const __m512i hi2 = transpose_bits_gfni(_mm512_unpackhi_epi16(v2, v3));
        /* bits of a where m15 is set, of b elsewhere: ternary-logic 0xE4 (c ? a : b) */
        w[0] = _mm512_ternarylogic_epi32(lo, _mm512_slli_epi16(lo2, 4), m15, 0xE4);
        w[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(lo, 4), lo2, m15, 0xE4);
        w[2] = _mm512_ternarylogic_epi32(hi, _mm512_slli_epi16(hi2, 4), m15, 0xE4);
        w[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(hi, 4), hi2, m15, 0xE4);
        return;
    }
    /* 5, 6 planes: planes 4, 5 (the lone plane 4 as words with a zero plane 5) decoded like
     * 2-bit codes, their words first moved so that crumb z of a qword belongs to the row of
     * w[z]'s lanes there: position 4Q + z takes word 8 (Q / 2) + 4 (z / 2) + 2 (Q % 2) + z % 2
     * (one vpermw), then one transpose gives all four vectors' top two bits */
    const __m512i sel = _mm512_set_epi16(31, 30, 27, 26, 29, 28, 25, 24, 23, 22, 19, 18, 21, 20, 17, 16,
                                         15, 14, 11, 10, 13, 12, 9, 8, 7, 6, 3, 2, 5, 4, 1, 0);
    const __m512i v2 = bits == 6 ? _mm512_loadu_si512(blk + 128)
                                 : _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 128)));
    const __m512i t = transpose_bits_gfni(_mm512_permutexvar_epi16(sel, v2)), m48 = _mm512_set1_epi8(0x30);
    /* w[z] = low nibble | crumb z at bits 4, 5: (a & b) | c is ternary-logic 0xEA */
    w[0] = _mm512_ternarylogic_epi32(lo, m15, _mm512_and_si512(_mm512_slli_epi16(t, 4), m48), 0xEA);
    w[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(lo, 4), m15, _mm512_and_si512(_mm512_slli_epi16(t, 2), m48), 0xEA);
    w[2] = _mm512_ternarylogic_epi32(hi, m15, _mm512_and_si512(t, m48), 0xEA);
    w[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(hi, 4), m15, _mm512_and_si512(_mm512_srli_epi16(t, 2), m48), 0xEA);
}

/* ------------------------------------------------------------------ float parameters */

/* Toward L1, the next chunk's per-group parameters: groups [g1, g1 + ng) of tile t, or the
 * next tile's first ones (the scales stream beside the codes and stalled params() alike);
 * the caller keeps it within the matrix. Two-level: the sub-values (a line a group) and
 * the super-blocks' fp16 d / dmin of those groups. */
static void prefetch_params(const pylut_qmatrix *qm, int64_t t, int64_t g1, int64_t ng) {
    const int64_t groups = qm->k_pad / qm->group;
    if (g1 >= groups) t++, g1 = 0;
    if (ng > groups - g1) ng = groups - g1; /* (a ragged last chunk is shorter) */
    const int64_t at = (t * groups + g1) * PYLUT_TILE_M, len = ng * PYLUT_TILE_M;
    if (qm->super) {
        const int64_t gps = qm->super / qm->group, supers = qm->k_pad / qm->super;
        for (int64_t o = 0; o < len; o += 64) { /* int8: 64 a line */
            __builtin_prefetch(qm->sub_scale + at + o, 0, 3);
            if (qm->has_bias && !qm->sub_nibbles) __builtin_prefetch(qm->sub_bias + at + o, 0, 3);
        }
        const int64_t s0 = t * supers + g1 / gps, s1 = t * supers + (g1 + ng - 1) / gps;
        for (int64_t o = s0 * PYLUT_TILE_M; o < (s1 + 1) * PYLUT_TILE_M; o += 32) {
            __builtin_prefetch(qm->scale + o, 0, 3);
            if (qm->has_bias) __builtin_prefetch(qm->bias + o, 0, 3);
        }
        return;
    }
    for (int64_t o = 0; o < len; o += 32) { /* fp16: 32 a line */
        __builtin_prefetch(qm->scale + at + o, 0, 3);
        if (qm->has_bias) __builtin_prefetch(qm->bias + at + o, 0, 3);
    }
}

/* The row_of order of one width as permutation indices */
typedef struct {
    int rows[PYLUT_TILE_M];   /* row of position p = 16 z + d */
    __m512i half[2];          /* row order -> positions 32 h .. 32 h + 31, over fp16 words */
    __m512i bytes;            /* row order -> positions, over bytes (vpermb: the sub-values) */
    __m512i out[4];           /* position -> row order: vector Z's lanes within the pair */
    __mmask16 out_hi[4];      /* lanes of vector Z taken from the pair of vectors 2, 3 */
} row_order;

static void order_init(int bits, row_order *o) {
    int32_t out[4][16];
    int16_t half[2][32];
    uint8_t bytes[PYLUT_TILE_M];
    int inv[PYLUT_TILE_M];
    for (int p = 0; p < PYLUT_TILE_M; p++) {
        o->rows[p] = row_of(bits, p / 16, p % 16);
        inv[o->rows[p]] = p;
        half[p / 32][p % 32] = (int16_t)o->rows[p]; /* (bit 5 picks the second source) */
        bytes[p] = (uint8_t)o->rows[p];
    }
    for (int Z = 0; Z < 4; Z++) {
        o->out_hi[Z] = 0;
        for (int e = 0; e < 16; e++) { /* position p = 16 z + d, z's low bit picks within the pair */
            const int p = inv[16 * Z + e];
            out[Z][e] = ((p / 16) & 1) * 16 + p % 16;
            if (p / 32) o->out_hi[Z] |= (__mmask16)(1u << e);
        }
    }
    for (int Z = 0; Z < 4; Z++) o->out[Z] = _mm512_loadu_si512(out[Z]);
    for (int h = 0; h < 2; h++) o->half[h] = _mm512_loadu_si512(half[h]);
    o->bytes = _mm512_loadu_si512(bytes);
}

/* [64] fp16 at h into floats in row_of order at f: the permute on the fp16 words, before
 * converting (half the work of permuting floats) */
static inline void f16_ordered(const uint16_t *h, const row_order *o, float *f) {
    const __m512i a = _mm512_loadu_si512(h), c = _mm512_loadu_si512(h + 32);
    for (int i = 0; i < 2; i++) {
        const __m512i v = _mm512_permutex2var_epi16(a, o->half[i], c);
        _mm512_store_ps(f + 32 * i, _mm512_cvtph_ps(_mm512_castsi512_si256(v)));
        _mm512_store_ps(f + 32 * i + 16, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1)));
    }
}

/* Groups [g0, g1) of tile t of a two-level matrix in row_of order: pylut_i8_params's floats,
 * fp16 d * sub-scale and dmin * sub-bias (or -zero * scale), the same products as params()
 * (prefill_params.h). The sub-value bytes are put in row_of order by one vpermb a group and
 * a super-block's d / dmin converted once: per group this is ~20 instructions, under a
 * tenth of a 4-token block's work over a 16-weight group. */
static void params_two_level(const pylut_qmatrix *qm, int64_t t, int64_t g0, int64_t g1, const row_order *o,
                             float *s, float *b) {
    const int64_t groups = qm->k_pad / qm->group, supers = qm->k_pad / qm->super, gps = qm->super / qm->group;
    const __m512 negzero = _mm512_set1_ps(-pylut_i8_zero(qm));
    const __m512i m15 = _mm512_set1_epi32(15);
    _Alignas(64) float d[PYLUT_TILE_M], dmin[PYLUT_TILE_M];
    _Alignas(64) uint8_t sub[PYLUT_TILE_M], subb[PYLUT_TILE_M];
    int64_t have = g0 / gps; /* the super-block in d, dmin */
    f16_ordered(qm->scale + (t * supers + have) * PYLUT_TILE_M, o, d);
    f16_ordered((qm->has_bias ? qm->bias : qm->scale) + (t * supers + have) * PYLUT_TILE_M, o, dmin);
    for (int64_t g = g0; g < g1; g++) {
        if (g / gps != have) {
            have = g / gps;
            f16_ordered(qm->scale + (t * supers + have) * PYLUT_TILE_M, o, d);
            if (qm->has_bias) f16_ordered(qm->bias + (t * supers + have) * PYLUT_TILE_M, o, dmin);
        }
        const int64_t at = (t * groups + g) * PYLUT_TILE_M;
        _mm512_store_si512(sub, _mm512_permutexvar_epi8(o->bytes, _mm512_loadu_si512(qm->sub_scale + at)));
        if (qm->has_bias && !qm->sub_nibbles) _mm512_store_si512(subb, _mm512_permutexvar_epi8(o->bytes, _mm512_loadu_si512(qm->sub_bias + at)));
        float *sg = s + (g - g0) * PYLUT_TILE_M, *bg = b + (g - g0) * PYLUT_TILE_M;
        for (int i = 0; i < 4; i++) {
            const __m128i v = _mm_load_si128((const __m128i *)(sub + 16 * i));
            __m512 si, bs;
            if (qm->sub_nibbles) { /* low nibble the sub-scale, high the sub-bias (pylut_b_sub) */
                const __m512i u = _mm512_cvtepu8_epi32(v);
                si = _mm512_cvtepi32_ps(_mm512_and_si512(u, m15));
                bs = _mm512_cvtepi32_ps(_mm512_srli_epi32(u, 4));
            } else {
                si = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
                bs = si;
                if (qm->has_bias)
                    bs = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(subb + 16 * i))));
            }
            const __m512 sc = _mm512_mul_ps(_mm512_load_ps(d + 16 * i), si);
            _mm512_store_ps(sg + 16 * i, sc);
            if (qm->has_bias) _mm512_store_ps(bg + 16 * i, _mm512_mul_ps(_mm512_load_ps(dmin + 16 * i), bs));
            else _mm512_store_ps(bg + 16 * i, _mm512_mul_ps(negzero, sc));
        }
    }
}

/* Groups [g0, g1) of tile t in row_of order: pylut_i8_params's floats (plain fp16 scales: a
 * conversion, and -zero * scale without a bias array) */
static void params_ordered(const pylut_qmatrix *qm, int64_t t, int64_t g0, int64_t g1, const row_order *o,
                           float *s, float *b) {
    if (qm->super) {
        params_two_level(qm, t, g0, g1, o, s, b);
        return;
    }
    const int64_t groups = qm->k_pad / qm->group;
    const __m512 negzero = _mm512_set1_ps(-pylut_i8_zero(qm));
    for (int64_t g = g0; g < g1; g++) {
        const int64_t at = (t * groups + g) * PYLUT_TILE_M;
        float *sg = s + (g - g0) * PYLUT_TILE_M, *bg = b + (g - g0) * PYLUT_TILE_M;
        f16_ordered(qm->scale + at, o, sg);
        if (qm->has_bias) f16_ordered(qm->bias + at, o, bg);
        else
            for (int i = 0; i < 4; i++)
                _mm512_store_ps(bg + 16 * i, _mm512_mul_ps(negzero, _mm512_load_ps(sg + 16 * i)));
    }
}

/* One token's sums [64] in row_of order into y's rows r0 .. r0 + 63 below m */
static inline void store_rows(const float *acc, const row_order *o, float *y, int64_t r0, int64_t m) {
    const __m512 p0 = _mm512_load_ps(acc), p1 = _mm512_load_ps(acc + 16);
    const __m512 p2 = _mm512_load_ps(acc + 32), p3 = _mm512_load_ps(acc + 48);
    for (int Z = 0; Z < 4; Z++) {
        const int64_t left = m - r0 - 16 * Z;
        if (left <= 0) break;
        const __m512 v = _mm512_mask_blend_ps(o->out_hi[Z], _mm512_permutex2var_ps(p0, o->out[Z], p1),
                                              _mm512_permutex2var_ps(p2, o->out[Z], p3));
        _mm512_mask_storeu_ps(y + 16 * Z, left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u), v);
    }
}

/* ------------------------------------------------------------------ the dot products */

/* NB tokens (1..4) over ng groups of a chunk: yacc [NB][64] (row_of order) += their sums,
 * each group's float step the twin's (group_epilogue) */
static inline __attribute__((always_inline)) void block(const uint8_t *codes, int bits, const float *s,
                                                        const float *b, int64_t ng, int gw,
                                                        const pylut_lut *const *act, int NB, int64_t k0,
                                                        int64_t g0, float *const *yacc, int64_t ahead) {
    const int kq = gw / 4, kgb = pylut_b_kgroup_bytes(bits);
    for (int64_t g = 0; g < ng; g++) {
        __m512i acc[4][4];
        for (int t = 0; t < NB; t++)
            for (int i = 0; i < 4; i++) acc[t][i] = _mm512_setzero_si512();
        for (int64_t kg = g * kq; kg < (g + 1) * kq; kg++) {
            __m512i w[4];
            /* the codes stream from DRAM: the first block over them fetches ahead, within the
             * matrix (ahead: its bytes from codes on; 0 in later blocks) */
            if (kg * kgb + FEW_AHEAD < ahead)
                for (int o = 0; o < kgb; o += 64) __builtin_prefetch(codes + kg * kgb + FEW_AHEAD + o, 0, 2);
            decode(codes + kg * kgb, bits, w);
            for (int t = 0; t < NB; t++) {
                const __m512i x = _mm512_set1_epi32(*(const int32_t *)(const void *)(act[t]->tbl + k0 + 4 * kg));
                for (int i = 0; i < 4; i++) acc[t][i] = dpbusd(acc[t][i], w[i], x);
            }
        }
        for (int t = 0; t < NB; t++) /* vnni_ops.h */
            group_epilogue(acc[t][0], acc[t][1], acc[t][2], acc[t][3], s + g * PYLUT_TILE_M, b + g * PYLUT_TILE_M,
                           act[t]->tscale[g0 + g], act[t]->sumx[g0 + g], yacc[t]);
    }
}

/* One width's blocks (bits constant after inlining): tokens in blocks of 4, the rest in one */
static inline __attribute__((always_inline)) void blocks(const uint8_t *codes, int bits, const float *s,
                                                         const float *b, int64_t ng, int gw,
                                                         const pylut_lut *const *act, int nt, int64_t k0,
                                                         int64_t g0, float *const *yacc, int64_t ahead) {
    int t = 0;
    for (; t + 4 <= nt; t += 4) block(codes, bits, s, b, ng, gw, act + t, 4, k0, g0, yacc + t, t ? 0 : ahead);
    switch (nt - t) {
    case 3: block(codes, bits, s, b, ng, gw, act + t, 3, k0, g0, yacc + t, t ? 0 : ahead); break;
    case 2: block(codes, bits, s, b, ng, gw, act + t, 2, k0, g0, yacc + t, t ? 0 : ahead); break;
    case 1: block(codes, bits, s, b, ng, gw, act + t, 1, k0, g0, yacc + t, t ? 0 : ahead); break;
    default: break;
    }
}

static void run_blocks(const uint8_t *codes, int bits, const float *s, const float *b, int64_t ng, int gw,
                       const pylut_lut *const *act, int nt, int64_t k0, int64_t g0, float *const *yacc,
                       int64_t ahead) {
    switch (bits) {
    case 2: blocks(codes, 2, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    case 3: blocks(codes, 3, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    case 4: blocks(codes, 4, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    case 5: blocks(codes, 5, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    case 6: blocks(codes, 6, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    case 7: blocks(codes, 7, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    case 8: blocks(codes, 8, s, b, ng, gw, act, nt, k0, g0, yacc, ahead); break;
    default: break; /* (pylut_gemm_b_i8_few_fits) */
    }
}

/* B-type matrices of 2..8 planes, plain or two-level scales (whether a call comes here is
 * pylut_gemm_b_i8_gfni's choice, by PYLUT_I8_FEW_TO_GFNI) */
int pylut_gemm_b_i8_few_fits(const pylut_qmatrix *qm) {
    return qm->type >= PYLUT_TYPE_B1 && qm->type <= PYLUT_TYPE_B8 && qm->bits >= 2 && qm->bits <= 8;
}

/* y[tok][rows of tiles [tile0, tile1)] for the tokens of act (pylut_gemm_b_i8_few_fits) */
void pylut_gemm_b_i8_few_gfni(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy,
                              int64_t tile0, int64_t tile1) {
    if (!pylut_gemm_b_i8_few_fits(qm)) return;
    const int gw = qm->group, kc = pylut_i8_chunk(gw), bits = qm->bits, kgb = pylut_b_kgroup_bytes(bits);
    const int64_t tile_bytes = qm->k_pad / PYLUT_KGROUP * kgb, tiles = qm->m_pad / PYLUT_TILE_M;
    _Alignas(64) float s[PYLUT_I8_CHUNK / PYLUT_MIN_GROUP * PYLUT_TILE_M]; /* [groups][64], row_of order */
    _Alignas(64) float b[PYLUT_I8_CHUNK / PYLUT_MIN_GROUP * PYLUT_TILE_M];
    _Alignas(64) float yacc[FEW_MAX * PYLUT_TILE_M];                     /* [tokens][64], row_of order */
    row_order o;
    order_init(bits, &o);
    for (int tb = 0; tb < n; tb += FEW_MAX) {
        const int nt = n - tb < FEW_MAX ? n - tb : FEW_MAX;
        const pylut_lut *hi[FEW_MAX], *lo_p[FEW_MAX];
        pylut_lut lo[FEW_MAX]; /* the residual part of two-part activations */
        float *ya[FEW_MAX];
        if (act->parts == 2) pylut_act8_residual_views(act + tb, nt, lo);
        for (int i = 0; i < nt; i++) hi[i] = act + tb + i, lo_p[i] = lo + i, ya[i] = yacc + i * PYLUT_TILE_M;
        for (int64_t t = tile0; t < tile1; t++) {
            const uint8_t *tile = qm->codes + t * tile_bytes;
            memset(yacc, 0, (size_t)nt * PYLUT_TILE_M * sizeof(float));
            for (int64_t k0 = 0; k0 < qm->k_pad; k0 += kc) {
                const int64_t kl = qm->k_pad - k0 < kc ? qm->k_pad - k0 : kc, ng = kl / gw, g0 = k0 / gw;
                if (g0 + ng < qm->k_pad / gw || t + 1 < tiles) prefetch_params(qm, t, g0 + ng, ng);
                params_ordered(qm, t, g0, g0 + ng, &o, s, b);
                const uint8_t *codes = tile + k0 / PYLUT_KGROUP * kgb;
                /* the twin's order per output: a chunk's groups for the first part, then the
                 * residual's, then the next chunk */
                const int64_t ahead = (tiles - t) * tile_bytes - k0 / PYLUT_KGROUP * kgb;
                run_blocks(codes, bits, s, b, ng, gw, hi, nt, k0, g0, ya, ahead);
                if (act->parts == 2) run_blocks(codes, bits, s, b, ng, gw, lo_p, nt, k0, g0, ya, 0);
            }
            const int64_t r0 = t * PYLUT_TILE_M;
            for (int i = 0; i < nt; i++) store_rows(yacc + i * PYLUT_TILE_M, &o, y + (tb + i) * ldy + r0, r0, qm->m);
        }
    }
}

/* The VBMI tier's gemm_b_i8: a few tokens here, the rest through the many-token driver,
 * whose one unpacking per 128-token pass overtakes this kernel's decoding per 4-token block
 * at PYLUT_I8_FEW_TO_GFNI tokens (kernels.h). */
void pylut_gemm_b_i8_gfni(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy,
                          int64_t tile0, int64_t tile1) {
    static const unsigned char few_to[2][9] = PYLUT_I8_FEW_TO_GFNI;
    if (pylut_gemm_b_i8_few_fits(qm) && n < few_to[qm->super != 0][qm->bits])
        pylut_gemm_b_i8_few_gfni(qm, act, n, y, ldy, tile0, tile1);
    else pylut_gemm_b_i8_vnni_gfni(qm, act, n, y, ldy, tile0, tile1);
}

#endif /* x86-64 */
