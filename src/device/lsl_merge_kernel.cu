// The fused LoRA merge: one pass over W (read W0, write W), the delta B @ A computed on the fly.
//
// 16-bit weights (the common case) go through tensor cores: a merge reads and writes 4 bytes per
// element and needs r FMAs for it, which at r = 32 is more than the SIMT FP32 units deliver at
// HBM speed.  Each fp32 factor is split into three bf16 pieces (x = x0 + x1 + x2, 24 significant
// bits) and B @ A is the sum of the piece products Bi Aj with i + j <= 2, smallest first, on
// mma.sync with fp32 accumulation: what is dropped is below 2^-24 relative, so the products are
// as good as fp32 FMAs (a 3-term split with 16 bits measured up to 47 ulp off the float64
// reference on near-cancelling bf16 results; fp32 FMAs stay within the fp32 error bound).
// bf16 and f16 factors need one and two pieces, and skip the products of empty ones.
//
// F32 weights, r > 64 and unaligned rows take the SIMT kernel: each thread owns 4 rows x 8
// consecutive columns of a 32 x 256 tile; A and B are converted to the accumulator type (fp64 for
// F32 weights) as they are staged.
#include "lsl_device.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>

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

// ---- tensor-core kernel (16-bit W) ----------------------------------------------------------
//
// A block is 8 warps; warp w owns rows [16w, 16w + 16) of the block's 128 and sweeps CT column
// tiles of 64.  mma.m16n8k16 gives thread (g = lane / 4, t = lane % 4) the accumulators of rows
// g and g + 8 at columns 2t, 2t + 1 of each 8-column n-tile.  Staging A's columns into the
// n-tiles in a permuted order (pcol below) makes those 16 values per row 8 consecutive columns
// in each 32-column half, so W0 is read and W written with 16-byte accesses, full sectors.
namespace tc
{
constexpr int WARPS = 8, THREADS = WARPS * 32, BM = WARPS * 16, TN = 64, CT = 4;
constexpr int ASTRIDE = TN + 2; // = 2 mod 32: the B-fragment reads below are conflict-free

__device__ __forceinline__ float ldf(const void *p, int64_t i, int dt)
{
    switch (dt) {
    case LSL_DEV_F32: return static_cast<const float *>(p)[i];
    case LSL_DEV_BF16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    default: return __half2float(static_cast<const __half *>(p)[i]);
    }
}

template <int DT> __device__ __forceinline__ float ldf(const void *p, int64_t i)
{
    return ldf(p, i, DT);
}

// The raw B pairs of the 16-row tile starting at row0 as mma A-operand positions (f: rows g /
// g + 8, k 2t / 2t + 8), zero outside the matrix.  DT is a template parameter so that the dtype
// switch is taken once per tile, not once per element.
template <int KS, int DT>
__device__ __forceinline__ void load_b(float2 (&bv)[KS][4], const void *b, int64_t row0, bool ok,
                                       int64_t m, int r, int g, int t)
{
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int f = 0; f < 4; f++) {
            int64_t row = row0 + g + 8 * (f % 2);
            int k = ks * 16 + 2 * t + (f / 2) * 8;
            bool in = ok && row < m;
            bv[ks][f].x = in && k < r ? ldf<DT>(b, row * r + k) : 0.f;
            bv[ks][f].y = in && k + 1 < r ? ldf<DT>(b, row * r + k + 1) : 0.f;
        }
}

// (x0, x1) = p[0] + p[1] + p[2], three bf16x2 words (x0 in the low halves: the mma operand
// order) holding 8 significant bits each: an fp32 value is represented to ~2^-24.  Each
// subtraction is exact.
__device__ __forceinline__ void split3(float x0, float x1, uint32_t (&p)[3])
{
#pragma unroll
    for (int i = 0; i < 3; i++) {
        __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
        float2 hf = __bfloat1622float2(h);
        x0 -= hf.x;
        x1 -= hf.y;
        p[i] = *reinterpret_cast<uint32_t *>(&h);
    }
}

