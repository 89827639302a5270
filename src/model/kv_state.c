/* kv_state.c - a session's state: its allocation (table sets, activation buffers, the KV
 * cache and streaming heads), its position, truncation, restoring a saved stream, and the
 * context shift (dropping positions and re-rotating the keys that stay). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_state.h"

/* ------------------------------------------------------------------ table sets */

static int lut_batch_alloc(lut_batch *b, const pylut_lut *key, int n) {
    const int64_t floats = pylut_lut_scale_floats(key); /* per token */
    b->lut = calloc((size_t)n, sizeof(pylut_lut));
    b->tbl = malloc((size_t)(n * key->tbl_bytes));
    b->tscale = malloc((size_t)(n * floats) * sizeof(float));
    b->sumx = malloc((size_t)(n * floats) * sizeof(float));
    if (!b->lut || !b->tbl || !b->tscale || !b->sumx) return PYLUT_ENOMEM;
    for (int i = 0; i < n; i++) {
        b->lut[i] = *key;
        b->lut[i].tbl = b->tbl + i * key->tbl_bytes;
        b->lut[i].tscale = b->tscale + i * floats;
        b->lut[i].sumx = b->sumx + i * floats;
    }
    return PYLUT_OK;
}

static void lut_batch_free(lut_batch *b) {
    free(b->lut);
    free(b->tbl);
    free(b->tscale);
    free(b->sumx);
}

static int add_set(pylut_state *s, const pylut_qmatrix *qm) {
    const int have = set_for(s, qm);
    if (have >= 0) {
        if (!s->sets[have].by_bits[qm->bits]) s->sets[have].by_bits[qm->bits] = qm;
        return PYLUT_OK;
    }
    if (s->n_sets == MAX_TABLE_SETS) return PYLUT_EINVAL;
    pylut_lut key, act_key;
    pylut_lut_layout(&key, qm);
    table_set *ts = &s->sets[s->n_sets];
    memset(ts->by_bits, 0, sizeof ts->by_bits);
    ts->by_bits[qm->bits] = qm;
    s->keys[s->n_sets++] = key;
    int rc = lut_batch_alloc(&ts->tables, &key, s->max_batch);
    if (rc == PYLUT_OK && pylut_lut_layout_i8(&act_key, qm, s->split_int8 ? 2 : 1) == PYLUT_OK) /* else tables only */
        rc = lut_batch_alloc(&ts->act, &act_key, s->max_batch);
    return rc;
}

int pylut_state_set_batch_invariant(pylut_state *s, int on) {
    if (!s || (on != 0 && on != 1)) return PYLUT_EINVAL;
    s->batch_invariant = on;
    return PYLUT_OK;
}

int pylut_state_batch_invariant(const pylut_state *s) { return s ? s->batch_invariant : 0; }

int pylut_state_set_split_int8(pylut_state *s, int on) {
    if (!s || (on != 0 && on != 1)) return PYLUT_EINVAL;
    for (int i = 0; i < s->n_sets; i++) { /* the int8 activations change layout: one or two parts */
        table_set *ts = &s->sets[i];
        if (!ts->act.lut) continue; /* a set with no int8 path: tables either way */
        const pylut_qmatrix *qm = NULL;
        for (int b = 0; b <= 8 && !qm; b++) qm = ts->by_bits[b]; /* (T3: bits 0) */
        pylut_lut key;
        if (!qm || pylut_lut_layout_i8(&key, qm, on ? 2 : 1) != PYLUT_OK) return PYLUT_EINVAL;
        lut_batch_free(&ts->act);
        memset(&ts->act, 0, sizeof ts->act);
        if (lut_batch_alloc(&ts->act, &key, s->max_batch) != PYLUT_OK) {
            lut_batch_free(&ts->act);
            memset(&ts->act, 0, sizeof ts->act);
            s->split_int8 = 0;
            return PYLUT_ENOMEM; /* this set now has no int8 path: tables only, still correct */
        }
    }
    s->split_int8 = on;
    return PYLUT_OK;
}

int pylut_state_split_int8(const pylut_state *s) { return s ? s->split_int8 : 0; }

/* ------------------------------------------------------------------ life of a state */

