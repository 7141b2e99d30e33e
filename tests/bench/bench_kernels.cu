// The benchmark's copy kernel (bench_kernels.h): the bandwidth a merge of the same bytes is
// held against.
#include "bench_kernels.h"

#include <cuda_runtime.h>

namespace
{
__global__ void copy_kernel(uint4 *__restrict__ dst, const uint4 *__restrict__ src, int64_t n16)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}
} // namespace

extern "C" int lsl_bench_copy(void *dst, const void *src, int64_t bytes, void *stream)
{
    int dev = 0, sms = 1;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    copy_kernel<<<sms * 8, 256, 0, (cudaStream_t)stream>>>((uint4 *)dst, (const uint4 *)src,
                                                           bytes / 16);
    return (int)cudaGetLastError();
}
