/* pylut.h - public C API of pylut's kernel core: packed low-bit matrices, activation
 * lookup tables, table-lookup GEMV/GEMM, the thread pool and run-time ISA dispatch.
 *
 * The method (T-MAC): a b-bit weight code q = sum_i 2^i * bit_i is split into b bit planes.
 * Activations are taken 4 at a time (one "k-group"); for each k-group a 16-entry table
 * T[idx] = sum_j (bit_j(idx) ? +x_j : -x_j) is built once and then every row's 4-bit plane
 * nibble just looks its partial dot product up (pshufb / vqtbl1q), instead of multiplying.
 * With s_i = 2*bit_i - 1 in {-1,+1}:   sum_j q_j x_j = 1/2 * sum_i 2^i T[idx_i] + (2^b-1)/2 * sum_j x_j
 * so a row's dot product per scale group g is
 *     y += scale * (tscale_g/2) * A + (bias + scale*(2^b-1)/2) * sumx_g,   A = sum_i 2^i sum T_int
 * (the second term vanishes for the symmetric grid, bias = -scale*(2^b-1)/2).
 *
 * Kernels know nothing of models. Every function checks the sizes it is handed. */
#ifndef PYLUT_H
#define PYLUT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ types and limits */

/* Weight formats. B1..B8: b bit planes of unsigned codes, fp16 scale+bias per (row, group).
 * T3: ternary {-1,0,+1} packed 3 weights -> 4-bit index + sign bit (1.67 bits/weight), one
 *     fp16 scale per (row, group) (group 256 = llama.cpp's TQ1_0/TQ2_0 blocks, lossless).
 *     Ternary as plain 2-bit codes {0,1,2} with bias = -scale is just B2. */
enum pylut_type {
    PYLUT_TYPE_B1 = 1,
    PYLUT_TYPE_B2 = 2,
    PYLUT_TYPE_B3 = 3,
    PYLUT_TYPE_B4 = 4,
    PYLUT_TYPE_B5 = 5, /* 5..8 planes: lossless homes for Q5_*, Q6_K, Q8_0 codes */
    PYLUT_TYPE_B6 = 6,
    PYLUT_TYPE_B7 = 7,
    PYLUT_TYPE_B8 = 8,
    PYLUT_TYPE_T3 = 16,
    PYLUT_TYPE_F16 = 32, /* fp16 weights as stored, fp32 activations and sums (src/f16/) */
};

enum pylut_isa {
    PYLUT_ISA_SCALAR = 0,
    PYLUT_ISA_AVX2 = 1,      /* AVX2 + FMA + F16C, OS saves ymm */
    PYLUT_ISA_AVX512 = 2,    /* AVX-512 F+BW+VL on top of AVX2, OS saves zmm */
    PYLUT_ISA_NEON = 3,      /* aarch64 Advanced SIMD */
    PYLUT_ISA_NEON_DOT = 4,  /* aarch64 + dotprod (armv8.2-a) */
    PYLUT_ISA_AVX512VBMI = 5, /* AVX-512 + VBMI (vpermb) + VNNI (vpdpwssd) + GFNI */
};

enum pylut_status {
    PYLUT_OK = 0,
    PYLUT_EINVAL = -1,   /* a size, type or pointer does not fit */
    PYLUT_ENOMEM = -2,
    PYLUT_EISA = -3,     /* requested ISA not supported by this CPU/build */
    PYLUT_EFULL = -4,    /* a KV block pool has no free block (its max_blocks are in use) */
};

#define PYLUT_TILE_M 64        /* rows per tile: one 64-byte block holds 64 rows' nibbles */
#define PYLUT_KGROUP 4         /* activations per table (16 entries) */
#define PYLUT_T3_KGROUP 3      /* activations per ternary table (27 combos -> 14 + sign) */
#define PYLUT_T3_MAX_GROUP 768 /* T3 scale group: <= 128 pairs of triples (int16 bound) */
#define PYLUT_MIN_GROUP 8
#define PYLUT_MAX_GROUP 256    /* int16 accumulator bound, see lut_kernel notes */
#define PYLUT_F16_KALIGN 32    /* F16 rows are padded with zeros to a multiple of this (the
                                * widest vector, 16 lanes, twice: no kernel has a k tail) */

