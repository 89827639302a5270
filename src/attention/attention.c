/* attention.c - the portable half of tiled attention: cache row encoding, the work plan
 * (kv head x query tile x cache slice), one item's gather/compute/scatter, and the merge of
 * cache slices. The per-ISA inner step is attn_body.h, reached through dispatch.c. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pylut/attention.h"

#define LOG2E 1.4426950408889634f
#define HD_ALIGN 16        /* hd_pad: whole vectors for every ISA up to 16 lanes */
#define MIN_SLICE 256      /* cache positions per slice: smaller slices cost more to merge */

/* ------------------------------------------------------------------ cache rows */

/* The 4-bit cache stores each block of 32 rotated by a normalized Walsh-Hadamard transform:
 * keys have a few outlier channels that would otherwise set every block's scale and flatten
 * the rest to a handful of levels (perplexity of SmolLM2 with a 4-bit cache: 6.47 unrotated
 * against 4.69 in f16). H is orthonormal and its own inverse, so (Hq).(Hk) = q.k and
 * sum p Hv = H sum p v: queries are rotated on the way in, outputs on the way out, and the
 * kernels never know. A power-of-two head is rotated whole; other heads block by block, and
 * a block whose length is not a power of two (none for the common sizes) is left as it is. */
static void hadamard(float *b, int n) {
    for (int len = 1; len < n; len *= 2)
        for (int i = 0; i < n; i += 2 * len)
            for (int j = i; j < i + len; j++) {
                const float u = b[j], w = b[j + len];
                b[j] = u + w;
                b[j + len] = u - w;
            }
    const float norm = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++) b[i] *= norm;
}

static void hadamard_blocks(float *x, int hd) {
    if (!(hd & (hd - 1))) { /* 64, 128, 256: the whole head, outliers spread furthest */
        hadamard(x, hd);
        return;
    }
    for (int e0 = 0; e0 < hd; e0 += PYLUT_KV_BLOCK) {
        const int n = hd - e0 < PYLUT_KV_BLOCK ? hd - e0 : PYLUT_KV_BLOCK;
        if (!(n & (n - 1))) hadamard(x + e0, n);
    }
}

static int kv_type_ok(int type) { return type == PYLUT_KV_F16 || type == PYLUT_KV_Q8 || type == PYLUT_KV_Q4; }

int64_t pylut_kv_row_bytes(int type, int hd) {
    if (!kv_type_ok(type) || hd < 2 || hd > PYLUT_ATTN_MAX_HD || hd % 2) return 0;
    const int64_t scales = 2 * (int64_t)((hd + PYLUT_KV_BLOCK - 1) / PYLUT_KV_BLOCK);
    switch (type) {
    case PYLUT_KV_F16: return 2 * (int64_t)hd;
    case PYLUT_KV_Q8: return hd + scales;
    default: return hd / 2 + scales;
    }
}

int pylut_kv_encode(int type, int hd, const float *x, uint8_t *row) {
    if (!x || !row || pylut_kv_row_bytes(type, hd) == 0) return PYLUT_EINVAL;
    if (type == PYLUT_KV_F16) { /* the active ISA's conversion, pylut_fp32_to_fp16's bits */
        pylut_vecops_active()->to_f16(row, x, hd);
        return PYLUT_OK;
    }
    float rotated[PYLUT_ATTN_MAX_HD];
    if (type == PYLUT_KV_Q4) {
        memcpy(rotated, x, (size_t)hd * sizeof(float));
        hadamard_blocks(rotated, hd);
        x = rotated;
    }
    uint8_t *scales = row + (type == PYLUT_KV_Q8 ? hd : hd / 2);
    for (int b = 0; b * PYLUT_KV_BLOCK < hd; b++) {
        const int e0 = b * PYLUT_KV_BLOCK, n = hd - e0 < PYLUT_KV_BLOCK ? hd - e0 : PYLUT_KV_BLOCK;
        float amax = 0.0f, extreme = 0.0f;
        for (int i = 0; i < n; i++)
            if (fabsf(x[e0 + i]) > amax) amax = fabsf(x[e0 + i]), extreme = x[e0 + i];
        /* int8: +-127 symmetric. 4-bit: Q4_0's grid, the extreme value lands on -8 exactly
         * and the other side gets 7 steps (one more level than a +-7 grid). */
        const float d = type == PYLUT_KV_Q8 ? amax / 127.0f : extreme / -8.0f;
        const uint16_t dh = pylut_fp32_to_fp16(d);
        memcpy(scales + 2 * b, &dh, 2);
        const float dq = pylut_fp16_to_fp32(dh), inv = dq != 0.0f ? 1.0f / dq : 0.0f;
        for (int i = 0; i < n; i++) {
            float c = nearbyintf(x[e0 + i] * inv);
            if (type == PYLUT_KV_Q8) {
                c = c > 127.0f ? 127.0f : c < -127.0f ? -127.0f : c;
                row[e0 + i] = (uint8_t)(int8_t)c;
            } else {
                c = c > 7.0f ? 7.0f : c < -8.0f ? -8.0f : c;
                const uint8_t u = (uint8_t)((int)c + 8);
                uint8_t *byte = row + e0 / 2 + (i < n / 2 ? i : i - n / 2);
                *byte = i < n / 2 ? (uint8_t)((*byte & 0xf0) | u) : (uint8_t)((*byte & 0x0f) | (u << 4));
            }
        }
    }
    return PYLUT_OK;
}

