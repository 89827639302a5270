/* lut_neon.c - aarch64 NEON table-lookup kernels (vqtbl1q_s8). Compiled on aarch64 only. */
#if defined(__aarch64__)
/* NEON kernels land here */
#endif
