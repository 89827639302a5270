/* kernels.h - the per-ISA kernel table every ISA unit fills, and helpers they share.
 * Not a public header: kernels.h is included by src/ files only. */
#ifndef PYLUT_KERNELS_H
#define PYLUT_KERNELS_H

#include "pylut/pylut.h"

/* B-type table entries of k-groups [j0, j1) of x (k values) at scale inv into tbl + 16 j
 * (pylut_lut_build_b_range, below) */
typedef void (*pylut_b_entries_fn)(const float *x, int64_t k, int64_t j0, int64_t j1, float inv, int8_t *tbl);

/* One ISA's kernels. Ranges are half-open and already validated by dispatch.c: per-ISA code
 * trusts them (and nothing else). */
typedef struct {
    /* y[t][m] for row tiles [tile0, tile1) of qm, tokens [0, n) of lut, row stride ldy */
    void (*gemm_b)(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                   int64_t tile0, int64_t tile1);
    void (*gemm_t3)(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                    int64_t tile0, int64_t tile1);
    /* the same for a B-type matrix and int8 activations (PYLUT_LUT_I8); NULL: the ISA has no fast
     * one, pylut_gemm_b_i8_scalar serves */
    void (*gemm_b_i8)(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y, int64_t ldy,
                      int64_t tile0, int64_t tile1);
    /* the model's prompt chunks take gemm_b_i8 from this many tokens, by [two-level scales]
     * [bits]; 0: never (pylut_gemm_i8_preferred; PYLUT_I8_FROM_*) */
    unsigned char i8_from[2][9];
    /* the same for T3 matrices (pylut_t3_i8_group): 0 never, where gemm_b_i8 has no SIMD T3
     * unpacking */
    unsigned char t3_i8_from;
    /* the table lookups of a 2-bit B matrix (pylut_gemm_b_many_fits) for many tokens at once,
     * bit-identical to gemm_b; NULL: gemm_b serves every token count */
    void (*gemm_b_many)(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                        int64_t tile0, int64_t tile1);
    /* gemm_b_many takes calls of this many tokens and more */
    int b_many_from;
    /* the B-type table entries of k-groups [j0, j1) into tbl + 16 j (NULL: the portable loop) */
    pylut_b_entries_fn b_entries;
    /* T3 tables, scale groups [g0, g1) (NULL: pylut_lut_build_t3_range): its bytes */
    void (*t3_build)(const float *x, pylut_lut *lut, int64_t g0, int64_t g1);
    /* int8 activations, scale groups [g0, g1) (NULL: pylut_act8_build_range): its bytes */
    void (*act8_build)(const float *x, pylut_lut *act, int64_t g0, int64_t g1);
    /* 1: ternary weights run faster as two bit planes (B2, 2.06 bits/weight with TQ's
     * scales) than densely packed (T3, 1.74): the loader's default (pylut_ternary_as_planes) */
    unsigned char ternary_planes;
    /* out[hd] = softmax(scale * q.K^T) V over len cached positions; K and V are fp16 rows
     * of stride ld elements; scores: scratch [len] */
    void (*attn_f16)(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                     int hd, float scale, float *out, float *scores);
    /* rows [r0, r1) of the int8 dequant-dot baseline (baseline/) */
    void (*dq8_gemv)(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs, const float *xsum,
                     float *y, int64_t r0, int64_t r1);
} pylut_kernels;

extern const pylut_kernels pylut_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const pylut_kernels pylut_kernels_avx2;
extern const pylut_kernels pylut_kernels_avx512;
extern const pylut_kernels pylut_kernels_avx512vbmi;
void pylut_attn_f16_avx2(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                         int hd, float scale, float *out, float *scores);
void pylut_dq8_gemv_avx2(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1);
#endif
#if defined(__aarch64__)
extern const pylut_kernels pylut_kernels_neon;
extern const pylut_kernels pylut_kernels_neon_dot;
#endif

