/* GPU benchmarks (run through ci/device-test.sh):
 *   bench_gpu kernel
 *       the fused merge kernel on a Qwen2.5-7B up_proj (18944 x 3584 bf16, fp32 LoRA r=32) against
 *       a device-to-device copy of the same bytes: GB/s of (W0 read + W written), median of 20;
 *       and cuBLASLt doing the same merge as one GEMM (beta = 1, C = W0), the library choice
 *       the GPU-path issue asks to measure.
 *   mpiexec -n N bench_gpu write DIR LAYERS
 *       every rank holds on the GPU its FSDP2 Shard(0) rows of a Qwen2.5-7B-shaped bf16 model with
 *       LAYERS layers and fp32 LoRA r=32 on all seven projections; times the in-job API
 *       (device pointers, merge on the GPU, pinned ring, collective writes) and the raw ceiling:
 *       MPI_File_write_at_all of the same bytes at the same offsets from a pinned buffer.
 *       BENCH_ROUNDS (default 3) rounds in alternating order; prints the best time of each, the
 *       per-round times, and the peak host RSS growth per rank over its level before each
 *       loraslab run.  BENCH_STAGING_MIB sets the writer's staging budget (default 64),
 *       BENCH_RAW_POOL_MIB the ceiling's pinned source, cycled in 64 MiB pieces (default 64),
 *       BENCH_BATCH tensors per put (default 1; up to 9, a layer: lsl_writer_put_batch_all). */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_kernels.h"
#include "loraslab.h"
#include "lsl_device.h"
#include "lsl_internal.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));            \
            MPI_Abort(MPI_COMM_WORLD, 2);                                                          \
        }                                                                                          \
    } while (0)

/* Random (never zero) device data: one host buffer of each kind, generated once, cycled into
 * device buffers with an offset that depends on the seed. */