int pylut_kv_decode(int type, int hd, const uint8_t *row, float *x) {
    if (!x || !row || pylut_kv_row_bytes(type, hd) == 0) return PYLUT_EINVAL;
    if (type == PYLUT_KV_F16) {
        for (int i = 0; i < hd; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * i, 2);
            x[i] = pylut_fp16_to_fp32(h);
        }
        return PYLUT_OK;
    }
    const uint8_t *scales = row + (type == PYLUT_KV_Q8 ? hd : hd / 2);
    for (int b = 0; b * PYLUT_KV_BLOCK < hd; b++) {
        const int e0 = b * PYLUT_KV_BLOCK, n = hd - e0 < PYLUT_KV_BLOCK ? hd - e0 : PYLUT_KV_BLOCK;
        uint16_t dh;
        memcpy(&dh, scales + 2 * b, 2);
        const float d = pylut_fp16_to_fp32(dh);
        for (int i = 0; i < n; i++) {
            int c;
            if (type == PYLUT_KV_Q8) c = (int8_t)row[e0 + i];
            else c = (i < n / 2 ? row[e0 / 2 + i] & 15 : row[e0 / 2 + i - n / 2] >> 4) - 8;
            x[e0 + i] = d * (float)c;
        }
    }
    if (type == PYLUT_KV_Q4) hadamard_blocks(x, hd);
    return PYLUT_OK;
}

/* ------------------------------------------------------------------ plan */

/* Every head of a per-head job has its rows and room for the chunk's positions. */
static int heads_ok(const pylut_attn_job *j) {
    const int64_t end = (int64_t)j->pos0 + j->n;
    int any = 0;
    for (int h = 0; h < j->n_kv_heads; h++) {
        const pylut_attn_head *hh = &j->heads[h];
        if (hh->streaming != 0 && hh->streaming != 1) return 0;
        if ((hh->streaming || !j->blocks) && (!hh->k || !hh->v)) return 0; /* paged full heads: blocks */
        any |= hh->streaming;
        /* a streaming head needs slots for its sinks and for positions stream_base..end-1 */
        const int64_t need = !hh->streaming ? end : end <= j->sink ? end : j->sink + end - j->stream_base;
        if (hh->cap < need) return 0;
    }
    /* the chunk's own positions past the sinks land at slots sink + p - stream_base >= sink */
    return !any || (j->sink >= 0 && j->window >= 1 && j->stream_base >= j->sink &&
                    (end <= j->sink || j->stream_base <= (j->pos0 > j->sink ? j->pos0 : j->sink)));
}

/* A paged job: every block its positions need is set, and each full head's run of
 * block_len rows (keys and values) lies inside a block. */
static int blocks_ok(const pylut_attn_job *j, int64_t rb) {
    if (j->block_len < 1 || j->block_bytes < 1 || !j->k_off || !j->v_off || j->ld != rb) return 0;
    const int64_t run = (int64_t)j->block_len * rb;
    for (int h = 0; h < j->n_kv_heads; h++) {
        if (j->heads && j->heads[h].streaming) continue; /* its own rows */
        if (j->k_off[h] < 0 || j->v_off[h] < 0 || j->k_off[h] > j->block_bytes - run ||
            j->v_off[h] > j->block_bytes - run)
            return 0;
    }
    for (int64_t b = 0; b * j->block_len < j->len; b++)
        if (!j->blocks[b]) return 0;
    return 1;
}

