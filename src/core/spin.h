/* spin.h - the pause instruction for spin-wait loops (threadpool.c, model.c's barrier):
 * it tells the core (and an SMT sibling) that this thread is only waiting. */
#ifndef PYLUT_SPIN_H
#define PYLUT_SPIN_H

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#endif
