/* model_state.h - a session's state (struct pylut_state: the KV cache, streaming heads,
 * activation buffers and table sets), private to src/model/: kv_state.c owns its life and
 * the cache's positions, forward.c runs the step over it. */
#ifndef PYLUT_MODEL_STATE_H
#define PYLUT_MODEL_STATE_H

#include <stdatomic.h>
#include <stdint.h>

#include "kernels.h"
#include "pylut/attention.h"
#include "pylut/model.h"

#define MAX_TABLE_SETS 8   /* distinct (k, group, family) table layouts a model may need */

typedef struct {               /* one activation set per token of a chunk */
    pylut_lut *lut;            /* [max_batch], all of one layout */
    int8_t *tbl;               /* [max_batch][tbl_bytes] */
    float *tscale, *sumx;      /* [max_batch][parts][n_groups] (parts: 2 for split int8) */
} lut_batch;

typedef struct {
    lut_batch tables;          /* lookup tables (PYLUT_LUT_B or PYLUT_LUT_T3) */
    lut_batch act;             /* B-type sets: the same tokens as int8 activations, for chunks
                                * the int8 prefill kernel takes (pylut_gemm_i8_preferred);
                                * act.lut NULL where the layout has none (T3 groups
                                * that are not pylut_t3_i8_group) */
    const pylut_qmatrix *by_bits[9]; /* one matrix of the set per bit width (or NULL): the
                                * int8 choice depends only on the width within one layout */
    unsigned act_bits;         /* this chunk: bit b set when the set's b-bit matrices read act
                                * (each width decides for itself: a Q2_K matrix beside a Q3_K
                                * one in the same layout keeps the tables where they win) */
} table_set;

struct pylut_state {
    int n_ctx, max_batch, pos, n_sets;
    int batch_invariant;       /* 1: never the int8 prefill path, so a token's results do not
                                * depend on how many tokens share its chunk */
    int split_int8;            /* 1: every matrix with an int8 path reads its input as two int8
                                * parts (value and rounding residual), decode steps included:
                                * activations at ~2^-15 instead of ~2^-8 of their group's max */
    int q_dim, kv_dim, n_layers, n_kv_heads, kv_type;
    int64_t row_bytes;         /* one cached head vector (pylut_kv_row_bytes) */
    /* Full heads live in blocks of PYLUT_KV_PAGE positions from a pool shared by the sessions
     * of a model (kv_pool.c): a block is PYLUT_KV_PAGE rows of every full head, keys then
     * values, so one table per session covers every layer. Blocks are shared by reference
     * between sessions holding the same prefix and copied before a write while shared.
     * A block's runs (one head's PYLUT_KV_PAGE rows) are not side by side: the pool keeps
     * each head's runs of neighbouring block ids together (kv_pool.c, "Layout"), and
     * kv_off says where a head's run is from the block's first one.
     * Invariant: blocks[0 .. ceil(pos / PYLUT_KV_PAGE)) are all set. */
    pylut_kv_pool *pool;       /* NULL when no head is full (nothing paged) */
    int n_full;                /* full (non-streaming) kv heads over all layers */
    int64_t block_bytes;       /* 2 * n_full * PYLUT_KV_PAGE * row_bytes: a block's rows */
    int64_t block_span;        /* bytes from a block's first run that its runs reach within
                                * (the attention job's block_bytes, checked against kv_off) */
    uint8_t **blocks;          /* [n_blocks]: each block's first run, or NULL (not yet needed) */
    int64_t *bids;             /* [n_blocks]: each block's id in the pool, or -1 */
    int n_blocks;              /* ceil(n_ctx / PYLUT_KV_PAGE) */
    /* Streaming heads keep their compacted slots in one private allocation (they are small
     * and rewritten in place by the compaction, so sharing them would buy nothing) */
    uint8_t *stream_kv;        /* [2][streaming heads][stream_slots][row_bytes] */
    int64_t stream_kv_bytes;
    int64_t kv_bytes;          /* what the cache would take at n_ctx (capacity, not use) */
    int64_t *kv_off;           /* [2][n_layers][n_kv_heads]: a full head's run from a block's first,
                                * a streaming head's slot 0 in stream_kv */
    /* streaming heads (NULL heads: none, every slot is its position): a streaming head keeps
     * positions [0, sink) in slots [0, sink) and positions stream_base.. from slot sink on, in
     * stream_slots slots; older positions are compacted away before a chunk would not fit */
    pylut_attn_head *heads;    /* [n_layers][n_kv_heads] or NULL */
    int n_streaming, sink, window, stream_base;
    int64_t stream_slots;
    float *x, *xb, *q, *k, *v; /* [max_batch][dim | q_dim | kv_dim] */
    float *att;                /* [max_batch][q_dim] */
    float *tmp;                /* [max_batch][dim] */
    float *hb, *hb2;           /* [max_batch][ffn_dim] */
    float *attn_scratch;       /* [scratch_threads][attn_scratch_floats], grown to the pool's size */
    int scratch_threads;
    int64_t attn_scratch_floats;
    float *attn_partial;       /* [attn_partial_floats]: decode slices' max/sum/acc, grown to the plan */
    int64_t attn_partial_floats;
    float *inv_freq;           /* [rope_dims/2] */
    float *inv_freq_swa;       /* [rope_dims/2] of the sliding-window layers, or NULL: inv_freq */
    float rope_scale;          /* cos/sin factor (YaRN's attention factor; else 1) */
    float *rope_cs;            /* [max_batch][inv_freq_swa ? 2 : 1][2 * rope_dims]: each token's RoPE
                                * cos/sin of the step (pylut_rope_table), made once and shared by
                                * every layer and head: per chunk, so a long prompt needs no more */
    atomic_llong *tickets;     /* [5*n_layers + 1]: next unclaimed tile of each GEMM stage
                                * (4 per layer + output), then each layer's attention item */
    /* a step over several sequences (forward.c), sized by max_batch: a step has at most
     * max_batch tokens and so at most max_batch sequences */
    int *tok_seq;              /* [max_batch]: the sequence of each token of the step */
    int *seq_first;            /* [max_batch + 1]: each sequence's first token, then the total */
    int64_t *item_first;       /* [max_batch + 1]: each sequence's first attention item */
    pylut_attn_job *jobs;      /* [max_batch]: each sequence's attention plan */
    table_set sets[MAX_TABLE_SETS];
    pylut_lut keys[MAX_TABLE_SETS]; /* layout of each set (tbl pointers unused) */
};

