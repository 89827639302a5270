/* forward.c - the Llama-family forward pass: one pool dispatch per step of tokens, every
 * stage split over the threads and separated by a spinning barrier (a decode step has ~15
 * stages per layer; one dispatch each would cost more than the small matrices themselves).
 * A step may hold several sequences (continuous batching): the matmuls run once over all of
 * its tokens, attention per sequence over that sequence's cache. The session states it
 * runs over are kv_state.c's: one, the workspace, holds the step's activations. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "barrier.h"
#include "model_state.h"

#define MAX_THREADS 256

/* ------------------------------------------------------------------ model check */

static int mat_ok(const pylut_qmatrix *qm, int64_t m, int64_t k) {
    return qm && pylut_qmatrix_valid(qm) && qm->m == m && qm->k == k;
}

int pylut_model_check(const pylut_model *m, const char **why) {
#define REQUIRE(c, msg) do { if (!(c)) { *why = msg; return PYLUT_EINVAL; } } while (0)
    REQUIRE(m, "no model");
    REQUIRE(m->ffn_act == PYLUT_FFN_SILU || m->ffn_act == PYLUT_FFN_RELU2 || m->ffn_act == PYLUT_FFN_GELU_TANH,
            "unknown FFN activation");
    REQUIRE(m->embd_scale >= 0 && isfinite(m->embd_scale) && m->attn_scale >= 0 && isfinite(m->attn_scale) &&
                m->attn_softcap >= 0 && isfinite(m->attn_softcap) && m->final_softcap >= 0 &&
                isfinite(m->final_softcap),
            "embd_scale, attn_scale and the soft-caps must be finite and >= 0");
    REQUIRE(m->rope_attn_factor >= 0 && isfinite(m->rope_attn_factor), "rope_attn_factor must be finite and >= 0");
    REQUIRE(m->rope_dims >= 0 && m->rope_dims <= m->head_dim && m->rope_dims % 2 == 0,
            "rope_dims must be even and at most head_dim");
    if (m->rope_inv_freq)
        for (int i = 0; i < pylut_rope_dims(m) / 2; i++)
            REQUIRE(isfinite(m->rope_inv_freq[i]) && m->rope_inv_freq[i] > 0, "rope_inv_freq must be finite and positive");
    if (m->rope_inv_freq_swa)
        for (int i = 0; i < pylut_rope_dims(m) / 2; i++)
            REQUIRE(isfinite(m->rope_inv_freq_swa[i]) && m->rope_inv_freq_swa[i] > 0,
                    "rope_inv_freq_swa must be finite and positive");
    REQUIRE(m->n_layers > 0 && m->dim > 0 && m->n_heads > 0 && m->n_kv_heads > 0 && m->head_dim > 1 &&
                m->ffn_dim > 0 && m->vocab > 0 && m->max_ctx > 0,
            "non-positive hyperparameter");
    REQUIRE(m->head_dim % 2 == 0, "head_dim must be even for RoPE");
    REQUIRE(m->n_heads % m->n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
    REQUIRE(m->norm_eps > 0 && m->rope_theta > 0, "norm_eps and rope_theta must be positive");
    REQUIRE(m->tok_embd_f32 || mat_ok(m->tok_embd, m->vocab, m->dim), "token embedding shape");
    REQUIRE(m->output_norm && mat_ok(m->output, m->vocab, m->dim), "output / output_norm");
    REQUIRE(m->layers, "no layers");
    const int qd = m->n_heads * m->head_dim, kvd = m->n_kv_heads * m->head_dim;
    for (int l = 0; l < m->n_layers; l++) {
        const pylut_layer *L = &m->layers[l];
        REQUIRE(L->attn_norm && L->ffn_norm, "missing norm weights");
        REQUIRE(mat_ok(L->wq, qd, m->dim) && mat_ok(L->wk, kvd, m->dim) && mat_ok(L->wv, kvd, m->dim),
                "attention q/k/v shape");
        REQUIRE(mat_ok(L->wo, m->dim, qd), "attention output shape");
        REQUIRE(mat_ok(L->w_gate, m->ffn_dim, m->dim) && mat_ok(L->w_up, m->ffn_dim, m->dim),
                "ffn gate/up shape");
        REQUIRE(mat_ok(L->w_down, m->dim, m->ffn_dim), "ffn down shape");
        REQUIRE(!L->attn_sub_norm == !L->ffn_sub_norm, "attn_sub_norm and ffn_sub_norm come together");
        REQUIRE(!L->q_norm == !L->k_norm, "attn_q_norm and attn_k_norm come together");
        REQUIRE(L->swa >= 0, "a layer's sliding window must be >= 0");
    }
    *why = "";
    return PYLUT_OK;
#undef REQUIRE
}

/* ------------------------------------------------------------------ the step */

typedef struct {
    const pylut_model *m;
    pylut_state *s;         /* the workspace: activations, tables, tickets, attention scratch */
    pylut_state *const *seqs; /* [n_seq]: each sequence's cache and position (s itself alone) */
    int n_seq, any_splits;
    const int32_t *tokens;  /* [n], sequence after sequence (s->tok_seq, s->seq_first) */
    int n, all_logits;
    float *logits;          /* [n or n_seq][vocab], NULL: no output projection (a non-final chunk) */
    const pylut_vecops *vo; /* the element-wise kernels, one ISA's for the whole step */
    barrier_t bar;
} step_ctx;

#define SPLIT(total, ith, nth, a, b) \
    int64_t a = (int64_t)(total) * (ith) / (nth), b = (int64_t)(total) * ((ith) + 1) / (nth)

/* Build the tables every matrix in mats[] needs for x[n][k] (stride ldx); ends with a barrier. */
static void stage_tables(step_ctx *c, int ith, int nth, const float *x, int64_t ldx, int n,
                         const pylut_qmatrix *const *mats, int nm) {
    int need[MAX_TABLE_SETS] = {0}; /* per set: 1 tables, 2 int8 activations, 3 both */
    for (int i = 0; i < nm; i++) {
        const int si = set_for(c->s, mats[i]);
        need[si] |= reads_act(&c->s->sets[si], mats[i]) ? 2 : 1;
    }
    for (int si = 0; si < c->s->n_sets; si++)
        for (int form = 1; form <= 2; form++) {
            if (!(need[si] & form)) continue;
            pylut_lut *luts = form == 2 ? c->s->sets[si].act.lut : c->s->sets[si].tables.lut;
            const int64_t per = luts[0].n_groups;
            SPLIT(per * n, ith, nth, w0, w1);
            for (int64_t w = w0; w < w1;) {
                int64_t tok = w / per, g0 = w % per, g1 = g0 + (w1 - w) < per ? g0 + (w1 - w) : per;
                pylut_lut_build_range(x + tok * ldx, &luts[tok], g0, g1);
                w += g1 - g0;
            }
        }
    barrier_wait(&c->bar, nth);
}

/* y_i[n][m_i] = W_i x for the matrices; ends with a barrier. Threads claim chunks of tiles
 * from the stage's ticket counter, so one slowed by another process costs only its chunk. */
static void stage_gemm(step_ctx *c, int ith, int nth, int *stage, int n,
                       const pylut_qmatrix *const *mats, float *const *ys, const int64_t *ldys, int nm) {
    int64_t start[MAX_TABLE_SETS + 1] = {0};
    for (int i = 0; i < nm; i++) start[i + 1] = start[i] + mats[i]->m_pad / PYLUT_TILE_M;
    atomic_llong *ticket = &c->s->tickets[(*stage)++];
    /* at most 4 tiles a grab: a decode step's tile takes ~5 us, and the thread that finishes
     * first should wait no longer than a barrier spins (a sleep and wake-up costs ~50-100 us) */
    const int64_t total = start[nm], share = total / (4 * nth), chunk = share < 1 ? 1 : share > 4 ? 4 : share;
    (void)ith;
    for (;;) {
        const int64_t w0 = atomic_fetch_add_explicit(ticket, chunk, memory_order_relaxed);
        if (w0 >= total) break;
        const int64_t w1 = w0 + chunk < total ? w0 + chunk : total;
        for (int i = 0; i < nm; i++) {
            int64_t a = w0 > start[i] ? w0 : start[i], b = w1 < start[i + 1] ? w1 : start[i + 1];
            if (a < b)
                pylut_gemm_tiles(mats[i], mat_input(&c->s->sets[set_for(c->s, mats[i])], mats[i]), n, ys[i], ldys[i],
                                 a - start[i], b - start[i]);
        }
    }
    barrier_wait(&c->bar, nth);
}

/* y[n][ldy] = W x for one matrix reading x[n][ldx]: its tables, then its tiles. */
static void stage_matmul(step_ctx *c, int ith, int nth, int *stage, int n, const pylut_qmatrix *w,
                         const float *x, int64_t ldx, float *y, int64_t ldy) {
    const pylut_qmatrix *mats[1] = {w};
    float *ys[1] = {y};
    const int64_t lds[1] = {ldy};
    stage_tables(c, ith, nth, x, ldx, n, mats, 1);
    stage_gemm(c, ith, nth, stage, n, mats, ys, lds, 1);
}

/* A block's output: sub-norm in place where the layer has one (bitnets), project by w
 * back to dim, post-norm it where the layer has one (Gemma's sandwich norms) and add to the
 * residual stream. rows [t0, t1) are this thread's tokens of the n-token chunk x [n, ldx].
 * Ends with a barrier. */
static void stage_project_residual(step_ctx *c, int ith, int nth, int *stage, int n, int64_t t0, int64_t t1,
                                   const float *sub_norm, float *x, int64_t ldx, const pylut_qmatrix *w,
                                   const float *post_norm) {
    pylut_state *s = c->s;
    const int dim = c->m->dim;
    if (sub_norm) {
        for (int64_t t = t0; t < t1; t++) c->vo->rmsnorm(x + t * ldx, x + t * ldx, sub_norm, ldx, c->m->norm_eps);
        barrier_wait(&c->bar, nth);
    }
    stage_matmul(c, ith, nth, stage, n, w, x, ldx, s->tmp, dim);
    if (post_norm) {
        for (int64_t t = t0; t < t1; t++) c->vo->rmsnorm(s->tmp + t * dim, s->tmp + t * dim, post_norm, dim, c->m->norm_eps);
        barrier_wait(&c->bar, nth);
    }
    { /* element ranges, so one token's add is split over every thread as well */
        SPLIT((int64_t)n * dim, ith, nth, a, b);
        c->vo->add(s->x + a, s->tmp + a, b - a);
    }
    barrier_wait(&c->bar, nth);
}

/* Sequence si's attention plan with layer l's cache. */
static pylut_attn_job layer_job(const step_ctx *c, int si, int l) {
    const pylut_state *q = c->seqs[si];
    pylut_attn_job job = c->s->jobs[si];
    job.k_off = q->kv_off + (int64_t)l * q->n_kv_heads;                       /* keys of layer l */
    job.v_off = q->kv_off + ((int64_t)q->n_layers + l) * q->n_kv_heads;      /* its values */
    if (q->heads) job.heads = q->heads + (int64_t)l * q->n_kv_heads;
    job.swa = c->m->layers[l].swa;
    return job;
}

/* Layer l's attention for the step: items (sequence x kv head x query tile x cache slice)
 * claimed from the layer's ticket; with slices, a merge per kv head after a barrier. Ends
 * with a barrier. */
static void stage_attention(step_ctx *c, int ith, int nth, int l) {
    pylut_state *s = c->s;
    float *scratch = s->attn_scratch + (int64_t)ith * s->attn_scratch_floats;
    atomic_llong *ticket = &s->tickets[4 * s->n_layers + 1 + l];
    const int64_t total = s->item_first[c->n_seq];
    int si = 0, planned = -1;
    pylut_attn_job job;
    /* a thread's claims only grow, so its sequence index only moves forward */
    for (int64_t w; (w = atomic_fetch_add_explicit(ticket, 1, memory_order_relaxed)) < total;) {
        while (w >= s->item_first[si + 1]) si++;
        if (planned != si) job = layer_job(c, planned = si, l);
        pylut_attn_item(&job, w - s->item_first[si], scratch);
    }
    barrier_wait(&c->bar, nth);
    if (c->any_splits) {
        for (int64_t i = ith; i < (int64_t)c->n_seq * s->n_kv_heads; i += nth) {
            const int q = (int)(i / s->n_kv_heads);
            if (s->jobs[q].splits < 2) continue;
            job = layer_job(c, q, l);
            pylut_attn_merge(&job, (int)(i % s->n_kv_heads));
        }
        barrier_wait(&c->bar, nth);
    }
}

static void step_task(void *arg, int ith, int nth) {
    step_ctx *c = arg;
    const pylut_model *m = c->m;
    pylut_state *s = c->s;
    const int n = c->n, dim = m->dim, qd = s->q_dim, kvd = s->kv_dim, ffn = m->ffn_dim, hd = m->head_dim;
    const pylut_vecops *vo = c->vo;
    const int n_rot = pylut_rope_dims(m), n_tab = s->inv_freq_swa ? 2 : 1;
    SPLIT(n, ith, nth, t0, t1); /* this thread's tokens for per-token stages */
    int stage = 0;              /* GEMM stages run so far: indexes the ticket counters */

    for (int64_t t = t0; t < t1; t++) { /* embedding rows, and each token's RoPE tables */
        if (m->tok_embd_f32) memcpy(s->x + t * dim, m->tok_embd_f32 + (int64_t)c->tokens[t] * dim, (size_t)dim * sizeof(float));
        else pylut_qmatrix_row(m->tok_embd, c->tokens[t], s->x + t * dim);
        if (m->embd_scale > 0.0f && m->embd_scale != 1.0f)
            for (int i = 0; i < dim; i++) s->x[t * dim + i] *= m->embd_scale;
        /* cos/sin depend only on the position and the inverse frequencies: made once here for
         * every layer and head (read after the first layer's barriers) */
        const int si = s->tok_seq[t], pos = c->seqs[si]->pos + (int)t - s->seq_first[si];
        for (int f = 0; f < n_tab; f++)
            pylut_rope_table(s->rope_cs + (t * n_tab + f) * 2 * n_rot, n_rot, pos, f ? s->inv_freq_swa : s->inv_freq,
                             s->rope_scale, m->rope_neox);
    }
    for (int l = 0; l < m->n_layers; l++) {
        const pylut_layer *L = &m->layers[l];
        for (int64_t t = t0; t < t1; t++) vo->rmsnorm(s->xb + t * dim, s->x + t * dim, L->attn_norm, dim, m->norm_eps);
        barrier_wait(&c->bar, nth);

        /* ---- attention: q, k, v from one table set, RoPE, cache append, softmax(qk)v */
        const pylut_qmatrix *qkv[3] = {L->wq, L->wk, L->wv};
        float *qkv_out[3] = {s->q, s->k, s->v};
        const int64_t qkv_ld[3] = {qd, kvd, kvd};
        stage_tables(c, ith, nth, s->xb, dim, n, qkv, 3);
        stage_gemm(c, ith, nth, &stage, n, qkv, qkv_out, qkv_ld, 3);
        {
            const int per = m->n_heads + m->n_kv_heads;
            const int tab = L->swa && s->inv_freq_swa ? 1 : 0; /* the sliding-window layers' own frequencies */
            SPLIT(n * per, ith, nth, w0, w1);
            for (int64_t w = w0; w < w1; w++) {
                const int t = (int)(w / per), si = s->tok_seq[t];
                pylut_state *seq = c->seqs[si];
                int h = (int)(w % per), pos = seq->pos + t - s->seq_first[si];
                const float *cs = s->rope_cs + ((int64_t)t * n_tab + tab) * 2 * n_rot;
                if (h < m->n_heads) {
                    float *q = s->q + (int64_t)t * qd + h * hd;
                    if (L->bq) vo->add(q, L->bq + h * hd, hd);
                    if (L->q_norm) vo->rmsnorm(q, q, L->q_norm, hd, m->norm_eps);
                    if (!L->skip_rope) vo->rope(q, n_rot, cs, m->rope_neox);
                } else {
                    h -= m->n_heads;
                    float *k = s->k + (int64_t)t * kvd + h * hd, *v = s->v + (int64_t)t * kvd + h * hd;
                    if (L->bk) vo->add(k, L->bk + h * hd, hd);
                    if (L->bv) vo->add(v, L->bv + h * hd, hd);
                    if (L->k_norm) vo->rmsnorm(k, k, L->k_norm, hd, m->norm_eps);
                    if (!L->skip_rope) vo->rope(k, n_rot, cs, m->rope_neox);
                    pylut_kv_encode(seq->kv_type, hd, k, kv_row(seq, 0, l, h, slot_of(seq, l, h, pos)));
                    pylut_kv_encode(seq->kv_type, hd, v, kv_row(seq, 1, l, h, slot_of(seq, l, h, pos)));
                }
            }
        }
        barrier_wait(&c->bar, nth);
        stage_attention(c, ith, nth, l);
        stage_project_residual(c, ith, nth, &stage, n, t0, t1, L->attn_sub_norm, s->att, qd, L->wo, L->attn_post_norm);
        for (int64_t t = t0; t < t1; t++) vo->rmsnorm(s->xb + t * dim, s->x + t * dim, L->ffn_norm, dim, m->norm_eps);
        barrier_wait(&c->bar, nth);

        /* ---- feed-forward: gate/up share tables; SiLU, ReLU^2 (the 2B4T bitnets) or GELU (Gemma) */
        {
            const pylut_qmatrix *gu[2] = {L->w_gate, L->w_up};
            float *outs[2] = {s->hb, s->hb2};
            const int64_t ld[2] = {ffn, ffn};
            stage_tables(c, ith, nth, s->xb, dim, n, gu, 2);
            stage_gemm(c, ith, nth, &stage, n, gu, outs, ld, 2);
        }
        { /* element ranges, not tokens: a decode step's one token is split over every thread */
            SPLIT((int64_t)n * ffn, ith, nth, e0, e1);
            (m->ffn_act == PYLUT_FFN_RELU2       ? vo->gate_relu2
             : m->ffn_act == PYLUT_FFN_GELU_TANH ? vo->gate_gelu_tanh
                                                 : vo->gate_silu)(s->hb + e0, s->hb2 + e0, e1 - e0);
        }
        barrier_wait(&c->bar, nth);
        stage_project_residual(c, ith, nth, &stage, n, t0, t1, L->ffn_sub_norm, s->hb, ffn, L->w_down, L->ffn_post_norm);
    }

    /* ---- logits for each sequence's last token (or every token): normed into rows of xb */
    if (!c->logits) return;
    const int nl = c->all_logits ? n : c->n_seq;
    {
        SPLIT(nl, ith, nth, a, b);
        for (int64_t r = a; r < b; r++) {
            const int64_t t = c->all_logits ? r : s->seq_first[r + 1] - 1;
            vo->rmsnorm(s->xb + r * dim, s->x + t * dim, m->output_norm, dim, m->norm_eps);
        }
    }
    barrier_wait(&c->bar, nth);
    stage_matmul(c, ith, nth, &stage, nl, m->output, s->xb, dim, c->logits, m->vocab);
    if (m->final_softcap > 0.0f) { /* Gemma 2: c * tanh(logit / c) */
        const float cap = m->final_softcap;
        SPLIT((int64_t)nl * m->vocab, ith, nth, e0, e1);
        for (int64_t i = e0; i < e1; i++) c->logits[i] = cap * tanhf(c->logits[i] / cap);
    }
}

/* ------------------------------------------------------------------ running a step */

/* Grow a float buffer to n floats (contents not kept). */
static int grow(float **buf, int64_t *have, int64_t n) {
    if (*have >= n) return PYLUT_OK;
    float *p = realloc(*buf, (size_t)n * sizeof(float));
    if (!p) return PYLUT_ENOMEM;
    *buf = p;
    *have = n;
    return PYLUT_OK;
}

/* One step: seqs[i] runs n_tokens[i] tokens (checked by the callers); w's buffers hold the
 * step's activations (w may be seqs[0] when it runs alone). */
static int run_step(pylut_pool *pool, const pylut_model *m, pylut_state *w, pylut_state *const *seqs, int n_seq,
                    const int32_t *tokens, const int *n_tokens, float *logits, int all_logits) {
    const int nth = pylut_pool_size(pool);
    int n = 0;
    step_ctx c = {m, w, seqs, n_seq, 0, tokens, 0, all_logits, logits, pylut_vecops_active()};
    w->item_first[0] = 0;
    int64_t scratch = 0;
    for (int si = 0; si < n_seq; si++) {
        pylut_state *q = seqs[si];
        const int cnt = n_tokens[si];
        pylut_state_make_room(q, cnt);
        /* the step writes positions [pos, pos + cnt): blocks for them, none shared */
        const int rc = kvp_reserve(q, q->pos, (int64_t)q->pos + cnt);
        if (rc != PYLUT_OK) return rc;
        w->seq_first[si] = n;
        for (int t = 0; t < cnt; t++) w->tok_seq[n + t] = si;
        pylut_attn_job *j = &w->jobs[si]; /* layer 0's cache for the plan; layer_job swaps it */
        memset(j, 0, sizeof *j);
        j->type = q->kv_type;
        j->hd = m->head_dim;
        j->n_heads = m->n_heads;
        j->n_kv_heads = m->n_kv_heads;
        j->ld = q->row_bytes; /* full heads through the block table, streaming ones through heads */
        j->blocks = (const uint8_t *const *)q->blocks;
        j->block_len = PYLUT_KV_PAGE;
        j->block_bytes = q->block_span;
        j->k_off = q->kv_off;
        j->v_off = q->kv_off + (int64_t)q->n_layers * q->n_kv_heads;
        j->len = q->pos + cnt;
        j->q = w->q + (int64_t)n * w->q_dim;
        j->ldq = w->q_dim;
        j->out = w->att + (int64_t)n * w->q_dim;
        j->ldo = w->q_dim;
        j->n = cnt;
        j->pos0 = q->pos;
        j->scale = m->attn_scale > 0.0f ? m->attn_scale : 1.0f / sqrtf((float)m->head_dim);
        j->softcap = m->attn_softcap; /* (and each layer's window: layer_job) */
        j->heads = q->heads; /* layer 0's; layer_job takes each layer's */
        j->sink = q->sink;
        j->window = q->window;
        j->stream_base = q->stream_base;
        if (pylut_attn_plan(j, nth) != PYLUT_OK) return PYLUT_EINVAL;
        if (j->splits > 1) {
            if (grow(&q->attn_partial, &q->attn_partial_floats, j->partial_floats) != PYLUT_OK) return PYLUT_ENOMEM;
            j->partial = q->attn_partial;
            c.any_splits = 1;
        }
        scratch = scratch > j->scratch_floats ? scratch : j->scratch_floats;
        w->item_first[si + 1] = w->item_first[si] + j->n_items;
        n += cnt;
    }
    w->seq_first[n_seq] = n;
    c.n = n;
    if (w->scratch_threads < nth || w->attn_scratch_floats < scratch) {
        float *grown = realloc(w->attn_scratch, (size_t)(nth * scratch) * sizeof(float));
        if (!grown) return PYLUT_ENOMEM;
        w->attn_scratch = grown;
        w->scratch_threads = nth;
        w->attn_scratch_floats = scratch;
    }
    for (int i = 0; i < w->n_sets; i++) {
        table_set *ts = &w->sets[i];
        ts->act_bits = 0;
        for (int b = 0; b <= 8; b++) /* (T3 matrices: bits 0) */
            if (ts->act.lut && ts->by_bits[b] &&
                (w->split_int8 || (!w->batch_invariant && pylut_gemm_i8_preferred(ts->by_bits[b], n))))
                ts->act_bits |= 1u << b;
    }
    barrier_init(&c.bar);
    for (int i = 0; i < 5 * m->n_layers + 1; i++) atomic_init(&w->tickets[i], 0);
    pylut_pool_run(pool, step_task, &c);
    barrier_destroy(&c.bar);
    for (int si = 0; si < n_seq; si++) seqs[si]->pos += n_tokens[si];
    return PYLUT_OK;
}

int pylut_forward(pylut_pool *pool, const pylut_model *m, pylut_state *s, const int32_t *tokens,
                  int n, float *logits, int all_logits) {
    if (!m || !s || !tokens || !logits || n < 1) return PYLUT_EINVAL;
    if (s->pos + (int64_t)n > s->n_ctx || pylut_pool_size(pool) > MAX_THREADS) return PYLUT_EINVAL;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab) return PYLUT_EINVAL;
    for (int done = 0; done < n;) {
        int chunk = n - done < s->max_batch ? n - done : s->max_batch;
        int last = done + chunk == n;
        /* a non-final chunk of a last-logits call needs no output projection at all */
        float *lg = all_logits ? logits + (int64_t)done * m->vocab : last ? logits : NULL;
        const int rc = run_step(pool, m, s, &s, 1, tokens + done, &chunk, lg, all_logits);
        if (rc != PYLUT_OK) return rc;
        done += chunk;
    }
    return PYLUT_OK;
}