void pylut_state_free(pylut_state *s) {
    if (!s) return;
    for (int i = 0; i < s->n_sets; i++) {
        lut_batch_free(&s->sets[i].tables);
        lut_batch_free(&s->sets[i].act);
    }
    if (s->blocks && s->bids && s->pool) kvp_release_from(s, 0); /* (no pool: it failed at creation, no block either) */
    free(s->blocks);
    free(s->bids);
    pylut_kv_pool_free(s->pool); /* this state's handle */
    free(s->stream_kv); free(s->kv_off); free(s->heads); free(s->x); free(s->xb); free(s->q); free(s->k); free(s->v);
    free(s->att); free(s->tmp); free(s->hb); free(s->hb2); free(s->attn_scratch); free(s->attn_partial);
    free(s->inv_freq);
    free(s->inv_freq_swa);
    free(s->rope_cs);
    free(s->tickets);
    free(s->tok_seq); free(s->seq_first); free(s->item_first); free(s->jobs);
    free(s);
}

/* The cache's layout: a block table of n_ctx positions (blocks come on demand) and each
 * full head's run within a block, as the pool lays blocks out; streaming heads' slots in
 * one private allocation. */
static int kv_alloc(pylut_state *s, const pylut_model *m, const uint8_t *streaming, pylut_kv_pool *pool) {
    const int64_t n_heads = (int64_t)s->n_layers * s->n_kv_heads;
    s->kv_off = malloc((size_t)(2 * n_heads) * sizeof(int64_t));
    if (!s->kv_off) return PYLUT_ENOMEM;
    for (int64_t i = 0; i < n_heads; i++) s->n_full += !(streaming && streaming[i]);
    const int64_t run = PYLUT_KV_PAGE * s->row_bytes; /* one head's rows in a block */
    s->block_bytes = 2 * (int64_t)s->n_full * run;
    int64_t piece = 0; /* run q of a block is q * piece bytes after its first */
    if (s->n_full) {
        s->n_blocks = (s->n_ctx + PYLUT_KV_PAGE - 1) / PYLUT_KV_PAGE;
        s->blocks = calloc((size_t)s->n_blocks, sizeof(uint8_t *));
        s->bids = malloc((size_t)s->n_blocks * sizeof(int64_t));
        if (!s->blocks || !s->bids) return PYLUT_ENOMEM;
        for (int i = 0; i < s->n_blocks; i++) s->bids[i] = -1;
        if (pool) {
            if (pylut_kv_pool_block_bytes(pool) != s->block_bytes || kvp_run_bytes(pool) != run)
                return PYLUT_EINVAL; /* another layout's pool */
            kvp_pool_retain(pool);
            s->pool = pool;
        } else if (!(s->pool = pylut_kv_pool_create(m, s->kv_type, streaming, s->n_blocks))) {
            return PYLUT_ENOMEM;
        }
        piece = kvp_piece_bytes(s->pool);
        s->block_span = 2 * (int64_t)s->n_full * piece;
    }
    int64_t full = 0, stream = 0;
    for (int kv = 0; kv < 2; kv++)
        for (int64_t i = 0; i < n_heads; i++) {
            if (streaming && streaming[i]) {
                s->kv_off[kv * n_heads + i] = stream;
                stream += s->stream_slots * s->row_bytes;
            } else {
                s->kv_off[kv * n_heads + i] = full++ * piece;
            }
        }
    s->kv_bytes = stream + 2 * (int64_t)s->n_full * s->n_ctx * s->row_bytes;
    s->stream_kv_bytes = stream;
    if (stream && !(s->stream_kv = calloc((size_t)stream, 1))) return PYLUT_ENOMEM;
    if (!streaming) return PYLUT_OK;
    s->heads = calloc((size_t)n_heads, sizeof(pylut_attn_head));
    if (!s->heads) return PYLUT_ENOMEM;
    for (int l = 0; l < s->n_layers; l++)
        for (int h = 0; h < s->n_kv_heads; h++) {
            pylut_attn_head *hh = &s->heads[(int64_t)l * s->n_kv_heads + h];
            hh->streaming = streaming[(int64_t)l * s->n_kv_heads + h] != 0;
            s->n_streaming += hh->streaming;
            hh->cap = hh->streaming ? s->stream_slots : s->n_ctx;
            if (!hh->streaming) continue; /* a full head's rows: the block table */
            hh->k = kv_row(s, 0, l, h, 0);
            hh->v = kv_row(s, 1, l, h, 0);
        }
    if (!s->n_streaming) { /* a plan of only full heads: the plain path */
        free(s->heads);
        s->heads = NULL;
    }
    return PYLUT_OK;
}

