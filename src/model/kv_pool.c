/* kv_pool.c - the paged KV cache: a pool of fixed-size blocks shared by the sessions of a
 * model, each block reference-counted so sessions holding the same prompt prefix hold its
 * blocks once; a state's block table (reserve with copy-on-write, release, share); and row
 * access for save/load and tools, which no longer see one contiguous cache. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "model_state.h"

/* Layout. A block is PYLUT_KV_PAGE positions of every full head (keys and values): 2 *
 * n_full runs of PYLUT_KV_PAGE rows, a "piece" each. Blocks do not sit whole in memory:
 * the pool allocates chunks of chunk_blocks blocks, and a chunk holds piece q of its blocks
 * side by side ([piece][chunk_blocks][run]), so block id's piece q is at
 *     chunks[id / C] + q * C * run + (id % C) * run,    C = chunk_blocks.
 * A session that draws consecutive ids (kvp_reserve asks for the id after its previous
 * block) has each head's rows as one stream in memory, run after run, which the hardware
 * prefetcher follows; whole blocks side by side put a head's 16-row runs a block apart
 * (512 KiB on a 1B model), a stream the prefetcher never learns, and long-context decode
 * lost 29 % to it. A state's block table holds the address of piece 0 and its kv_off adds
 * q * C * run, so the attention driver reads it as it read whole blocks. */
#define CHUNK_ALIGN 4096              /* runs of 4 KiB (head size 128, f16) start on a page */
#define CHUNK_TARGET ((int64_t)16 << 20) /* bytes of a chunk: longer streams ... (a chunk of a
                                       * whole 3,500-position context measured no faster) */
#define CHUNK_MIN 16                  /* ... but at least 256 positions per stream */
#define CHUNK_MAX 256                 /* and no more than 4,096 (a chunk is freed only empty) */
#define RUN_AFTER 8                   /* a session starting a new run of ids wants this many free */
#define RUN_GAP 32                    /* ... and this many free before them, where another
                                       * session's run may still be growing (512 positions) */

struct pylut_kv_pool {
    pthread_mutex_t mu;        /* guards every field below but the sizes, and every block */
    int64_t block_bytes;       /* [2][full heads][PYLUT_KV_PAGE][row_bytes] of one block */
    int64_t run_bytes;         /* one piece: PYLUT_KV_PAGE rows of one head */
    int64_t chunk_blocks;      /* C above */
    int64_t piece_bytes;       /* from piece q of a chunk to piece q + 1: C * run (padding
                                * between pieces, to spread the streams' address bits, measured
                                * slower: runs then straddle pages) */
    int64_t max_blocks;        /* cap on blocks in use: past it, PYLUT_EFULL */
    int64_t used, peak;        /* blocks in use now (shared ones once), the most so far */
    int64_t handles;           /* the creator's handle + one per state drawing on the pool */
    int64_t n_chunks;          /* slots in chunks / chunk_used; ids run to n_chunks * C */
    uint8_t **chunks;          /* [n_chunks]: a chunk's memory, or NULL (none of its ids used) */
    int64_t *chunk_used;       /* [n_chunks]: its blocks in use */
    int64_t *refs;             /* [n_chunks * C]: each id's reference count, 0: free */
};

/* Bytes of one chunk: every piece of its chunk_blocks blocks */
static int64_t chunk_bytes(const pylut_kv_pool *p) { return p->piece_bytes * (p->block_bytes / p->run_bytes); }

/* Piece 0 of block id (its chunk present) */
static uint8_t *block_at(const pylut_kv_pool *p, int64_t id) {
    return p->chunks[id / p->chunk_blocks] + (id % p->chunk_blocks) * p->run_bytes;
}

static int id_free(const pylut_kv_pool *p, int64_t id) {
    return id >= 0 && id < p->n_chunks * p->chunk_blocks && p->chunks[id / p->chunk_blocks] && p->refs[id] == 0;
}

/* ------------------------------------------------------------------ the pool */

int64_t pylut_kv_block_bytes(const pylut_model *m, int kv_type, const uint8_t *streaming) {
    if (!m || m->n_layers < 1 || m->n_kv_heads < 1) return 0;
    const int64_t rb = pylut_kv_row_bytes(kv_type, m->head_dim);
    int64_t full = (int64_t)m->n_layers * m->n_kv_heads;
    if (streaming)
        for (int64_t i = 0; i < (int64_t)m->n_layers * m->n_kv_heads; i++) full -= streaming[i] != 0;
    return 2 * full * PYLUT_KV_PAGE * rb;
}

