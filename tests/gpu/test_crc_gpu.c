/* The device CRC-32C (lsl_dev_crc32c_blocks) against the host's (ISA-L) on sizes around the
 * 1 KiB piece and 256 KiB block boundaries, at aligned and odd offsets: every block's CRC, and
 * the chunk's CRC folded the way the device path folds it (blocks, then the tail on the host). */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lsl_check.h"
#include "lsl_crc32c.h"
#include "lsl_device.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));            \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

int main(void)
{
    const uint64_t B = LSL_DEV_CRC_BLOCK, cap = 5 * B + 4096;
    const uint64_t sizes[] = {0, 1, 1023, 1024, B - 1, B, B + 1, 2 * B + 7, 5 * B + 1037};
    const uint64_t offs[] = {0, 1, 8, 13};
    unsigned char *h = malloc(cap);
    uint64_t x = 0x243F6A8885A308D3ull;
    for (uint64_t i = 0; i < cap; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (unsigned char)(x >> 56);
    }
    uint32_t shifts[LSL_DEV_CRC_LEVELS * 32], op[32], *dout, *dshift, out[8];
    for (int l = 0; l < LSL_DEV_CRC_LEVELS; l++)
        lsl_crc32c_zeros_op(B >> (LSL_DEV_CRC_LEVELS - l), shifts + 32 * l);
    lsl_crc32c_zeros_op(B, op);
    void *d;
    CK(cudaMalloc(&d, cap));
    CK(cudaMalloc((void **)&dout, sizeof out));
    CK(cudaMalloc((void **)&dshift, sizeof shifts));
    CK(cudaMemcpy(d, h, cap, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dshift, shifts, sizeof shifts, cudaMemcpyHostToDevice));
    int runs = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
        for (size_t oi = 0; oi < sizeof offs / sizeof *offs; oi++) {
            uint64_t n = sizes[si], off = offs[oi], nb = n / B;
            const unsigned char *src = h + off;
            CK((cudaError_t)lsl_dev_crc32c_blocks((unsigned char *)d + off, (int64_t)nb, dout,
                                                  dshift, NULL));
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(out, dout, nb * 4, cudaMemcpyDeviceToHost));
            uint32_t crc = 0x9E3779B9u; /* a running CRC the chunk extends */
            uint32_t want = lsl_crc32c_extend(crc, src, n);
            for (uint64_t b = 0; b < nb; b++) {
                uint32_t ref = lsl_crc32c_extend(0, src + b * B, B);
                CHECK(out[b] == ref, "size %llu offset %llu block %llu: %08x, want %08x",
                      (unsigned long long)n, (unsigned long long)off, (unsigned long long)b, out[b],
                      ref);
                crc = lsl_crc32c_apply(op, crc) ^ out[b];
            }
            crc = lsl_crc32c_extend(crc, src + nb * B, n - nb * B);
            CHECK(crc == want, "size %llu offset %llu: folded %08x, want %08x",
                  (unsigned long long)n, (unsigned long long)off, crc, want);
            runs++;
        }
    char what[64];
    snprintf(what, sizeof what, "device CRC-32C, %d sizes x offsets", runs);
    lsl_check_report("per-block CRCs and their fold equal the host's", 0);
    cudaFree(d);
    cudaFree(dout);
    cudaFree(dshift);
    free(h);
    return lsl_check_finish(what);
}
