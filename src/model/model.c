/* model.c - the Llama-family forward pass: one pool dispatch per chunk of tokens, every stage
 * split over the threads and separated by a spinning barrier (a decode step has ~15 stages
 * per layer; one dispatch each would cost more than the small matrices themselves). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pylut/attention.h"
#include "pylut/model.h"

#include "spin.h"

#define MAX_TABLE_SETS 8   /* distinct (k, group, family) table layouts a model may need */
#define MAX_THREADS 256

/* ------------------------------------------------------------------ state */

typedef struct {               /* one activation set per token of a chunk */
    pylut_lut *lut;            /* [max_batch], all of one layout */
    int8_t *tbl;               /* [max_batch][tbl_bytes] */
    float *tscale, *sumx;      /* [max_batch][parts][n_groups] (parts: 2 for split int8) */
} lut_batch;

typedef struct {
    lut_batch tables;          /* lookup tables (PYLUT_LUT_B or PYLUT_LUT_T3) */
    lut_batch act;             /* B-type sets: the same tokens as int8 activations, for chunks
                                * the int8 prefill kernel takes (pylut_gemm_i8_preferred);
                                * act.lut NULL for T3 sets */
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
    uint8_t *kv;               /* [2][n_layers][n_kv_heads][slots of the head][row_bytes]: keys then
                                * values; a head's slots are contiguous for the attention stream.
                                * Every head has n_ctx slots unless it streams (heads below) */
    int64_t kv_bytes;          /* bytes of kv */
    int64_t *kv_off;           /* [2][n_layers][n_kv_heads]: byte offset of each head's slot 0 */
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
    float *inv_freq;           /* [head_dim/2] */
    float rope_scale;          /* cos/sin factor (YaRN's attention factor; else 1) */
    atomic_llong *tickets;     /* [5*n_layers + 1]: next unclaimed tile of each GEMM stage
                                * (4 per layer + output), then each layer's attention item */
    table_set sets[MAX_TABLE_SETS];
    pylut_lut keys[MAX_TABLE_SETS]; /* layout of each set (tbl pointers unused) */
};

static int same_layout(const pylut_lut *a, const pylut_lut *b) {
    return a->kind == b->kind && a->k == b->k && a->k_pad == b->k_pad && a->group == b->group &&
           a->super == b->super;
}

/* The table set that matrix qm reads, or -1. */
static int set_for(const pylut_state *s, const pylut_qmatrix *qm) {
    pylut_lut want;
    pylut_lut_layout(&want, qm);
    for (int i = 0; i < s->n_sets; i++)
        if (same_layout(&s->keys[i], &want)) return i;
    return -1;
}

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
    if (rc == PYLUT_OK && pylut_lut_layout_i8(&act_key, qm, s->split_int8 ? 2 : 1) == PYLUT_OK) /* T3: tables only */
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
        if (!ts->act.lut) continue; /* T3: no int8 path, tables either way */
        const pylut_qmatrix *qm = NULL;
        for (int b = 1; b <= 8 && !qm; b++) qm = ts->by_bits[b];
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

/* Whether matrix qm of set ts reads the int8 activations in this chunk. */
static int reads_act(const table_set *ts, const pylut_qmatrix *qm) { return (ts->act_bits >> qm->bits) & 1u; }

/* The activations matrix qm (of set ts) reads in this chunk. */
static pylut_lut *mat_input(const table_set *ts, const pylut_qmatrix *qm) {
    return reads_act(ts, qm) ? ts->act.lut : ts->tables.lut;
}

void pylut_state_free(pylut_state *s) {
    if (!s) return;
    for (int i = 0; i < s->n_sets; i++) {
        lut_batch_free(&s->sets[i].tables);
        lut_batch_free(&s->sets[i].act);
    }
    free(s->kv); free(s->kv_off); free(s->heads); free(s->x); free(s->xb); free(s->q); free(s->k); free(s->v);
    free(s->att); free(s->tmp); free(s->hb); free(s->hb2); free(s->attn_scratch); free(s->attn_partial);
    free(s->inv_freq);
    free(s->tickets);
    free(s);
}

