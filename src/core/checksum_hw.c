/* checksum_hw.c - CRC-32C on the CPU's CRC instructions (x86 SSE4.2 crc32, ARMv8 crc32c*),
 * compiled with those flags (setup.py) and reached only through pylut_crc32c's dispatch. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

uint32_t pylut_crc32c_scalar(uint32_t crc, const void *buf, size_t n);

#if defined(__x86_64__) && defined(__SSE4_2__)
#include <nmmintrin.h>
#define CRC8(c, b) _mm_crc32_u8((c), (b))
#define CRC64(c, w) ((uint32_t)_mm_crc32_u64((c), (w)))
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
#define CRC8(c, b) __crc32cb((c), (b))
#define CRC64(c, w) __crc32cd((c), (w))
#endif

#ifdef CRC64
/* One stream, 8 bytes per instruction: ~8 bytes per 3 cycles (the instruction's latency),
 * several GB/s, which is all a verify-once check of a packed model needs. */
uint32_t pylut_crc32c_hw(uint32_t crc, const void *buf, size_t n) {
    const uint8_t *p = (const uint8_t *)buf;
    uint32_t c = ~crc;
    while (n && ((uintptr_t)p & 7)) { c = CRC8(c, *p++); n--; }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = CRC64(c, w);
        p += 8;
        n -= 8;
    }
    while (n--) c = CRC8(c, *p++);
    return ~c;
}
#else
uint32_t pylut_crc32c_hw(uint32_t crc, const void *buf, size_t n) { return pylut_crc32c_scalar(crc, buf, n); }
#endif
