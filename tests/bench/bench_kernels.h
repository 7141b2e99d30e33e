/* The GPU benchmark's own kernels: the two merge kernels lsl_dev_merge chooses between, each
 * alone (from the benchmark's build of src/device/lsl_merge_kernel.cu with LSL_DEV_BENCH), and a
 * device-to-device copy of the same launch shape, the bandwidth yardstick.  Each is asynchronous
 * on stream and returns the launch's cudaError_t as an int. */
#ifndef LSL_BENCH_KERNELS_H
#define LSL_BENCH_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The row-tiled tensor-core kernel (the previous one, bit-identical results). */
int lsl_bench_merge_tc_rows(int wt, int at, int bt, void *out, const void *w0, const void *a,
                            const void *b, int64_t m, int64_t n, int r, double s,
                            unsigned long long *bad, void *stream);
/* The SIMT kernel, for any shape. */
int lsl_bench_merge_simt(int wt, int at, int bt, void *out, const void *w0, const void *a,
                         const void *b, int64_t m, int64_t n, int r, double s,
                         unsigned long long *bad, void *stream);
/* Reads and writes `bytes` (a multiple of 16), one wave of 8 blocks per multiprocessor. */
int lsl_bench_copy(void *dst, const void *src, int64_t bytes, void *stream);

#ifdef __cplusplus
}
#endif
#endif