pylut_kv_pool *pylut_kv_pool_create(const pylut_model *m, int kv_type, const uint8_t *streaming, int64_t max_blocks) {
    const int64_t block_bytes = pylut_kv_block_bytes(m, kv_type, streaming);
    const int64_t run = PYLUT_KV_PAGE * pylut_kv_row_bytes(kv_type, m ? m->head_dim : 0);
    /* a chunk of CHUNK_MAX blocks must be allocatable; the cap bounds used, an int64 count */
    if (block_bytes < 1 || run < 1 || block_bytes % (2 * run) || block_bytes > ((int64_t)1 << 36) || max_blocks < 1)
        return NULL;
    pylut_kv_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    p->block_bytes = block_bytes;
    p->run_bytes = run;
    int64_t c = CHUNK_TARGET / block_bytes;
    c = c < CHUNK_MIN ? CHUNK_MIN : c > CHUNK_MAX ? CHUNK_MAX : c;
    p->chunk_blocks = c < max_blocks ? c : max_blocks; /* a small private pool: one chunk, its size */
    p->piece_bytes = p->chunk_blocks * run;
    p->max_blocks = max_blocks;
    p->handles = 1;
    return p;
}

static void pool_drop(pylut_kv_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    const int64_t left = --p->handles;
    pthread_mutex_unlock(&p->mu);
    if (left) return;
    pthread_mutex_destroy(&p->mu); /* no handle, so no state and no block is left */
    for (int64_t c = 0; c < p->n_chunks; c++) free(p->chunks[c]); /* (each empty, so already NULL) */
    free(p->chunks);
    free(p->chunk_used);
    free(p->refs);
    free(p);
}

void pylut_kv_pool_free(pylut_kv_pool *p) { pool_drop(p); }

void kvp_pool_retain(pylut_kv_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->handles++;
    pthread_mutex_unlock(&p->mu);
}

int64_t kvp_run_bytes(const pylut_kv_pool *p) { return p ? p->run_bytes : 0; }
int64_t kvp_piece_bytes(const pylut_kv_pool *p) { return p ? p->piece_bytes : 0; }
int64_t pylut_kv_pool_chunk_blocks(const pylut_kv_pool *p) { return p ? p->chunk_blocks : 0; }

int64_t pylut_kv_pool_bytes_reserved(const pylut_kv_pool *p) {
    if (!p) return 0;
    pthread_mutex_lock((pthread_mutex_t *)&p->mu);
    int64_t n = 0;
    for (int64_t c = 0; c < p->n_chunks; c++) n += p->chunks[c] != NULL;
    pthread_mutex_unlock((pthread_mutex_t *)&p->mu);
    return n * chunk_bytes(p);
}

int pylut_kv_pool_set_max_blocks(pylut_kv_pool *p, int64_t max_blocks) {
    if (!p || max_blocks < 1) return PYLUT_EINVAL;
    pthread_mutex_lock(&p->mu);
    p->max_blocks = max_blocks; /* below the blocks in use: no new block until enough return */
    pthread_mutex_unlock(&p->mu);
    return PYLUT_OK;
}

static int64_t locked_read(const pylut_kv_pool *p, const int64_t *field) {
    if (!p) return 0;
    pthread_mutex_lock((pthread_mutex_t *)&p->mu);
    const int64_t v = *field;
    pthread_mutex_unlock((pthread_mutex_t *)&p->mu);
    return v;
}

int64_t pylut_kv_pool_blocks_used(const pylut_kv_pool *p) { return p ? locked_read(p, &p->used) : 0; }
int64_t pylut_kv_pool_blocks_peak(const pylut_kv_pool *p) { return p ? locked_read(p, &p->peak) : 0; }
int64_t pylut_kv_pool_max_blocks(const pylut_kv_pool *p) { return p ? locked_read(p, &p->max_blocks) : 0; }
int64_t pylut_kv_pool_block_bytes(const pylut_kv_pool *p) { return p ? p->block_bytes : 0; }

/* An id for a new block of a session whose previous block is prev (-1: none); caller holds
 * mu. The id after prev keeps the session's heads one stream each. Failing that, a new run:
 * the lowest free id with RUN_AFTER free from it and, unless nothing can grow into it from
 * below, RUN_GAP free before it (two sessions decoding side by side would otherwise take
 * alternate ids); then any free id, lowest first; then the first id of a chunk not yet
 * allocated. May be n_chunks * C: a new slot. */
