/* checksum.h - CRC-32C (Castagnoli) of byte buffers, for the packed-model file's buffers. */
#ifndef PYLUT_CHECKSUM_H
#define PYLUT_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* crc: the CRC of the bytes before buf (0 to start); returns the CRC of those bytes and buf's
 * n bytes. Standard CRC-32C: pylut_crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t pylut_crc32c(uint32_t crc, const void *buf, size_t n);
/* the portable table version (the reference the hardware paths are tested against) */
uint32_t pylut_crc32c_scalar(uint32_t crc, const void *buf, size_t n);
/* the implementation pylut_crc32c runs: "sse4.2", "armv8-crc" or "scalar" */
const char *pylut_crc32c_impl(void);

#ifdef __cplusplus
}
#endif
#endif