/* The comparison kernels (baseline/): the llama.cpp-style int8 dequant-dot GEMV, rows
 * [r0, r1), and the naive per-head attention (pylut_attn_f16_* below). */
void pylut_dq8_gemv_scalar(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                           const float *xsum, float *y, int64_t r0, int64_t r1);
#if defined(__aarch64__)
void pylut_dq8_gemv_neon(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1);
void pylut_dq8_gemv_neon_dot(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                             const float *xsum, float *y, int64_t r0, int64_t r1);
#endif

/* ------------------------------------------------------------------ F16 GEMM (src/f16/)
 * y[t][row] for the rows < m of tiles [tile0, tile1) of an F16 matrix, tokens [0, n) of fp32
 * activations (PYLUT_LUT_F32); one per vector width, chosen by dispatch.c like attention's. */
typedef void (*pylut_gemm_f16_fn)(const pylut_qmatrix *qm, const pylut_lut *x, int n, float *y, int64_t ldy,
                                  int64_t tile0, int64_t tile1);
void pylut_gemm_f16_scalar(const pylut_qmatrix *qm, const pylut_lut *x, int n, float *y, int64_t ldy,
                           int64_t tile0, int64_t tile1);
#if defined(__x86_64__) || defined(_M_X64)
void pylut_gemm_f16_avx2(const pylut_qmatrix *qm, const pylut_lut *x, int n, float *y, int64_t ldy,
                         int64_t tile0, int64_t tile1);
void pylut_gemm_f16_avx512(const pylut_qmatrix *qm, const pylut_lut *x, int n, float *y, int64_t ldy,
                           int64_t tile0, int64_t tile1);
#endif
#if defined(__aarch64__)
void pylut_gemm_f16_neon(const pylut_qmatrix *qm, const pylut_lut *x, int n, float *y, int64_t ldy,
                         int64_t tile0, int64_t tile1);
#endif
/* fp32 activations: units [g0, g1) of lut->group floats of x into lut->tbl, zeros past k */
void pylut_f32_build_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1);

/* Table builders (portable C, O(k) work per token), scale groups [g0, g1) of the tables for
 * x. The B-type builder takes the entries of each k-group from `entries` (NULL: the portable
 * loop): eight sums of four signed activations, the one part that pays for SIMD (a few
 * percent of a decode step in C); every copy must write the portable loop's bytes exactly. */
void pylut_b_entries_scalar(const float *x, int64_t k, int64_t j0, int64_t j1, float inv, int8_t *tbl);
void pylut_lut_build_b_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1, pylut_b_entries_fn entries);
void pylut_lut_build_t3_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1);
/* int8 activations (PYLUT_LUT_I8), scale groups [g0, g1) */
void pylut_act8_build_range(const float *x, pylut_lut *act, int64_t g0, int64_t g1);
/* Any kind of table set, scale groups [g0, g1) of the one for x */
void pylut_lut_build_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1);

/* ------------------------------------------------------------------ int8 prefill (prefill.c)
 * A row tile's codes are unpacked a k-chunk at a time into "dword codes": [k-group][64 rows]
 * uint32, byte e of row r's dword = code of weight 4j+e (one vpdpbusd lane per row), with the
 * chunk's per-group scale and bias as floats [group][64]. Per token and group g the twin and
 * every SIMD kernel then do, in this order (so all agree bit for bit):
 *     I = sum of the group's code * xq (int32, exact)
 *     acc = fmaf((float)I, scale * xs_g, acc);   acc = fmaf(bias, sumx_g, acc)
 * with bias = -zero * scale for matrices without a bias array. */
/* Where the int8 prefill kernel beats the table lookups, tokens per chunk by [two-level][bits].
 * The lookups' cost grows with the planes, the int8 kernel's does not, and its tile unpacking
 * is paid once per 64 tokens. 1-bit, T3 ternary and single-token decode steps stay on the
 * tables; 8-bit codes stay there on AVX2 (vpmaddubsw would saturate). Measured:
 * docs/benchmarks.md. */
