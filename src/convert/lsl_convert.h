/* Helpers shared by convert and verify. */
#ifndef LSL_CONVERT_H
#define LSL_CONVERT_H

#include "lsl_internal.h"

/* Create dir/name (must not exist) with text, fsync it; *crc gets its CRC-32C when not NULL. */
lsl_status lsl_i_write_small(const char *dir, const char *name, const char *text, uint32_t *crc);
/* Base64 of the big-endian CRC (8 characters + NUL), as GCS and S3 report CRC-32C. */
void lsl_i_crc_base64(uint32_t crc, char out[9]);

#endif