static int64_t pick_id(const pylut_kv_pool *p, int64_t prev) {
    const int64_t C = p->chunk_blocks, cap = p->n_chunks * C;
    /* prev's successor, free or in a chunk not allocated (untouched chunk memory costs
     * nothing until written, so a new chunk for one stream is cheap) */
    if (prev >= 0 && (id_free(p, prev + 1) || prev + 1 == cap || !p->chunks[(prev + 1) / C])) return prev + 1;
    int64_t start = -1, first_free = -1;
    for (int64_t id = 0; id < cap; id++) {
        if (!id_free(p, id)) {
            start = -1;
            continue;
        }
        if (first_free < 0) first_free = id;
        if (start < 0) start = id;
        const int below_used = start > 0 && p->chunks[(start - 1) / C]; /* present, not free: in use */
        const int64_t f = below_used ? start + RUN_GAP : start;
        if (id - f + 1 >= RUN_AFTER) return f;
    }
    if (first_free >= 0) return first_free;
    for (int64_t c = 0; c < p->n_chunks; c++)
        if (!p->chunks[c]) return c * C;
    return cap;
}

/* Chunk slot c allocated (the slot arrays grown to hold it); caller holds mu. */
static int chunk_ensure(pylut_kv_pool *p, int64_t c) {
    const int64_t C = p->chunk_blocks;
    if (c < 0 || c > p->n_chunks) return PYLUT_EINVAL; /* pick_id gives at most one slot more */
    if (c == p->n_chunks) {
        const int64_t n = p->n_chunks ? 2 * p->n_chunks : 4;
        if (n > ((int64_t)1 << 40) / C) return PYLUT_ENOMEM;
        uint8_t **chunks = realloc(p->chunks, (size_t)n * sizeof *chunks);
        if (chunks) p->chunks = chunks;
        int64_t *cu = chunks ? realloc(p->chunk_used, (size_t)n * sizeof *cu) : NULL;
        if (cu) p->chunk_used = cu;
        int64_t *refs = cu ? realloc(p->refs, (size_t)(n * C) * sizeof *refs) : NULL;
        if (!refs) return PYLUT_ENOMEM; /* the arrays that did grow keep their old contents */
        p->refs = refs;
        for (int64_t i = p->n_chunks; i < n; i++) {
            p->chunks[i] = NULL;
            p->chunk_used[i] = 0;
        }
        memset(p->refs + p->n_chunks * C, 0, (size_t)((n - p->n_chunks) * C) * sizeof *refs);
        p->n_chunks = n;
    }
    if (p->chunks[c]) return PYLUT_OK;
    void *raw = NULL;
    if (posix_memalign(&raw, CHUNK_ALIGN, (size_t)chunk_bytes(p)) != 0) return PYLUT_ENOMEM;
    p->chunks[c] = raw;
    return PYLUT_OK;
}

/* A new block with one reference, its rows a copy of block src's (src < 0: zeros), drawn
 * after block prev (-1: none); its id in *out. Caller holds mu. */
static int block_new_locked(pylut_kv_pool *p, int64_t src, int64_t prev, int64_t *out) {
    if (p->used >= p->max_blocks) return PYLUT_EFULL;
    const int64_t C = p->chunk_blocks, id = pick_id(p, prev);
    const int rc = chunk_ensure(p, id / C);
    if (rc != PYLUT_OK) return rc;
    const int64_t pieces = p->block_bytes / p->run_bytes, stride = p->piece_bytes;
    uint8_t *d = block_at(p, id);
    const uint8_t *s = src >= 0 ? block_at(p, src) : NULL;
    for (int64_t q = 0; q < pieces; q++) {
        if (s) memcpy(d + q * stride, s + q * stride, (size_t)p->run_bytes);
        else memset(d + q * stride, 0, (size_t)p->run_bytes); /* rows not yet written read as zeros (tools) */
    }
    p->refs[id] = 1;
    p->chunk_used[id / C]++;
    if (++p->used > p->peak) p->peak = p->used;
    *out = id;
    return PYLUT_OK;
}

/* Drop a reference to block id; its chunk goes back to the system once none of its blocks
 * is in use (so memory follows the blocks held, give or take a chunk). Caller holds mu. */
static void block_unref_locked(pylut_kv_pool *p, int64_t id) {
    if (--p->refs[id] > 0) return;
    p->used--;
    const int64_t c = id / p->chunk_blocks;
    if (--p->chunk_used[c] > 0) return;
    free(p->chunks[c]);
    p->chunks[c] = NULL;
}

/* ------------------------------------------------------------------ a state's block table */

