/* dispatch.c - CPU feature detection, the one kernel table chosen at import, and the public
 * entry points: they validate every size they are handed, then split work over the pool. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ CPU features */

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static struct {
    int ssse3, sse42, avx, avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512vbmi, avx512vnni, gfni;
    int os_ymm, os_zmm;
} cpu;

static void detect(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    cpu.ssse3 = (c >> 9) & 1;
    cpu.fma = (c >> 12) & 1;
    cpu.sse42 = (c >> 20) & 1;
    cpu.avx = (c >> 28) & 1;
    cpu.f16c = (c >> 29) & 1;
    /* The CPU having AVX is not enough: the OS must save ymm/zmm state on context switch. */
    if ((c >> 27) & 1) { /* OSXSAVE */
        uint64_t xcr0 = read_xcr0();
        cpu.os_ymm = (xcr0 & 0x6) == 0x6;
        cpu.os_zmm = cpu.os_ymm && (xcr0 & 0xe0) == 0xe0;
    }
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        cpu.avx2 = (b >> 5) & 1;
        cpu.avx512f = (b >> 16) & 1;
        cpu.avx512bw = (b >> 30) & 1;
        cpu.avx512vl = (b >> 31) & 1;
        cpu.avx512vbmi = (c >> 1) & 1;
        cpu.avx512vnni = (c >> 11) & 1;
        cpu.gfni = (c >> 8) & 1;
    }
}

int pylut_isa_supported(int isa) {
    switch (isa) {
    case PYLUT_ISA_SCALAR: return 1;
    /* Haswell (2013) and later Intel, AMD Zen 1-5, Excavator: AVX2 + FMA + F16C */
    case PYLUT_ISA_AVX2: return cpu.os_ymm && cpu.avx && cpu.avx2 && cpu.fma && cpu.f16c;
    /* Skylake-SP/X, Ice Lake, Sapphire Rapids, Zen 4/5 (and Tiger Lake laptops) */
    case PYLUT_ISA_AVX512:
        return pylut_isa_supported(PYLUT_ISA_AVX2) && cpu.os_zmm && cpu.avx512f && cpu.avx512bw &&
               cpu.avx512vl;
    /* Ice Lake, Tiger Lake, Sapphire Rapids and later Xeons, Zen 4/5: all have VNNI and GFNI
     * beside VBMI (Cannon Lake, the one without, takes the AVX-512BW kernels) */
    case PYLUT_ISA_AVX512VBMI:
        return pylut_isa_supported(PYLUT_ISA_AVX512) && cpu.avx512vbmi && cpu.avx512vnni && cpu.gfni;
    default: return 0;
    }
}

const char *pylut_cpu_flags(void) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s%s%s%s%s%s%s%s%s%s%s%s", cpu.ssse3 ? "ssse3," : "",
             cpu.sse42 ? "sse4.2," : "", cpu.avx && cpu.os_ymm ? "avx," : "",
             cpu.avx2 && cpu.os_ymm ? "avx2," : "", cpu.fma ? "fma," : "", cpu.f16c ? "f16c," : "",
             cpu.avx512f && cpu.os_zmm ? "avx512f," : "", cpu.avx512bw && cpu.os_zmm ? "avx512bw," : "",
             cpu.avx512vl && cpu.os_zmm ? "avx512vl," : "", cpu.avx512vbmi && cpu.os_zmm ? "avx512vbmi," : "",
             cpu.avx512vnni && cpu.os_zmm ? "avx512vnni," : "", cpu.gfni ? "gfni," : "");
    size_t n = strlen(buf);
    if (n) buf[n - 1] = 0;
    return buf;
}

#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1 << 10)
#endif

static unsigned long hwcap;
static void detect(void) { hwcap = getauxval(AT_HWCAP); }

int pylut_isa_supported(int isa) {
    switch (isa) {
    case PYLUT_ISA_SCALAR: return 1;
    /* every aarch64 core: Cortex-A53/A72 (Pi 3/4), Neoverse, Apple */
    case PYLUT_ISA_NEON: return (hwcap & HWCAP_ASIMD) != 0;
    /* armv8.2-a dotprod: Cortex-A76 (Pi 5), A55, Neoverse N1+, Apple M1+ */
    case PYLUT_ISA_NEON_DOT: return (hwcap & HWCAP_ASIMD) && (hwcap & HWCAP_ASIMDDP);
    default: return 0;
    }
}

