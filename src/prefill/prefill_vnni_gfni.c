/* prefill_vnni_gfni.c - int8 prefill on AVX-512 VNNI + GFNI: Ice Lake+, Sapphire Rapids, Zen 4/5.
 * Only the AVX-512VBMI tier calls it (all of these CPUs have VBMI): T3's unpacking uses vpermt2b. */
#if defined(__x86_64__) || defined(_M_X64)
#define PREFILL_FN pylut_gemm_b_i8_vnni_gfni
#define PREFILL_GFNI 1
#include "prefill_vnni_body.h"
#endif