/* ------------------------------------------------------------------ lookups both units use */

/* dims of each head that RoPE rotates (partial rotary rotates the leading ones) */
static inline int pylut_rope_dims(const pylut_model *m) {
    return m->rope_dims > 0 ? m->rope_dims : m->head_dim;
}

static inline int same_layout(const pylut_lut *a, const pylut_lut *b) {
    return a->kind == b->kind && a->k == b->k && a->k_pad == b->k_pad && a->group == b->group &&
           a->super == b->super;
}

/* The table set that matrix qm reads, or -1. */
static inline int set_for(const pylut_state *s, const pylut_qmatrix *qm) {
    pylut_lut want;
    pylut_lut_layout(&want, qm);
    for (int i = 0; i < s->n_sets; i++)
        if (same_layout(&s->keys[i], &want)) return i;
    return -1;
}

/* Whether matrix qm of set ts reads the int8 activations in this chunk. */
static inline int reads_act(const table_set *ts, const pylut_qmatrix *qm) { return (ts->act_bits >> qm->bits) & 1u; }

/* The activations matrix qm (of set ts) reads in this chunk. */
static inline pylut_lut *mat_input(const table_set *ts, const pylut_qmatrix *qm) {
    return reads_act(ts, qm) ? ts->act.lut : ts->tables.lut;
}

static inline int is_streaming(const pylut_state *s, int l, int h) {
    return s->heads && s->heads[(int64_t)l * s->n_kv_heads + h].streaming;
}

/* Cache slot p of (kv 0/1, layer l, kv head h); a slot is the position for full heads, whose
 * block must be set (positions below pos, or reserved for the step). */
static inline uint8_t *kv_row(const pylut_state *s, int kv, int l, int h, int64_t p) {
    const int64_t off = s->kv_off[((int64_t)kv * s->n_layers + l) * s->n_kv_heads + h];
    if (is_streaming(s, l, h)) return s->stream_kv + off + p * s->row_bytes;
    return s->blocks[p / PYLUT_KV_PAGE] + off + (p % PYLUT_KV_PAGE) * s->row_bytes;
}

/* The slot holding position pos of (l, h): its sink slot, or its place in the stream. */
static inline int64_t slot_of(const pylut_state *s, int l, int h, int64_t pos) {
    return !is_streaming(s, l, h) || pos < s->sink ? pos : s->sink + pos - s->stream_base;
}

/* Streaming heads: compact each one so a chunk of n more positions fits (kv_state.c). */
void pylut_state_make_room(pylut_state *s, int n);

/* ------------------------------------------------------------------ the block table (kv_pool.c) */

/* Blocks holding positions [p0, p1) set and this state's own (copied first where shared):
 * before anything writes them. PYLUT_EFULL when the pool is out of blocks. */
int kvp_reserve(pylut_state *s, int64_t p0, int64_t p1);
/* Give back every block past those holding positions [0, p). */
void kvp_release_from(pylut_state *s, int64_t p);
/* dst's blocks become references to src's blocks holding [0, n_pos) (same pool). */
void kvp_share(pylut_state *dst, const pylut_state *src, int64_t n_pos);
/* Take a reference on the pool for a state (NULL-safe); pylut_kv_pool_free drops it. */
void kvp_pool_retain(pylut_kv_pool *p);
/* Bytes of one run of the pool's blocks (PYLUT_KV_PAGE rows of a head); 0 for NULL. Run q
 * of a block sits q * pylut_kv_pool_chunk_blocks * run bytes after its first. */
int64_t kvp_run_bytes(const pylut_kv_pool *p);
int64_t kvp_piece_bytes(const pylut_kv_pool *p);

#endif
