/* lut_prefetch_x86.h - software prefetch distances of the x86 table-lookup kernels
 * (lut_avx2.c, lut_avx512_body.h).
 *
 * B-type code streams: every line, 8 KB ahead, into L2 (prefetcht1). Decode streams the
 * weights from DRAM on one core with much compute per byte; L1-bound prefetches (256 B
 * ahead, T0) left ~40 % of a core's read bandwidth unused, since a few L1 miss buffers cap
 * the bytes in flight. Far L2 prefetches measured 12-29 % faster per GEMV for B4/g32 and
 * Q2_K-style matrices on Zen 4 (48-64 distinct 2048x2048 matrices, interleaved runs; AVX2
 * up to 46 %), same speed in cache. T3 streams measured the other way (256 B into L1 ran
 * 1.5x the far L2 variant): kept. */
#ifndef PYLUT_LUT_PREFETCH_X86_H
#define PYLUT_LUT_PREFETCH_X86_H

#include <immintrin.h>

#ifndef PF_B_DIST
#define PF_B_DIST 8192
#endif
#ifndef PF_B_HINT
#define PF_B_HINT _MM_HINT_T1
#endif
#ifndef PF_T3_DIST
#define PF_T3_DIST 256
#endif

#endif