// How many bf16 pieces a factor dtype needs: bf16 1, f16 (11 bits) 2, f32 3.
constexpr int pieces(int dt)
{
    return dt == LSL_DEV_BF16 ? 1 : dt == LSL_DEV_F16 ? 2 : 3;
}

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A's pieces for columns [col0, col0 + TN) of a tile into shared memory, packed pairs along k;
// the block's threads (tid of nthreads) share the work.
template <int KS, int NP>
__device__ __forceinline__ void stage_a(uint32_t (&As)[NP][KS * 8][ASTRIDE], const void *a, int at,
                                        int64_t col0, int64_t n, int r, int tid, int nthreads)
{
    for (int e = tid; e < KS * 8 * TN; e += nthreads) {
        int kp = e / TN, c = e % TN;
        int64_t gc = col0 + c;
        float x0 = gc < n && 2 * kp < r ? ldf(a, 2 * kp * n + gc, at) : 0.f;
        float x1 = gc < n && 2 * kp + 1 < r ? ldf(a, (2 * kp + 1) * n + gc, at) : 0.f;
        uint32_t p[3];
        split3(x0, x1, p);
#pragma unroll
        for (int i = 0; i < NP; i++)
            As[i][kp][c] = p[i];
    }
}

// acc = B @ A for a warp's 16 x 64 tile: piece products of order 2 (2^-16 each) first, then 1,
// then the leading one; eight independent accumulators per piece product.
template <int KS, int NP>
__device__ __forceinline__ void tile_products(float (&acc)[8][4], const uint32_t (&bp)[NP][KS][4],
                                              const uint32_t (&As)[NP][KS * 8][ASTRIDE], int g,
                                              int t)
{
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            acc[j][q] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int ord = NP - 1; ord >= 0; ord--)
#pragma unroll
            for (int i = 0; i <= ord; i++)
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const int pcol = (g / 2) * 8 + (j % 4) * 2 + g % 2 + (j / 4) * 32;
                    mma(acc[j], bp[i][ks], As[ord - i][ks * 8 + t][pcol],
                        As[ord - i][ks * 8 + t + 4][pcol]);
                }
}

// Two adjacent elements of a 32-bit word (the lower address in the low half) to floats and back,
// rounding to nearest once; exp2 is the word with both halves' exponent fields all ones.
template <typename TW> struct pair2;
template <> struct pair2<__nv_bfloat16> {
    static constexpr uint32_t exp2 = 0x7F807F80u;
    __device__ static float2 get(uint32_t w)
    {
        return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&w));
    }
    __device__ static uint32_t put(float x, float y)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};
template <> struct pair2<__half> {
    static constexpr uint32_t exp2 = 0x7C007C00u;
    __device__ static float2 get(uint32_t w)
    {
        return __half22float2(*reinterpret_cast<__half2 *>(&w));
    }
    __device__ static uint32_t put(float x, float y)
    {
        __half2 h = __floats2half2_rn(x, y);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};

// One thread's 8 consecutive outputs of row `row` at column gc (rows half rh, column half h of
// its accumulators): W = round(W0 + s * acc) over the W0 bytes in w, stored with a streaming
// hint; the smallest non-finite index goes to first.  Non-finite results are found with one
// SIMD compare per pair and located only when there is one: per-element index arithmetic was a
// fifth of the kernel's instructions.
template <typename TW>
__device__ __forceinline__ void merge_store(TW *out, uint4 &w, const float (&acc)[8][4], int rh,
                                            int h, float s, int64_t row, int64_t gc, int64_t n,
                                            unsigned long long &first)
{
    uint32_t *u = reinterpret_cast<uint32_t *>(&w);
    uint32_t nonfinite = 0;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        float2 f = pair2<TW>::get(u[q]);
        u[q] = pair2<TW>::put(fmaf(s, acc[h * 4 + q][rh * 2], f.x),
                              fmaf(s, acc[h * 4 + q][rh * 2 + 1], f.y));
        nonfinite |= __vcmpeq2(u[q] & pair2<TW>::exp2, pair2<TW>::exp2);
    }
    __stcs(reinterpret_cast<uint4 *>(out + row * n + gc), w);
    if (nonfinite) {
        for (int e = 0; e < 8; e++) {
            uint32_t half = (u[e / 2] >> (16 * (e % 2))) & 0xFFFFu;
            if ((half & pair2<TW>::exp2 & 0xFFFFu) == (pair2<TW>::exp2 & 0xFFFFu)) {
                unsigned long long idx = (unsigned long long)(row * n + gc + e);
                first = idx < first ? idx : first;
                break;
            }
        }
    }
}

