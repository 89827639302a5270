/* model.h - the Llama-family forward pass (llama, qwen2, bitnet, gemma) over packed matrices.
 * Architectures differ only in the settings below (RoPE pairing, FFN activation, optional
 * sub-norms, Gemma's sandwich norms, soft-caps and sliding windows); which architecture has
 * which is pylut/arch.py's table.
 * The loader (Python) fills a pylut_model with pointers into its own buffers; a pylut_state
 * holds one sequence's KV cache and scratch. Model code knows nothing about ISAs. */
#ifndef PYLUT_MODEL_H
#define PYLUT_MODEL_H

#include "pylut/pylut.h"

#ifdef __cplusplus
extern "C" {
#endif

enum pylut_ffn_act { PYLUT_FFN_SILU = 0, PYLUT_FFN_RELU2 = 1, PYLUT_FFN_GELU_TANH = 2 }; /* act(gate) * up */

typedef struct {
    const float *attn_norm;        /* [dim] */
    const pylut_qmatrix *wq;       /* [n_heads*head_dim, dim] */
    const pylut_qmatrix *wk;       /* [n_kv_heads*head_dim, dim] */
    const pylut_qmatrix *wv;       /* [n_kv_heads*head_dim, dim] */
    const float *bq, *bk, *bv;     /* qwen2 biases or NULL */
    const float *q_norm, *k_norm;  /* qwen3: [head_dim] RMSNorm of each q / k head before RoPE, or NULL */
    const float *attn_sub_norm;    /* bitnet family: [n_heads*head_dim] before wo, else NULL */
    const pylut_qmatrix *wo;       /* [dim, n_heads*head_dim] */
    const float *ffn_norm;         /* [dim] */
    const pylut_qmatrix *w_gate;   /* [ffn_dim, dim] */
    const pylut_qmatrix *w_up;     /* [ffn_dim, dim] */
    const float *ffn_sub_norm;     /* bitnet family: [ffn_dim] before w_down, else NULL */
    const pylut_qmatrix *w_down;   /* [dim, ffn_dim] */
    int32_t skip_rope;             /* 1: q and k of this layer are not rotated (SmolLM3's NoPE
                                    * layers); its cached keys are left alone by a context shift */
    /* Gemma */
    const float *attn_post_norm;   /* [dim] RMSNorm of the attention output before the residual, or NULL */
    const float *ffn_post_norm;    /* [dim] RMSNorm of the FFN output before the residual, or NULL */
    int32_t swa;                   /* sliding window: a query at p attends to (p - swa, p]; 0: all */
} pylut_layer;

typedef struct {
    int32_t ffn_act;               /* enum pylut_ffn_act */
    int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, max_ctx;
    float norm_eps, rope_theta;
    int32_t rope_neox;             /* 1: rotate (i, i+d/2) pairs (qwen2, bitnet); 0: (2i, 2i+1) */
    const float *rope_inv_freq;    /* [rope_dims/2] each pair's inverse frequency, computed by the
                                    * loader with the checkpoint's RoPE scaling (pylut.rope);
                                    * NULL: rope_theta^(-2i/rope_dims) */
    float rope_attn_factor;        /* YaRN's / LongRoPE's factor on cos and sin (on q and k); 0 or 1: none */
    int32_t rope_dims;             /* leading dims of each head that RoPE rotates (partial rotary,
                                    * Phi-4-mini: 3/4 of head_dim); rope_inv_freq then has
                                    * rope_dims/2 entries; 0: head_dim */
    const pylut_qmatrix *tok_embd; /* [vocab, dim] packed, or NULL when tok_embd_f32 is set */
    const float *tok_embd_f32;     /* [vocab, dim] */
    const float *output_norm;      /* [dim] */
    const pylut_qmatrix *output;   /* [vocab, dim] */
    const pylut_layer *layers;     /* [n_layers] */
    /* Gemma; zero keeps the plain Llama computation */
    float embd_scale;              /* token embedding rows times this (Gemma: sqrt(dim)); 0: 1 */
    float attn_scale;              /* scores scale * q.k; 0: 1/sqrt(head_dim) */
    float attn_softcap;            /* Gemma 2: scores c * tanh(s / c); 0: none */
    float final_softcap;           /* Gemma 2: logits c * tanh(l / c); 0: none */
    const float *rope_inv_freq_swa;/* [rope_dims/2] inverse frequencies of the sliding-window layers
                                    * (Gemma 3's local RoPE base); NULL: the same as the others */
} pylut_model;

typedef struct pylut_state pylut_state;

/* ------------------------------------------------------------------ paged KV cache */

/* A full kv head's cache is paged: blocks of PYLUT_KV_PAGE positions (the attention
 * kernel's online-softmax step, PYLUT_ATTN_BLOCK, so a block is exactly one kernel step)
 * come from a pool on demand, a session's memory grows with the tokens it holds, and
 * sessions holding the same prefix share its blocks by reference (copied before a write). */
#define PYLUT_KV_PAGE 16
typedef struct pylut_kv_pool pylut_kv_pool;
/* Bytes of one block for sessions of m with this kv type and streaming plan (NULL: every
 * head full): the sessions that may share a pool. 0 for a bad type or no full head. */
int64_t pylut_kv_block_bytes(const pylut_model *m, int kv_type, const uint8_t *streaming);
/* A pool of blocks for sessions of m with this kv type and streaming plan (NULL: every
 * head full), pylut_kv_block_bytes each, at most max_blocks in use at once. Thread-safe. */
pylut_kv_pool *pylut_kv_pool_create(const pylut_model *m, int kv_type, const uint8_t *streaming, int64_t max_blocks);
/* Drop the creator's handle; the pool goes when its last state is freed too. */
void pylut_kv_pool_free(pylut_kv_pool *p);
int pylut_kv_pool_set_max_blocks(pylut_kv_pool *p, int64_t max_blocks);
/* Counters: blocks in use now (a shared block counts once), the most ever in use, the cap,
 * and the bytes of one block. */
int64_t pylut_kv_pool_blocks_used(const pylut_kv_pool *p);
int64_t pylut_kv_pool_blocks_peak(const pylut_kv_pool *p);
int64_t pylut_kv_pool_max_blocks(const pylut_kv_pool *p);
int64_t pylut_kv_pool_block_bytes(const pylut_kv_pool *p);
/* The pool takes memory in chunks of this many blocks, each (k/v, layer, full head) keeping
 * its rows of a chunk's blocks side by side, so a session's consecutive block ids are one
 * stream per head; a chunk goes back once none of its blocks is in use. Bytes of the
 * chunks held now (written or not: memory never written is not resident). */
int64_t pylut_kv_pool_chunk_blocks(const pylut_kv_pool *p);
int64_t pylut_kv_pool_bytes_reserved(const pylut_kv_pool *p);

/* Check every shape and pointer of *m; PYLUT_EINVAL with a static reason in *why. */
int pylut_model_check(const pylut_model *m, const char **why);
/* A sequence of up to n_ctx positions, processing up to max_batch tokens per forward step,
 * its KV cache stored as kv_type (enum pylut_kv_type, attention.h). */
pylut_state *pylut_state_create(const pylut_model *m, int n_ctx, int max_batch, int kv_type);
/* The same with streaming kv heads (DuoAttention): streaming[n_layers * n_kv_heads], 1 for a
 * head that keeps only the first `sink` positions and the most recent `window` ones (a query
 * at p sees [0, sink) and (p - window, p]) in min(n_ctx, sink + window + max_batch) slots
 * instead of n_ctx. NULL: every head full, exactly pylut_state_create. */
pylut_state *pylut_state_create_heads(const pylut_model *m, int n_ctx, int max_batch, int kv_type,
                                      const uint8_t *streaming, int sink, int window);
/* The same drawing its full heads' blocks from pool (its block bytes must be
 * pylut_kv_block_bytes of the same arguments); NULL pool: a private pool of
 * ceil(n_ctx / PYLUT_KV_PAGE) blocks. The create calls above use a private pool. */
pylut_state *pylut_state_create_paged(const pylut_model *m, int n_ctx, int max_batch, int kv_type,
                                      const uint8_t *streaming, int sink, int window, pylut_kv_pool *pool);
/* Blocks this state references (shared ones included) and its streaming heads' bytes. */
int64_t pylut_state_blocks_held(const pylut_state *s);
int64_t pylut_state_stream_bytes(const pylut_state *s);
/* The pool id of the block holding positions [i * PYLUT_KV_PAGE, (i + 1) * PYLUT_KV_PAGE),
 * -1 when it has none (or i is out of range); a shared block has one id. */
int64_t pylut_state_block_id(const pylut_state *s, int64_t i);
void pylut_state_free(pylut_state *s);
int pylut_state_pos(const pylut_state *s);
/* Prefill chunks of many tokens go through the int8 prefill GEMM where it is faster
 * (pylut_gemm_i8_preferred), so a token's logits move by activation rounding with how many
 * tokens share its chunk. on = 1 keeps every chunk on the table lookups: bit-identical
 * results however tokens are chunked, at the table path's prefill speed. Default 0. */
int pylut_state_set_batch_invariant(pylut_state *s, int on);
int pylut_state_batch_invariant(const pylut_state *s);
/* on = 1: every matrix with an int8 path (B-type; T3 has none and keeps its tables) reads its
 * input as two int8 parts, the value and its rounding residual (pylut_lut parts 2), in every
 * chunk and decode step. Activations then carry ~2^-15 of their group's largest value
 * instead of ~2^-8, and logits follow a float forward pass over the same weights closely
 * enough to keep its greedy choices (near-ties included), at the int8 GEMM's cost for each
 * decode step. Results are also independent of chunking. Default 0. */
int pylut_state_set_split_int8(pylut_state *s, int on);
int pylut_state_split_int8(const pylut_state *s);
/* Forget positions >= pos (prefix reuse keeps the shared prefix). PYLUT_EINVAL when a
 * streaming head has already dropped positions the window at pos would see (see below). */
int pylut_state_truncate(pylut_state *s, int pos);
/* 1 when truncating to pos and going on is exact (streaming heads still hold the window). */
int pylut_state_can_truncate(const pylut_state *s, int pos);
/* Run tokens[n] at positions pos..pos+n-1 (n may exceed max_batch: done in chunks).
 * logits: [vocab] for the last token, or [n][vocab] when all_logits. Threads: the pool. */
int pylut_forward(pylut_pool *pool, const pylut_model *m, pylut_state *s, const int32_t *tokens,
                  int n, float *logits, int all_logits);
/* One step over several sequences (continuous batching): sequence i runs its n_tokens[i]
 * tokens (tokens[] holds them one sequence after another) at its own positions. The
 * matmuls run once over all of the step's tokens, reading each weight once for the batch;
 * attention runs per sequence over its own cache. work holds the step's activations and
 * decides the kernel modes (batch_invariant, split_int8): a state of the same model, not
 * one of seqs, with max_batch >= the step's total tokens; each n_tokens[i] <= its
 * sequence's max_batch. logits: [n_seq][vocab], each sequence's last token. With
 * batch_invariant a sequence's logits are bit-identical to a pylut_forward of it alone. */
int pylut_forward_multi(pylut_pool *pool, const pylut_model *m, pylut_state *work, pylut_state *const *seqs,
                        int n_seq, const int32_t *tokens, const int *n_tokens, float *logits);
/* Make dst hold src's first n_pos positions: their cached rows, pos and stream base (same
 * model, kv type and head layout; they must fit dst). With streaming heads n_pos must be
 * all of src's (truncate dst afterwards where pylut_state_can_truncate allows). States of
 * one pool share the full heads' blocks by reference (no rows copied); otherwise copied.
 * PYLUT_EFULL when dst's pool runs out of blocks for the copy. */
int pylut_state_copy(pylut_state *dst, const pylut_state *src, int n_pos);
int pylut_state_max_batch(const pylut_state *s);
/* Context shift: drop positions [n_keep, n_keep + n_discard), move the later ones down and
 * re-rotate their keys' RoPE by -n_discard so they read as if written at their new place.
 * With streaming heads n_keep must be >= sink (the sinks stay where they are). */
int pylut_state_shift(const pylut_model *m, pylut_state *s, int n_keep, int n_discard);
/* What the cache takes at n_ctx positions (every full head n_ctx rows, streaming heads
 * their slots), keys and values: its capacity; use is pylut_state_blocks_held. */
int64_t pylut_state_kv_bytes(const pylut_state *s);
int pylut_state_kv_type(const pylut_state *s);
int pylut_state_set_pos(pylut_state *s, int pos);
/* Rows of keys (kv 0) or values (kv 1) of one head, slots [slot0, slot0 + n), copied out
 * to / in from a buffer of buf_bytes (>= n * row_bytes). A full head's slot is its position
 * (rows no block holds yet read as zeros; writing reserves blocks, copying shared ones
 * first). PYLUT_EINVAL for a bad index or size, PYLUT_EFULL for an exhausted pool. */
int pylut_state_read_rows(const pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, uint8_t *buf,
                          int64_t buf_bytes);
int pylut_state_write_rows(pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, const uint8_t *buf,
                           int64_t buf_bytes);
/* Per head: the slots it has, those in use at the current position, whether it streams
 * (0 for a bad index). */
int64_t pylut_state_head_slots(const pylut_state *s, int l, int h);
int64_t pylut_state_head_used(const pylut_state *s, int l, int h);
int pylut_state_head_streaming(const pylut_state *s, int l, int h);
/* Streaming heads' first position after the sinks; set_stream restores pos and it (load). */
int pylut_state_stream_base(const pylut_state *s);
int pylut_state_set_stream(pylut_state *s, int pos, int stream_base);

#ifdef __cplusplus
}
#endif
#endif
