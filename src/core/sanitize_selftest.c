/* sanitize_selftest.c - a planted heap out-of-bounds read that proves the sanitizer build
 * reports what it should (tools/sanitize.sh calls it first and fails unless AddressSanitizer
 * reports it: a job whose instrumentation or runtime got lost cannot pass vacuously).
 *
 * The read exists only when built with -DPYLUT_SANITIZE_SELFTEST, which only tools/sanitize.sh
 * passes; every other build gets the refusal below, so no shipped extension can be made to
 * read out of bounds on purpose. */
#include <stdlib.h>

#include "pylut/pylut.h"

#ifdef PYLUT_SANITIZE_SELFTEST
int pylut_sanitize_selftest(int n) {
    if (n < 1) return PYLUT_EINVAL;
    /* buf [n] bytes; buf[n] is the first byte of ASan's redzone. The volatile pointer keeps
     * the compiler from reasoning about the read (and folding or dropping it). */
    unsigned char *volatile buf = malloc((size_t)n);
    if (buf == NULL) return PYLUT_ENOMEM;
    for (int i = 0; i < n; i++) buf[i] = (unsigned char)i;
    const int past_end = buf[n];
    free(buf);
    return past_end;
}
#else
int pylut_sanitize_selftest(int n) {
    (void)n;
    return PYLUT_EINVAL;
}
#endif