/* Cache slot p of (kv 0/1, layer l, kv head h); a slot is the position for full heads. */
static uint8_t *kv_row(const pylut_state *s, int kv, int l, int h, int64_t p) {
    return s->kv + s->kv_off[((int64_t)kv * s->n_layers + l) * s->n_kv_heads + h] + p * s->row_bytes;
}

static int is_streaming(const pylut_state *s, int l, int h) {
    return s->heads && s->heads[(int64_t)l * s->n_kv_heads + h].streaming;
}

/* The slot holding position pos of (l, h): its sink slot, or its place in the stream. */
static int64_t slot_of(const pylut_state *s, int l, int h, int64_t pos) {
    return !is_streaming(s, l, h) || pos < s->sink ? pos : s->sink + pos - s->stream_base;
}

/* Slots of every head in one allocation; a plan's per-head pointers into it. */
static int kv_alloc(pylut_state *s, const uint8_t *streaming) {
    const int64_t n_heads = (int64_t)s->n_layers * s->n_kv_heads;
    s->kv_off = malloc((size_t)(2 * n_heads) * sizeof(int64_t));
    if (!s->kv_off) return PYLUT_ENOMEM;
    int64_t off = 0;
    for (int kv = 0; kv < 2; kv++)
        for (int64_t i = 0; i < n_heads; i++) {
            s->kv_off[kv * n_heads + i] = off;
            off += (streaming && streaming[i] ? s->stream_slots : s->n_ctx) * s->row_bytes;
        }
    s->kv_bytes = off;
    s->kv = calloc((size_t)off, 1);
    if (!s->kv) return PYLUT_ENOMEM;
    if (!streaming) return PYLUT_OK;
    s->heads = calloc((size_t)n_heads, sizeof(pylut_attn_head));
    if (!s->heads) return PYLUT_ENOMEM;
    for (int l = 0; l < s->n_layers; l++)
        for (int h = 0; h < s->n_kv_heads; h++) {
            pylut_attn_head *hh = &s->heads[(int64_t)l * s->n_kv_heads + h];
            hh->streaming = streaming[(int64_t)l * s->n_kv_heads + h] != 0;
            hh->k = kv_row(s, 0, l, h, 0);
            hh->v = kv_row(s, 1, l, h, 0);
            hh->cap = hh->streaming ? s->stream_slots : s->n_ctx;
            s->n_streaming += hh->streaming;
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
    const int kv_rc = kv_alloc(s, streaming);
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
    s->tickets = calloc((size_t)(5 * m->n_layers + 1), sizeof(atomic_llong));
    if (kv_rc != PYLUT_OK || !s->x || !s->xb || !s->q || !s->k || !s->v || !s->att || !s->tmp || !s->hb ||
        !s->hb2 || !s->inv_freq || !s->tickets) {
        pylut_state_free(s);
        return NULL;
    }
    for (int i = 0; i < m->head_dim / 2; i++)
        s->inv_freq[i] = m->rope_inv_freq ? m->rope_inv_freq[i] : (float)pow((double)m->rope_theta, -2.0 * i / m->head_dim);
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

int pylut_state_can_truncate(const pylut_state *s, int pos) {
    if (!s || pos < 0 || pos > s->pos) return 0;
    if (!s->n_streaming || pos == 0) return 1;
    /* the next query, at pos, sees (pos - window, pos): those must still be in the stream */
    const int need = pos - s->window + 1 > s->sink ? pos - s->window + 1 : s->sink;
    return s->stream_base <= need;
}

int pylut_state_truncate(pylut_state *s, int pos) {
    if (!pylut_state_can_truncate(s, pos)) return PYLUT_EINVAL;
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

uint8_t *pylut_state_head_kv(pylut_state *s, int kv, int l, int h) {
    if (!pylut_state_head_slots(s, l, h) || kv < 0 || kv > 1) return NULL;
    return kv_row(s, kv, l, h, 0);
}

/* Before a chunk of n positions: a streaming head whose slots would overflow keeps only its
 * sinks and the window-1 positions the chunk's first query still sees, moved down to slot
 * sink. Keys keep the RoPE of their absolute positions, so nothing is re-encoded; a head
 * moves window-1 rows once per max_batch positions at most. */
static void stream_make_room(pylut_state *s, int n) {
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
    const int hd = m->head_dim, half = hd / 2;
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
    const int hd = m->head_dim, half = hd / 2, moved = s->pos - n_keep - n_discard;
    /* rotation by -n_discard positions, per frequency: RoPE(p - d) = R(-d) RoPE(p) */
    float *cs = malloc((size_t)hd * sizeof(float)), *x = malloc((size_t)hd * sizeof(float));
    if (!cs || !x) {
        free(cs);
        free(x);
        return PYLUT_ENOMEM;
    }
    for (int i = 0; i < half; i++) {
        double a = -(double)n_discard * s->inv_freq[i];
        cs[i] = (float)cos(a);
        cs[half + i] = (float)sin(a);
    }
    /* a streaming head's run starts where its first kept position lands */
    const int base = s->stream_base;
    const int new_base = base < n_keep ? base : (base > n_keep + n_discard ? base : n_keep + n_discard) - n_discard;
    for (int l = 0; l < m->n_layers; l++)
        for (int h = 0; h < s->n_kv_heads; h++) {
            if (is_streaming(s, l, h)) {
                shift_stream_head(m, s, l, h, n_keep, n_discard, new_base, cs, x);
                continue;
            }
            for (int kv = 0; kv < 2; kv++)
                memmove(kv_row(s, kv, l, h, n_keep), kv_row(s, kv, l, h, n_keep + n_discard),
                        (size_t)moved * s->row_bytes);
            rerotate(m, s, l, h, n_keep, n_keep + moved, cs, x); /* values carry no position */
        }
    free(cs);
    free(x);
    s->stream_base = new_base;
    s->pos -= n_discard;
    return PYLUT_OK;
}

int64_t pylut_state_kv_bytes(const pylut_state *s) { return s ? s->kv_bytes : 0; }

uint8_t *pylut_state_kv(pylut_state *s) { return s ? s->kv : NULL; }

int pylut_state_kv_type(const pylut_state *s) { return s ? s->kv_type : -1; }

/* ------------------------------------------------------------------ model check */

static int mat_ok(const pylut_qmatrix *qm, int64_t m, int64_t k) {
    return qm && pylut_qmatrix_valid(qm) && qm->m == m && qm->k == k;
}

int pylut_model_check(const pylut_model *m, const char **why) {
#define REQUIRE(c, msg) do { if (!(c)) { *why = msg; return PYLUT_EINVAL; } } while (0)
    REQUIRE(m, "no model");
    REQUIRE(m->ffn_act == PYLUT_FFN_SILU || m->ffn_act == PYLUT_FFN_RELU2, "unknown FFN activation");
    REQUIRE(m->n_layers > 0 && m->dim > 0 && m->n_heads > 0 && m->n_kv_heads > 0 && m->head_dim > 1 &&
                m->ffn_dim > 0 && m->vocab > 0 && m->max_ctx > 0,
            "non-positive hyperparameter");
    REQUIRE(m->head_dim % 2 == 0, "head_dim must be even for RoPE");
    REQUIRE(m->n_heads % m->n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
    REQUIRE(m->norm_eps > 0 && m->rope_theta > 0, "norm_eps and rope_theta must be positive");
    REQUIRE(m->rope_attn_factor >= 0 && isfinite(m->rope_attn_factor), "rope_attn_factor must be finite and >= 0");
    if (m->rope_inv_freq)
        for (int i = 0; i < m->head_dim / 2; i++)
            REQUIRE(isfinite(m->rope_inv_freq[i]) && m->rope_inv_freq[i] > 0, "rope_inv_freq must be finite and positive");
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
    }
    *why = "";
    return PYLUT_OK;
#undef REQUIRE
}

/* ------------------------------------------------------------------ barrier */

/* Spin first (the others are microseconds away), then block: a core that goes idle lets
 * the scheduler move a thread we wait for over from a core another process keeps busy,
 * which merely yielding would not. */
#ifndef BARRIER_SPINS
#define BARRIER_SPINS 4096
#endif

typedef struct {
    atomic_int count, gen, sleepers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} barrier_t;

static void barrier_init(barrier_t *b) {
    atomic_init(&b->count, 0);
    atomic_init(&b->gen, 0);
    atomic_init(&b->sleepers, 0);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
}

static void barrier_destroy(barrier_t *b) {
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
}

static void barrier_wait(barrier_t *b, int nth) {
    if (nth == 1) return;
    int g = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->count, 1) == nth - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->gen, 1); /* seq_cst: pairs with the sleepers count (Dekker) */
        if (atomic_load(&b->sleepers) > 0) {
            pthread_mutex_lock(&b->mu);
            pthread_cond_broadcast(&b->cv);
            pthread_mutex_unlock(&b->mu);
        }
        return;
    }
    for (int spins = 0; spins < BARRIER_SPINS; spins++) {
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) return;
        cpu_relax();
    }
    pthread_mutex_lock(&b->mu);
    atomic_fetch_add(&b->sleepers, 1);
    while (atomic_load(&b->gen) == g) pthread_cond_wait(&b->cv, &b->mu);
    atomic_fetch_sub(&b->sleepers, 1);
    pthread_mutex_unlock(&b->mu);
}