/* ------------------------------------------------------------------ packed matrix */

/* A packed matrix. Buffers are owned by the caller (numpy arrays on the Python side);
 * pylut_qmatrix_layout() fills the shape fields and tells how big each buffer must be.
 * A tile is 64 rows: one 64-byte vector of nibbles covers 64 rows x 2 planes of a k-group.
 *
 * B-types, per row tile t and k-group j (4 k's), ceil(b/2) "plane blocks":
 *   pair block  (planes 2p, 2p+1): 64 bytes. 128-bit lane L (0..3), byte 2r+i: low nibble =
 *               plane 2p+i of row 8L+r, high nibble = same plane of row 32+8L+r.
 *               (maddubs with (1,2) folds a pair into int16 and leaves rows in order)
 *   lone block  (the top plane of odd b): 32 bytes, byte r: low nibble row r, high row 32+r.
 *   codes: [m_pad/64][k_pad/4][32*b]
 *   scale, bias: fp16 [m_pad/64][k_pad/group][64]
 * T3, per row tile t and pair of triples (j, j+1): 80 bytes:
 *   64 bytes nibbles: byte 2r+h (r < 32, h = 0/1): low nibble = row r of triple j+h, high
 *   nibble = row 32+r of triple j+h. Then two u64 sign masks (bit set = negate): lo, bit 2r+h
 *   for row r of triple j+h; hi, the same for row 32+r. (A row's two triples sit side by side
 *   so one pairwise widening add sums them with the rows staying in order.)
 *   A scale group of G weights holds pylut_t3_triples(G) triples (padded with zero weights);
 *   codes: [m_pad/64][k_pad/G * triples/2][80];  scale: fp16 [m_pad/64][k_pad/G][64]       */
/* F16: no planes, no scales: codes holds fp16 bits row-major, [m_pad][k_pad] (rows past m
 *   and columns past k are 0); group = PYLUT_F16_KALIGN, bits 0, scale and bias NULL. Its
 *   input is the activations themselves (PYLUT_LUT_F32 below), so the product is exact up to
 *   fp32 summation: the lossless home of F16 weights (BF16/F32 round to fp16 on load). */
static inline int pylut_t3_triples(int group) { return 2 * ((group + 5) / 6); }
typedef struct {
    int32_t type;        /* enum pylut_type */
    int32_t bits;        /* bit planes (B-types); 0 for T3 */
    int64_t m, k;        /* logical shape: y[m] = W[m,k] x[k] */
    int64_t m_pad;       /* m rounded up to PYLUT_TILE_M */
    int64_t k_pad;       /* k rounded up to group (B) or 6 (T3); padded x entries are 0 */
    int32_t group;       /* weights per scale along k */
    int32_t has_bias;    /* B: bias array present (else bias = -scale * zero, implied) */
    float zero;          /* B without bias: the code meaning 0 (layout sets the symmetric
                          * (2^b-1)/2; Q4_0-style grids use 2^(b-1) and save the bias array) */
    int32_t super;       /* B: 0, or weights per super-block (llama.cpp K-quants, 256): then
                          * scale/bias hold fp16 d/dmin per (row, super-block) and the group's
                          * scale = d * sub_scale, bias = dmin * sub_bias (int8): exact */
    int32_t sub_nibbles; /* super with bias: sub-values as nibbles, see below (0 or 1) */
    int64_t codes_bytes; /* required sizes of the caller's buffers */
    int64_t scale_count; /* fp16 entries of scale (and bias) */
    int64_t sub_count;   /* bytes of sub_scale (and sub_bias) when super */
    uint8_t *codes;
    uint16_t *scale;     /* fp16 bits [m_pad/64][k_pad/(super or group)][64] */
    uint16_t *bias;      /* B: fp16 bits or NULL; T3: NULL */
    int8_t *sub_scale;   /* super: [m_pad/64][k_pad/group][64] */
    int8_t *sub_bias;    /* super with bias: same shape; NULL with sub_nibbles */
    float post;          /* every product (and dequantized row) times this float32: one scale
                          * per matrix that fp16 cannot hold exactly, like bitnet.cpp's I2_S
                          * per-tensor scale. The layout sets 1 (no multiply); finite, nonzero */
} pylut_qmatrix;
/* Nibble sub-values (sub_nibbles, llama.cpp's Q2_K keeps both as 4 bits): sub_scale holds one
 * byte per (row, group) in the same [m_pad/64][k_pad/group][64] order, low nibble =
 * sub-scale 0..15, high nibble = |sub-bias| 0..15, and sub_bias is NULL. A super-block whose
 * sub-biases are negative stores dmin negated (exact in fp16), so bias = dmin * high nibble
 * takes the same values as the int8 form: a super-block cannot mix signs. 2.625 bits per
 * Q2_K weight instead of 3.125, and the kernels' integer sums keep their magnitudes. */