int pylut_attn_plan(pylut_attn_job *j, int nth) {
    if (!j || nth < 1 || !j->q || !j->out) return PYLUT_EINVAL;
    if (!j->heads && !j->blocks && (!j->k || !j->v)) return PYLUT_EINVAL;
    const int64_t rb = pylut_kv_row_bytes(j->type, j->hd);
    if (rb == 0 || j->n_heads < 1 || j->n_kv_heads < 1 || j->n_heads % j->n_kv_heads) return PYLUT_EINVAL;
    if (j->n < 1 || j->pos0 < 0 || j->len < 1 || (int64_t)j->pos0 + j->n > j->len) return PYLUT_EINVAL;
    if (j->ld < rb || j->hstride < 0 || (!j->heads && !j->blocks && j->n_kv_heads > 1 && j->hstride < rb) || j->ldq < (int64_t)j->n_heads * j->hd ||
        j->ldo < (int64_t)j->n_heads * j->hd || !isfinite(j->scale) || j->swa < 0 || !(j->softcap >= 0.0f) ||
        !isfinite(j->softcap))
        return PYLUT_EINVAL;
    if (j->heads && !heads_ok(j)) return PYLUT_EINVAL;
    if (j->blocks && !blocks_ok(j, rb)) return PYLUT_EINVAL;
    j->hd_pad = (j->hd + HD_ALIGN - 1) / HD_ALIGN * HD_ALIGN;
    j->group = j->n_heads / j->n_kv_heads;
    if (j->group > PYLUT_ATTN_ROWS) return PYLUT_EINVAL; /* no model has more than 64 q heads per kv head */
    j->tokens_per_item = PYLUT_ATTN_ROWS / j->group;
    if (j->tokens_per_item > j->n) j->tokens_per_item = j->n;
    j->rows = j->tokens_per_item * j->group;
    j->q_tiles = (j->n + j->tokens_per_item - 1) / j->tokens_per_item;
    /* one query tile per kv head leaves threads idle when kv heads are few: slice the cache */
    j->splits = 1;
    if (j->q_tiles == 1 && j->n_kv_heads < 2 * nth) {
        int s = (2 * nth + j->n_kv_heads - 1) / j->n_kv_heads;
        const int span = j->swa && j->swa < j->pos0 + j->n ? j->swa : j->pos0 + j->n; /* positions read */
        const int most = span / MIN_SLICE;
        if (s > most) s = most;
        if (s > PYLUT_ATTN_MAX_SPLITS) s = PYLUT_ATTN_MAX_SPLITS;
        if (s > 1) j->splits = s;
    }
    j->n_items = (int64_t)j->n_kv_heads * j->q_tiles * j->splits;
    const int64_t R = PYLUT_ATTN_ROWS, B = PYLUT_ATTN_BLOCK, hp = j->hd_pad;
    j->scratch_floats = 2 * R * hp + 2 * B * hp + R * B + 2 * R;
    if (j->blocks && j->block_len % PYLUT_ATTN_BLOCK == 0) /* the kernel's page tables, keys and values */
        j->scratch_floats += 2 * (((int64_t)j->len + B - 1) / B) * (int64_t)(sizeof(void *) / sizeof(float));
    j->partial_floats = j->splits > 1 ? (int64_t)j->n_kv_heads * j->splits * j->rows * (hp + 2) : 0;
    return PYLUT_OK;
}

/* ------------------------------------------------------------------ items */

/* Cache positions [a, b) of slice s: slices are whole blocks so no block is read twice. A
 * sliding-window layer's slices cover only the blocks its queries can see. */
static void slice_range(const pylut_attn_job *j, int s, int *a, int *b) {
    const int64_t end = j->pos0 + j->n, from = j->swa && j->pos0 >= j->swa ? j->pos0 - j->swa + 1 : 0;
    const int64_t first = from / PYLUT_ATTN_BLOCK, blocks = (end + PYLUT_ATTN_BLOCK - 1) / PYLUT_ATTN_BLOCK - first;
    *a = (int)((first + blocks * s / j->splits) * PYLUT_ATTN_BLOCK);
    const int64_t e = (first + blocks * (s + 1) / j->splits) * PYLUT_ATTN_BLOCK;
    *b = (int)(e < end ? e : end);
}

