/* vnni_ops.h - what both int8 GEMMs build on (the many-token driver, prefill_vnni_body.h,
 * and the few-token kernel, prefill_few_gfni.c): the dot-product step, a group's float step,
 * and, where GFNI is compiled in, the 8x8 bit transpose that turns plane bytes into codes. */
#ifndef PYLUT_VNNI_OPS_H
#define PYLUT_VNNI_OPS_H
#include <immintrin.h>

/* acc += u8 w . s8 x per dword lane. Inline asm, not _mm512_dpbusd_epi32: GCC 12 ties the
 * intrinsic's accumulator so badly that a 16-accumulator loop spent a third of its
 * instructions on register copies (perf annotate); the asm leaves allocation free. */
static inline __attribute__((always_inline)) __m512i dpbusd(__m512i acc, __m512i w, __m512i x) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
    return acc;
}

/* One token's group sums a0..a3 (rows 0-15 .. 48-63 in the kernel's row order) into yacc
 * [64]: fma(I, scale * xs, y), then fma(bias, sumx, y), the twin's order (pylut_gemm_b_i8_scalar),
 * which keeps both kernels bit-identical to it */
static inline __attribute__((always_inline)) void group_epilogue(__m512i a0, __m512i a1, __m512i a2, __m512i a3,
                                                               const float *s, const float *b, float xs1,
                                                               float sx1, float *yacc) {
    const __m512 xs = _mm512_set1_ps(xs1), sx = _mm512_set1_ps(sx1);
    const __m512i a[4] = {a0, a1, a2, a3};
    for (int i = 0; i < 4; i++) {
        const __m512 p = _mm512_mul_ps(_mm512_load_ps(s + 16 * i), xs);
        __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[i]), p, _mm512_load_ps(yacc + 16 * i));
        y = _mm512_fmadd_ps(_mm512_load_ps(b + 16 * i), sx, y);
        _mm512_store_ps(yacc + 16 * i, y);
    }
}

#ifdef __GFNI__
/* Each qword's 8x8 bit matrix transposed: bit j of byte i goes to bit i of byte j. GFNI's
 * affine transform multiplies each data byte by the qword's bit matrix, whose output bit i
 * reads matrix byte 7-i: with data byte j = 1 << j and the qword byte-reversed as the
 * matrix, out byte j bit i = bit j of byte i. Two instructions for the delta swaps' twelve. */
static inline __m512i transpose_bits_gfni(__m512i x) {
    const __m512i reverse = _mm512_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                            8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                            8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                            8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    return _mm512_gf2p8affine_epi64_epi8(_mm512_set1_epi64(0x8040201008040201ll),
                                         _mm512_shuffle_epi8(x, reverse), 0);
}
#endif
#endif /* PYLUT_VNNI_OPS_H */
