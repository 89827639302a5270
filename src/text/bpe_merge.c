/* bpe_merge.c - BPE merging of one pre-token over integer symbol ids (the pair table and the
 * heap loop). pylut/tokenizer's merge_symbols is the reference this must equal exactly. */
#include <stdlib.h>

#include "pylut/bpe.h"
#include "pylut/pylut.h"

/* ------------------------------------------------------------------ the pair table */

static inline uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

static inline int64_t slot_of(uint64_t key, int64_t cap) {
    /* Fibonacci hashing: the top bits of key * 2^64/phi */
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (int64_t)((h ^ (h >> 29)) & (uint64_t)(cap - 1));
}

int pylut_bpe_table_build(const int32_t *left, const int32_t *right, const int32_t *rank,
                          const int32_t *merged, int64_t m,
                          uint64_t *keys, int32_t *vals, int64_t cap) {
    if (m < 0 || cap <= 0 || (cap & (cap - 1)) != 0 || cap < 2 * m)
        return PYLUT_EINVAL;
    for (int64_t k = 0; k < m; k++) {
        if (left[k] < 0 || right[k] < 0 || rank[k] < 0 || merged[k] < 0)
            return PYLUT_EINVAL;
        uint64_t key = pair_key(left[k], right[k]);
        int64_t s = slot_of(key, cap);
        while (keys[s] != PYLUT_BPE_EMPTY && keys[s] != key)
            s = (s + 1) & (cap - 1);
        if (keys[s] == key)
            continue;  /* listed twice: the first entry wins */
        keys[s] = key;
        vals[2 * s] = rank[k];
        vals[2 * s + 1] = merged[k];
    }
    return 0;
}

/* the slot's vals, or NULL when the pair has no merge */
static inline const int32_t *find_pair(int32_t left, int32_t right, const uint64_t *keys,
                                       const int32_t *vals, int64_t cap) {
    uint64_t key = pair_key(left, right);
    int64_t s = slot_of(key, cap);
    for (;;) {
        if (keys[s] == key)
            return vals + 2 * s;
        if (keys[s] == PYLUT_BPE_EMPTY)
            return NULL;
        s = (s + 1) & (cap - 1);
    }
}

/* ------------------------------------------------------------------ a min-heap of uint64 */

/* entry = rank << 32 | position: the lowest rank first, then the leftmost position */
typedef struct {
    uint64_t *v;
    int64_t n;
} heap_t;

static void heap_push(heap_t *h, uint64_t x) {
    int64_t i = h->n++;
    while (i > 0) {
        int64_t parent = (i - 1) >> 1;
        if (h->v[parent] <= x)
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = x;
}

static uint64_t heap_pop(heap_t *h) {
    uint64_t top = h->v[0], x = h->v[--h->n];
    int64_t i = 0, n = h->n;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h->v[c + 1] < h->v[c])
            c++;
        if (x <= h->v[c])
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (n > 0)
        h->v[i] = x;
    return top;
}

/* ------------------------------------------------------------------ the merge loop */

int64_t pylut_bpe_merge(int32_t *syms, int64_t n,
                        const uint64_t *keys, const int32_t *vals, int64_t cap) {
    if (n < 0 || n > INT32_MAX - 1)
        return PYLUT_EINVAL;
    if (n < 2)
        return n;
    /* next[n], prev[n]: the linked list of live symbols (-1 ends it); heap[2n]: it starts
     * with at most n - 1 pairs, and each merge pops one entry and pushes at most two, so it
     * never holds more than n - 1 + (number of merges) < 2n */
    int32_t *next = malloc((size_t)n * sizeof *next);
    int32_t *prev = malloc((size_t)n * sizeof *prev);
    heap_t h = {malloc((size_t)(2 * n) * sizeof(uint64_t)), 0};
    if (!next || !prev || !h.v) {
        free(next); free(prev); free(h.v);
        return PYLUT_ENOMEM;
    }
    for (int64_t i = 0; i < n; i++) {
        next[i] = (int32_t)(i + 1 < n ? i + 1 : -1);
        prev[i] = (int32_t)(i - 1);
    }
    for (int64_t i = 0; i + 1 < n; i++) {
        const int32_t *p = find_pair(syms[i], syms[i + 1], keys, vals, cap);
        if (p)
            h.v[h.n++] = ((uint64_t)(uint32_t)p[0] << 32) | (uint64_t)i;
    }
    for (int64_t i = h.n / 2 - 1; i >= 0; i--) {  /* heapify: sift each parent down */
        uint64_t x = h.v[i];
        int64_t k = i;
        for (;;) {
            int64_t c = 2 * k + 1;
            if (c >= h.n)
                break;
            if (c + 1 < h.n && h.v[c + 1] < h.v[c])
                c++;
            if (x <= h.v[c])
                break;
            h.v[k] = h.v[c];
            k = c;
        }
        h.v[k] = x;
    }
    while (h.n > 0) {
        uint64_t top = heap_pop(&h);
        int32_t rank = (int32_t)(top >> 32), i = (int32_t)(top & 0xFFFFFFFFu);
        int32_t j = next[i];
        if (syms[i] < 0 || j < 0)
            continue;  /* merged into its left neighbour, or now the last symbol */
        const int32_t *p = find_pair(syms[i], syms[j], keys, vals, cap);
        if (!p || p[0] != rank)
            continue;  /* a neighbour merged first: this pair is gone */
        syms[i] = p[1];
        syms[j] = -1;
        int32_t k = next[j];
        next[i] = k;
        if (k >= 0)
            prev[k] = i;
        int32_t before = prev[i];
        if (before >= 0) {
            const int32_t *q = find_pair(syms[before], syms[i], keys, vals, cap);
            if (q)
                heap_push(&h, ((uint64_t)(uint32_t)q[0] << 32) | (uint32_t)before);
        }
        if (k >= 0) {
            const int32_t *q = find_pair(syms[i], syms[k], keys, vals, cap);
            if (q)
                heap_push(&h, ((uint64_t)(uint32_t)q[0] << 32) | (uint32_t)i);
        }
    }
    int64_t out = 0;
    for (int64_t i = 0; i < n; i++)
        if (syms[i] >= 0)
            syms[out++] = syms[i];
    free(next); free(prev); free(h.v);
    return out;
}
