/* prefill_vnni.c - int8 prefill on AVX-512 VNNI without GFNI: Cascade Lake, Cooper Lake. */
#if defined(__x86_64__) || defined(_M_X64)
#define PREFILL_FN pylut_gemm_b_i8_vnni
#define PREFILL_GFNI 0
#include "prefill_vnni_body.h"
#endif
