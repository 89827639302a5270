/* kv_pool.c - the paged KV cache: a pool of fixed-size blocks shared by the sessions of a
 * model, each block reference-counted so sessions holding the same prompt prefix hold its
 * blocks once; a state's block table (reserve with copy-on-write, release, share); and row
 * access for save/load and tools, which no longer see one contiguous cache. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "model_state.h"

/* A block's reference count sits in a trailer after its rows, so a block table is a plain
 * array of row pointers the attention driver reads without a lookup. Rows start on a 4 KiB
 * page: a head's run of 16 rows (4 KiB at head size 128, f16) is then one page for the
 * hardware prefetcher, not parts of two. The trailer is the only metadata a block has. */
#define BLOCK_ALIGN 4096
#define BLOCK_TRAILER 64

struct pylut_kv_pool {
    pthread_mutex_t mu;        /* guards every count below and every block's refs */
    int64_t block_bytes;       /* rows of one block: [2][full heads][PYLUT_KV_PAGE][row_bytes] */
    int64_t max_blocks;        /* cap on blocks in use: past it, PYLUT_EFULL */
    int64_t used, peak;        /* blocks in use now (shared ones once), the most so far */
    int64_t handles;           /* the creator's handle + one per state drawing on the pool */
};

/* The reference count of a block of p: its trailer */
static int64_t *refs_of(const pylut_kv_pool *p, uint8_t *block) {
    return (int64_t *)(void *)(block + p->block_bytes);
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

pylut_kv_pool *pylut_kv_pool_create(int64_t block_bytes, int64_t max_blocks) {
    /* a block must be allocatable with its header; the cap bounds used, an int64 count */
    if (block_bytes < 1 || block_bytes > ((int64_t)1 << 40) || block_bytes % 8 || max_blocks < 1) return NULL;
    pylut_kv_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    p->block_bytes = block_bytes;
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
    free(p);
}

void pylut_kv_pool_free(pylut_kv_pool *p) { pool_drop(p); }

void kvp_pool_retain(pylut_kv_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->handles++;
    pthread_mutex_unlock(&p->mu);
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

/* A new block with one reference, its rows a copy of src's (or zeros); caller holds mu. */
static int block_new_locked(pylut_kv_pool *p, const uint8_t *src, uint8_t **out) {
    if (p->used >= p->max_blocks) return PYLUT_EFULL;
    void *raw = NULL;
    if (posix_memalign(&raw, BLOCK_ALIGN, (size_t)(p->block_bytes + BLOCK_TRAILER)) != 0) return PYLUT_ENOMEM;
    uint8_t *b = raw;
    *refs_of(p, b) = 1;
    if (src) memcpy(b, src, (size_t)p->block_bytes);
    else memset(b, 0, (size_t)p->block_bytes); /* rows not yet written read as zeros (tools) */
    if (++p->used > p->peak) p->peak = p->used;
    *out = b;
    return PYLUT_OK;
}

static void block_unref_locked(pylut_kv_pool *p, uint8_t *b) {
    if (--*refs_of(p, b) > 0) return;
    free(b);
    p->used--;
}

/* ------------------------------------------------------------------ a state's block table */

int kvp_reserve(pylut_state *s, int64_t p0, int64_t p1) {
    if (!s->n_full || p1 <= p0) return PYLUT_OK;
    if (p0 < 0 || p1 > (int64_t)s->n_blocks * PYLUT_KV_PAGE) return PYLUT_EINVAL;
    int rc = PYLUT_OK;
    pylut_kv_pool *p = s->pool;
    pthread_mutex_lock(&p->mu);
    for (int64_t i = p0 / PYLUT_KV_PAGE; i * PYLUT_KV_PAGE < p1 && rc == PYLUT_OK; i++) {
        uint8_t *b = s->blocks[i];
        if (b && *refs_of(p, b) == 1) continue; /* already this state's alone */
        /* shared: copy it under the lock, so no other holder can be its last one and start
         * writing it while the copy reads */
        uint8_t *nb;
        rc = block_new_locked(p, b, &nb);
        if (rc != PYLUT_OK) break;
        if (b) block_unref_locked(p, b);
        s->blocks[i] = nb;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void kvp_release_from(pylut_state *s, int64_t pos) {
    if (!s->n_full) return;
    const int64_t keep = (pos + PYLUT_KV_PAGE - 1) / PYLUT_KV_PAGE;
    pthread_mutex_lock(&s->pool->mu);
    for (int64_t i = keep > 0 ? keep : 0; i < s->n_blocks; i++)
        if (s->blocks[i]) {
            block_unref_locked(s->pool, s->blocks[i]);
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
        dst->blocks[i] = src->blocks[i];
        ++*refs_of(dst->pool, dst->blocks[i]);
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
