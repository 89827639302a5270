/* baseline_avx2.c - the comparison kernels' AVX2 versions (compiled with -mavx2 -mfma -mf16c,
 * reached only through the dispatch table): the llama.cpp-style int8 dequant-dot GEMV and the
 * naive per-head fp16 attention. pylut keeps them as yardsticks (tools/bench_kernels.py,
 * tools/bench_attention.py); the model runs neither. */
#if defined(__x86_64__) || defined(_M_X64) /* other architectures get nothing */
#include <immintrin.h>
#include <math.h>

#include "kernels.h"

/* ------------------------------------------------------------------ int8 baseline */


static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

void pylut_dq8_gemv_avx2(const pylut_dq8matrix *qm, const int8_t *xq, const float *xs,
                         const float *xsum, float *y, int64_t r0, int64_t r1) {
    const int bits = qm->bits, slots = 8 / bits;
    const int64_t blocks = qm->k / 32, vblocks = blocks / 8 * 8;
    const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = qm->codes + r * qm->row_bytes;
        const uint16_t *sc = qm->scale + r * blocks, *bi = qm->bias + r * blocks;
        /* one accumulator per slot: a single FMA chain would wait 4 cycles per block */
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        __m256 accb = _mm256_setzero_ps();
        float d[8];
        for (int64_t b0 = 0; b0 < vblocks; b0 += 8) {
            /* 8 blocks' combined scales s_w * s_x, broadcast from memory one by one (a load
             * port op rather than a shuffle, as llama.cpp's Q4_0 loop does) */
            _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + b0))), _mm256_loadu_ps(xs + b0)));
            accb = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(bi + b0))), _mm256_loadu_ps(xsum + b0), accb);
            for (int i = 0; i < 8; i += slots) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(row + (b0 + i) / slots * 32));
                for (int sl = 0; sl < slots; sl++) {
                    __m256i q = _mm256_and_si256(_mm256_srli_epi16(w, sl * bits), mask);
                    __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (b0 + i + sl) * 32));
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
                    acc[sl] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + i + sl), _mm256_cvtepi32_ps(p), acc[sl]);
                }
            }
        }
        float out = hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + hsum256(accb);
        for (int64_t b = vblocks; b < blocks; b++) { /* tail blocks */
            const uint8_t *c = row + b / slots * 32;
            int sh = (int)(b % slots) * bits, dot = 0;
            for (int i = 0; i < 32; i++) dot += ((c[i] >> sh) & ((1 << bits) - 1)) * xq[b * 32 + i];
            out += _cvtsh_ss(sc[b]) * xs[b] * (float)dot + _cvtsh_ss(bi[b]) * xsum[b];
        }
        y[r] = out;
    }
}

/* ------------------------------------------------------------------ attention */

/* Two passes over the cache (scores, then the weighted sum of values): at decode a head's
 * keys are read once and the [len] scores stay in L1/L2. F16C widens 8 halves per load. */
void pylut_attn_f16_avx2(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                         int hd, float scale, float *out, float *scores) {
    const int hv = hd / 8 * 8;
    float mx = -INFINITY;
    int j = 0;
    /* 8 keys at a time: their 8 partial-product vectors are summed by one hadd tree
     * instead of 8 separate horizontal sums */
    for (; j + 8 <= len; j += 8) {
        __m256 acc[8];
        for (int u = 0; u < 8; u++) {
            const uint16_t *kj = k + (int64_t)(j + u) * ld;
            acc[u] = _mm256_setzero_ps();
            for (int i = 0; i < hv; i += 8)
                acc[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + i))), acc[u]);
        }
        const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
        const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
        const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
        __m256 d = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
        _mm256_storeu_ps(scores + j, d);
        for (int u = 0; u < 8; u++) {
            const uint16_t *kj = k + (int64_t)(j + u) * ld;
            float tail = 0.0f;
            for (int i = hv; i < hd; i++) tail += q[i] * _cvtsh_ss(kj[i]);
            scores[j + u] = (scores[j + u] + tail) * scale;
            if (scores[j + u] > mx) mx = scores[j + u];
        }
    }
    for (; j < len; j++) {
        const uint16_t *kj = k + (int64_t)j * ld;
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < hv; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kj + i))), acc);
        float d = hsum256(acc);
        for (int i = hv; i < hd; i++) d += q[i] * _cvtsh_ss(kj[i]);
        scores[j] = d * scale;
        if (scores[j] > mx) mx = scores[j];
    }
    float sum = 0.0f;
    for (j = 0; j < len; j++) sum += (scores[j] = expf(scores[j] - mx));
    const float inv = 1.0f / sum;
    for (int i0 = 0; i0 < hd; i0 += 64) { /* 8 accumulators of 8 lanes cover 64 dims */
        const int w = hd - i0 < 64 ? hd - i0 : 64, wv = w / 8 * 8;
        __m256 acc[8];
        for (int u = 0; u < 8; u++) acc[u] = _mm256_setzero_ps();
        float tail[8] = {0};
        for (int j = 0; j < len; j++) {
            const uint16_t *vj = v + (int64_t)j * ld + i0;
            const __m256 p = _mm256_set1_ps(scores[j] * inv);
            for (int u = 0; u < wv / 8; u++)
                acc[u] = _mm256_fmadd_ps(p, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * u))), acc[u]);
            for (int i = wv; i < w; i++) tail[i - wv] += scores[j] * inv * _cvtsh_ss(vj[i]);
        }
        for (int u = 0; u < wv / 8; u++) _mm256_storeu_ps(out + i0 + 8 * u, acc[u]);
        for (int i = wv; i < w; i++) out[i0 + i] = tail[i - wv];
    }
}

#endif /* x86-64 */