/* Plain 4-bit on VNNI without GFNI from 12, not the 8 a 2048x2048 matrix in L2 gave: in the model, with
 * the weights streaming from memory, batched decode steps of 8-10 sequences ran 5-14 % faster
 * on the tables (1B Q4_0, Zen 5, 1 thread; docs/benchmarks.md). */
#define PYLUT_I8_FROM_VNNI {{0, 0, 16, 8, 12, 4, 4, 4, 4}, {0, 0, 32, 8, 8, 4, 4, 4, 4}}
/* With GFNI (the VBMI tier) plain 2..4-bit matrices take the int8 kernel from 2 tokens: the
 * few-token kernel (prefill_few_gfni.c) decodes codes in registers, so a batched decode step
 * of B sequences no longer pays ~a token of table lookups per extra sequence. 1B model steps
 * (Zen 5, 1 thread, CPU time, alternated with the tables): Q4_0 B = 2 / 4 / 8 took 19.5 /
 * 27.2 / 48 ms against 25.7 / 41.8 / 71.8, TQ2_0 11.0 / 17.8 / 30.6 against 14.3 / 23.5 /
 * 39.1; one token stays on the tables (Q4_0 18.1 against 18.8 ms; and decode's numbers do not
 * change). Plain 3-bit from 2 too: 5632x2048-class matrices streamed from DRAM, 0.76x the
 * tables' time at 2 tokens. Plain 5..8-bit from 2 (the kernel decodes up to 8 planes):
 * gemma3-1b Q4_K_M, whose Q8_0 head and Q5_0 body are 3/4 of its weights, stepped B = 2 / 3
 * / 4 sequences in 30 / 31 / 34 ms against 34 / 43 / 35 with Q5_0, Q8_0 on the tables below
 * 4 tokens and the few-token kernel from 4 (1 thread, CPU time, alternated; 6 and 7 bits,
 * in no file here, follow 5 and 8).
 * Two-level 3..6-bit (Q3_K..Q6_K) from 2 as well, through the same kernel: their tables cost
 * ~a token of lookups per extra sequence and the driver's unpacking ~5 tokens of dot
 * products. Model steps of B = 2 / 4 / 8 sequences (Zen 5, 1 thread, batchstep.py,
 * alternated with the tables below 8 (4-bit) / 4 (6-bit) and the driver from there):
 * qwen3-1b Q4_K_M (Q4_K + Q6_K) 40.6 / 56.6 / 102 ms against 51.0 / 91.4 / 128; gemma3-1b
 * Q4_K_M 27.4 / 32.8 / 56.9 against 35.8 / 59.7 / 77.2; the 1B Q4_0 file, whose Q6_K head is
 * its one two-level matrix, 0-3 ms a step (docs/kernels.md); one token stays on the tables. Q3_K from 2: the 1B Q2_K file's 4-sequence steps 29.6 against 32-35 ms. Q2_K stays
 * on the tables below 32: through int8 its 2-sequence steps ran 8 % slower (its 16-weight
 * groups' float epilogue outweighs 2-bit lookups). */
#define PYLUT_I8_FROM_VNNI_GFNI {{0, 0, 2, 2, 2, 2, 2, 2, 2}, {0, 0, 32, 2, 2, 2, 2, 4, 4}}
#define PYLUT_I8_FROM_AVX2 {{0, 0, 0, 8, 8, 8, 8, 8, 0}, {0, 0, 0, 16, 16, 16, 16, 16, 0}}
/* NEON sdot (Cortex-A76 and later): AVX2's thresholds, not measured (no ARM hardware here,
 * and qemu's timings say nothing). sdot does 4 products per lane like vpdpbusd, so the int8
 * side is at least AVX2's; 8-bit codes do not fit its signed bytes. */