// KS k-steps of 16 cover r <= 16 KS; the B fragments stay in registers for the whole sweep.  NP
// pieces per factor (the larger need of A and B) is a template parameter so that the MMAs form
// one basic block the scheduler can interleave: eight independent accumulators per piece product.
template <typename TW, int KS, int NP>
__global__ void __launch_bounds__(THREADS, 2)
    merge_tc(TW *__restrict__ out, const TW *__restrict__ w0, const void *__restrict__ a, int at,
             const void *__restrict__ b, int bt, int64_t m, int64_t n, int r, float s,
             unsigned long long *bad)
{
    __shared__ uint32_t As[NP][KS * 8][ASTRIDE]; // A's pieces, packed pairs along k
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int64_t rows[2] = {(int64_t)blockIdx.y * BM + warp * 16 + g,
                             (int64_t)blockIdx.y * BM + warp * 16 + g + 8};
    uint32_t bp[NP][KS][4]; // B's pieces as A-operand fragments
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int f = 0; f < 4; f++) { // f: rows g / g + 8, k 2t / 2t + 8
            int64_t row = rows[f % 2];
            int k = ks * 16 + 2 * t + (f / 2) * 8;
            float x0 = row < m && k < r ? ldf(b, row * r + k, bt) : 0.f;
            float x1 = row < m && k + 1 < r ? ldf(b, row * r + k + 1, bt) : 0.f;
            uint32_t p[3];
            split3(x0, x1, p);
#pragma unroll
            for (int i = 0; i < NP; i++)
                bp[i][ks][f] = p[i];
        }
    unsigned long long first = ~0ull;
    for (int ct = 0; ct < CT; ct++) {
        const int64_t col0 = ((int64_t)blockIdx.x * CT + ct) * TN;
        if (col0 >= n)
            break;
        // This thread's W0 first: the loads are in flight during the staging and the MMAs.
        uint4 wv[2][2];
#pragma unroll
        for (int rh = 0; rh < 2; rh++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int64_t gc = col0 + 32 * h + 8 * t;
                if (rows[rh] < m && gc < n)
                    wv[rh][h] = *reinterpret_cast<const uint4 *>(w0 + rows[rh] * n + gc);
            }
        __syncthreads(); // the previous tile's fragments have been read
        stage_a<KS, NP>(As, a, at, col0, n, r, threadIdx.x, THREADS);
        __syncthreads();
        float acc[8][4];
        tile_products<KS, NP>(acc, bp, As, g, t);
#pragma unroll
        for (int rh = 0; rh < 2; rh++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int64_t gc = col0 + 32 * h + 8 * t;
                if (rows[rh] < m && gc < n)
                    merge_store<TW>(out, wv[rh][h], acc, rh, h, s, rows[rh], gc, n, first);
            }
    }
    if (first != ~0ull)
        atomicMin(bad, first);
}

