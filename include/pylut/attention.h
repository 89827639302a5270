/* attention.h - causal multi-head attention over a KV cache, tiled with an online softmax
 * (FlashAttention's method on a CPU): keys and values are read in blocks of PYLUT_ATTN_BLOCK
 * positions, each block once for every query row that shares its kv head (GQA/MQA without
 * copies), and a running max / sum / rescaled accumulator replaces the full score row.
 *
 * The cache holds one "row" per (position, kv head): hd elements as fp16, or int8 / 4-bit
 * codes with one fp16 scale per PYLUT_KV_BLOCK elements. The kernels read those rows
 * directly; nothing is dequantized beyond the block in flight.
 *
 * Work is split into items: (kv head, tile of query tokens, slice of the cache). Decode has
 * one query token, so the cache itself is sliced across threads and the slices' partial
 * max/sum/accumulators are merged afterwards. Kernels know nothing of models. */
#ifndef PYLUT_ATTENTION_H
#define PYLUT_ATTENTION_H

#include "pylut/pylut.h"

#ifdef __cplusplus
extern "C" {
#endif

enum pylut_kv_type {
    PYLUT_KV_F16 = 0, /* 2 bytes per element */
    PYLUT_KV_Q8 = 1,  /* int8 codes + fp16 scale per block: 1.06 bytes per element */
    PYLUT_KV_Q4 = 2,  /* 4-bit codes + fp16 scale per block: 0.56 bytes per element */
};

#define PYLUT_KV_BLOCK 32     /* elements per fp16 scale in the quantized types */
#ifndef PYLUT_ATTN_BLOCK
#define PYLUT_ATTN_BLOCK 16   /* cache positions per online-softmax step: 16 measured fastest (8-64 tried) */
#endif
#define PYLUT_ATTN_ROWS 64    /* query rows (heads x tokens) per work item */
#define PYLUT_ATTN_MAX_SPLITS 16
#define PYLUT_ATTN_MAX_HD 512

/* ------------------------------------------------------------------ cache rows */

/* Bytes of one cached head vector of hd elements (codes, then the fp16 block scales);
 * 0 for a bad type or hd. */
int64_t pylut_kv_row_bytes(int type, int hd);
/* Encode x[hd] into one cache row; decode a row back into x[hd]. The quantized types are
 * symmetric per block (int8: amax/127; 4-bit: Q4_0's grid, the extreme value maps to -8). */
int pylut_kv_encode(int type, int hd, const float *x, uint8_t *row);
int pylut_kv_decode(int type, int hd, const uint8_t *row, float *x);

/* ------------------------------------------------------------------ one attention call */

/* Streaming heads (DuoAttention / RazorAttention): a kv head may keep only the first `sink`
 * positions and the most recent `window` ones. Its rows sit in a compacted run of slots:
 * slots [0, sink) hold positions 0..sink-1, slot sink + i holds position stream_base + i.
 * A query at position p of such a head sees positions [0, sink) and (p - window, p]. */
typedef struct {
    const uint8_t *k, *v;    /* the head's slot 0; slots ld bytes apart */
    int64_t cap;             /* slots the head has room for (checked against the job) */
    int streaming;           /* 0: slot = position, the whole causal past; 1: sinks + window */
} pylut_attn_head;

typedef struct {
    /* the cache: row of (position p, kv head h) at k + h*hstride + p*ld (same for v). Keep a
     * head's rows contiguous (ld = row_bytes): a stream the hardware prefetcher can follow */
    int type, hd, n_heads, n_kv_heads;
    const uint8_t *k, *v;
    int64_t ld, hstride;     /* bytes per position (>= row_bytes), bytes per kv head */
    int len;                 /* positions written */
    /* the queries: token t (position pos0 + t) sees cache positions 0 .. pos0 + t */
    const float *q;          /* [n][n_heads * hd], row stride ldq floats */
    int64_t ldq;
    float *out;              /* [n][n_heads * hd], row stride ldo floats */
    int64_t ldo;
    int n, pos0;
    float scale;             /* usually 1/sqrt(hd) */
    /* optional per-kv-head caches: NULL keeps every head full at k/v + h*hstride (the plain
     * path, unchanged); otherwise heads[n_kv_heads] give each head's rows and kind */
    const pylut_attn_head *heads;
    int sink, window, stream_base; /* streaming heads only: see pylut_attn_head */
    /* the layer's own limits, every head: a sliding-window layer's query at p sees only
     * (p - swa, p] (0: the whole causal past); softcap > 0 turns each score s = scale*q.k
     * into softcap * tanh(s / softcap) (Gemma 2's attention logit soft-capping) */
    int swa;
    float softcap;
    /* filled by pylut_attn_plan */
    int hd_pad, group, rows, tokens_per_item, q_tiles, splits;
    int64_t n_items;
    int64_t scratch_floats;  /* per thread */
    int64_t partial_floats;  /* shared, only when splits > 1 */
    float *partial;          /* set by the caller when splits > 1 */
    /* optional paged cache (NULL blocks: the rows above): position p of a full kv head h
     * sits at blocks[p / block_len] + k_off[h] + (p % block_len) * ld (v_off for values).
     * A block holds block_len positions of every full head, so a head's rows within one
     * block are contiguous and the kernel gets one run per block; runs are merged by the
     * running max/sum/acc the kernel already carries. A block's runs need not be side by
     * side (the model's pool interleaves neighbouring blocks' runs per head): the offsets
     * say where each is. Streaming heads (heads[]) keep their own rows.
     * blocks[0 .. ceil(len / block_len)) must all be set. */
    const uint8_t *const *blocks;
    int block_len;
    int64_t block_bytes;     /* bytes from blocks[i] its runs lie within (checked against
                              * the offsets) */
    const int64_t *k_off, *v_off; /* [n_kv_heads] */
} pylut_attn_job;

/* Check every size and pointer of the job and plan its items for nth threads (a cache
 * slice per item when one query tile leaves threads idle). PYLUT_EINVAL if anything is off. */
int pylut_attn_plan(pylut_attn_job *job, int nth);
/* Item w in [0, n_items): writes out (no splits) or job->partial (splits). */
void pylut_attn_item(const pylut_attn_job *job, int64_t w, float *scratch);
/* With splits: fold the slices of kv head h into out. */
void pylut_attn_merge(const pylut_attn_job *job, int kv_head);
/* The whole job across the pool (plans, allocates its own scratch). */
int pylut_attention(pylut_pool *pool, pylut_attn_job *job);

#ifdef __cplusplus
}
#endif
#endif
