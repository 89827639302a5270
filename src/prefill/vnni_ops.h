/* vnni_ops.h - the two AVX-512 instructions both int8 GEMMs build on (the many-token driver,
 * prefill_vnni_body.h, and the few-token kernel, prefill_few_gfni.c): the dot-product step
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