/* A streaming head's tokens t0..t1-1, one token (its G query rows) at a time: each token
 * has its own window, and the kernel knows only upper limits, so two calls per token - the
 * sink slots, then the window's slots - accumulate into the same running max/sum/acc. */
static void stream_rows(const pylut_attn_job *j, const uint8_t *k, const uint8_t *v, int t0, int t1, const float *qs,
                        int32_t *lim, float *mx, float *sum, float *acc, float *kbuf, float *sbuf) {
    const float softcap = j->softcap * LOG2E;
    const int G = j->group, hp = j->hd_pad;
    const pylut_attn_rows_fn rows_fn = pylut_attn_rows_active();
    for (int t = t0; t < t1; t++) {
        const int r0 = (t - t0) * G, p = j->pos0 + t;
        const int sink_end = p + 1 < j->sink ? p + 1 : j->sink;
        const int layer_from = j->swa && p >= j->swa ? p - j->swa + 1 : 0; /* a sliding-window layer */
        rows_fn(j->type, j->hd, hp, k, v, NULL, NULL, j->ld, G, qs + (int64_t)r0 * hp, lim + r0, NULL, softcap, layer_from,
                sink_end, mx + r0, sum + r0, acc + (int64_t)r0 * hp, kbuf, sbuf);
        /* the window (p - window, p], past the sinks, and never before the oldest slot kept
         * (a context shift may have dropped positions the window would reach) */
        int w0 = p - j->window + 1;
        w0 = w0 > j->sink ? w0 : j->sink;
        w0 = w0 > j->stream_base ? w0 : j->stream_base;
        w0 = w0 > layer_from ? w0 : layer_from;
        if (w0 > p) continue;
        int32_t wlim[PYLUT_ATTN_ROWS];
        const int a = j->sink + (w0 - j->stream_base), b = j->sink + (p - j->stream_base) + 1;
        for (int r = 0; r < G; r++) wlim[r] = b;
        rows_fn(j->type, j->hd, hp, k, v, NULL, NULL, j->ld, G, qs + (int64_t)r0 * hp, wlim, NULL, softcap, a, b, mx + r0,
                sum + r0, acc + (int64_t)r0 * hp, kbuf, sbuf);
    }
}

/* Cache positions [a, b) of full kv head kvh through the block table. Blocks of whole kernel
 * steps (the model's, PYLUT_KV_PAGE = PYLUT_ATTN_BLOCK): a table of each step's rows, kp/vp
 * [ceil(len / PYLUT_ATTN_BLOCK)] in the item's scratch, and one kernel call for the slice, as
 * contiguous rows get (a call per block was much slower for decode at long contexts).
 * Other block lengths: a call per block, the rows' limits shifted to the block's first
 * position b0 (a limit at or below b0 shows the row nothing of it); mx/sum/acc carry over. */
static void paged_rows(const pylut_attn_job *j, int kvh, int rows, const float *qs, const int32_t *lim,
                       const int32_t *lo, int a, int b, float *mx, float *sum, float *acc, float *kbuf, float *sbuf,
                       const uint8_t **kp) {
    const pylut_attn_rows_fn rows_fn = pylut_attn_rows_active();
    const int bl = j->block_len, B = PYLUT_ATTN_BLOCK;
    if (bl % B == 0) {
        const uint8_t **vp = kp + (j->len + B - 1) / B;
        for (int i = a / B; (int64_t)i * B < b; i++) { /* a: a multiple of B (slice_range) */
            const uint8_t *base = j->blocks[(int64_t)i * B / bl] + ((int64_t)i * B % bl) * j->ld;
            kp[i] = base + j->k_off[kvh];
            vp[i] = base + j->v_off[kvh];
        }
        rows_fn(j->type, j->hd, j->hd_pad, NULL, NULL, kp, vp, j->ld, rows, qs, lim, lo, j->softcap * LOG2E, a, b,
                mx, sum, acc, kbuf, sbuf);
        return;
    }
    int32_t lim_b[PYLUT_ATTN_ROWS], lo_b[PYLUT_ATTN_ROWS];
    for (int blk = a / bl; (int64_t)blk * bl < b; blk++) {
        const int b0 = blk * bl, j0 = a > b0 ? a - b0 : 0, j1 = b - b0 < bl ? b - b0 : bl;
        for (int r = 0; r < rows; r++) {
            lim_b[r] = lim[r] - b0;
            if (lo) lo_b[r] = lo[r] - b0;
        }
        const uint8_t *base = j->blocks[blk];
        rows_fn(j->type, j->hd, j->hd_pad, base + j->k_off[kvh], base + j->v_off[kvh], NULL, NULL, j->ld, rows, qs,
                lim_b, lo ? lo_b : NULL, j->softcap * LOG2E, j0, j1, mx, sum, acc, kbuf, sbuf);
    }
}