const char *pylut_cpu_flags(void) {
    static char buf[64];
    snprintf(buf, sizeof buf, "%s%s%s", hwcap & HWCAP_ASIMD ? "neon" : "",
             hwcap & HWCAP_ASIMDDP ? ",dotprod" : "", hwcap & HWCAP_ASIMDHP ? ",fp16" : "");
    return buf;
}

#else
static void detect(void) {}
int pylut_isa_supported(int isa) { return isa == PYLUT_ISA_SCALAR; }
const char *pylut_cpu_flags(void) { return ""; }
#endif

/* ------------------------------------------------------------------ the kernel table */

static const pylut_kernels *active = &pylut_kernels_scalar;
static int active_isa = PYLUT_ISA_SCALAR;
static int detected = 0;

static const pylut_kernels *kernels_for(int isa) {
#if defined(__x86_64__) || defined(_M_X64)
    static pylut_kernels avx512_vnni; /* the BW tier plus int8 prefill, filled on first use */
    static const unsigned char vnni_from[2][9] = PYLUT_I8_FROM_VNNI;
    static pylut_kernels avx2; /* lut/'s AVX2 table plus prefill/'s many-token lookups */
#endif
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case PYLUT_ISA_AVX2:
        avx2 = pylut_kernels_avx2;
        avx2.gemm_b_many = pylut_gemm_b2_many_avx2;
        avx2.b_many_from = PYLUT_B_MANY_FROM_AVX2;
        return &avx2;
    case PYLUT_ISA_AVX512:
        if (!cpu.avx512vnni) return &pylut_kernels_avx512; /* Skylake-SP/X */
        /* Cascade Lake, Cooper Lake: VNNI without VBMI or GFNI */
        avx512_vnni = pylut_kernels_avx512;
        avx512_vnni.gemm_b_i8 = pylut_gemm_b_i8_vnni;
        memcpy(avx512_vnni.i8_from, vnni_from, sizeof vnni_from);
        return &avx512_vnni;
    case PYLUT_ISA_AVX512VBMI: return &pylut_kernels_avx512vbmi;
#endif
#if defined(__aarch64__)
    case PYLUT_ISA_NEON: return &pylut_kernels_neon;
    case PYLUT_ISA_NEON_DOT: return &pylut_kernels_neon_dot;
#endif
    default: return &pylut_kernels_scalar;
    }
}

/* Attention: one kernel body per vector width (attn_body.h). AVX-512 covers every zmm CPU we
 * dispatch to (its float work needs F only); dotprod adds nothing to float attention. */
static pylut_attn_rows_fn attn_for(int isa) {
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case PYLUT_ISA_AVX2: return pylut_attn_rows_avx2;
    case PYLUT_ISA_AVX512:
    case PYLUT_ISA_AVX512VBMI: return pylut_attn_rows_avx512;
#endif
#if defined(__aarch64__)
    case PYLUT_ISA_NEON:
    case PYLUT_ISA_NEON_DOT: return pylut_attn_rows_neon;
#endif
    default: return pylut_attn_rows_scalar;
    }
}

pylut_attn_rows_fn pylut_attn_rows_active(void) { return attn_for(active_isa); }

/* Element-wise ops (src/vecops/vec_body.h): float work only, like attention: AVX-512F for
 * every zmm tier, NEON for both aarch64 tiers. */
static const pylut_vecops *vecops_for(int isa) {
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case PYLUT_ISA_AVX2: return &pylut_vecops_avx2;
    case PYLUT_ISA_AVX512:
    case PYLUT_ISA_AVX512VBMI: return &pylut_vecops_avx512;
#endif
#if defined(__aarch64__)
    case PYLUT_ISA_NEON:
    case PYLUT_ISA_NEON_DOT: return &pylut_vecops_neon;
#endif
    default: return &pylut_vecops_scalar;
    }
}

const pylut_vecops *pylut_vecops_active(void) { return vecops_for(active_isa); }

