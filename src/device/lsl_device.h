/* Launchers for the CUDA kernels (src/device/ holds kernels only; the host side calls these). */
#ifndef LSL_DEVICE_H
#define LSL_DEVICE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types, by size and kind: 0 = F32, 1 = BF16, 2 = F16 (the loraslab float dtypes). */
enum { LSL_DEV_F32 = 0, LSL_DEV_BF16 = 1, LSL_DEV_F16 = 2 };

/* out[m x n] = round(w0 + s * (b @ a)) where w0 and out are m x n of type wt (row strides n),
 * b is m x r of type bt and a is r x n of type at, all row-major on the device; out must not
 * overlap w0.  Accumulates in fp32 (fp64 when wt is F32), rounds once.  16-bit W with r <= 64 and
 * 16-byte aligned rows runs on tensor cores (fp32 factors split into three bf16 pieces, products
 * as good as fp32 FMAs), everything else on the SIMT kernel.  *bad (device, initialised to
 * UINT64_MAX by the caller) receives the smallest element index whose result is NaN or Inf.
 * Asynchronous on stream; returns the launch's cudaError_t as an int (0 on success). */
int lsl_dev_merge(int wt, int at, int bt, void *out, const void *w0, const void *a, const void *b,
                  int64_t m, int64_t n, int r, double s, unsigned long long *bad, void *stream);

/* CRC-32C on the device, in blocks of LSL_DEV_CRC_BLOCK bytes folded from 2^LSL_DEV_CRC_LEVELS
 * pieces of 1 KiB. */
#define LSL_DEV_CRC_BLOCK  (256 * 1024)
#define LSL_DEV_CRC_LEVELS 8

/* out[b] = CRC-32C (finished, as lsl_crc32c_extend(0, ...)) of bytes [b, b + 1) x
 * LSL_DEV_CRC_BLOCK of src, for b < nblocks; any alignment (8-byte aligned is the fast path).
 * shifts (device): LSL_DEV_CRC_LEVELS operators of 32 words, level l = lsl_crc32c_zeros_op(1 KiB
 * << l).  Asynchronous on stream; returns the launch's cudaError_t as an int (0 on success). */
int lsl_dev_crc32c_blocks(const void *src, int64_t nblocks, uint32_t *out, const uint32_t *shifts,
                          void *stream);

#ifdef __cplusplus
}
#endif
#endif