// Column-resident variant: a block stages A's pieces for one 64-column tile once, and its warps
// sweep 16-row tiles down the matrix with no block-wide barrier in the loop.  Each warp issues
// the next tile's W0 and B loads before the current tile's MMAs, so HBM traffic stays in flight
// while the tensor cores work (the kernel above waits for each tile's W0 and A staging in turn).
// The MMAs and their order are those of merge_tc: the results are bit-identical.
constexpr int CW = 4, CTHREADS = CW * 32, CBLOCKS = 3; // 170 registers: no spills at NP = 3
template <typename TW, int KS, int NP>
__global__ void __launch_bounds__(CTHREADS, CBLOCKS)
    merge_tc_cols(TW *__restrict__ out, const TW *__restrict__ w0, const void *__restrict__ a,
                  int at, const void *__restrict__ b, int bt, int64_t m, int64_t n, int r, float s,
                  unsigned long long *bad)
{
    __shared__ uint32_t As[NP][KS * 8][ASTRIDE];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const int64_t col0 = (int64_t)blockIdx.x * TN;
    stage_a<KS, NP>(As, a, at, col0, n, r, threadIdx.x, CTHREADS);
    __syncthreads();
    const int64_t tiles = (m + 15) / 16, step = (int64_t)gridDim.y * CW;
    int64_t tile = (int64_t)blockIdx.y * CW + warp;
    bool colok[2];
#pragma unroll
    for (int h = 0; h < 2; h++)
        colok[h] = col0 + 32 * h + 8 * t < n;
    // W0 (16 bytes per row half) and the raw B pairs of a tile, loaded one tile ahead.
    uint4 wv[2][2];
    float2 braw[KS][4];
    auto fetch = [&](int64_t tl, uint4(&w)[2][2], float2(&bv)[KS][4]) {
#pragma unroll
        for (int rh = 0; rh < 2; rh++) {
            int64_t row = tl * 16 + g + 8 * rh;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                // W0 is read once: streaming loads keep A and B resident in L2.  The row a
                // tile further ahead is asked into L2 now, so more bytes are in flight than
                // the registers of one tile of lookahead can hold.
                if (tl < tiles && row < m && colok[h])
                    w[rh][h] = __ldcs(
                        reinterpret_cast<const uint4 *>(w0 + row * n + col0 + 32 * h + 8 * t));
                int64_t ahead = row + 16 * step;
                if (t == 0 && tl + step < tiles && ahead < m && colok[h])
                    asm volatile("prefetch.global.L2 [%0];" ::"l"(w0 + ahead * n + col0 + 32 * h));
            }
        }
        switch (bt) {
        case LSL_DEV_F32: load_b<KS, LSL_DEV_F32>(bv, b, tl * 16, tl < tiles, m, r, g, t); break;
        case LSL_DEV_BF16: load_b<KS, LSL_DEV_BF16>(bv, b, tl * 16, tl < tiles, m, r, g, t); break;
        default: load_b<KS, LSL_DEV_F16>(bv, b, tl * 16, tl < tiles, m, r, g, t); break;
        }
    };
    fetch(tile, wv, braw);
    unsigned long long first = ~0ull;
    for (; tile < tiles; tile += step) {
        uint4 wn[2][2];
        float2 bn[KS][4];
        fetch(tile + step, wn, bn);
        uint32_t bp[NP][KS][4];
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int f = 0; f < 4; f++) {
                uint32_t p[3];
                split3(braw[ks][f].x, braw[ks][f].y, p);
#pragma unroll
                for (int i = 0; i < NP; i++)
                    bp[i][ks][f] = p[i];
            }
        float acc[8][4];
        tile_products<KS, NP>(acc, bp, As, g, t);
#pragma unroll
        for (int rh = 0; rh < 2; rh++) {
            int64_t row = tile * 16 + g + 8 * rh;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int64_t gc = col0 + 32 * h + 8 * t;
                if (row < m && colok[h])
                    merge_store<TW>(out, wv[rh][h], acc, rh, h, s, row, gc, n, first);
            }
        }
#pragma unroll
        for (int rh = 0; rh < 2; rh++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                wv[rh][h] = wn[rh][h];
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int f = 0; f < 4; f++)
                braw[ks][f] = bn[ks][f];
    }
    if (first != ~0ull)
        atomicMin(bad, first);
}

// The current device's multiprocessor count, asked once per device (a launch is on the hot path;
// the attribute call is not free).  1 where the query fails: a single row of blocks, still right.
inline int sm_count()
{
    constexpr int MAXDEV = 64;
    static std::atomic<int> known[MAXDEV];
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0)
        return 1;
    if (dev < MAXDEV && (sms = known[dev].load(std::memory_order_relaxed)) > 0)
        return sms;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms < 1)
        return 1;
    if (dev < MAXDEV)
        known[dev].store(sms, std::memory_order_relaxed);
    return sms;
}

template <typename TW, int NP>
int launch_np(int at, int bt, void *out, const void *w0, const void *a, const void *b, int64_t m,
              int64_t n, int r, double s, unsigned long long *bad, cudaStream_t st, bool cols)
{
    TW *o = static_cast<TW *>(out);
    const TW *w = static_cast<const TW *>(w0);
    dim3 grid((unsigned)((n + TN * CT - 1) / (TN * CT)), (unsigned)((m + BM - 1) / BM));
    // Four k-steps of three pieces hold too many B fragments for the prefetching kernel's
    // registers (it would spill): r > 48 with fp32 factors keeps the row-tiled kernel (the
    // LSL_TC branch below; that never-launched instantiation is made with two pieces).
    cols = cols && !(NP == 3 && (r + 15) / 16 > 3);
    if (cols) {
        // One wave: as many blocks as fit at once (a second, partial wave would double the time
        // of its blocks), at least one row of blocks; each warp sweeps its share of row tiles.
        int sms = sm_count();
        int64_t gx = (n + TN - 1) / TN, want = (int64_t)sms * CBLOCKS / gx,
                most = ((m + 15) / 16 + CW - 1) / CW;
        want = want < 1 ? 1 : want;
        grid = dim3((unsigned)gx, (unsigned)(want < most ? want : most));
    }
#define LSL_TC(KS)                                                                                 \
    if (cols && !(NP == 3 && KS == 4))                                                             \
        merge_tc_cols<TW, KS, (NP == 3 && KS == 4) ? 2 : NP>                                       \
            <<<grid, CTHREADS, 0, st>>>(o, w, a, at, b, bt, m, n, r, (float)s, bad);               \
    else                                                                                           \
        merge_tc<TW, KS, NP><<<grid, THREADS, 0, st>>>(o, w, a, at, b, bt, m, n, r, (float)s, bad)
    switch ((r + 15) / 16) {
    case 0:
    case 1: LSL_TC(1); break;
    case 2: LSL_TC(2); break;
    case 3: LSL_TC(3); break;
    default: LSL_TC(4); break;
    }
#undef LSL_TC
    return (int)cudaGetLastError();
}