/* Fill shape/size fields of *qm for a matrix of this type. Returns PYLUT_EINVAL on a bad
 * type, group (B: multiple of 8 in [8,256]; T3: [6, 768]), or non-positive / huge shape. */
int pylut_qmatrix_layout(pylut_qmatrix *qm, int type, int64_t m, int64_t k, int group, int has_bias);

/* Two-level scales for a B-type layout (after pylut_qmatrix_layout): super-blocks of
 * `super` weights, a multiple of group <= 4096; k_pad grows to a multiple of super. */
int pylut_qmatrix_set_super(pylut_qmatrix *qm, int super);
/* Nibble sub-values (after pylut_qmatrix_set_super; needs a bias array). Sizes unchanged. */
int pylut_qmatrix_set_sub_nibbles(pylut_qmatrix *qm, int on);
/* Sets qm->post; PYLUT_EINVAL unless it is finite and nonzero. */
int pylut_qmatrix_set_post(pylut_qmatrix *qm, float post);
/* 1 if every field of *qm agrees with pylut_qmatrix_layout and the buffers are set. */
int pylut_qmatrix_valid(const pylut_qmatrix *qm);
/* Dequantize row `row` into out[k] (scalar; embedding lookups read one row per token). */
int pylut_qmatrix_row(const pylut_qmatrix *qm, int64_t row, float *out);

/* Pack integer codes W[m][k] (uint8, row stride ld) into qm->codes. B: codes < 2^bits.
 * T3: codes in {0,1,2} meaning trits {-1,0,+1}. Scales/biases are written by the caller
 * into the layout given by pylut_scale_index() (the same for both families). */
int pylut_pack_codes(pylut_qmatrix *qm, const uint8_t *codes, int64_t ld);
/* F16: copy fp16 bits W[m][k] (row stride ld) into qm->codes, zero-padded (the B/T3 code
 * functions refuse F16 matrices, this one every other type). */
int pylut_pack_f16(pylut_qmatrix *qm, const uint16_t *w, int64_t ld);
/* Inverse of pack (for tests and converters): codes out [m][k]. */
int pylut_unpack_codes(const pylut_qmatrix *qm, uint8_t *codes, int64_t ld);
/* Index into qm->scale/bias for (row, group) of a B-type matrix. */
static inline int64_t pylut_scale_index(const pylut_qmatrix *qm, int64_t row, int64_t g) {
    return ((row / PYLUT_TILE_M) * (qm->k_pad / qm->group) + g) * PYLUT_TILE_M + row % PYLUT_TILE_M;
}

/* ------------------------------------------------------------------ activation tables */