int kvp_reserve(pylut_state *s, int64_t p0, int64_t p1) {
    if (!s->n_full || p1 <= p0) return PYLUT_OK;
    if (p0 < 0 || p1 > (int64_t)s->n_blocks * PYLUT_KV_PAGE) return PYLUT_EINVAL;
    int rc = PYLUT_OK;
    pylut_kv_pool *p = s->pool;
    pthread_mutex_lock(&p->mu);
    for (int64_t i = p0 / PYLUT_KV_PAGE; i * PYLUT_KV_PAGE < p1 && rc == PYLUT_OK; i++) {
        const int64_t b = s->bids[i];
        if (b >= 0 && p->refs[b] == 1) continue; /* already this state's alone */
        /* shared: copy it under the lock, so no other holder can be its last one and start
         * writing it while the copy reads */
        int64_t nb;
        rc = block_new_locked(p, b, i > 0 ? s->bids[i - 1] : -1, &nb);
        if (rc != PYLUT_OK) break;
        if (b >= 0) block_unref_locked(p, b);
        s->bids[i] = nb;
        s->blocks[i] = block_at(p, nb);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void kvp_release_from(pylut_state *s, int64_t pos) {
    if (!s->n_full) return;
    const int64_t keep = (pos + PYLUT_KV_PAGE - 1) / PYLUT_KV_PAGE;
    pthread_mutex_lock(&s->pool->mu);
    for (int64_t i = keep > 0 ? keep : 0; i < s->n_blocks; i++)
        if (s->bids[i] >= 0) {
            block_unref_locked(s->pool, s->bids[i]);
            s->bids[i] = -1;
            s->blocks[i] = NULL;
        }
    pthread_mutex_unlock(&s->pool->mu);
}

void kvp_share(pylut_state *dst, const pylut_state *src, int64_t n_pos) {
    if (!dst->n_full) return;
    kvp_release_from(dst, 0);
    const int64_t n = (n_pos + PYLUT_KV_PAGE - 1) / PYLUT_KV_PAGE; /* a partial last block too */
    pthread_mutex_lock(&dst->pool->mu);
    for (int64_t i = 0; i < n; i++) {
        dst->bids[i] = src->bids[i];
        dst->blocks[i] = src->blocks[i];
        dst->pool->refs[dst->bids[i]]++;
    }
    pthread_mutex_unlock(&dst->pool->mu);
}

int64_t pylut_state_blocks_held(const pylut_state *s) {
    if (!s || !s->n_full) return 0;
    int64_t n = 0;
    for (int i = 0; i < s->n_blocks; i++) n += s->blocks[i] != NULL;
    return n;
}

int64_t pylut_state_stream_bytes(const pylut_state *s) { return s ? s->stream_kv_bytes : 0; }

int64_t pylut_state_block_id(const pylut_state *s, int64_t i) {
    return s && s->n_full && i >= 0 && i < s->n_blocks ? s->bids[i] : -1;
}

/* ------------------------------------------------------------------ rows in and out */

static int rows_args_ok(const pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, const void *buf,
                        int64_t buf_bytes) {
    const int64_t slots = pylut_state_head_slots(s, l, h);
    return slots > 0 && (kv == 0 || kv == 1) && buf && slot0 >= 0 && n >= 0 && n <= slots - slot0 &&
           buf_bytes >= n * s->row_bytes;
}

int pylut_state_read_rows(const pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, uint8_t *buf,
                          int64_t buf_bytes) {
    if (!rows_args_ok(s, kv, l, h, slot0, n, buf, buf_bytes)) return PYLUT_EINVAL;
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = slot0 + i;
        uint8_t *dst = buf + i * s->row_bytes;
        if (!is_streaming(s, l, h) && !s->blocks[p / PYLUT_KV_PAGE]) memset(dst, 0, (size_t)s->row_bytes);
        else memcpy(dst, kv_row(s, kv, l, h, p), (size_t)s->row_bytes);
    }
    return PYLUT_OK;
}

int pylut_state_write_rows(pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, const uint8_t *buf,
                           int64_t buf_bytes) {
    if (!rows_args_ok(s, kv, l, h, slot0, n, buf, buf_bytes)) return PYLUT_EINVAL;
    if (!is_streaming(s, l, h)) {
        const int rc = kvp_reserve(s, slot0, slot0 + n); /* never into a block another state holds */
        if (rc != PYLUT_OK) return rc;
    }
    for (int64_t i = 0; i < n; i++)
        memcpy(kv_row(s, kv, l, h, slot0 + i), buf + i * s->row_bytes, (size_t)s->row_bytes);
    return PYLUT_OK;
}
