// The fused LoRA merge: one pass over W (read W0, write W), the delta B @ A computed on the fly in
// registers.  Each thread owns 4 rows x 8 consecutive columns of a 32 x 256 block tile.  A and B
// are staged through shared memory in chunks of KC along r and converted to the accumulator type
// there, so any mix of adapter dtypes costs nothing extra.
#include "lsl_device.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace
{

// 32 x 256 output tile per block of 256 threads: each thread 4 rows x 8 consecutive columns.
constexpr int BM = 32, BN = 256, TM = 4, TN = 8, KC = 16, THREADS = 256;

template <typename T> struct io;
template <> struct io<float> {
    __device__ static double load(const float *p, int64_t i) { return p[i]; }
    __device__ static void store(float *p, int64_t i, double v) { p[i] = (float)v; }
    __device__ static bool finite(const float *p, int64_t i) { return isfinite(p[i]); }
};
template <> struct io<__nv_bfloat16> {
    __device__ static float load(const __nv_bfloat16 *p, int64_t i)
    {
        return __bfloat162float(p[i]);
    }
    __device__ static void store(__nv_bfloat16 *p, int64_t i, float v)
    {
        p[i] = __float2bfloat16_rn(v);
    }
    __device__ static bool finite(const __nv_bfloat16 *p, int64_t i)
    {
        return isfinite(__bfloat162float(p[i]));
    }
};
template <> struct io<__half> {
    __device__ static float load(const __half *p, int64_t i) { return __half2float(p[i]); }
    __device__ static void store(__half *p, int64_t i, float v) { p[i] = __float2half_rn(v); }
    __device__ static bool finite(const __half *p, int64_t i)
    {
        return isfinite(__half2float(p[i]));
    }
};

// 16-byte vector access to 8 consecutive elements (one uint4 for 16-bit types, two for float).
template <typename TW> struct vec8 {
    static constexpr int WORDS = sizeof(TW) * 8 / 16;
    uint4 v[WORDS];
    __device__ void load(const TW *p)
    {
#pragma unroll
        for (int i = 0; i < WORDS; i++)
            v[i] = reinterpret_cast<const uint4 *>(p)[i];
    }
    __device__ void store(TW *p) const
    {
#pragma unroll
        for (int i = 0; i < WORDS; i++)
            reinterpret_cast<uint4 *>(p)[i] = v[i];
    }
    __device__ TW *elems()
    {
        return reinterpret_cast<TW *>(v);
    }
};

// 8 consecutive values of a row of A (columns c0..c0+7) converted to the accumulator type.
template <typename TA, typename ACC>
__device__ __forceinline__ void load_a8(const TA *row, int64_t c0, int64_t n, int vec, ACC *av)
{
    if (vec && c0 + TN <= n) {
        constexpr int W = sizeof(TA) * TN / 16;
        uint4 u[W];
#pragma unroll
        for (int i = 0; i < W; i++)
            u[i] = __ldg(reinterpret_cast<const uint4 *>(row + c0) + i);
        const TA *e = reinterpret_cast<const TA *>(u);
#pragma unroll
        for (int j = 0; j < TN; j++)
            av[j] = (ACC)io<TA>::load(e, j);
        return;
    }
#pragma unroll
    for (int j = 0; j < TN; j++)
        av[j] = c0 + j < n ? (ACC)io<TA>::load(row, c0 + j) : (ACC)0;
}

template <typename TW, typename TA, typename TB, typename ACC>
__global__ void __launch_bounds__(THREADS, 2)
    merge_kernel(TW *__restrict__ out, const TW *__restrict__ w0, const TA *__restrict__ a,
                 const TB *__restrict__ b, int64_t m, int64_t n, int r, ACC s, int vec,
                 unsigned long long *bad)
{
    // B rows go through shared memory (every thread of a warp reads the same value: broadcast).
    // A is read straight from global memory: a warp's 32 threads read 8 consecutive columns each,
    // 16-byte loads that the block's 8 row groups share through L1.  (An A tile in shared memory
    // read 8 consecutive floats per thread: 8-way bank conflicts, 0.27 of copy bandwidth.)
    __shared__ ACC Bs[BM][KC + 1]; // +1: no bank conflicts on the transposed fill
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int64_t row0 = (int64_t)blockIdx.y * BM, col0 = (int64_t)blockIdx.x * BN;
    const int64_t c0 = col0 + tx * TN;
    // Issue this thread's W0 loads first: their latency hides behind the r-loop below.
    vec8<TW> wv[TM];
    const bool full = vec && c0 + TN <= n;
#pragma unroll
    for (int i = 0; i < TM; i++) {
        int64_t gr = row0 + ty * TM + i;
        if (full && gr < m)
            wv[i].load(w0 + gr * n + c0);
    }
    ACC acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++)
            acc[i][j] = 0;
    for (int k0 = 0; k0 < r; k0 += KC) {
        for (int e = threadIdx.x; e < BM * KC; e += THREADS) {
            int i = e / KC, k = e % KC;
            int64_t gr = row0 + i;
            Bs[i][k] = (k0 + k < r && gr < m) ? (ACC)io<TB>::load(b, gr * r + k0 + k) : (ACC)0;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < KC; k++) {
            ACC av[TN], bv[TM];
            if (k0 + k < r)
                load_a8<TA, ACC>(a + (int64_t)(k0 + k) * n, c0, n, vec, av);
            else
#pragma unroll
                for (int j = 0; j < TN; j++)
                    av[j] = 0;
#pragma unroll
            for (int i = 0; i < TM; i++)
                bv[i] = Bs[ty * TM + i][k];
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++)
                    acc[i][j] = fma(bv[i], av[j], acc[i][j]);
        }
        __syncthreads();
    }
    unsigned long long first = ~0ull;