/* Tables built from one activation vector x[k] for matrices of one type family and group.
 *   B (PYLUT_LUT_B): tbl int8 [k_pad/4][16], tscale/sumx fp32 [k_pad/group]
 *      with super (two-level matrices summed in integers, see pylut_lut_layout): one table
 *      scale per super-block (tscale[g] repeats it for each group), and tbl continues with
 *      int16 sumq [k_pad/group] = round(sumx / tscale) (sumx then holds sumq * tscale)
 *   T3 (PYLUT_LUT_T3): tbl int8 [groups * triples][16] (entries 0..13 used), tscale fp32 [groups],
 *      sumx unused
 *   int8 activations (PYLUT_LUT_I8, B-type matrices, the prefill path below): no tables but x itself
 *      quantized per scale group: tbl int8 [k_pad] (round(x / xs), padding 0), tscale fp32
 *      [k_pad/group] the group's xs = max |x| / 127, sumx fp32 [k_pad/group] = xs * sum of
 *      the group's int8 values (the sum the integer dot products really saw).
 *      With parts == 2 each array holds a second part after the first, the same encoding of
 *      the rounding residual x - xs * round(x / xs): tbl [2][k_pad], tscale and sumx
 *      [2][k_pad/group]. The GEMM adds both parts' products, so x is read to ~2^-15 of its
 *      group's largest value (int8 alone: 2^-8) for one more integer dot product per weight. */
/*   fp32 activations (PYLUT_LUT_F32, F16 matrices): tbl holds x as float [k_pad] (padding 0),
 *      tbl_bytes = 4 k_pad, group PYLUT_F16_KALIGN (the unit the builders split), tscale and
 *      sumx unused. */
enum { PYLUT_LUT_B = 0, PYLUT_LUT_T3 = 1, PYLUT_LUT_I8 = 2, PYLUT_LUT_F32 = 3 }; /* pylut_lut.kind */
typedef struct {
    int32_t kind;        /* PYLUT_LUT_B, PYLUT_LUT_T3, PYLUT_LUT_I8 or PYLUT_LUT_F32 */
    int64_t k, k_pad;
    int32_t group;
    int32_t super;       /* B: weights per table scale when > group, else 0 */
    int64_t tbl_bytes, n_groups; /* tbl_bytes counts every part; n_groups one part's groups */
    int32_t parts;       /* PYLUT_LUT_I8: 1, or 2 with the rounding residual; 0 for tables */
    int8_t *tbl;
    float *tscale;
    float *sumx;
} pylut_lut;

/* Size a table set to read matrices like qm (same k, group, family, and super when the
 * matrix's two-level scales can be summed in integers: then a super-block's int lookup sums,
 * times the int8 sub-scales, are converted to float once per super-block, not per group). */
int pylut_lut_layout(pylut_lut *lut, const pylut_qmatrix *qm);
/* Size int8 activations (PYLUT_LUT_I8) for a B-type matrix like qm, in parts 1 or 2 (see above);
 * PYLUT_EINVAL for T3. tscale and sumx then take parts * n_groups floats. */
int pylut_lut_layout_i8(pylut_lut *lut, const pylut_qmatrix *qm, int parts);
/* Floats of tscale (and of sumx) one table set holds: n_groups per part. */
static inline int64_t pylut_lut_scale_floats(const pylut_lut *lut) {
    return lut->n_groups * (lut->parts > 1 ? lut->parts : 1);
}

/* ------------------------------------------------------------------ thread pool */

typedef struct pylut_pool pylut_pool;
typedef void (*pylut_task_fn)(void *ctx, int ith, int nth);
pylut_pool *pylut_pool_create(int n_threads);
void pylut_pool_free(pylut_pool *pool);
int pylut_pool_size(const pylut_pool *pool);
/* Run fn(ctx, i, n) on all n threads (the caller is thread 0); returns when all are done. */
void pylut_pool_run(pylut_pool *pool, pylut_task_fn fn, void *ctx);

/* ------------------------------------------------------------------ kernels */

/* Build tables for x[n][k] (row stride ldx) into lut[n]; split across the pool. */
int pylut_lut_build(pylut_pool *pool, pylut_lut *lut, int n, const float *x, int64_t ldx);
/* y[n][m] (row stride ldy) = W x_n for the n tables. Any m, k; threads split rows. */
int pylut_gemm(pylut_pool *pool, const pylut_qmatrix *qm, const pylut_lut *lut, int n,
               float *y, int64_t ldy);
