/* checksum.c - CRC-32C: a portable slice-by-8 table version and the one dispatch point that
 * picks a hardware path (SSE4.2 crc32 / ARMv8 CRC32C instructions, checksum_hw.c) at run time. */
#include <stdint.h>
#include <string.h>

#include "pylut/checksum.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

/* ------------------------------------------------------------------ portable tables */

#define CRC32C_POLY 0x82F63B78u  /* reflected Castagnoli polynomial */

static uint32_t table[8][256];  /* table[k][b]: CRC of byte b followed by k zero bytes */
static int table_ready;

static void build_table(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++) c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++) table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xff];
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t pylut_crc32c_scalar(uint32_t crc, const void *buf, size_t n) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();  /* idempotent: races are benign */
    const uint8_t *p = (const uint8_t *)buf;
    uint32_t c = ~crc;
    while (n && ((uintptr_t)p & 7)) { c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff]; n--; }
    while (n >= 8) {  /* little endian: the low word meets the running CRC */
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
            table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
            table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
    return ~c;
}

/* ------------------------------------------------------------------ dispatch */

uint32_t pylut_crc32c_hw(uint32_t crc, const void *buf, size_t n);  /* checksum_hw.c */

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn chosen;
static const char *chosen_name = "scalar";

static void choose(void) {
    crc_fn f = pylut_crc32c_scalar;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) { f = pylut_crc32c_hw; chosen_name = "sse4.2"; }
#elif defined(__aarch64__) && defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_CRC32) { f = pylut_crc32c_hw; chosen_name = "armv8-crc"; }
#endif
    __atomic_store_n(&chosen, f, __ATOMIC_RELEASE);
}

uint32_t pylut_crc32c(uint32_t crc, const void *buf, size_t n) {
    crc_fn f = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (!f) { choose(); f = chosen; }
    return f(crc, buf, n);
}

const char *pylut_crc32c_impl(void) {
    if (!__atomic_load_n(&chosen, __ATOMIC_ACQUIRE)) choose();
    return chosen_name;
}