#pragma unroll
    for (int i = 0; i < TM; i++) {
        int64_t gr = row0 + ty * TM + i;
        if (gr >= m)
            break;
        if (full) {
            TW *e = wv[i].elems();
#pragma unroll
            for (int j = 0; j < TN; j++) {
                io<TW>::store(e, j, fma(s, acc[i][j], (ACC)io<TW>::load(e, j)));
                if (!io<TW>::finite(e, j) && (unsigned long long)(gr * n + c0 + j) < first)
                    first = (unsigned long long)(gr * n + c0 + j);
            }
            wv[i].store(out + gr * n + c0);
            continue;
        }
#pragma unroll
        for (int j = 0; j < TN; j++) {
            int64_t gc = c0 + j;
            if (gc < n) {
                int64_t idx = gr * n + gc;
                io<TW>::store(out, idx, fma(s, acc[i][j], (ACC)io<TW>::load(w0, idx)));
                if (!io<TW>::finite(out, idx) && (unsigned long long)idx < first)
                    first = (unsigned long long)idx;
            }
        }
    }
    if (first != ~0ull)
        atomicMin(bad, first);
}

template <typename TW, typename ACC>
int launch_w(int at, int bt, void *out, const void *w0, const void *a, const void *b, int64_t m,
             int64_t n, int r, double s, unsigned long long *bad, cudaStream_t st)
{
    // Vector access needs every row to start 16-byte aligned.
    int vec =
        n % 8 == 0 && (uintptr_t)out % 16 == 0 && (uintptr_t)w0 % 16 == 0 && (uintptr_t)a % 16 == 0;
    dim3 grid((unsigned)((n + BN - 1) / BN), (unsigned)((m + BM - 1) / BM));
#define LSL_LAUNCH(TA, TB)                                                                         \
    merge_kernel<TW, TA, TB, ACC><<<grid, THREADS, 0, st>>>(                                       \
        (TW *)out, (const TW *)w0, (const TA *)a, (const TB *)b, m, n, r, (ACC)s, vec, bad)
#define LSL_B(TA)                                                                                  \
    switch (bt) {                                                                                  \
    case LSL_DEV_F32: LSL_LAUNCH(TA, float); break;                                                \
    case LSL_DEV_BF16: LSL_LAUNCH(TA, __nv_bfloat16); break;                                       \
    default: LSL_LAUNCH(TA, __half); break;                                                        \
    }
    switch (at) {
    case LSL_DEV_F32: LSL_B(float); break;
    case LSL_DEV_BF16: LSL_B(__nv_bfloat16); break;
    default: LSL_B(__half); break;
    }
#undef LSL_B
#undef LSL_LAUNCH
    return (int)cudaGetLastError();
}

__global__ void copy_kernel(uint4 *__restrict__ dst, const uint4 *__restrict__ src, int64_t n16)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

} // namespace

extern "C" int lsl_dev_merge(int wt, int at, int bt, void *out, const void *w0, const void *a,
                             const void *b, int64_t m, int64_t n, int r, double s,
                             unsigned long long *bad, void *stream)
{
    if (m <= 0 || n <= 0)
        return 0;
    if (m > (int64_t)65535 * BM)
        return (int)cudaErrorInvalidValue; // grid.y limit: callers chunk far below this
    cudaStream_t st = (cudaStream_t)stream;
    switch (wt) {
    case LSL_DEV_F32: return launch_w<float, double>(at, bt, out, w0, a, b, m, n, r, s, bad, st);
    case LSL_DEV_BF16:
        return launch_w<__nv_bfloat16, float>(at, bt, out, w0, a, b, m, n, r, s, bad, st);
    default: return launch_w<__half, float>(at, bt, out, w0, a, b, m, n, r, s, bad, st);
    }
}

extern "C" int lsl_dev_copy(void *dst, const void *src, int64_t bytes, void *stream)
{
    int64_t n16 = bytes / 16;
    copy_kernel<<<132 * 8, 256, 0, (cudaStream_t)stream>>>((uint4 *)dst, (const uint4 *)src, n16);
    return (int)cudaGetLastError();
}