#define PYLUT_I8_FROM_NEON_DOT PYLUT_I8_FROM_AVX2
#define PYLUT_I8_CHUNK 256 /* k per unpacked chunk: 16 KB of dword codes per 64-row tile */
/* tokens per pass over an unpacked chunk (each pass re-unpacks): a 128-token prompt chunk
 * unpacks once (32 KB of float sums a pass, in L2) */
#define PYLUT_I8_TOKENS 128
/* A matrix's float32 post-scale: finite and non-zero (x - x is 0 only for finite x) */
static inline int pylut_post_ok(float post) { return post != 0.0f && post - post == 0.0f; }
/* T3 takes the int8 kernels when its groups are whole k-groups of 4 and whole pairs of
 * triples (no padded triple: a multiple of 12) and fit one chunk; the 2B4T loader's 192 does */
static inline int pylut_t3_i8_group(int group) { return group % 12 == 0 && group <= PYLUT_I8_CHUNK; }
static inline int pylut_i8_chunk(int group) { return group * (PYLUT_I8_CHUNK / group > 0 ? PYLUT_I8_CHUNK / group : 1); }
/* Float scale and bias of groups [g0, g1) of tile t into s, b: [g1-g0][64] (portable) */
void pylut_i8_params(const pylut_qmatrix *qm, int64_t t, int64_t g0, int64_t g1, float *s, float *b);
/* Dword codes of k-groups [j0, j1) of tile t into w: [j1-j0][64] (portable) */
void pylut_i8_unpack(const pylut_qmatrix *qm, int64_t t, int64_t j0, int64_t j1, uint32_t *w);
void pylut_gemm_b_i8_scalar(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                            int64_t ldy, int64_t tile0, int64_t tile1);
/* The second part (the rounding residual) of n two-part int8 activations, as one-part views
 * into the same buffers: every kernel runs it as a second pass over the unpacked chunk. */
static inline void pylut_act8_residual_views(const pylut_lut *act, int n, pylut_lut *lo) {
    for (int i = 0; i < n; i++) {
        lo[i] = act[i];
        lo[i].parts = 1;
        lo[i].tbl_bytes = act[i].k_pad;
        lo[i].tbl = act[i].tbl + act[i].k_pad;
        lo[i].tscale = act[i].tscale + act[i].n_groups;
        lo[i].sumx = act[i].sumx + act[i].n_groups;
    }
}
/* Matrices gemm_b_many takes: 2 planes, per-group fp16 scales (no super-blocks) */
static inline int pylut_gemm_b_many_fits(const pylut_qmatrix *qm) {
    return qm->type == PYLUT_TYPE_B2 && !qm->super;
}
/* From how many tokens the AVX2 many-token lookups beat lut_gemm_b's token-at-a-time walk
 * (tools/bench_prefill.py --one-by-one; docs/kernels.md "Many tokens on the tables") */