int pylut_forward_multi(pylut_pool *pool, const pylut_model *m, pylut_state *work, pylut_state *const *seqs,
                        int n_seq, const int32_t *tokens, const int *n_tokens, float *logits) {
    if (!m || !work || !seqs || !tokens || !n_tokens || !logits || n_seq < 1 || n_seq > work->max_batch ||
        pylut_pool_size(pool) > MAX_THREADS)
        return PYLUT_EINVAL;
    int64_t total = 0;
    for (int i = 0; i < n_seq; i++) {
        const pylut_state *q = seqs[i];
        if (!q || q == work || n_tokens[i] < 1 || n_tokens[i] > q->max_batch || q->pos + (int64_t)n_tokens[i] > q->n_ctx ||
            q->n_layers != work->n_layers || q->q_dim != work->q_dim || q->kv_dim != work->kv_dim)
            return PYLUT_EINVAL;
        for (int j = 0; j < i; j++)
            if (seqs[j] == q) return PYLUT_EINVAL; /* one sequence twice would write its cache twice */
        total += n_tokens[i];
    }
    if (total > work->max_batch) return PYLUT_EINVAL;
    for (int64_t i = 0; i < total; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab) return PYLUT_EINVAL;
    return run_step(pool, m, work, seqs, n_seq, tokens, n_tokens, logits, 0);
}