/* ------------------------------------------------------------------ small ops */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/* x[i] += y[i] for this thread's share of [0, count): element ranges, so one token's add
 * is split over every thread as well */
static void residual_add(float *x, const float *y, int64_t count, int ith, int nth) {
    const int64_t a = count * ith / nth, b = count * (ith + 1) / nth;
    for (int64_t i = a; i < b; i++) x[i] += y[i];
}

/* scale multiplies cos and sin, so q.k carries it squared, as YaRN's temperature asks */
static void rope(float *v, int head_dim, int pos, const float *inv_freq, float scale, int neox) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float a = (float)pos * inv_freq[i], c = cosf(a) * scale, s = sinf(a) * scale;
        int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * c - x1 * s;
        v[i1] = x0 * s + x1 * c;
    }
}

/* ------------------------------------------------------------------ the step */

typedef struct {
    const pylut_model *m;
    pylut_state *s;
    const int32_t *tokens;
    int n, pos0, all_logits;
    float *logits;          /* [n or 1][vocab], NULL: no output projection (a non-final chunk) */
    pylut_attn_job attn;    /* the chunk's attention plan (cache pointers set per layer) */
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

/* Layer l's attention for the chunk: items (kv head x query tile x cache slice) claimed from
 * the layer's ticket; with slices, a merge per kv head after a barrier. Ends with a barrier. */
static void stage_attention(step_ctx *c, int ith, int nth, int l) {
    pylut_state *s = c->s;
    pylut_attn_job job = c->attn; /* planned once per chunk; only the layer's cache differs */
    job.k = kv_row(s, 0, l, 0, 0);
    job.v = kv_row(s, 1, l, 0, 0);
    if (s->heads) job.heads = s->heads + (int64_t)l * s->n_kv_heads;
    float *scratch = s->attn_scratch + (int64_t)ith * s->attn_scratch_floats;
    atomic_llong *ticket = &s->tickets[4 * s->n_layers + 1 + l];
    for (int64_t w; (w = atomic_fetch_add_explicit(ticket, 1, memory_order_relaxed)) < job.n_items;)
        pylut_attn_item(&job, w, scratch);
    barrier_wait(&c->bar, nth);
    if (job.splits > 1) {
        for (int h = ith; h < s->n_kv_heads; h += nth) pylut_attn_merge(&job, h);
        barrier_wait(&c->bar, nth);
    }
}

static void step_task(void *arg, int ith, int nth) {
    step_ctx *c = arg;
    const pylut_model *m = c->m;
    pylut_state *s = c->s;
    const int n = c->n, dim = m->dim, qd = s->q_dim, kvd = s->kv_dim, ffn = m->ffn_dim, hd = m->head_dim;
    SPLIT(n, ith, nth, t0, t1); /* this thread's tokens for per-token stages */
    int stage = 0;              /* GEMM stages run so far: indexes the ticket counters */

    for (int64_t t = t0; t < t1; t++) { /* embedding rows */
        if (m->tok_embd_f32) memcpy(s->x + t * dim, m->tok_embd_f32 + (int64_t)c->tokens[t] * dim, (size_t)dim * sizeof(float));
        else pylut_qmatrix_row(m->tok_embd, c->tokens[t], s->x + t * dim);
    }
    for (int l = 0; l < m->n_layers; l++) {
        const pylut_layer *L = &m->layers[l];
        for (int64_t t = t0; t < t1; t++) rmsnorm(s->xb + t * dim, s->x + t * dim, L->attn_norm, dim, m->norm_eps);
        barrier_wait(&c->bar, nth);

        /* ---- attention: q, k, v from one table set, RoPE, cache append, softmax(qk)v */
        const pylut_qmatrix *qkv[3] = {L->wq, L->wk, L->wv};
        float *qkv_out[3] = {s->q, s->k, s->v};
        const int64_t qkv_ld[3] = {qd, kvd, kvd};
        stage_tables(c, ith, nth, s->xb, dim, n, qkv, 3);
        stage_gemm(c, ith, nth, &stage, n, qkv, qkv_out, qkv_ld, 3);
        {
            const int per = m->n_heads + m->n_kv_heads;
            SPLIT(n * per, ith, nth, w0, w1);
            for (int64_t w = w0; w < w1; w++) {
                int t = (int)(w / per), h = (int)(w % per), pos = c->pos0 + t;
                if (h < m->n_heads) {
                    float *q = s->q + (int64_t)t * qd + h * hd;
                    if (L->bq) for (int i = 0; i < hd; i++) q[i] += L->bq[h * hd + i];
                    rope(q, hd, pos, s->inv_freq, s->rope_scale, m->rope_neox);
                } else {
                    h -= m->n_heads;
                    float *k = s->k + (int64_t)t * kvd + h * hd, *v = s->v + (int64_t)t * kvd + h * hd;
                    if (L->bk) for (int i = 0; i < hd; i++) k[i] += L->bk[h * hd + i];
                    if (L->bv) for (int i = 0; i < hd; i++) v[i] += L->bv[h * hd + i];
                    rope(k, hd, pos, s->inv_freq, s->rope_scale, m->rope_neox);
                    pylut_kv_encode(s->kv_type, hd, k, kv_row(s, 0, l, h, slot_of(s, l, h, pos)));
                    pylut_kv_encode(s->kv_type, hd, v, kv_row(s, 1, l, h, slot_of(s, l, h, pos)));
                }
            }
        }
        barrier_wait(&c->bar, nth);
        stage_attention(c, ith, nth, l);
        if (L->attn_sub_norm) {
            for (int64_t t = t0; t < t1; t++) rmsnorm(s->att + t * qd, s->att + t * qd, L->attn_sub_norm, qd, m->norm_eps);
            barrier_wait(&c->bar, nth);
        }
        stage_matmul(c, ith, nth, &stage, n, L->wo, s->att, qd, s->tmp, dim);
        residual_add(s->x, s->tmp, (int64_t)n * dim, ith, nth);
        barrier_wait(&c->bar, nth);
        for (int64_t t = t0; t < t1; t++) rmsnorm(s->xb + t * dim, s->x + t * dim, L->ffn_norm, dim, m->norm_eps);
        barrier_wait(&c->bar, nth);

        /* ---- feed-forward: gate/up share tables; SiLU or ReLU^2 (the 2B4T bitnets) */
        {
            const pylut_qmatrix *gu[2] = {L->w_gate, L->w_up};
            float *outs[2] = {s->hb, s->hb2};
            const int64_t ld[2] = {ffn, ffn};
            stage_tables(c, ith, nth, s->xb, dim, n, gu, 2);
            stage_gemm(c, ith, nth, &stage, n, gu, outs, ld, 2);
        }
        { /* element ranges, not tokens: a decode step's one token is split over every thread */
            SPLIT((int64_t)n * ffn, ith, nth, e0, e1);
            float *g = s->hb, *u = s->hb2;
            if (m->ffn_act == PYLUT_FFN_RELU2)
                for (int64_t i = e0; i < e1; i++) g[i] = (g[i] > 0.0f ? g[i] * g[i] : 0.0f) * u[i];
            else
                for (int64_t i = e0; i < e1; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        barrier_wait(&c->bar, nth);
        if (L->ffn_sub_norm) {
            for (int64_t t = t0; t < t1; t++) rmsnorm(s->hb + t * ffn, s->hb + t * ffn, L->ffn_sub_norm, ffn, m->norm_eps);
            barrier_wait(&c->bar, nth);
        }
        stage_matmul(c, ith, nth, &stage, n, L->w_down, s->hb, ffn, s->tmp, dim);
        residual_add(s->x, s->tmp, (int64_t)n * dim, ith, nth);
        barrier_wait(&c->bar, nth);
    }

    /* ---- logits for the last token (or all) */
    if (!c->logits) return;
    const int first = c->all_logits ? 0 : n - 1, nl = n - first;
    {
        SPLIT(nl, ith, nth, a, b);
        for (int64_t t = first + a; t < first + b; t++)
            rmsnorm(s->xb + t * dim, s->x + t * dim, m->output_norm, dim, m->norm_eps);
    }
    barrier_wait(&c->bar, nth);
    stage_matmul(c, ith, nth, &stage, nl, m->output, s->xb + (int64_t)first * dim, dim, c->logits, m->vocab);
}

int pylut_forward(pylut_pool *pool, const pylut_model *m, pylut_state *s, const int32_t *tokens,
                  int n, float *logits, int all_logits) {
    if (!m || !s || !tokens || !logits || n < 1) return PYLUT_EINVAL;
    if (s->pos + (int64_t)n > s->n_ctx || pylut_pool_size(pool) > MAX_THREADS) return PYLUT_EINVAL;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->vocab) return PYLUT_EINVAL;
    const int nth = pylut_pool_size(pool);
    for (int done = 0; done < n;) {
        int chunk = n - done < s->max_batch ? n - done : s->max_batch;
        int last = done + chunk == n;
        stream_make_room(s, chunk);
        /* a non-final chunk of a last-logits call needs no output projection at all */
        float *lg = all_logits ? logits + (int64_t)done * m->vocab : last ? logits : NULL;
        step_ctx c = {m, s, tokens + done, chunk, s->pos, all_logits, lg};
        pylut_attn_job *j = &c.attn; /* layer 0's cache for the plan; stage_attention swaps it */
        j->type = s->kv_type;
        j->hd = m->head_dim;
        j->n_heads = m->n_heads;
        j->n_kv_heads = m->n_kv_heads;
        j->k = kv_row(s, 0, 0, 0, 0);
        j->v = kv_row(s, 1, 0, 0, 0);
        j->ld = s->row_bytes;
        j->hstride = (int64_t)s->n_ctx * s->row_bytes;
        j->len = s->pos + chunk;
        j->q = s->q;
        j->ldq = s->q_dim;
        j->out = s->att;
        j->ldo = s->q_dim;
        j->n = chunk;
        j->pos0 = s->pos;
        j->scale = 1.0f / sqrtf((float)m->head_dim);
        j->heads = s->heads; /* layer 0's; stage_attention takes each layer's */
        j->sink = s->sink;
        j->window = s->window;
        j->stream_base = s->stream_base;
        if (pylut_attn_plan(j, nth) != PYLUT_OK) return PYLUT_EINVAL;
        if (s->attn_partial_floats < j->partial_floats) {
            float *grown = realloc(s->attn_partial, (size_t)j->partial_floats * sizeof(float));
            if (!grown) return PYLUT_ENOMEM;
            s->attn_partial = grown;
            s->attn_partial_floats = j->partial_floats;
        }
        j->partial = s->attn_partial;
        if (s->scratch_threads < nth || s->attn_scratch_floats < j->scratch_floats) {
            float *grown = realloc(s->attn_scratch, (size_t)(nth * j->scratch_floats) * sizeof(float));
            if (!grown) return PYLUT_ENOMEM;
            s->attn_scratch = grown;
            s->scratch_threads = nth;
            s->attn_scratch_floats = j->scratch_floats;
        }
        for (int i = 0; i < s->n_sets; i++) {
            table_set *ts = &s->sets[i];
            ts->act_bits = 0;
            for (int b = 1; b <= 8; b++)
                if (ts->act.lut && ts->by_bits[b] &&
                    (s->split_int8 || (!s->batch_invariant && pylut_gemm_i8_preferred(ts->by_bits[b], chunk))))
                    ts->act_bits |= 1u << b;
        }
        barrier_init(&c.bar);
        for (int i = 0; i < 5 * m->n_layers + 1; i++) atomic_init(&s->tickets[i], 0);
        pylut_pool_run(pool, step_task, &c);
        barrier_destroy(&c.bar);
        s->pos += chunk;
        done += chunk;
    }
    return PYLUT_OK;
}