#define PYLUT_B_MANY_FROM_AVX2 2
#if defined(__x86_64__) || defined(_M_X64)
void pylut_gemm_b2_many_avx2(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                             int64_t tile0, int64_t tile1);
void pylut_b_entries_avx2(const float *x, int64_t k, int64_t j0, int64_t j1, float inv, int8_t *tbl);
void pylut_act8_build_range_avx512(const float *x, pylut_lut *act, int64_t g0, int64_t g1);
void pylut_gemm_b_i8_avx2(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                          int64_t ldy, int64_t tile0, int64_t tile1);
void pylut_gemm_b_i8_vnni(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                          int64_t ldy, int64_t tile0, int64_t tile1);
void pylut_gemm_b_i8_vnni_gfni(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                               int64_t ldy, int64_t tile0, int64_t tile1);
/* prefill_few_gfni.c: the int8 GEMM for a few tokens of a 2..8-plane matrix (two-level:
 * 2..6), bit-identical to the twin; pylut_gemm_b_i8_gfni (the VBMI tier's gemm_b_i8) routes
 * calls of fewer than PYLUT_I8_FEW_TO_GFNI[two-level][bits] tokens to it and the rest to
 * pylut_gemm_b_i8_vnni_gfni (0: never). Measured in 1B model steps of B sequences (Zen 5, 1
 * thread, CPU time, alternated): Q4_0 at B = 16 / 20 / 24 took 92 / 116 / 140 ms here against
 * 97 / 109 / 126 through the driver; TQ2_0 (2 planes, 256-weight groups, a cheaper decoding)
 * 109 against 117 ms at B = 32, even at 48 and 64. Two-level the same 18: qwen3-1b Q4_K_M at B
 * = 12 / 16 / 20 / 24 took 133-144 / 171-176 / 219-231 / 261-268 ms here against 150-153 /
 * 181-183 / 210-213 / 237-246 (two rounds); Q2_K (from 32 tokens) stays on the driver; the
 * plain 5..8-bit ones of gemma3-1b Q4_K_M took 100-103 ms at B = 16 against 101-106. */
#define PYLUT_I8_FEW_TO_GFNI {{0, 0, 48, 18, 18, 18, 18, 18, 18}, {0, 0, 0, 18, 18, 18, 18, 0, 0}}
int pylut_gemm_b_i8_few_fits(const pylut_qmatrix *qm);
void pylut_gemm_b_i8_few_gfni(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                              int64_t ldy, int64_t tile0, int64_t tile1);
void pylut_gemm_b_i8_gfni(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                          int64_t ldy, int64_t tile0, int64_t tile1);
#endif
#if defined(__aarch64__)
/* The attribute of the functions that use sdot (lut_neon.c, prefill_neon.c); their units are
 * compiled for plain Armv8. GCC 12 rejects target("+dotprod"); "arch=armv8.2-a+dotprod"
 * works in GCC and clang >= 16. Raising the arch inside these functions is safe:
 * FEAT_DotProd needs Armv8.2 at least. */
#if defined(__clang__) && __clang_major__ < 16
#define TARGET_DOTPROD __attribute__((target("dotprod")))
#else
#define TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
/* sdot, for TARGET_DOTPROD functions only. clang < 16's arm_neon.h declares vdotq_s32 only
 * when the whole unit is built with +dotprod (__ARM_FEATURE_DOTPROD), which these units must
 * not be; the instruction itself is accepted inside a dotprod-target function, so there it is
 * written out. The name holds "dot" like every function allowed to contain sdot. */
#include <arm_neon.h>
#if defined(__clang__) && __clang_major__ < 16 && !defined(__ARM_FEATURE_DOTPROD)
static inline __attribute__((always_inline)) TARGET_DOTPROD int32x4_t pylut_sdot(int32x4_t acc, int8x16_t a,
                                                                                  int8x16_t b) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
#else
#define pylut_sdot vdotq_s32
#endif
void pylut_gemm_b_i8_neon_dot(const pylut_qmatrix *qm, const pylut_lut *act, int n, float *y,
                              int64_t ldy, int64_t tile0, int64_t tile1);
#endif

/* The portable attention twin (also what NEON uses until it has its own). */
void pylut_attn_f16_scalar(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                           int hd, float scale, float *out, float *scores);
/* Attention with the active ISA's kernel. */
void pylut_attn_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len, int hd,
                    float scale, float *out, float *scores);