/* F16 GEMM: one body per vector width (f16_body.h), like attention; float work only. */
static pylut_gemm_f16_fn f16_for(int isa) {
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case PYLUT_ISA_AVX2: return pylut_gemm_f16_avx2;
    case PYLUT_ISA_AVX512:
    case PYLUT_ISA_AVX512VBMI: return pylut_gemm_f16_avx512;
#endif
#if defined(__aarch64__)
    case PYLUT_ISA_NEON:
    case PYLUT_ISA_NEON_DOT: return pylut_gemm_f16_neon;
#endif
    default: return pylut_gemm_f16_scalar;
    }
}

static pylut_gemm_f16_fn active_f16 = pylut_gemm_f16_scalar;

int pylut_isa_detect(void) {
    if (!detected) { detect(); detected = 1; }
    static const int order[] = {PYLUT_ISA_AVX512VBMI, PYLUT_ISA_AVX512, PYLUT_ISA_AVX2, PYLUT_ISA_NEON_DOT, PYLUT_ISA_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (pylut_isa_supported(order[i])) return order[i];
    return PYLUT_ISA_SCALAR;
}

int pylut_isa_set(int isa) {
    if (!detected) { detect(); detected = 1; }
    if (!pylut_isa_supported(isa)) return PYLUT_EISA;
    active = kernels_for(isa);
    active_f16 = f16_for(isa);
    active_isa = isa;
    return PYLUT_OK;
}

int pylut_isa_active(void) { return active_isa; }

const char *pylut_isa_name(int isa) {
    switch (isa) {
    case PYLUT_ISA_SCALAR: return "scalar";
    case PYLUT_ISA_AVX2: return "avx2";
    case PYLUT_ISA_AVX512: return "avx512";
    case PYLUT_ISA_AVX512VBMI: return "avx512vbmi";
    case PYLUT_ISA_NEON: return "neon";
    case PYLUT_ISA_NEON_DOT: return "neon_dotprod";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------------ validation */

/* A matrix is trusted only if its fields equal what the layout function computes. */
static int qmatrix_ok(const pylut_qmatrix *qm) {
    pylut_qmatrix ref;
    if (!qm || !qm->codes || !pylut_post_ok(qm->post)) return 0;
    if (pylut_qmatrix_layout(&ref, qm->type, qm->m, qm->k, qm->group, qm->has_bias) != PYLUT_OK) return 0;
    if (qm->type == PYLUT_TYPE_F16) /* no scales, no super-blocks: the shape is everything */
        return ref.m_pad == qm->m_pad && ref.k_pad == qm->k_pad && ref.codes_bytes == qm->codes_bytes &&
               qm->bits == 0 && !qm->super && !qm->sub_count && !qm->sub_nibbles;
    if (qm->super && pylut_qmatrix_set_super(&ref, qm->super) != PYLUT_OK) return 0;
    if (ref.sub_count != qm->sub_count) return 0;
    if (qm->sub_nibbles != 0 && (qm->sub_nibbles != 1 || !qm->super || !qm->has_bias || qm->sub_bias))
        return 0;
    if (qm->super && (!qm->sub_scale || (qm->has_bias && !qm->sub_nibbles && !qm->sub_bias))) return 0;
    if (ref.m_pad != qm->m_pad || ref.k_pad != qm->k_pad || ref.codes_bytes != qm->codes_bytes ||
        ref.scale_count != qm->scale_count || ref.bits != qm->bits)
        return 0;
    if (qm->type == PYLUT_TYPE_T3) return qm->scale != NULL && qm->bias == NULL;
    if (!(qm->zero >= 0.0f && qm->zero <= (float)((1 << qm->bits) - 1))) return 0; /* NaN fails too */
    return qm->scale != NULL && (!qm->has_bias || qm->bias != NULL);
}

static int lut_ok(const pylut_lut *lut, const pylut_qmatrix *qm) {
    pylut_lut ref;
    if (!lut || !lut->tbl || !lut->tscale) return 0;
    if ((lut->kind == PYLUT_LUT_I8 ? pylut_lut_layout_i8(&ref, qm, lut->parts) : pylut_lut_layout(&ref, qm)) != PYLUT_OK) return 0;
    return lut->kind == ref.kind && lut->k == ref.k && lut->k_pad == ref.k_pad &&
           lut->group == ref.group && lut->super == ref.super && lut->tbl_bytes == ref.tbl_bytes &&
           lut->n_groups == ref.n_groups && lut->parts == ref.parts &&
           (lut->kind == PYLUT_LUT_T3 || lut->kind == PYLUT_LUT_F32 || lut->sumx != NULL);
}

/* ------------------------------------------------------------------ table build */

typedef struct {
    pylut_lut *lut;
    int n;
    const float *x;
    int64_t ldx;
} build_ctx;

static void build_task(void *arg, int ith, int nth) {
    build_ctx *c = arg;
    int64_t per = c->lut[0].n_groups, total = per * c->n;
    int64_t w0 = total * ith / nth, w1 = total * (ith + 1) / nth;
    for (int64_t w = w0; w < w1;) {
        int64_t tok = w / per, g0 = w % per, g1 = g0 + (w1 - w);
        if (g1 > per) g1 = per;
        pylut_lut_build_range(c->x + tok * c->ldx, c->lut + tok, g0, g1);
        w += g1 - g0;
    }
}

int pylut_lut_build(pylut_pool *pool, pylut_lut *lut, int n, const float *x, int64_t ldx) {
    if (!lut || !x || n < 1 || ldx < lut[0].k) return PYLUT_EINVAL;
    for (int i = 0; i < n; i++)
        if (!lut[i].tbl || !lut[i].tscale || (lut[i].kind <= PYLUT_LUT_I8 && lut[i].kind != PYLUT_LUT_T3 && !lut[i].sumx) ||
            lut[i].k != lut[0].k || lut[i].k_pad != lut[0].k_pad || lut[i].group != lut[0].group ||
            lut[i].kind != lut[0].kind || lut[i].n_groups != lut[0].n_groups || lut[i].n_groups < 1)
            return PYLUT_EINVAL;
    build_ctx c = {lut, n, x, ldx};
    pylut_pool_run(pool, build_task, &c);
    return PYLUT_OK;
}

/* ------------------------------------------------------------------ GEMM */

#define MAX_MULTI 8

typedef struct {
    int n_mats;
    const pylut_qmatrix *const *qms;
    const pylut_lut *lut;
    int n;
    float *const *ys;
    const int64_t *ldys;
    int64_t tile_start[MAX_MULTI + 1]; /* prefix sums of tiles over the matrices */
    const pylut_kernels *k;
    int64_t chunk;                     /* tiles taken per grab */
    atomic_llong next;                 /* next unclaimed tile */
} gemm_ctx;

/* Row tiles [tile0, tile1) with kernel set k: the activations' kind picks the kernel. */
static void run_tiles(const pylut_kernels *k, const pylut_qmatrix *qm, const pylut_lut *lut, int n,
                      float *y, int64_t ldy, int64_t tile0, int64_t tile1) {
    if (tile0 >= tile1) return;
    if (qm->type == PYLUT_TYPE_F16) active_f16(qm, lut, n, y, ldy, tile0, tile1);
    else if (lut->kind == PYLUT_LUT_I8) (k->gemm_b_i8 ? k->gemm_b_i8 : pylut_gemm_b_i8_scalar)(qm, lut, n, y, ldy, tile0, tile1);
    else if (qm->type == PYLUT_TYPE_T3) k->gemm_t3(qm, lut, n, y, ldy, tile0, tile1);
    else if (k->gemm_b_many && n >= k->b_many_from && !lut->super && pylut_gemm_b_many_fits(qm))
        k->gemm_b_many(qm, lut, n, y, ldy, tile0, tile1);
    else k->gemm_b(qm, lut, n, y, ldy, tile0, tile1);
    if (qm->post != 1.0f) { /* the matrix's float32 post-scale, after every kernel alike */
        const int64_t r0 = tile0 * PYLUT_TILE_M, r1 = tile1 * PYLUT_TILE_M < qm->m ? tile1 * PYLUT_TILE_M : qm->m;
        for (int t = 0; t < n; t++)
            for (int64_t r = r0; r < r1; r++) y[t * ldy + r] *= qm->post;
    }
}

static void gemm_range(gemm_ctx *c, int64_t w0, int64_t w1) {
    for (int i = 0; i < c->n_mats && w0 < w1; i++) {
        int64_t s = c->tile_start[i], e = c->tile_start[i + 1];
        int64_t a = w0 > s ? w0 : s, b = w1 < e ? w1 : e;
        if (a < b) run_tiles(c->k, c->qms[i], c->lut, c->n, c->ys[i], c->ldys[i], a - s, b - s);
    }
}

/* Threads claim chunks of tiles from a shared counter rather than a fixed slice: on a busy
 * machine (or big.LITTLE cores) a descheduled thread's share is taken over by the others. */
static void gemm_task(void *arg, int ith, int nth) {
    gemm_ctx *c = arg;
    const int64_t total = c->tile_start[c->n_mats];
    (void)ith;
    (void)nth;
    for (;;) {
        int64_t w0 = atomic_fetch_add_explicit(&c->next, c->chunk, memory_order_relaxed);
        if (w0 >= total) break;
        gemm_range(c, w0, w0 + c->chunk < total ? w0 + c->chunk : total);
    }
}

int pylut_gemm_multi(pylut_pool *pool, int n_mats, const pylut_qmatrix *const *qms,
                     const pylut_lut *lut, int n, float *const *ys, const int64_t *ldys) {
    if (n_mats < 1 || n_mats > MAX_MULTI || !qms || !lut || !ys || !ldys || n < 1) return PYLUT_EINVAL;
    gemm_ctx c = {n_mats, qms, lut, n, ys, ldys, {0}, active, 1, 0};
    for (int i = 0; i < n_mats; i++) {
        if (!qmatrix_ok(qms[i]) || !ys[i] || ldys[i] < qms[i]->m) return PYLUT_EINVAL;
        for (int t = 0; t < n; t++)
            if (!lut_ok(lut + t, qms[i])) return PYLUT_EINVAL;
        c.tile_start[i + 1] = c.tile_start[i] + qms[i]->m_pad / PYLUT_TILE_M;
    }
    /* ~8 grabs per thread: enough to rebalance, few enough to keep the counter cold */
    int nth = pylut_pool_size(pool);
    c.chunk = c.tile_start[n_mats] / (8 * nth);
    if (c.chunk < 1) c.chunk = 1;
    atomic_init(&c.next, 0);
    pylut_pool_run(pool, gemm_task, &c);
    return PYLUT_OK;
}

int pylut_gemm(pylut_pool *pool, const pylut_qmatrix *qm, const pylut_lut *lut, int n,
               float *y, int64_t ldy) {
    return pylut_gemm_multi(pool, 1, &qm, lut, n, &y, &ldy);
}

void pylut_gemm_tiles(const pylut_qmatrix *qm, const pylut_lut *lut, int n, float *y, int64_t ldy,
                      int64_t tile0, int64_t tile1) {
    run_tiles(active, qm, lut, n, y, ldy, tile0, tile1);
}

/* The ISA's measured thresholds (PYLUT_I8_FROM_* in kernels.h). Plain 2-bit groups under
 * 32 weights stay on the tables (their float work per weight is Q2_K's without its
 * integer sub-scales, unmeasured). */
int pylut_gemm_i8_preferred(const pylut_qmatrix *qm, int n) {
    if (qm && qm->type == PYLUT_TYPE_T3) /* the tier's own threshold, where it unpacks T3 in SIMD */
        return active->gemm_b_i8 && active->t3_i8_from && pylut_t3_i8_group(qm->group) && n >= active->t3_i8_from;
    if (!qm || !active->gemm_b_i8 || qm->type < PYLUT_TYPE_B1 || qm->type > PYLUT_TYPE_B8 || qm->bits < 2)
        return 0;
    const int from = active->i8_from[qm->super != 0][qm->bits];
    if (!from || (qm->bits == 2 && !qm->super && qm->group < 32)) return 0;
    return n >= from;
}

int pylut_ternary_as_planes(void) { return active->ternary_planes; }

void pylut_lut_build_range(const float *x, pylut_lut *lut, int64_t g0, int64_t g1) {
    if (lut->kind == PYLUT_LUT_I8) (active->act8_build ? active->act8_build : pylut_act8_build_range)(x, lut, g0, g1);
    else if (lut->kind == PYLUT_LUT_F32) pylut_f32_build_range(x, lut, g0, g1);
    else if (lut->kind == PYLUT_LUT_T3) (active->t3_build ? active->t3_build : pylut_lut_build_t3_range)(x, lut, g0, g1);
    else pylut_lut_build_b_range(x, lut, g0, g1, active->b_entries);
}

int pylut_qmatrix_valid(const pylut_qmatrix *qm) { return qmatrix_ok(qm); }

int pylut_attention_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                        int hd, float scale, float *out, float *scores) {
    if (!q || !k || !v || !out || !scores || len < 1 || hd < 1 || ld < hd) return PYLUT_EINVAL;
    pylut_attn_f16(q, k, v, ld, len, hd, scale, out, scores);
    return PYLUT_OK;
}

void pylut_attn_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len, int hd,
                    float scale, float *out, float *scores) {
    (active->attn_f16 ? active->attn_f16 : pylut_attn_f16_scalar)(q, k, v, ld, len, hd, scale, out, scores);
}

/* ------------------------------------------------------------------ int8 baseline */

typedef struct {
    const pylut_dq8matrix *qm;
    int n;
    const int8_t *xq;
    const float *xs, *xsum;
    float *y;
    const pylut_kernels *k;
} dq8_ctx;

/* Rows in blocks of 16, tokens inner: a block's codes (16 rows x k*bits/8 bytes) stay in L1
 * while every token reads them, the way an int8 prefill GEMM reuses unpacked weights. */
static void dq8_task(void *arg, int ith, int nth) {
    dq8_ctx *c = arg;
    const int64_t m = c->qm->m, k = c->qm->k, r0 = m * ith / nth, r1 = m * (ith + 1) / nth;
    for (int64_t r = r0; r < r1; r += 16) {
        int64_t re = r + 16 < r1 ? r + 16 : r1;
        for (int t = 0; t < c->n; t++)
            c->k->dq8_gemv(c->qm, c->xq + t * k, c->xs + t * (k / 32), c->xsum + t * (k / 32),
                           c->y + t * m, r, re);
    }
}

int pylut_dq8_gemv(pylut_pool *pool, const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                   const float *xsum, float *y) {
    return pylut_dq8_gemm(pool, qm, 1, xq, xs, xsum, y);
}

int pylut_dq8_gemm(pylut_pool *pool, const pylut_dq8matrix *qm, int n, const int8_t *xq,
                   const float *xs, const float *xsum, float *y) {
    pylut_dq8matrix ref;
    if (!qm || !qm->codes || !qm->scale || !qm->bias || !xq || !xs || !xsum || !y || n < 1) return PYLUT_EINVAL;
    if (pylut_dq8matrix_layout(&ref, qm->bits, qm->m, qm->k) != PYLUT_OK || ref.row_bytes != qm->row_bytes)
        return PYLUT_EINVAL;
    dq8_ctx c = {qm, n, xq, xs, xsum, y, active};
    pylut_pool_run(pool, dq8_task, &c);
    return PYLUT_OK;
}

/* ------------------------------------------------------------------ read bandwidth */

/* The decode roofline: read n bytes split over the pool, the way the kernels read weights.
 * Eight independent xor chains keep enough loads in flight. Returns a value depending on
 * every byte so the compiler cannot drop the reads. */
typedef struct {
    const uint64_t *p;
    int64_t words;
    atomic_ullong sink;
} read_ctx;

static void read_task(void *arg, int ith, int nth) {
    read_ctx *c = arg;
    int64_t w0 = c->words * ith / nth / 8 * 8, w1 = c->words * (ith + 1) / nth / 8 * 8;
    uint64_t a[8] = {0};
    for (int64_t i = w0; i < w1; i += 8)
        for (int k = 0; k < 8; k++) a[k] ^= c->p[i + k];
    atomic_fetch_xor(&c->sink, a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7]);
}

uint64_t pylut_read_bytes(pylut_pool *pool, const void *p, int64_t n) {
    if (!p || n < 64) return 0;
    read_ctx c = {p, n / 8, 0};
    pylut_pool_run(pool, read_task, &c);
    return atomic_load(&c.sink);
}
