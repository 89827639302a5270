/* attn_vec_x86.h - the parts of the attention vocabulary that AVX2 and AVX-512 share: scalar
 * fp16, 4-bit unpacking, the exp2 constants, and 8-wide row decoders (AVX-512 defines
 * DEC_WIDE and brings 16-wide ones: a zmm load right after two ymm stores to the same line
 * misses store forwarding, which stalled the whole kernel). */
#include <immintrin.h>
#include <stdint.h>

#include "pylut/pylut.h"

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

#ifndef DEC_WIDE
static inline void dec_f16(const uint16_t *h, int n, float *out) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) out[i] = _cvtsh_ss(h[i]);
}

static inline void dec_i8(const int8_t *c, float scale, int n, float *out) {
    const __m256 s = _mm256_set1_ps(scale);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(c + i))))));
    for (; i < n; i++) out[i] = scale * (float)c[i];
}
#endif

static inline void unpack_q4(const uint8_t *c, int n, int8_t *out) {
    if (n == 32) { /* the whole-block case: 16 bytes -> 32 codes in three instructions */
        const __m128i b = _mm_loadu_si128((const __m128i *)c), m = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
        _mm_storeu_si128((__m128i *)out, _mm_sub_epi8(_mm_and_si128(b, m), eight));
        _mm_storeu_si128((__m128i *)(out + 16), _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), eight));
        return;
    }
    for (int i = 0; i < n / 2; i++) {
        out[i] = (int8_t)((c[i] & 15) - 8);
        out[i + n / 2] = (int8_t)((c[i] >> 4) - 8);
    }
}

/* 2^x for x <= 0: x = n + f, f in [-1/2, 1/2]; 2^f by its degree-6 Taylor polynomial
 * (relative error < 2e-7), 2^n through the exponent bits. Below -126 the caller masks to 0. */
#define EXP2_C1 0.69314718f
#define EXP2_C2 0.24022651f
#define EXP2_C3 0.05550411f
#define EXP2_C4 0.00961813f
#define EXP2_C5 0.00133336f
#define EXP2_C6 0.00015404f