static void *dev_random(uint64_t bytes, uint64_t seed, int as_float)
{
    enum { POOL = 64 << 20 };
    static unsigned char *pool[2];
    unsigned char **h = &pool[as_float ? 1 : 0];
    if (!*h) {
        *h = malloc(POOL);
        uint64_t x = 0x9E3779B97F4A7C15ull + (uint64_t)as_float;
        for (uint64_t i = 0; i < POOL / 4; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            float v = ((float)(x >> 40) / 16777216.0f - 0.5f) * (as_float ? 0.02f : 0.04f);
            if (as_float) {
                memcpy(*h + 4 * i, &v, 4);
            } else { /* two bf16 weights around 0.02 */
                uint32_t u;
                memcpy(&u, &v, 4);
                uint16_t b2[2] = {(uint16_t)(u >> 16), (uint16_t)((u >> 16) ^ 0x0011)};
                memcpy(*h + 4 * i, b2, 4);
            }
        }
    }
    void *d;
    CK(cudaMalloc(&d, bytes));
    uint64_t start = (seed * 4096) % (POOL / 2);
    for (uint64_t o = 0; o < bytes;) {
        uint64_t n = bytes - o < POOL / 2 ? bytes - o : POOL / 2;
        CK(cudaMemcpy((unsigned char *)d + o, *h + start, n, cudaMemcpyHostToDevice));
        o += n;
    }
    return d;
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Median milliseconds of 20 timed runs (after 3 warm-ups) of one launch. */
typedef int (*launch_fn)(void *ctx);
static float time_ms(launch_fn f, void *ctx)
{
    cudaEvent_t e0, e1;
    float t[20], ms;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int it = -3; it < 20; it++) {
        CK(cudaEventRecord(e0, 0));
        CK((cudaError_t)f(ctx));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (it >= 0)
            t[it] = ms;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    qsort(t, 20, sizeof *t, cmp_f);
    return t[10];
}

typedef struct kctx {
    void *out, *w0, *a, *b;
    int64_t m, n, bytes;
    int r;
    unsigned long long *bad;
} kctx;
static int run_tc(void *p)
{
    kctx *k = p;
    return lsl_dev_merge(1 /*bf16*/, 0, 0, k->out, k->w0, k->a, k->b, k->m, k->n, k->r, 2.0, k->bad,
                         NULL);
}
static int run_tc_rows(void *p)
{
    kctx *k = p;
    return lsl_bench_merge_tc_rows(1, 0, 0, k->out, k->w0, k->a, k->b, k->m, k->n, k->r, 2.0,
                                   k->bad, NULL);
}
static int run_simt(void *p)
{
    kctx *k = p;
    return lsl_bench_merge_simt(1, 0, 0, k->out, k->w0, k->a, k->b, k->m, k->n, k->r, 2.0, k->bad,
                                NULL);
}
static int run_copy(void *p)
{
    kctx *k = p;
    return lsl_bench_copy(k->out, k->w0, k->bytes, NULL);
}
static int run_memcpy(void *p)
{
    kctx *k = p;
    return (int)cudaMemcpyAsync(k->out, k->w0, (size_t)k->bytes, cudaMemcpyDeviceToDevice, 0);
}

/* cuBLASLt's version of the merge: W = s * (B @ A) + 1 * W0 in one GEMM, in cuBLAS's column-major
 * view (W^T [n x m] = A^T [n x r] x B^T [r x m], no transposes).  cuBLASLt has no fp32-factor
 * GEMM with bf16 C and D, so two forms: bf16 factors (A and B rounded to bf16 first: one pass over
 * W like our kernel, fewer factor bits), and all fp32 (W in fp32: twice the bytes before any
 * conversion to and from bf16). */
typedef struct ltctx {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulHeuristicResult_t heur;
    const void *a, *b, *c;
    void *d, *ws;
    size_t ws_bytes;
} ltctx;

#define LT(x)                                                                                      \
    do {                                                                                           \
        cublasStatus_t s_ = (x);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d: cuBLASLt status %d\n", __FILE__, __LINE__, (int)s_);           \
            MPI_Abort(MPI_COMM_WORLD, 2);                                                          \
        }                                                                                          \
    } while (0)

static void lt_init(ltctx *l, cudaDataType_t fac, cudaDataType_t w, int64_t m, int64_t n, int r,
                    const void *a, const void *b, const void *c, void *d)
{
    l->a = a;
    l->b = b;
    l->c = c;
    l->d = d;
    l->ws_bytes = (size_t)32 << 20;
    CK(cudaMalloc(&l->ws, l->ws_bytes));
    LT(cublasLtCreate(&l->h));
    LT(cublasLtMatmulDescCreate(&l->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT(cublasLtMatrixLayoutCreate(&l->la, fac, (uint64_t)n, (uint64_t)r, n));
    LT(cublasLtMatrixLayoutCreate(&l->lb, fac, (uint64_t)r, (uint64_t)m, r));
    LT(cublasLtMatrixLayoutCreate(&l->lc, w, (uint64_t)n, (uint64_t)m, n));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                            &l->ws_bytes, sizeof l->ws_bytes));
    int got = 0;
    LT(cublasLtMatmulAlgoGetHeuristic(l->h, l->op, l->la, l->lb, l->lc, l->lc, pref, 1, &l->heur,
                                      &got));
    cublasLtMatmulPreferenceDestroy(pref);
    if (got < 1) {
        fprintf(stderr, "cuBLASLt: no algorithm for this merge\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

static void lt_free(ltctx *l)
{
    cublasLtMatrixLayoutDestroy(l->la);
    cublasLtMatrixLayoutDestroy(l->lb);
    cublasLtMatrixLayoutDestroy(l->lc);
    cublasLtMatmulDescDestroy(l->op);
    cublasLtDestroy(l->h);
    cudaFree(l->ws);
}

static int run_lt(void *p)
{
    ltctx *l = p;
    const float alpha = 2.0f, beta = 1.0f; /* s = 2, as run_tc */
    return (int)cublasLtMatmul(l->h, l->op, &alpha, l->a, l->la, l->b, l->lb, &beta, l->c, l->lc,
                               l->d, l->lc, &l->heur.algo, l->ws, l->ws_bytes, 0);
}

/* fp32 -> bf16, round to nearest even (finite inputs) */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* A device copy of `count` fp32 values rounded to bf16. */
static void *dev_bf16_of(const void *src, uint64_t count)
{
    float *h = malloc(count * 4);
    uint16_t *hb = malloc(count * 2);
    void *d;
    CK(cudaMemcpy(h, src, count * 4, cudaMemcpyDeviceToHost));
    for (uint64_t i = 0; i < count; i++)
        hb[i] = to_bf16(h[i]);
    CK(cudaMalloc(&d, count * 2));
    CK(cudaMemcpy(d, hb, count * 2, cudaMemcpyHostToDevice));
    free(h);
    free(hb);
    return d;
}

/* bf16 bits -> ordered integer, for ulp distances */
static int32_t bf16_ord(uint16_t h)
{
    return (h & 0x8000) ? -(int32_t)(h & 0x7FFF) : (int32_t)h;
}

static int bench_kernel(void)
{
    const int64_t m = 18944, n = 3584;
    const int r = 32;
    uint64_t wb = (uint64_t)m * n * 2;
    kctx k = {NULL, dev_random(wb, 1, 0),
              /* A and B big enough for the transposed (down_proj) shape too */
              dev_random((uint64_t)r * (uint64_t)(m > n ? m : n) * 4, 2, 1),
              dev_random((uint64_t)(m > n ? m : n) * r * 4, 3, 1), m, n, (int64_t)wb, r, NULL};
    void *out2;
    CK(cudaMalloc(&k.out, wb));
    CK(cudaMalloc(&out2, wb));
    CK(cudaMalloc((void **)&k.bad, 8));
    CK(cudaMemset(k.bad, 0xFF, 8));
    /* The two kernels against each other on this tensor (both accumulate in fp32, so they may
     * differ where W0 and the delta nearly cancel; the float64 checks are in the GPU tests). */
    CK((cudaError_t)run_simt(&k));
    CK(cudaMemcpy(out2, k.out, wb, cudaMemcpyDeviceToDevice));
    CK((cudaError_t)run_tc(&k));
    uint16_t *h1 = malloc(wb), *h2 = malloc(wb);
    CK(cudaMemcpy(h1, k.out, wb, cudaMemcpyDeviceToHost));
    /* the row-tiled kernel runs the same MMAs in the same order: bit-identical or a bug */
    CK((cudaError_t)run_tc_rows(&k));
    CK(cudaMemcpy(h2, k.out, wb, cudaMemcpyDeviceToHost));
    uint64_t rows_diff = 0;
    for (uint64_t i = 0; i < (uint64_t)m * (uint64_t)n; i++)
        rows_diff += h1[i] != h2[i];
    CK(cudaMemcpy(h2, out2, wb, cudaMemcpyDeviceToHost));
    uint64_t same = 0, worst = 0, over1 = 0;
    for (uint64_t i = 0; i < (uint64_t)m * (uint64_t)n; i++) {
        int32_t d = bf16_ord(h1[i]) - bf16_ord(h2[i]);
        uint64_t ad = (uint64_t)(d < 0 ? -d : d);
        same += ad == 0;
        over1 += ad > 1;
        worst = ad > worst ? ad : worst;
    }
    /* cuBLASLt with bf16 factors, against our merge of the fp32 factors (h1) */
    uint64_t mn = (uint64_t)m * (uint64_t)n;
    void *a16 = dev_bf16_of(k.a, (uint64_t)r * (uint64_t)n),
         *b16 = dev_bf16_of(k.b, (uint64_t)m * (uint64_t)r);
    ltctx lt16, lt32;
    lt_init(&lt16, CUDA_R_16BF, CUDA_R_16BF, m, n, r, a16, b16, k.w0, out2);
    CK((cudaError_t)run_lt(&lt16));
    CK(cudaMemcpy(h2, out2, wb, cudaMemcpyDeviceToHost));
    uint64_t lt_same = 0, lt_worst = 0;
    for (uint64_t i = 0; i < mn; i++) {
        int32_t d = bf16_ord(h1[i]) - bf16_ord(h2[i]);
        uint64_t ad = (uint64_t)(d < 0 ? -d : d);
        lt_same += ad == 0;
        lt_worst = ad > lt_worst ? ad : lt_worst;
    }
    free(h1);
    free(h2);
    void *w32 = dev_random(mn * 4, 4, 1), *o32;
    CK(cudaMalloc(&o32, mn * 4));
    lt_init(&lt32, CUDA_R_32F, CUDA_R_32F, m, n, r, k.a, k.b, w32, o32);
    float tl16 = time_ms(run_lt, &lt16), tl32 = time_ms(run_lt, &lt32);
    lt_free(&lt16);
    lt_free(&lt32);
    cudaFree(a16);
    cudaFree(b16);
    cudaFree(w32);
    cudaFree(o32);
    cudaFree(out2);
    float tm = time_ms(run_tc, &k), ts = time_ms(run_simt, &k), tc = time_ms(run_copy, &k),
          td = time_ms(run_memcpy, &k), tr = time_ms(run_tc_rows, &k);
    /* the transposed shape (down_proj): many column tiles, few rows */
    kctx kd = k;
    kd.m = n;
    kd.n = m;
    float tdown = time_ms(run_tc, &kd), tdown_rows = time_ms(run_tc_rows, &kd);
    double moved = 2.0 * (double)wb; /* read W0 + write W */
    double gm = moved / (tm * 1e-3) / 1e9, gs = moved / (ts * 1e-3) / 1e9,
           gc = moved / (tc * 1e-3) / 1e9, gd = moved / (td * 1e-3) / 1e9;
    double flops = 2.0 * r * (double)m * (double)n / (tm * 1e-3) / 1e12;
    double exact = 100.0 * (double)same / ((double)m * (double)n);
    printf(
        "kernel: tensor-core merge %.3f ms %.0f GB/s (%.1f TFLOP/s) | SIMT merge %.3f ms %.0f "
        "GB/s | copy kernel %.3f ms %.0f GB/s | cudaMemcpy D2D %.3f ms %.0f GB/s | "
        "merge/copy %.3f (SIMT %.2f) | tensor-core vs SIMT: %.4f%% identical, %llu elements over 1 "
        "ulp (worst %llu)\n",
        tm, gm, flops, ts, gs, tc, gc, td, gd, gm / (gc > gd ? gc : gd), gs / (gc > gd ? gc : gd),
        exact, (unsigned long long)over1, (unsigned long long)worst);
    double best = gc > gd ? gc : gd;
    printf("kernel: column-resident TC (shipped) %.0f GB/s = %.3f of copy vs row-tiled TC %.0f "
           "GB/s = %.3f (%llu elements differ); down_proj shape %dx%d: %.3f vs %.3f\n",
           gm, gm / best, moved / (tr * 1e-3) / 1e9, moved / (tr * 1e-3) / 1e9 / best,
           (unsigned long long)rows_diff, (int)n, (int)m, moved / (tdown * 1e-3) / 1e9 / best,
           moved / (tdown_rows * 1e-3) / 1e9 / best);
    /* cuBLASLt figures are for the same merge, so the same bytes count (bf16 W0 read, W written):
     * the fp32 form moves twice that and still lacks the two conversions. */
    printf("kernel: cuBLASLt, one GEMM with beta = 1: bf16 factors %.3f ms %.0f GB/s = %.3f of "
           "copy (%.4f%% identical to the fp32-factor merge, worst %llu ulp); fp32 factors and "
           "fp32 W %.3f ms = %.0f GB/s of bf16 W = %.3f | loraslab kernel %.3f ms = %.2fx the "
           "bf16 GEMM's time, %.2fx the fp32 one's\n",
           tl16, moved / (tl16 * 1e-3) / 1e9, moved / (tl16 * 1e-3) / 1e9 / best,
           100.0 * (double)lt_same / (double)mn, (unsigned long long)lt_worst, tl32,
           moved / (tl32 * 1e-3) / 1e9, moved / (tl32 * 1e-3) / 1e9 / best, tm, tm / tl16,
           tm / tl32);
    printf("RESULT kernel_gbs=%.1f simt_gbs=%.1f copy_gbs=%.1f memcpy_gbs=%.1f ratio=%.3f "
           "worst_ulp=%llu identical_pct=%.4f\n",
           gm, gs, gc, gd, gm / (gc > gd ? gc : gd), (unsigned long long)worst, exact);
    return exact >= 99.0 && rows_diff == 0 ? 0 : 1;
}

typedef struct spec {
    char name[96];
    uint64_t rows, cols;
    int lora;
} spec;

static int model(int layers, spec *s)
{
    const uint64_t H = 3584, I = 18944, V = 152064, KV = 512;
    int n = 0;
    s[n] = (spec){"", V, H, 0};
    snprintf(s[n++].name, 96, "model.embed_tokens.weight");
    for (int l = 0; l < layers; l++) {
        struct {
            const char *p;
            uint64_t r, c;
            int lora;
        } t[] = {{"self_attn.q_proj.weight", H, H, 1},        {"self_attn.k_proj.weight", KV, H, 1},
                 {"self_attn.v_proj.weight", KV, H, 1},       {"self_attn.o_proj.weight", H, H, 1},
                 {"mlp.gate_proj.weight", I, H, 1},           {"mlp.up_proj.weight", I, H, 1},
                 {"mlp.down_proj.weight", H, I, 1},           {"input_layernorm.weight", H, 1, 0},
                 {"post_attention_layernorm.weight", H, 1, 0}};
        for (int k = 0; k < 9; k++) {
            s[n] = (spec){"", t[k].r, t[k].c, t[k].lora};
            snprintf(s[n++].name, 96, "model.layers.%d.%s", l, t[k].p);
        }
    }
    s[n] = (spec){"", V, H, 0};
    snprintf(s[n++].name, 96, "lm_head.weight");
    return n;
}

/* Peak RSS since the last reset_peak(): VmHWM, which /proc/self/clear_refs resets (getrusage's
 * maximum keeps the high-water mark of exited threads and cannot be reset). */
static uint64_t peak_rss(void)
{
    char line[256];
    uint64_t kb = 0;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %llu", (unsigned long long *)&kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

static int reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    int ok = f && fputs("5", f) >= 0;
    if (f)
        ok = (fclose(f) == 0) && ok;
    return ok;
}

typedef struct wbench {
    int n, size, rank;
    spec *s;
    void **w, **a, **b;
    uint64_t *r0, *nr;
    lsl_tensor_info *ti;
    uint64_t staging, raw_pool;
    uint64_t stripe; /* BENCH_STRIPE_MIB: the writer's stripe_size (pieces cut there) */
    int batch;       /* tensors per put call */
} wbench;

/* The in-job API: device pointers, merge on the GPU, pinned ring, collective writes. */
static double run_lsl(const wbench *B, const char *path, uint64_t *grow)
{
    const uint64_t r = 32;
    MPI_Barrier(MPI_COMM_WORLD);
    uint64_t rss0 = lsl_i_rss_current();
    reset_peak();
    lsl_writer *wr = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = 1;
    cfg.overwrite = 1;
    cfg.staging_bytes = B->staging;
    cfg.stripe_size = B->stripe;
    double t0 = MPI_Wtime();
    lsl_comm *comm = NULL;
    lsl_status st = lsl_comm_from_mpi(MPI_COMM_WORLD, &comm);
    if (!st)
        st = lsl_writer_create_all(comm, path, &cfg, &wr);
    lsl_comm_free(&comm);
    if (!st)
        st = lsl_writer_define_all(wr, (uint64_t)B->n, B->ti);
    /* Tensors in batches of B->batch (1: one lsl_writer_put_all each). */
    lsl_lora_part lp[9];
    lsl_part p[9];
    uint64_t idx[9];
    for (int i = 0; i < B->n && !st;) {
        int k = 0;
        for (; k < B->batch && i < B->n; k++, i++) {
            uint64_t a0, an;
            lsl_partition_rows(r, B->size, B->rank, &a0, &an);
            uint64_t in = B->ti[i].shape[1];
            lp[k] = (lsl_lora_part){.rank = r,
                                    .alpha = 64,
                                    .scaling = 2.0,
                                    .a = {B->a[i], LSL_F32, a0 * in, an * in, 0},
                                    .b = {B->b[i], LSL_F32, B->r0[i] * r, B->nr[i] * r, 0}};
            p[k] = (lsl_part){
                B->r0[i], B->nr[i], B->w[i], LSL_MEM_DEVICE, NULL, B->s[i].lora ? &lp[k] : NULL,
                0,        0};
            idx[k] = (uint64_t)i;
        }
        st = B->batch == 1 ? lsl_writer_put_all(wr, idx[0], &p[0])
                           : lsl_writer_put_batch_all(wr, (uint64_t)k, idx, p);
    }
    if (!st)
        st = lsl_writer_close_all(&wr);
    double t = MPI_Wtime() - t0;
    if (st) {
        if (B->rank == 0)
            fprintf(stderr, "bench write failed: %s\n", lsl_last_error());
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    uint64_t peak = peak_rss(), g = peak > rss0 ? peak - rss0 : 0;
    MPI_Allreduce(&g, grow, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    return t;
}

/* The ceiling: the same bytes, the same per-tensor ranges, from one pinned buffer. */
static double run_raw(const wbench *B, const char *raw)
{
    unsigned char *pin;
    uint64_t chunk = 64ull << 20, pool = B->raw_pool > chunk ? B->raw_pool / chunk * chunk : chunk,
             k = 0;
    CK(cudaHostAlloc((void **)&pin, pool, cudaHostAllocDefault));
    memset(pin, 0x3C, pool);
    MPI_File fh;
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "romio_ds_write", "disable");
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_File_open(MPI_COMM_WORLD, raw, MPI_MODE_WRONLY | MPI_MODE_CREATE, info, &fh);
    uint64_t off = 0;
    for (int i = 0; i < B->n; i++) {
        uint64_t rb = B->s[i].cols * 2, my = B->nr[i] * rb, base = off + B->r0[i] * rb;
        uint64_t maxb = ((B->s[i].rows + (uint64_t)B->size - 1) / (uint64_t)B->size) * rb;
        uint64_t nch = (maxb + chunk - 1) / chunk;
        for (uint64_t c = 0; c < nch; c++) {
            uint64_t o = c * chunk, cnt = o < my ? (my - o < chunk ? my - o : chunk) : 0;
            MPI_File_write_at_all(fh, (MPI_Offset)(base + o), pin + k++ * chunk % pool, (int)cnt,
                                  MPI_BYTE, MPI_STATUS_IGNORE);
        }
        off += B->s[i].rows * rb;
    }
    MPI_File_sync(fh);
    MPI_File_close(&fh);
    double t = MPI_Wtime() - t0;
    MPI_Info_free(&info);
    cudaFreeHost(pin);
    return t;
}

/* Each timed run starts with neither output on the filesystem: a file left from the run before
 * would hand the next one tmpfs pages it need not allocate, or memory it cannot have. */
static void clean(int rank, const char *path, const char *raw)
{
    if (rank == 0) {
        unlink(path);
        unlink(raw);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static int bench_write(const char *dir, int layers)
{
    wbench B = {0};
    MPI_Comm_rank(MPI_COMM_WORLD, &B.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &B.size);
    int ndev = 0, rank = B.rank, size = B.size;
    CK(cudaGetDeviceCount(&ndev));
    CK(cudaSetDevice(rank % ndev)); /* local rank on one node */
    const char *sm = getenv("BENCH_STAGING_MIB"), *rd = getenv("BENCH_ROUNDS"),
               *rp = getenv("BENCH_RAW_POOL_MIB");
    B.staging = (sm ? strtoull(sm, NULL, 10) : 64) << 20;
    B.raw_pool = (rp ? strtoull(rp, NULL, 10) : 64) << 20;
    const char *ss = getenv("BENCH_STRIPE_MIB");
    B.stripe = (ss ? strtoull(ss, NULL, 10) : 0) << 20;
    const char *bb = getenv("BENCH_BATCH");
    B.batch = bb ? atoi(bb) : 1;
    B.batch = B.batch < 1 ? 1 : B.batch > 9 ? 9 : B.batch;
    int rounds = rd ? atoi(rd) : 3;
    rounds = rounds < 1 ? 1 : rounds > 9 ? 9 : rounds;
    B.s = calloc(2 + 9 * (size_t)layers, sizeof *B.s);
    int n = B.n = model(layers, B.s);
    const uint64_t r = 32;
    B.w = calloc((size_t)n, sizeof *B.w), B.a = calloc((size_t)n, sizeof *B.a),
    B.b = calloc((size_t)n, sizeof *B.b);
    B.r0 = calloc((size_t)n, 8), B.nr = calloc((size_t)n, 8);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        lsl_partition_rows(B.s[i].rows, size, rank, &B.r0[i], &B.nr[i]);
        B.w[i] = dev_random(B.nr[i] * B.s[i].cols * 2 + 2, (uint64_t)i + 10, 0);
        if (B.s[i].lora) {
            uint64_t a0, an;
            lsl_partition_rows(r, size, rank, &a0, &an);
            B.a[i] = dev_random(an * B.s[i].cols * 4 + 4, (uint64_t)i + 1000, 1);
            B.b[i] = dev_random(B.nr[i] * r * 4 + 4, (uint64_t)i + 2000, 1);
        }
        total += B.s[i].rows * B.s[i].cols * 2;
    }
    CK(cudaDeviceSynchronize());
    B.ti = calloc((size_t)n, sizeof *B.ti);
    for (int i = 0; i < n; i++)
        B.ti[i] = (lsl_tensor_info){B.s[i].name, LSL_BF16, 2, {B.s[i].rows, B.s[i].cols}};
    char path[512], raw[600];
    snprintf(path, sizeof path, "%s/bench-np%d-L%d.h5", dir, size, layers);
    snprintf(raw, sizeof raw, "%s/raw-np%d-L%d.bin", dir, size, layers);
    /* Rounds alternate the order (loraslab first, then the ceiling first), so neither side
     * always meets the filesystem and the page allocator in the same state; the ratio is of the
     * best of each. */
    double tl[9], tr[9], bl = 1e30, br = 1e30;
    uint64_t gmax = 0;
    int hwm_ok = reset_peak();
    for (int k = 0; k < rounds; k++) {
        uint64_t g = 0;
        for (int j = 0; j < 2; j++) {
            clean(rank, path, raw);
            if ((j == 0) == (k % 2 == 0))
                tl[k] = run_lsl(&B, path, &g);
            else
                tr[k] = run_raw(&B, raw);
        }
        gmax = g > gmax ? g : gmax;
        bl = tl[k] < bl ? tl[k] : bl;
        br = tr[k] < br ? tr[k] : br;
    }
    clean(rank, path, raw);
    if (rank == 0) {
        char per[256] = "";
        for (int k = 0, o = 0; k < rounds && o >= 0 && o < (int)sizeof per; k++)
            o += snprintf(per + o, sizeof per - (size_t)o, "%s%.3f/%.3f", k ? " " : "", tl[k],
                          tr[k]);
        printf("write: np=%d L=%d %s: %.2f GB | loraslab %.3f s %.2f GB/s | raw MPI-IO %.3f s "
               "%.2f GB/s | loraslab/raw time %.3f (best of %d rounds, alternating order; "
               "loraslab/raw per round %s) | RSS growth max %.1f MiB (staging %llu MiB)%s | raw "
               "source %llu MiB | %d tensor(s) per put | %d GPU(s) | plan %s%s\n",
               size, layers, dir, total / 1e9, bl, total / bl / 1e9, br, total / br / 1e9, bl / br,
               rounds, per, gmax / 1048576.0, (unsigned long long)(B.staging >> 20),
               hwm_ok ? "" : " [VmHWM not resettable: growth is since process start]",
               (unsigned long long)(B.raw_pool >> 20), B.batch, ndev < size ? ndev : size,
               getenv("LSL_IOPLAN") ? getenv("LSL_IOPLAN") : "on",
               B.stripe ? ", pieces cut at BENCH_STRIPE_MIB" : "");
        printf("RESULT write np=%d L=%d dir=%s bytes=%llu lsl_s=%.3f raw_s=%.3f ratio=%.3f "
               "rss_growth_mib=%.1f staging_mib=%llu plan=%s stripe_mib=%llu\n",
               size, layers, dir, (unsigned long long)total, bl, br, bl / br, gmax / 1048576.0,
               (unsigned long long)(B.staging >> 20),
               getenv("LSL_IOPLAN") ? getenv("LSL_IOPLAN") : "on",
               (unsigned long long)(B.stripe >> 20));
    }
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rc = 1;
    if (argc >= 2 && strcmp(argv[1], "kernel") == 0)
        rc = bench_kernel();
    else if (argc >= 4 && strcmp(argv[1], "write") == 0)
        rc = bench_write(argv[2], atoi(argv[3]));
    else
        fprintf(stderr, "usage: bench_gpu kernel | bench_gpu write DIR LAYERS\n");
    MPI_Finalize();
    return rc;
}