/* The online-softmax attention step (attn_body.h), one instantiation per ISA. One kv head's
 * rows against cache positions [j0, j1): k, v point at that head's row of position 0, ld
 * bytes apart; or, with kp/vp set (a paged cache), the rows of positions
 * [PYLUT_ATTN_BLOCK * i, PYLUT_ATTN_BLOCK * (i + 1)) start at kp[i] / vp[i] (k, v unused;
 * j0 a multiple of PYLUT_ATTN_BLOCK): every step's rows are one contiguous run, so a whole
 * cache slice stays one call. qs: [rows][hd_pad] queries times scale*log2(e); lim[rows]: row r sees
 * positions < lim[r] and, given lo (sliding-window layers; NULL: none), none below lo[r];
 * softcap: Gemma 2's logit soft-cap in the log2 domain (a score s becomes c*tanh(s/c); 0:
 * none); mx, sum: [rows] running max (log2 domain) and sum; acc: [rows][hd_pad];
 * kbuf: [2][PYLUT_ATTN_BLOCK][hd_pad] scratch (keys, values), zeroed once; sbuf:
 * [rows][PYLUT_ATTN_BLOCK]. */
typedef void (*pylut_attn_rows_fn)(int type, int hd, int hd_pad, const uint8_t *k, const uint8_t *v,
                                   const uint8_t *const *kp, const uint8_t *const *vp, int64_t ld, int rows, const float *qs, const int32_t *lim,
                                   const int32_t *lo, float softcap, int j0, int j1, float *mx, float *sum,
                                   float *acc, float *kbuf, float *sbuf);
#define PYLUT_ATTN_ROWS_DECL(name)                                                                   \
    void name(int type, int hd, int hd_pad, const uint8_t *k, const uint8_t *v, const uint8_t *const *kp, \
              const uint8_t *const *vp, int64_t ld, int rows,                                         \
              const float *qs, const int32_t *lim, const int32_t *lo, float softcap, int j0, int j1,  \
              float *mx, float *sum, float *acc, float *kbuf, float *sbuf)
PYLUT_ATTN_ROWS_DECL(pylut_attn_rows_scalar);
#if defined(__x86_64__) || defined(_M_X64)
PYLUT_ATTN_ROWS_DECL(pylut_attn_rows_avx2);
PYLUT_ATTN_ROWS_DECL(pylut_attn_rows_avx512);
#endif
#if defined(__aarch64__)
PYLUT_ATTN_ROWS_DECL(pylut_attn_rows_neon);
#endif
/* The active ISA's instantiation. */
pylut_attn_rows_fn pylut_attn_rows_active(void);

/* ------------------------------------------------------------------ element-wise ops (src/vecops/)
 * The forward pass's per-element work, one vec_body.h instantiation per ISA, picked once by
 * dispatch.c. Sizes are trusted (the model code's own, or checked by vecops.c's entry points).
 * Each SIMD table equals the scalar twin bit for bit except rmsnorm (see vec_body.h). */
typedef struct {
    /* out[n] = x * (1/rms(x)) * w; out may be x */
    void (*rmsnorm)(float *out, const float *x, const float *w, int64_t n, float eps);
    /* g[n] = act(g) * u, in place: SiLU, GELU (tanh form), ReLU^2 */
    void (*gate_silu)(float *g, const float *u, int64_t n);
    void (*gate_gelu_tanh)(float *g, const float *u, int64_t n);
    void (*gate_relu2)(float *g, const float *u, int64_t n);
    /* x[n] += y */
    void (*add)(float *x, const float *y, int64_t n);
    /* v[0, n_rot) rotated by a pylut_rope_table of the same n_rot and pair layout */
    void (*rope)(float *v, int n_rot, const float *cs, int neox);
    /* out[2n bytes, any alignment] = x[n] as IEEE fp16: pylut_fp32_to_fp16 bit for bit
     * (round to nearest even, overflow to inf, every NaN to the quiet NaN 0x7e00 with its sign) */
    void (*to_f16)(uint8_t *out, const float *x, int64_t n);
} pylut_vecops;