void pylut_attn_item(const pylut_attn_job *j, int64_t w, float *scratch) {
    const int split = (int)(w % j->splits), tile = (int)(w / j->splits % j->q_tiles);
    const int kvh = (int)(w / j->splits / j->q_tiles), G = j->group, hp = j->hd_pad, hd = j->hd;
    const int t0 = tile * j->tokens_per_item;
    const int t1 = t0 + j->tokens_per_item < j->n ? t0 + j->tokens_per_item : j->n;
    const int rows = (t1 - t0) * G;
    const pylut_attn_head *head = j->heads ? &j->heads[kvh] : NULL;
    if (head && head->streaming && split != 0) return; /* a streaming head is small: slice 0 does it all */
    /* scratch: qs [R][hp] | acc [R][hp] | kbuf [2][B][hp] | sbuf [R][B] | mx [R] | sum [R] | paged:
     * kp, vp [ceil(len / B)] pointers (8-byte aligned: every part before is an even count) */
    float *qs = scratch, *acc = qs + PYLUT_ATTN_ROWS * hp, *kbuf = acc + PYLUT_ATTN_ROWS * hp;
    float *sbuf = kbuf + 2 * PYLUT_ATTN_BLOCK * hp, *mx = sbuf + PYLUT_ATTN_ROWS * PYLUT_ATTN_BLOCK, *sum = mx + PYLUT_ATTN_ROWS;
    int32_t lim[PYLUT_ATTN_ROWS], lo[PYLUT_ATTN_ROWS];
    const float qscale = j->scale * LOG2E;
    memset(kbuf, 0, (size_t)2 * PYLUT_ATTN_BLOCK * hp * sizeof(float));
    memset(acc, 0, (size_t)rows * hp * sizeof(float));
    /* rows past the last up to a multiple of 4: the fp16 path computes 4 rows at a time */
    memset(qs + (int64_t)rows * hp, 0, (size_t)((rows + 3) / 4 * 4 - rows) * hp * sizeof(float));
    if (head && head->streaming) { /* one token's G rows at a time: its spare rows reach 3 past it */
        const int spare = PYLUT_ATTN_ROWS - rows < 3 ? PYLUT_ATTN_ROWS - rows : 3;
        memset(qs + (int64_t)rows * hp, 0, (size_t)spare * hp * sizeof(float));
    }
    for (int r = 0; r < rows; r++) { /* row r: token t0 + r/G, query head kvh*G + r%G */
        const float *q = j->q + (int64_t)(t0 + r / G) * j->ldq + (int64_t)(kvh * G + r % G) * hd;
        for (int i = 0; i < hd; i++) qs[(int64_t)r * hp + i] = q[i] * qscale;
        for (int i = hd; i < hp; i++) qs[(int64_t)r * hp + i] = 0.0f;
        if (j->type == PYLUT_KV_Q4) hadamard_blocks(qs + (int64_t)r * hp, hd);
        lim[r] = j->pos0 + t0 + r / G + 1;
        lo[r] = j->swa && lim[r] > j->swa ? lim[r] - j->swa : 0;
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    const uint8_t *k = head ? head->k : j->blocks ? NULL : j->k + kvh * j->hstride;
    const uint8_t *v = head ? head->v : j->blocks ? NULL : j->v + kvh * j->hstride;
    if (head && head->streaming) {
        stream_rows(j, k, v, t0, t1, qs, lim, mx, sum, acc, kbuf, sbuf);
    } else {
        int a, b;
        slice_range(j, split, &a, &b);
        /* the window bites only once a row is past it: until then the plain kernel */
        const int windowed = j->swa && j->pos0 + t1 > j->swa;
        if (j->blocks)
            paged_rows(j, kvh, rows, qs, lim, windowed ? lo : NULL, a, b, mx, sum, acc, kbuf, sbuf,
                       (const uint8_t **)(void *)(sum + PYLUT_ATTN_ROWS));
        else
            pylut_attn_rows_active()(j->type, hd, hp, k, v, NULL, NULL, j->ld, rows, qs, lim, windowed ? lo : NULL,
                                 j->softcap * LOG2E, a, b, mx, sum, acc, kbuf, sbuf);
    }
    if (j->splits == 1 || (head && head->streaming)) {
        for (int r = 0; r < rows; r++) { /* every row sees position 0 of the only slice (a streaming
                                          * head: its own position): sum > 0 */
            float *o = j->out + (int64_t)(t0 + r / G) * j->ldo + (int64_t)(kvh * G + r % G) * hd;
            const float inv = 1.0f / sum[r];
            for (int i = 0; i < hd; i++) o[i] = acc[(int64_t)r * hp + i] * inv;
            if (j->type == PYLUT_KV_Q4) hadamard_blocks(o, hd);
        }
        return;
    }
    for (int r = 0; r < rows; r++) { /* partial: [mx, sum, acc[hp]] */
        float *p = j->partial + (((int64_t)kvh * j->splits + split) * j->rows + r) * (hp + 2);
        p[0] = mx[r];
        p[1] = sum[r];
        memcpy(p + 2, acc + (int64_t)r * hp, (size_t)hp * sizeof(float));
    }
}

void pylut_attn_merge(const pylut_attn_job *j, int kvh) {
    if (j->heads && j->heads[kvh].streaming) return; /* written whole by its slice 0 */
    const int G = j->group, hp = j->hd_pad, hd = j->hd;
    for (int r = 0; r < j->rows; r++) {
        const float *p0 = j->partial + ((int64_t)kvh * j->splits * j->rows + r) * (hp + 2);
        const int64_t step = (int64_t)j->rows * (hp + 2); /* next slice, same row */
        float m = -INFINITY, total = 0.0f;
        for (int s = 0; s < j->splits; s++) m = p0[s * step] > m ? p0[s * step] : m;
        float *o = j->out + (int64_t)(r / G) * j->ldo + (int64_t)(kvh * G + r % G) * hd;
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int s = 0; s < j->splits; s++) {
            const float *p = p0 + s * step;
            if (p[1] == 0.0f) continue; /* a slice past this row's causal limit */
            const float w = exp2f(p[0] - m);
            total += w * p[1];
            for (int i = 0; i < hd; i++) o[i] += w * p[2 + i];
        }
        const float inv = 1.0f / total;
        for (int i = 0; i < hd; i++) o[i] *= inv;
        if (j->type == PYLUT_KV_Q4) hadamard_blocks(o, hd);
    }
}