pylut_state *pylut_state_create(const pylut_model *m, int n_ctx, int max_batch, int kv_type) {
    return pylut_state_create_heads(m, n_ctx, max_batch, kv_type, NULL, 0, 0);
}

pylut_state *pylut_state_create_heads(const pylut_model *m, int n_ctx, int max_batch, int kv_type,
                                      const uint8_t *streaming, int sink, int window) {
    return pylut_state_create_paged(m, n_ctx, max_batch, kv_type, streaming, sink, window, NULL);
}

pylut_state *pylut_state_create_paged(const pylut_model *m, int n_ctx, int max_batch, int kv_type,
                                      const uint8_t *streaming, int sink, int window, pylut_kv_pool *pool) {
    const char *why;
    if (pylut_model_check(m, &why) != PYLUT_OK || n_ctx < 1 || n_ctx > m->max_ctx || max_batch < 1 ||
        max_batch > 4096 || pylut_kv_row_bytes(kv_type, m->head_dim) == 0 ||
        m->n_heads / m->n_kv_heads > PYLUT_ATTN_ROWS)
        return NULL;
    if (streaming && (sink < 0 || window < 1 || sink > n_ctx || window > n_ctx)) return NULL;
    pylut_state *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->n_ctx = n_ctx;
    s->max_batch = max_batch;
    s->n_layers = m->n_layers;
    s->q_dim = m->n_heads * m->head_dim;
    s->kv_dim = m->n_kv_heads * m->head_dim;
    s->n_kv_heads = m->n_kv_heads;
    s->kv_type = kv_type;
    s->row_bytes = pylut_kv_row_bytes(kv_type, m->head_dim);
    s->sink = streaming ? sink : 0;
    s->window = streaming ? window : 0;
    s->stream_base = s->sink;
    /* the sinks, the window's older window-1 positions, and a whole chunk of new ones */
    const int64_t stream_need = (int64_t)s->sink + s->window + max_batch;
    s->stream_slots = stream_need < n_ctx ? stream_need : n_ctx;
    size_t B = (size_t)max_batch;
    const int kv_rc = kv_alloc(s, m, streaming, pool);
    s->x = malloc(B * m->dim * sizeof(float));
    s->xb = malloc(B * (m->dim > s->q_dim ? m->dim : s->q_dim) * sizeof(float));
    s->q = malloc(B * s->q_dim * sizeof(float));
    s->k = malloc(B * s->kv_dim * sizeof(float));
    s->v = malloc(B * s->kv_dim * sizeof(float));
    s->att = malloc(B * s->q_dim * sizeof(float));
    s->tmp = malloc(B * m->dim * sizeof(float));
    s->hb = malloc(B * m->ffn_dim * sizeof(float));
    s->hb2 = malloc(B * m->ffn_dim * sizeof(float));
    s->inv_freq = malloc((size_t)(m->head_dim / 2 + 1) * sizeof(float));
    if (m->rope_inv_freq_swa) s->inv_freq_swa = malloc((size_t)(m->head_dim / 2 + 1) * sizeof(float));
    s->rope_cs = malloc(B * (m->rope_inv_freq_swa ? 2 : 1) * 2 * (size_t)pylut_rope_dims(m) * sizeof(float));
    s->tickets = calloc((size_t)(5 * m->n_layers + 1), sizeof(atomic_llong));
    s->tok_seq = malloc(B * sizeof(int));
    s->seq_first = malloc((B + 1) * sizeof(int));
    s->item_first = malloc((B + 1) * sizeof(int64_t));
    s->jobs = calloc(B, sizeof(pylut_attn_job));
    if (kv_rc != PYLUT_OK || !s->x || !s->xb || !s->q || !s->k || !s->v || !s->att || !s->tmp || !s->hb ||
        !s->hb2 || !s->inv_freq || !s->rope_cs || !s->tickets || !s->tok_seq || !s->seq_first || !s->item_first || !s->jobs ||
        (m->rope_inv_freq_swa && !s->inv_freq_swa)) {
        pylut_state_free(s);
        return NULL;
    }
    for (int i = 0; i < pylut_rope_dims(m) / 2; i++)
        s->inv_freq[i] = m->rope_inv_freq ? m->rope_inv_freq[i]
                                          : (float)pow((double)m->rope_theta, -2.0 * i / pylut_rope_dims(m));
    if (s->inv_freq_swa) memcpy(s->inv_freq_swa, m->rope_inv_freq_swa, (size_t)(pylut_rope_dims(m) / 2) * sizeof(float));
    s->rope_scale = m->rope_attn_factor > 0 ? m->rope_attn_factor : 1.0f;
    int rc = PYLUT_OK;
    for (int l = 0; l < m->n_layers && rc == PYLUT_OK; l++) {
        const pylut_layer *L = &m->layers[l];
        const pylut_qmatrix *mats[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (int i = 0; i < 7 && rc == PYLUT_OK; i++) rc = add_set(s, mats[i]);
    }
    if (rc == PYLUT_OK) rc = add_set(s, m->output);
    if (rc != PYLUT_OK) {
        pylut_state_free(s);
        return NULL;
    }
    return s;
}

int pylut_state_pos(const pylut_state *s) { return s ? s->pos : 0; }

int pylut_state_max_batch(const pylut_state *s) { return s ? s->max_batch : 0; }

int pylut_state_copy(pylut_state *dst, const pylut_state *src, int n_pos) {
    if (!dst || !src || dst == src || dst->n_layers != src->n_layers || dst->n_kv_heads != src->n_kv_heads ||
        dst->kv_type != src->kv_type || dst->row_bytes != src->row_bytes || dst->sink != src->sink ||
        dst->window != src->window || !dst->heads != !src->heads || n_pos < 0 || n_pos > src->pos ||
        n_pos > dst->n_ctx || (src->n_streaming && n_pos != src->pos))
        return PYLUT_EINVAL;
    for (int l = 0; l < src->n_layers; l++)
        for (int h = 0; h < src->n_kv_heads; h++) {
            if (is_streaming(src, l, h) != is_streaming(dst, l, h) ||
                pylut_state_head_used(src, l, h) > pylut_state_head_slots(dst, l, h))
                return PYLUT_EINVAL;
        }
    kvp_release_from(dst, 0); /* dst is empty until the copy is whole (a full pool can stop it) */
    dst->pos = 0;
    dst->stream_base = dst->sink;
    if (dst->pool == src->pool) { /* full heads: the same blocks, by reference */
        kvp_share(dst, src, n_pos);
    } else { /* pools apart (a private one): the rows themselves */
        const int rc = kvp_reserve(dst, 0, n_pos);
        if (rc != PYLUT_OK) {
            kvp_release_from(dst, 0); /* what it did get */
            return rc;
        }
        for (int kv = 0; kv < 2; kv++)
            for (int l = 0; l < src->n_layers; l++)
                for (int h = 0; h < src->n_kv_heads; h++)
                    for (int64_t p = 0; p < n_pos && !is_streaming(src, l, h); p++)
                        memcpy(kv_row(dst, kv, l, h, p), kv_row(src, kv, l, h, p), (size_t)src->row_bytes);
    }
    /* a streaming head's used run, always copied: its compaction rewrites it in place */
    for (int kv = 0; kv < 2; kv++)
        for (int l = 0; l < src->n_layers; l++)
            for (int h = 0; h < src->n_kv_heads; h++)
                if (is_streaming(src, l, h))
                    memcpy(kv_row(dst, kv, l, h, 0), kv_row(src, kv, l, h, 0),
                           (size_t)(pylut_state_head_used(src, l, h) * src->row_bytes));
    dst->pos = n_pos;
    dst->stream_base = src->stream_base;
    return PYLUT_OK;
}

int pylut_state_can_truncate(const pylut_state *s, int pos) {
    if (!s || pos < 0 || pos > s->pos) return 0;
    if (!s->n_streaming || pos == 0) return 1;
    /* the next query, at pos, sees (pos - window, pos): those must still be in the stream */
    const int need = pos - s->window + 1 > s->sink ? pos - s->window + 1 : s->sink;
    return s->stream_base <= need;
}

int pylut_state_truncate(pylut_state *s, int pos) {
    if (!pylut_state_can_truncate(s, pos)) return PYLUT_EINVAL;
    kvp_release_from(s, pos); /* a shared partial block stays shared until written */
    s->pos = pos;
    if (pos == 0) s->stream_base = s->sink;
    return PYLUT_OK;
}

int pylut_state_set_pos(pylut_state *s, int pos) { return pylut_state_set_stream(s, pos, s ? s->sink : 0); }

int pylut_state_set_stream(pylut_state *s, int pos, int stream_base) {
    if (!s || pos < 0 || pos > s->n_ctx || stream_base < s->sink) return PYLUT_EINVAL;
    if (s->n_streaming && pos > s->sink &&
        (stream_base > pos || s->sink + (int64_t)pos - stream_base > s->stream_slots))
        return PYLUT_EINVAL;
    /* the positions below pos must have blocks (their rows come in through write_rows) */
    const int rc = kvp_reserve(s, 0, pos);
    if (rc != PYLUT_OK) return rc;
    kvp_release_from(s, pos);
    s->pos = pos;
    s->stream_base = s->n_streaming ? stream_base : s->sink;
    return PYLUT_OK;
}

int pylut_state_stream_base(const pylut_state *s) { return s ? s->stream_base : 0; }

int pylut_state_head_streaming(const pylut_state *s, int l, int h) {
    return s && l >= 0 && l < s->n_layers && h >= 0 && h < s->n_kv_heads && is_streaming(s, l, h);
}

int64_t pylut_state_head_slots(const pylut_state *s, int l, int h) {
    if (!s || l < 0 || l >= s->n_layers || h < 0 || h >= s->n_kv_heads) return 0;
    return is_streaming(s, l, h) ? s->stream_slots : s->n_ctx;
}

int64_t pylut_state_head_used(const pylut_state *s, int l, int h) {
    if (!pylut_state_head_slots(s, l, h)) return 0;
    if (!is_streaming(s, l, h) || s->pos <= s->sink) return s->pos;
    return s->sink + s->pos - s->stream_base;
}

/* Before a chunk of n positions: a streaming head whose slots would overflow keeps only its
 * sinks and the window-1 positions the chunk's first query still sees, moved down to slot
 * sink. Keys keep the RoPE of their absolute positions, so nothing is re-encoded; a head
 * moves window-1 rows once per max_batch positions at most. */
void pylut_state_make_room(pylut_state *s, int n) {
    const int64_t end = (int64_t)s->pos + n;
    if (!s->n_streaming || end <= s->sink || s->sink + end - s->stream_base <= s->stream_slots) return;
    int keep_from = s->pos - (s->window - 1);
    keep_from = keep_from > s->stream_base ? keep_from : s->stream_base;
    const int64_t moved = s->pos - keep_from > 0 ? s->pos - keep_from : 0;
    for (int kv = 0; kv < 2; kv++)
        for (int l = 0; l < s->n_layers; l++)
            for (int h = 0; h < s->n_kv_heads; h++)
                if (is_streaming(s, l, h) && moved)
                    memmove(kv_row(s, kv, l, h, s->sink), kv_row(s, kv, l, h, slot_of(s, l, h, keep_from)),
                            (size_t)(moved * s->row_bytes));
    s->stream_base = keep_from;
}

/* Rotate the keys in slots [a, b) of (l, h) by the angles cs holds (cos, then sin). */
static void rerotate(const pylut_model *m, pylut_state *s, int l, int h, int64_t a, int64_t b, const float *cs,
                     float *x) {
    const int hd = m->head_dim, half = pylut_rope_dims(m) / 2;
    if (m->layers[l].skip_rope) return; /* its keys carry no position */
    for (int64_t p = a; p < b; p++) {
        /* a quantized key is re-encoded after the turn: one more rounding */
        pylut_kv_decode(s->kv_type, hd, kv_row(s, 0, l, h, p), x);
        for (int i = 0; i < half; i++) {
            int i0 = m->rope_neox ? i : 2 * i, i1 = m->rope_neox ? i + half : 2 * i + 1;
            float x0 = x[i0], x1 = x[i1], c = cs[i], sn = cs[half + i];
            x[i0] = x0 * c - x1 * sn;
            x[i1] = x0 * sn + x1 * c;
        }
        pylut_kv_encode(s->kv_type, hd, x, kv_row(s, 0, l, h, p));
    }
}

/* The shift for a streaming head: it holds [0, sink) and [stream_base, pos). Old positions
 * >= n_keep + n_discard become p - n_discard; what the head kept of them stays one run. */
static void shift_stream_head(const pylut_model *m, pylut_state *s, int l, int h, int n_keep, int n_discard,
                              int new_base, const float *cs, float *x) {
    const int base = s->stream_base;
    const int first = base < n_keep ? n_keep + n_discard : (base > n_keep + n_discard ? base : n_keep + n_discard);
    const int64_t moved = s->pos - first, dst = s->sink + (int64_t)(first - n_discard) - new_base;
    for (int kv = 0; kv < 2; kv++)
        memmove(kv_row(s, kv, l, h, dst), kv_row(s, kv, l, h, slot_of(s, l, h, first)), (size_t)(moved * s->row_bytes));
    rerotate(m, s, l, h, dst, dst + moved, cs, x);
}

int pylut_state_shift(const pylut_model *m, pylut_state *s, int n_keep, int n_discard) {
    if (!m || !s || n_keep < 0 || n_discard < 1 || n_keep + n_discard > s->pos) return PYLUT_EINVAL;
    if (s->n_streaming && n_keep < s->sink) return PYLUT_EINVAL; /* the shift would move the sinks */
    const int hd = m->head_dim, half = pylut_rope_dims(m) / 2, moved = s->pos - n_keep - n_discard;
    /* rotation by -n_discard positions, per frequency: RoPE(p - d) = R(-d) RoPE(p) */
    /* cs: [2][hd]: the global layers' cos|sin, then the sliding-window layers' */
    float *cs = malloc((size_t)2 * hd * sizeof(float)), *x = malloc((size_t)hd * sizeof(float));
    if (!cs || !x) {
        free(cs);
        free(x);
        return PYLUT_ENOMEM;
    }
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < half; i++) {
            double a = -(double)n_discard * (w && s->inv_freq_swa ? s->inv_freq_swa : s->inv_freq)[i];
            cs[w * hd + i] = (float)cos(a);
            cs[w * hd + half + i] = (float)sin(a);
        }
    /* the full heads' moved rows are rewritten: their blocks must be this state's alone */
    const int rc = kvp_reserve(s, n_keep, s->pos);
    if (rc != PYLUT_OK) {
        free(cs);
        free(x);
        return rc;
    }
    /* a streaming head's run starts where its first kept position lands */
    const int base = s->stream_base;
    const int new_base = base < n_keep ? base : (base > n_keep + n_discard ? base : n_keep + n_discard) - n_discard;
    for (int l = 0; l < m->n_layers; l++)
        for (int h = 0; h < s->n_kv_heads; h++) {
            const float *cs_l = cs + (m->layers[l].swa ? hd : 0);
            if (is_streaming(s, l, h)) {
                shift_stream_head(m, s, l, h, n_keep, n_discard, new_base, cs_l, x);
                continue;
            }
            for (int kv = 0; kv < 2; kv++) /* row by row, upwards: rows may sit in different blocks */
                for (int64_t p = n_keep; p < n_keep + moved; p++)
                    memcpy(kv_row(s, kv, l, h, p), kv_row(s, kv, l, h, p + n_discard), (size_t)s->row_bytes);
            rerotate(m, s, l, h, n_keep, n_keep + moved, cs_l, x); /* values carry no position */
        }
    free(cs);
    free(x);
    s->stream_base = new_base;
    s->pos -= n_discard;
    kvp_release_from(s, s->pos);
    return PYLUT_OK;
}

int64_t pylut_state_kv_bytes(const pylut_state *s) { return s ? s->kv_bytes : 0; }

int pylut_state_kv_type(const pylut_state *s) { return s ? s->kv_type : -1; }
