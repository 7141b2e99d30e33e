/* CRC-32C (Castagnoli) of tensor bytes, and combining the CRCs of adjacent byte ranges so that a
 * tensor's checksum does not depend on how many ranks wrote it. */
#ifndef LSL_CRC32C_H
#define LSL_CRC32C_H

#include <stdint.h>

/* CRC-32C of buf extending a previous finished CRC (0 for a fresh one). */
uint32_t lsl_crc32c_extend(uint32_t crc, const void *buf, uint64_t len);
/* CRC of A||B from crc(A), crc(B) and len(B). */
uint32_t lsl_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
/* The GF(2) operator (32 columns) that appends len zero bytes to a CRC: combining with a fixed
 * len_b is then lsl_crc32c_apply(op, crc_a) ^ crc_b, without recomputing the operator. */
void lsl_crc32c_zeros_op(uint64_t len, uint32_t op[32]);
uint32_t lsl_crc32c_apply(const uint32_t op[32], uint32_t crc);
/* The CRC of the bytes crc covers followed by the len zero bytes op appends
 * (lsl_crc32c_zeros_op), and the same for any len (the operator made here). */
uint32_t lsl_crc32c_extend_zeros_op(const uint32_t op[32], uint32_t crc);
uint32_t lsl_crc32c_extend_zeros(uint32_t crc, uint64_t len);
/* For equal-length messages, CRC-32C is affine: crc(x ^ y) = crc(x) ^ crc(y) ^ crc(zeros).  So
 * the CRC of bytes that several writers place into one range (each writer's bytes with zeros
 * elsewhere: "masked" CRCs of len bytes each, k of them) is their XOR, with crc(len zeros) once
 * more when k is even.  This is how the ranks' column blocks of a tensor, interleaved in the
 * file, give the tensor's CRC. */
uint32_t lsl_crc32c_xor_fold(uint32_t xor_of_masked, uint64_t k, uint64_t len);

#endif