extern const pylut_vecops pylut_vecops_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const pylut_vecops pylut_vecops_avx2;
extern const pylut_vecops pylut_vecops_avx512;
#endif
#if defined(__aarch64__)
extern const pylut_vecops pylut_vecops_neon;
#endif
/* The active ISA's table (dispatch.c). */
const pylut_vecops *pylut_vecops_active(void);
/* RoPE's cos/sin for one position: cs[2 * n_rot] in the layout pylut_vecops.rope reads
 * (vecops.c); angle (float)pos * inv_freq[i], both scaled by scale */
void pylut_rope_table(float *cs, int n_rot, int pos, const float *inv_freq, float scale, int neox);

/* Sub-value at index i ([m_pad/64][k_pad/group][64] order) of a two-level matrix: its
 * sub-scale (bias 0) or sub-bias (bias 1), from int8 arrays or from the nibble bytes. */
static inline int pylut_b_sub(const pylut_qmatrix *qm, int bias, int64_t i) {
    if (qm->sub_nibbles) {
        const uint8_t v = ((const uint8_t *)qm->sub_scale)[i];
        return bias ? v >> 4 : v & 15;
    }
    return bias ? qm->sub_bias[i] : qm->sub_scale[i];
}

/* A B-type matrix's scale (bias 0) or bias (bias 1) of (row r of tile t, group g): fp16, or
 * fp16 super-block value * sub-value. */
static inline float pylut_b_param(const pylut_qmatrix *qm, int bias, int64_t t, int64_t g, int r) {
    const uint16_t *base = bias ? qm->bias : qm->scale;
    const int64_t groups = qm->k_pad / qm->group;
    if (!qm->super) return pylut_fp16_to_fp32(base[(t * groups + g) * PYLUT_TILE_M + r]);
    const int64_t supers = qm->k_pad / qm->super, gps = qm->super / qm->group;
    return pylut_fp16_to_fp32(base[(t * supers + g / gps) * PYLUT_TILE_M + r]) *
           (float)pylut_b_sub(qm, bias, (t * groups + g) * PYLUT_TILE_M + r);
}

/* The code that means weight 0 on the int8 path, where a group without a bias array gets
 * -zero * scale: T3 codes are trit + 1 (pylut_i8_unpack), B-types carry their own. */
static inline float pylut_i8_zero(const pylut_qmatrix *qm) { return qm->type == PYLUT_TYPE_T3 ? 1.0f : qm->zero; }

/* Two-level matrices summed in integers ("int-super"): per (row, super-block)
 *     S = sum_g sub_scale_g * (A_g + c * sumq_g),   B = sum_g sub_bias_g * sumq_g   (int32)
 *     y += (d * tscale/2) * S + (dmin * tscale) * B
 * with A_g the group's lookup sum (as in pylut.h) and sumq_g = round(sumx_g / tscale) on the
 * super-block's one table scale: c/2 * tscale * sumq_g is the (2^b-1)/2 * sumx (or, without a
 * bias array, ((2^b-1)/2 - zero) * sumx) term, so c = 2^b - 1 or 2^b - 1 - 2*zero.
 * Bounds, with |entry| <= 127 and tscale the super-block's max k-group sum |x| / 127:
 *   |A_g| <= (2^b-1) * 127 * group/4 and |c * sumq_g| <= (2^b-1) * 127 * group/4, both
 *   <= 32766 when (2^b-1) * group <= 1032 (SIMD kernels keep them in int16; Q2_K..Q6_K fit);
 *   |S| <= 128 * 2 * (2^b-1) * 127 * super/4 < 2^31 when (2^b-1) * super <= 262144.
 * Anything else (non-integral 2*zero too) keeps per-group float scales.
 * With sub_nibbles, B sums |sub_bias| and the stored dmin carries the sign: (-dmin * tscale)
 * * (-B) rounds exactly like (dmin * tscale) * B, so y equals the int8 form's bit for bit. */