/* ------------------------------------------------------------------ whole job on a pool */

typedef struct {
    const pylut_attn_job *job;
    float *scratch;
    atomic_llong next;
    int merging;
} attn_ctx;

static void attn_task(void *arg, int ith, int nth) {
    attn_ctx *c = arg;
    (void)nth;
    if (c->merging) {
        for (int h = ith; h < c->job->n_kv_heads; h += nth) pylut_attn_merge(c->job, h);
        return;
    }
    float *scratch = c->scratch + (int64_t)ith * c->job->scratch_floats;
    for (int64_t w; (w = atomic_fetch_add(&c->next, 1)) < c->job->n_items;) pylut_attn_item(c->job, w, scratch);
}

int pylut_attention(pylut_pool *pool, pylut_attn_job *job) {
    const int nth = pylut_pool_size(pool);
    int rc = pylut_attn_plan(job, nth);
    if (rc != PYLUT_OK) return rc;
    attn_ctx c = {job, malloc((size_t)(nth * job->scratch_floats) * sizeof(float)), 0, 0};
    float *partial = job->partial_floats ? malloc((size_t)job->partial_floats * sizeof(float)) : NULL;
    if (!c.scratch || (job->partial_floats && !partial)) {
        free(c.scratch);
        free(partial);
        return PYLUT_ENOMEM;
    }
    job->partial = partial;
    atomic_init(&c.next, 0);
    pylut_pool_run(pool, attn_task, &c);
    if (job->splits > 1) {
        c.merging = 1;
        pylut_pool_run(pool, attn_task, &c);
    }
    job->partial = NULL;
    free(partial);
    free(c.scratch);
    return PYLUT_OK;
}