/* Prefill through int8 activations. With many tokens a B-type GEMM can unpack each weight
 * tile to bytes once and reuse it for every token; the dot products then run on int8 multiply-
 * add units (VNNI vpdpbusd) at ~3x the table lookups' rate per weight, whatever the bit width.
 * Pass PYLUT_LUT_I8 activations (pylut_lut_layout_i8) to pylut_gemm for it. Results differ from
 * the table path by activation rounding (int8 per scale group against int8 table entries).
 * 1 when the active ISA has a fast kernel for it and n tokens make it pay for qm; every ISA
 * runs PYLUT_LUT_I8 activations (the portable twin where there is no fast kernel). */
int pylut_gemm_i8_preferred(const pylut_qmatrix *qm, int n);

/* 1 when the active ISA runs ternary weights faster as two bit planes (a B2 matrix with codes
 * 0..2 and zero 1) than as T3, counting T3's fewer bytes: the loaders' default layout. */
int pylut_ternary_as_planes(void);
/* Several matrices reading the same tables (q/k/v, gate/up) in one pool dispatch. */
int pylut_gemm_multi(pylut_pool *pool, int n_mats, const pylut_qmatrix *const *qms,
                     const pylut_lut *lut, int n, float *const *ys, const int64_t *ldys);

/* ------------------------------------------------------------------ int8 baseline */

/* The llama.cpp-style dequant-dot path: b-bit codes row-major (4/b codes per byte, 32-weight
 * blocks), activations quantized to int8 per 32, multiply-add with maddubs. Used as the
 * benchmark baseline and compared against for prefill. Layout per row: [k/32] blocks of
 * 8*bits bytes; scale/bias fp16 [m][k/32]. */
typedef struct {
    int32_t bits;
    int64_t m, k;       /* k multiple of 32 */
    int64_t row_bytes;
    uint8_t *codes;     /* [m][row_bytes] */
    uint16_t *scale;    /* [m][k/32] */
    uint16_t *bias;     /* [m][k/32] */
} pylut_dq8matrix;
int pylut_dq8matrix_layout(pylut_dq8matrix *qm, int bits, int64_t m, int64_t k);
int pylut_dq8_pack(pylut_dq8matrix *qm, const uint8_t *codes, int64_t ld);
/* xq: int8 [k], xs: fp32 [k/32] scales, xsum: fp32 [k/32] sum of dequantized block values */
int pylut_dq8_quantize_x(int64_t k, const float *x, int8_t *xq, float *xs, float *xsum);
int pylut_dq8_gemv(pylut_pool *pool, const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                   const float *xsum, float *y);
/* n tokens: xq [n][k], xs/xsum [n][k/32], y [n][m] */
int pylut_dq8_gemm(pylut_pool *pool, const pylut_dq8matrix *qm, int n, const int8_t *xq,
                   const float *xs, const float *xsum, float *y);

/* Read n bytes at p across the pool (the bandwidth roofline benchmarks compare against). */
uint64_t pylut_read_bytes(pylut_pool *pool, const void *p, int64_t n);

/* Attention over one head's fp16 cache with the active ISA: out[hd] = softmax(scale*q.K^T) V.
 * k, v: len rows of stride ld (>= hd) elements; scores: scratch [len]. */
int pylut_attention_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                        int hd, float scale, float *out, float *scores);

/* ------------------------------------------------------------------ dispatch */

int pylut_isa_detect(void);            /* best ISA this CPU + OS run */
int pylut_isa_supported(int isa);
int pylut_isa_active(void);
int pylut_isa_set(int isa);            /* PYLUT_EISA if not supported */
const char *pylut_isa_name(int isa);
/* Feature flags as a comma-separated list ("sse4.2,avx2,fma,f16c,avx512bw,..."). */
const char *pylut_cpu_flags(void);

/* fp16 <-> fp32 in portable C (round-to-nearest-even), used by packing and scalar kernels. */
float pylut_fp16_to_fp32(uint16_t h);
uint16_t pylut_fp32_to_fp16(float f);

/* ------------------------------------------------------------------ sanitizer self-test */

/* Reads byte n of an n-byte heap buffer, only in the build of tools/sanitize.sh
 * (-DPYLUT_SANITIZE_SELFTEST), where AddressSanitizer must abort with a report; returns
 * PYLUT_EINVAL in every other build. */
int pylut_sanitize_selftest(int n);

#ifdef __cplusplus
}
#endif
#endif /* PYLUT_H */