static inline int pylut_b_int_super(const pylut_qmatrix *qm) {
    if (!qm->super || qm->type < PYLUT_TYPE_B1 || qm->type > PYLUT_TYPE_B8) return 0;
    const int top = (1 << qm->bits) - 1;
    return top * qm->group <= 1032 && top * qm->super <= 262144 &&
           (qm->has_bias || 2.0f * qm->zero == (float)(int)(2.0f * qm->zero));
}
static inline int pylut_b_sumq_coef(const pylut_qmatrix *qm) {
    const int top = (1 << qm->bits) - 1;
    return qm->has_bias ? top : top - (int)(2.0f * qm->zero);
}
/* int16 sumq [n_groups] of int-super tables: right after the table entries */
static inline int16_t *pylut_lut_sumq(const pylut_lut *lut) {
    return (int16_t *)(void *)(lut->tbl + lut->k_pad / PYLUT_KGROUP * 16);
}

/* Row tiles [tile0, tile1) of y[n][m] = W x_n with the active ISA's kernel: for callers that
 * split work themselves (the forward pass runs every stage inside one pool dispatch). */
void pylut_gemm_tiles(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                      int64_t tile0, int64_t tile1);

/* Runs the statement with NAME an enum constant equal to bits (1..8; anything else runs as
 * 8): each width gets its own inlined copy of a kernel, whose loops over planes then unroll.
 * The one bit dispatch of the LUT body (lut/lut_body.h) and the prefill driver. */
#define PYLUT_FOR_BITS(bits, NAME, ...)                \
    switch (bits) {                                    \
    case 1: { enum { NAME = 1 }; __VA_ARGS__; } break; \
    case 2: { enum { NAME = 2 }; __VA_ARGS__; } break; \
    case 3: { enum { NAME = 3 }; __VA_ARGS__; } break; \
    case 4: { enum { NAME = 4 }; __VA_ARGS__; } break; \
    case 5: { enum { NAME = 5 }; __VA_ARGS__; } break; \
    case 6: { enum { NAME = 6 }; __VA_ARGS__; } break; \
    case 7: { enum { NAME = 7 }; __VA_ARGS__; } break; \
    default: { enum { NAME = 8 }; __VA_ARGS__; } break; \
    }

/* Trit triple (a,b,c) in {-1,0,1}^3 -> v = 9(a+1)+3(b+1)+(c+1) in [0,27). v and 26-v are
 * negatives of each other, so 14 table entries (v <= 13) plus a sign bit cover all 27. */
#define PYLUT_T3_ZERO 13

/* round(v * inv) to int8, half to even like lrintf but without a libm call: adding and
 * removing 1.5 * 2^23 leaves the nearest integer (|v * inv| <= 127 by construction of the
 * scale, far inside the trick's 2^22 range; the compiler may not reassociate it away). */
static inline int8_t pylut_round_i8(float v, float inv) {
    const float magic = 12582912.0f;
    float r = (v * inv + magic) - magic;
    return (int8_t)(int)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
}

/* Where the nibble of (row r in tile, plane i) sits inside one k-group's bytes of a B matrix:
 * returns the byte offset and sets *hi when it is the high nibble. */
static inline int64_t pylut_b_nibble_pos(int bits, int r, int plane, int *hi) {
    *hi = r >= 32;
    const int rr = r & 31, block = plane / 2;
    if (plane == bits - 1 && (bits & 1)) /* lone top plane: 32 bytes after the pair blocks */
        return 64 * block + rr;
    return 64 * block + 16 * (rr / 8) + 2 * (rr % 8) + (plane & 1);
}

/* Bytes of packed codes per (row tile, k-group) for b planes. */
static inline int pylut_b_kgroup_bytes(int bits) { return 32 * bits; }
#define PYLUT_T3_PAIR_BYTES 80
/* T3: byte (and sign bit) of row r, triple h of a pair: the two triples of one row sit side
 * by side, so a pairwise add (maddubs with ones / vpadalq) sums them and keeps rows in order */
static inline int pylut_t3_pos(int r, int h) { return 2 * (r & 31) + h; }

#endif
