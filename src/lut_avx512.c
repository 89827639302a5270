#if defined(__x86_64__)
#include "kernels.h"
extern const pylut_kernels pylut_kernels_avx2;
const pylut_kernels pylut_kernels_avx512 = {0};
#endif