template <typename TW>
int launch(int at, int bt, void *out, const void *w0, const void *a, const void *b, int64_t m,
           int64_t n, int r, double s, unsigned long long *bad, cudaStream_t st, bool cols)
{
    int np = pieces(at) > pieces(bt) ? pieces(at) : pieces(bt);
    return np == 1   ? launch_np<TW, 1>(at, bt, out, w0, a, b, m, n, r, s, bad, st, cols)
           : np == 2 ? launch_np<TW, 2>(at, bt, out, w0, a, b, m, n, r, s, bad, st, cols)
                     : launch_np<TW, 3>(at, bt, out, w0, a, b, m, n, r, s, bad, st, cols);
}
} // namespace tc

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

int merge_simt(int wt, int at, int bt, void *out, const void *w0, const void *a, const void *b,
               int64_t m, int64_t n, int r, double s, unsigned long long *bad, void *stream)
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

} // namespace

static int merge_tc_or_simt(int wt, int at, int bt, void *out, const void *w0, const void *a,
                            const void *b, int64_t m, int64_t n, int r, double s,
                            unsigned long long *bad, void *stream, bool cols)
{
    // The tensor-core kernels move W in 16-byte pieces: rows must start 16-byte aligned.  The
    // row-tiled one (also what r > 48 with fp32 factors gets) has a block row per 128 rows.
    bool three = tc::pieces(at) == 3 || tc::pieces(bt) == 3;
    bool rows_kernel = !cols || (three && r > 48);
    bool tc_ok = wt != LSL_DEV_F32 && r <= 64 && n % 8 == 0 && (uintptr_t)out % 16 == 0 &&
                 (uintptr_t)w0 % 16 == 0 && (!rows_kernel || m <= (int64_t)65535 * tc::BM);
    if (m <= 0 || n <= 0 || !tc_ok)
        return merge_simt(wt, at, bt, out, w0, a, b, m, n, r, s, bad, stream);
    cudaStream_t st = (cudaStream_t)stream;
    return wt == LSL_DEV_BF16
               ? tc::launch<__nv_bfloat16>(at, bt, out, w0, a, b, m, n, r, s, bad, st, cols)
               : tc::launch<__half>(at, bt, out, w0, a, b, m, n, r, s, bad, st, cols);
}

extern "C" int lsl_dev_merge(int wt, int at, int bt, void *out, const void *w0, const void *a,
                             const void *b, int64_t m, int64_t n, int r, double s,
                             unsigned long long *bad, void *stream)
{
    return merge_tc_or_simt(wt, at, bt, out, w0, a, b, m, n, r, s, bad, stream, true);
}

#ifdef LSL_DEV_BENCH
// The benchmark's own build of this file (tests/bench/bench_kernels.h) adds the two kernels
// lsl_dev_merge chooses between, each alone, for its comparison; the library has neither entry.
extern "C" int lsl_bench_merge_tc_rows(int wt, int at, int bt, void *out, const void *w0,
                                       const void *a, const void *b, int64_t m, int64_t n, int r,
                                       double s, unsigned long long *bad, void *stream)
{
    return merge_tc_or_simt(wt, at, bt, out, w0, a, b, m, n, r, s, bad, stream, false);
}

extern "C" int lsl_bench_merge_simt(int wt, int at, int bt, void *out, const void *w0,
                                    const void *a, const void *b, int64_t m, int64_t n, int r,
                                    double s, unsigned long long *bad, void *stream)
{
    return merge_simt(wt, at, bt, out, w0, a, b, m, n, r, s, bad, stream);
}
#endif
