/* The in-job writer API at any rank count: every rank puts its FSDP2 Shard(0) slice (trailing
 * ranks often empty), LoRA A sharded by rows or by columns, all dtypes and shape classes; the
 * file is read back with HDF5 on rank 0 and compared with a float64 reference.  Then the error
 * paths: one rank's bad input fails every rank with the same status and leaves no file. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loraslab.h"
#include "lsl_crc32c.h"
#include "lsl_ioplan.h"
#include "lsl_internal.h"
#include "lsl_numeric.h"
#include "lsl_check.h"
#include "lsl_test_cb.h"
#include "lsl_writer_i.h"

#include <sys/syscall.h>

#ifdef LSL_TEST_DEVICE
/* The same checks with every part in GPU memory (the device path of the writer). */
#include <cuda_runtime_api.h>
#define MEM LSL_MEM_DEVICE
static const void *dev(const void *host, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess ||
        cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc/cudaMemcpy failed\n");
        exit(2);
    }
    return d;
}
/* One GPU per node-local rank where there are enough (the NCCL gather path), shared otherwise. */
static void pick_device(void)
{
    MPI_Comm local;
    int lr = 0, nd = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &lr);
    MPI_Comm_free(&local);
    if (cudaGetDeviceCount(&nd) != cudaSuccess || nd == 0 ||
        cudaSetDevice(lr % nd) != cudaSuccess) {
        fprintf(stderr, "no usable GPU\n");
        exit(2);
    }
}
#else
#define MEM LSL_MEM_HOST
static const void *dev(const void *host, size_t bytes)
{
    (void)bytes;
    return host;
}
#endif

static int rank, size;

/* The library is linked statically into this test, so its calls to umask() land here: the writer
 * must never change the process-wide umask (another thread of an in-job caller would create
 * files with the wrong mode meanwhile). */
static int umask_calls;
mode_t umask(mode_t mask)
{
    umask_calls++;
    return (mode_t)syscall(SYS_umask, mask);
}
static char dir[512];
/* --callbacks: writers over the test's callback communicator (MPI underneath, pwrite data) */
static int use_cb;

/* The handle every writer of the test is created over: MPI_COMM_WORLD, or the callbacks.  The
 * writer makes its own communicator from it, so the handle is freed at once. */
static lsl_status create_writer(const char *path, const lsl_writer_config *cfg, lsl_writer **w)
{
    lsl_comm *c = NULL;
    if (use_cb)
        c = lsl_test_cb_world();
    else if (lsl_comm_from_mpi(MPI_COMM_WORLD, &c) != LSL_OK)
        return LSL_ERR_INVALID_ARG;
    lsl_status st = lsl_writer_create_all(c, path, cfg, w);
    lsl_comm_free(&c);
    return st;
}

static double rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static uint16_t enc16(lsl_dtype dt, double v)
{
    return dt == LSL_BF16 ? lsl_f32_to_bf16((float)v) : lsl_f32_to_f16((float)v);
}

static double dec(lsl_dtype dt, const void *p, uint64_t i)
{
    if (dt == LSL_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == LSL_BF16 ? lsl_bf16_to_f32(h) : lsl_f16_to_f32(h);
}

static void fill(lsl_dtype dt, void *p, uint64_t n, double scale, uint64_t seed)
{
    for (uint64_t i = 0; i < n; i++) {
        double v = rnd(&seed) * scale;
        if (dt == LSL_F32)
            ((float *)p)[i] = (float)v;
        else
            ((uint16_t *)p)[i] = enc16(dt, v);
    }
}

static int64_t ordered(lsl_dtype dt, const void *p, uint64_t i)
{
    if (dt == LSL_F32) {
        uint32_t u;
        memcpy(&u, (const float *)p + i, 4);
        return (u >> 31) ? -(int64_t)(u & 0x7FFFFFFFu) : (int64_t)u;
    }
    uint16_t h = ((const uint16_t *)p)[i];
    return (h >> 15) ? -(int64_t)(h & 0x7FFF) : (int64_t)h;
}

static void round_into(lsl_dtype dt, double v, void *p, uint64_t i)
{
    if (dt == LSL_F32)
        ((float *)p)[i] = (float)v;
    else
        ((uint16_t *)p)[i] = enc16(dt, v);
}

static uint64_t esz(lsl_dtype dt)
{
    return lsl_dtype_bits(dt) / 8;
}

static int sum_over_ranks(int local)
{
    int all = 0;
    MPI_Allreduce(&local, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return all;
}

/* Read a whole dataset's raw bytes and its crc32c attribute (rank 0). */
static void *read_ds(hid_t f, const char *name, uint64_t *nbytes, uint32_t *crc)
{
    char path[256];
    snprintf(path, sizeof path, "/tensors/%s", name);
    hid_t ds = H5Dopen2(f, path, H5P_DEFAULT);
    if (ds < 0)
        return NULL;
    hid_t t = H5Dget_type(ds);
    hid_t sp = H5Dget_space(ds);
    *nbytes = (uint64_t)H5Sget_select_npoints(sp) * H5Tget_size(t);
    void *buf = malloc(*nbytes + 1);
    H5Dread(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    hid_t a = H5Aopen(ds, "crc32c", H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_UINT32, crc);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(ds);
    return buf;
}

typedef struct lcase {
    const char *name;
    lsl_dtype w, a, b;
    uint64_t out, in, r;
    int a_whole; /* every rank passes A whole (DDP), else FSDP2's row shards */
    double scaling;
} lcase;

/* big: two tensors of a few MB and a 3 MiB staging budget, so chunks span several of the
 * device checksum's 256 KiB blocks plus a tail (the small case never fills one).  batch: the
 * same puts through lsl_writer_put_batch_all, in two batches of mixed LoRA and plain tensors. */
static void test_merge_and_copy(int big, int batch)
{
    int before = lsl_check_total();
    char path[600];
    snprintf(path, sizeof path, "%s/merge%s%s%s.h5", dir, big ? "-big" : "", batch ? "-batch" : "",
             use_cb ? "-cb" : "");
    lcase lc[] = {
        {"w.bf16", LSL_BF16, LSL_F32, LSL_F32, 37, 24, 8, 0, 2.0},
        {"w.f16", LSL_F16, LSL_BF16, LSL_F16, 13, 40, 5, 1, 0.5},
        {"w.f32", LSL_F32, LSL_F16, LSL_BF16, 3, 17, 3, 0, 1.75},
        {"w.tiny", LSL_BF16, LSL_F32, LSL_F32, 1, 8, 2, 1, 4.0},
        /* on the GPU: three k-steps of the tensor-core kernel, and r > 64 (the SIMT kernel) */
        {"w.r40", LSL_BF16, LSL_F32, LSL_BF16, 150, 72, 40, 0, 0.25},
        {"w.r70", LSL_F16, LSL_F32, LSL_F32, 9, 16, 70, 1, 1.0},
    };
    const int nl = 6;
    lsl_tensor_info t[11] = {
        {"w.bf16", LSL_BF16, 2, {37, 24}}, {"w.f16", LSL_F16, 2, {13, 40}},
        {"w.f32", LSL_F32, 2, {3, 17}},    {"w.tiny", LSL_BF16, 2, {1, 8}},
        {"w.r40", LSL_BF16, 2, {150, 72}}, {"w.r70", LSL_F16, 2, {9, 16}},
        {"norm", LSL_BF16, 1, {29}},       {"scalar", LSL_F32, 0, {0}},
        {"cube", LSL_I64, 3, {5, 3, 2}},   {"empty", LSL_F32, 2, {0, 7}},
        {"bytes", LSL_U8, 2, {6, 0}},
    };
    const int nt = 11;
    if (big) {
        lc[0].out = t[0].shape[0] = 2600;
        lc[0].in = t[0].shape[1] = 520;
        t[10].shape[0] = 3001;
        t[10].shape[1] = 1031;
    }
    lsl_writer *w = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = getenv("LSL_TEST_LOUD") == NULL; /* loud: the GPU tests check the gather path */
    /* several chunks per rank even for the small tensors */
    cfg.staging_bytes = big ? (uint64_t)3 << 20 : 4096;
    lsl_status st = create_writer(path, &cfg, &w);
    CHECK(st == LSL_OK, "create: %s", lsl_last_error());
    CHECK(lsl_writer_set_attr_all(w, "note", "hello") == LSL_OK, "attr");
    st = lsl_writer_define_all(w, nt, t);
    CHECK(st == LSL_OK, "define: %s", lsl_last_error());

    void *full[11] = {0}; /* every rank builds the whole inputs (small) to slice from */
    void *fullA[6] = {0}, *fullB[6] = {0};
    for (int i = 0; i < nt; i++) {
        uint64_t e = 1;
        for (int d = 0; d < t[i].ndim; d++)
            e *= t[i].shape[d];
        full[i] = calloc(e * esz(t[i].dtype) + 1, 1);
        if (t[i].dtype == LSL_I64 || t[i].dtype == LSL_U8) {
            for (uint64_t k = 0; k < e * esz(t[i].dtype); k++)
                ((unsigned char *)full[i])[k] = (unsigned char)(k * 31 + 7);
        } else {
            fill(t[i].dtype, full[i], e, 0.05, 100 + (uint64_t)i);
        }
    }
    for (int i = 0; i < nl; i++) {
        fullA[i] = malloc(lc[i].r * lc[i].in * esz(lc[i].a));
        fullB[i] = malloc(lc[i].out * lc[i].r * esz(lc[i].b));
        fill(lc[i].a, fullA[i], lc[i].r * lc[i].in, 0.3, 200 + (uint64_t)i);
        fill(lc[i].b, fullB[i], lc[i].out * lc[i].r, 0.02, 300 + (uint64_t)i);
    }
    /* Put in reverse order: any order is allowed as long as all ranks agree. */
    lsl_part parts[11];
    lsl_lora_part lps[11];
    uint64_t order[11];
    for (int i = nt - 1; i >= 0; i--) {
        uint64_t rows = t[i].ndim ? t[i].shape[0] : 1, rb = esz(t[i].dtype), r0, n;
        for (int d = 1; d < t[i].ndim; d++)
            rb *= t[i].shape[d];
        lsl_partition_rows(rows, size, rank, &r0, &n);
        lsl_part part = {r0, n, dev((unsigned char *)full[i] + r0 * rb, n * rb), MEM, NULL, NULL,
                         0,  0};
        lsl_lora_part *lp = &lps[i];
        void *ashard = NULL;
        if (i < nl) {
            const lcase *c = &lc[i];
            uint64_t a0, an, ae = esz(c->a);
            /* A in FSDP2's row shards, or whole on every rank (DDP): nothing gathered */
            if (!c->a_whole)
                lsl_partition_rows(c->r, size, rank, &a0, &an);
            else
                a0 = 0, an = c->r;
            ashard = (unsigned char *)fullA[i] + a0 * c->in * ae;
            *lp = (lsl_lora_part){
                .rank = c->r,
                .alpha = c->scaling * (double)c->r,
                .scaling = c->scaling,
                .a = {dev(ashard, an * c->in * ae), c->a, a0 * c->in, an * c->in, 0},
                .b = {dev((unsigned char *)fullB[i] + r0 * c->r * esz(c->b), n * c->r * esz(c->b)),
                      c->b, r0 * c->r, n * c->r, 0}};
            part.lora = lp;
        }
        parts[nt - 1 - i] = part;
        order[nt - 1 - i] = (uint64_t)i;
        if (batch)
            continue;
        st = lsl_writer_put_all(w, (uint64_t)i, &part);
        CHECK(st == LSL_OK, "put %s: %s", t[i].name, lsl_last_error());
    }
    if (batch) { /* tensors 10..5, then 4..0: each batch holds LoRA with A by rows and columns */
        st = lsl_writer_put_batch_all(w, 0, NULL, NULL);
        CHECK(st == LSL_OK, "empty batch: %s", lsl_last_error());
        st = lsl_writer_put_batch_all(w, 6, order, parts);
        CHECK(st == LSL_OK, "batch 1: %s", lsl_last_error());
        st = lsl_writer_put_batch_all(w, (uint64_t)nt - 6, order + 6, parts + 6);
        CHECK(st == LSL_OK, "batch 2: %s", lsl_last_error());
    }
    st = lsl_writer_close_all(&w);
    CHECK(st == LSL_OK && w == NULL, "close: %s", lsl_last_error());

    if (rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        CHECK(f >= 0, "reopen %s", path);
        for (int i = 0; f >= 0 && i < nt; i++) {
            uint64_t nb = 0;
            uint32_t crc = 0;
            void *got = read_ds(f, t[i].name, &nb, &crc);
            CHECK(got != NULL, "dataset %s missing", t[i].name);
            if (!got)
                continue;
            CHECK(crc == lsl_crc32c_extend(0, got, nb), "%s: crc32c attribute", t[i].name);
            if (i >= nl) {
                CHECK(memcmp(got, full[i], nb) == 0, "%s: copied bytes differ", t[i].name);
            } else {
                const lcase *c = &lc[i];
                uint64_t worst = 0, exact = 0, n = c->out * c->in;
                void *want = malloc(nb);
                double *ref = malloc(n * sizeof *ref), *bound = malloc(n * sizeof *bound);
                for (uint64_t o = 0; o < c->out; o++)
                    for (uint64_t k = 0; k < c->in; k++) {
                        double acc = 0, mag = 0, w0 = dec(c->w, full[i], o * c->in + k);
                        for (uint64_t j = 0; j < c->r; j++) {
                            double p = dec(c->b, fullB[i], o * c->r + j) *
                                       dec(c->a, fullA[i], j * c->in + k);
                            acc += p;
                            mag += fabs(p);
                        }
                        ref[o * c->in + k] = w0 + c->scaling * acc;
                        /* The forward error bound of an fp32 dot product, as check_merge.py
                         * --fp32-accumulation allows the GPU (it accumulates in fp32). */
                        bound[o * c->in + k] = (double)(c->r + 2) * ldexp(1.0, -24) *
                                               (fabs(w0) + fabs(c->scaling) * mag);
                        round_into(c->w, ref[o * c->in + k], want, o * c->in + k);
                    }
                for (uint64_t k = 0; k < n; k++) {
                    int64_t d = ordered(c->w, got, k) - ordered(c->w, want, k);
                    uint64_t ad = (uint64_t)(d < 0 ? -d : d);
#ifdef LSL_TEST_DEVICE
                    if (ad > 1 && fabs(dec(c->w, got, k) - ref[k]) <= bound[k])
                        ad = 1; /* near cancellation, within fp32 accumulation's bound */
#endif
                    worst = ad > worst ? ad : worst;
                    exact += ad == 0;
                }
                free(ref);
                free(bound);
                CHECK(worst <= 1, "%s: %llu ulp off", t[i].name, (unsigned long long)worst);
                CHECK(exact * 100 >= n * 99, "%s: only %llu/%llu exact", t[i].name,
                      (unsigned long long)exact, (unsigned long long)n);
                free(want);
            }
            free(got);
        }
        if (f >= 0)
            H5Fclose(f);
    }
    for (int i = 0; i < nt; i++)
        free(full[i]);
    for (int i = 0; i < nl; i++) {
        free(fullA[i]);
        free(fullB[i]);
    }
    lsl_check_report(
        big     ? "merge and copy, tensors of several MB"
        : batch ? "merge and copy in two batched puts (one gather of A each)"
                : "merge and copy: all shape classes, uneven and empty ranks, A by rows and "
                  "columns",
        before);
}

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static int leftover_tmp(void)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls -a %s | grep -q lsl-tmp", dir);
    return system(cmd) == 0;
}

/* fp32 factors as the model holds them: rows [a0, a0 + an) of A ([r, in]) and rows
 * [b0, b0 + bn) of B ([out, r]); alpha recorded as scaling * r. */
static lsl_lora_part lora_f32(uint64_t r, double scaling, uint64_t in, uint64_t a0, uint64_t an,
                              const void *a, uint64_t b0, uint64_t bn, const void *b)
{
    return (lsl_lora_part){.rank = r,
                           .alpha = scaling * (double)r,
                           .scaling = scaling,
                           .a = {a, LSL_F32, a0 * in, an * in, 0},
                           .b = {b, LSL_F32, b0 * r, bn * r, 0}};
}

/* One rank (the last) does something wrong in a put; everyone must fail alike, nobody hangs. */
static void test_error_agreement(void)
{
    int before = lsl_check_total();
    char path[600];
    snprintf(path, sizeof path, "%s/bad.h5", dir);
    lsl_tensor_info t[2] = {{"a", LSL_BF16, 2, {10, 4}}, {"b", LSL_F32, 1, {5}}};
    uint16_t data[40] = {0};
    struct {
        const char *what;
        lsl_status want;
    } cases[] = {{"bad row range", LSL_ERR_SHAPE},
                 {"NaN produced by the merge", LSL_ERR_NONFINITE},
                 {"close with a tensor never written", LSL_ERR_WRONG_STATE},
                 {"batched put whose A shards do not tile A", LSL_ERR_SHAPE},
                 {"batches of different lengths", LSL_ERR_INCONSISTENT},
                 /* each rank's A is its own FSDP row shard, but of a different r: with one GPU
                  * per rank this must not reach NCCL (it would hang on unequal counts) */
                 {"ranks disagree on r (put)", LSL_ERR_INCONSISTENT},
                 {"ranks disagree on r (batch)", LSL_ERR_INCONSISTENT}};
    for (int c = 0; c < (size > 1 ? 7 : 4); c++) { /* one rank cannot disagree with itself */
        lsl_writer *w = NULL;
        lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
        cfg.quiet = 1;
        lsl_status st = create_writer(path, &cfg, &w);
        if (st == LSL_OK)
            st = lsl_writer_define_all(w, 2, t);
        CHECK(st == LSL_OK, "setup: %s", lsl_last_error());
        uint64_t r0, n;
        lsl_partition_rows(10, size, rank, &r0, &n);
        lsl_part p = {r0, n, dev(data + r0 * 4, n * 8), MEM, NULL, NULL, 0, 0};
        float a[4] = {1, 1, 1, 1}, b[10] = {10, 10, 10, 10, 10, 10, 10, 10, 10, 10};
        lsl_lora_part lp =
            lora_f32(1, 1e38, 4, 0, rank == 0 ? 1 : 0, dev(a, 16), r0, n, dev(b + r0, n * 4));
        if (c == 0 && rank == size - 1)
            p.row0 += 1; /* wrong place: the parts no longer tile the rows */
        if (c == 1)
            p.lora =
                &lp; /* a huge scaling: the product overflows to inf on the rank(s) with rows */
        if (c >= 5) {
            uint64_t rr = rank == size - 1 ? 3 : 2, a0, an, idx0 = 0;
            float a3[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, b3[30] = {0};
            lsl_partition_rows(rr, size, rank, &a0, &an);
            lsl_lora_part l3 = lora_f32(rr, 1, 4, a0, an, dev(a3 + a0 * 4, an * 16), r0, n,
                                        dev(b3 + r0 * rr, n * rr * 4));
            p.lora = &l3;
            st = c == 5 ? lsl_writer_put_all(w, 0, &p) : lsl_writer_put_batch_all(w, 1, &idx0, &p);
            CHECK(st == cases[c].want, "%s: returned %s (%s)", cases[c].what, lsl_status_name(st),
                  lsl_last_error());
            lsl_writer_abort_all(&w);
            CHECK(w == NULL, "%s: abort", cases[c].what);
        } else if (c >= 3) {
            float a2[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b2[20] = {0}, v[5] = {0};
            uint64_t a0, an, v0, vn, idx[2] = {0, 1};
            lsl_partition_rows(2, size, rank, &a0, &an);
            lsl_partition_rows(5, size, rank, &v0, &vn);
            /* in case 3 rank 0's rows of A start one row late */
            lsl_lora_part l2 = lora_f32(2, 1, 4, a0 + (c == 3 && rank == 0), an,
                                        dev(a2 + a0 * 4, an * 16), r0, n, dev(b2 + r0 * 2, n * 8));
            lsl_part bp[2] = {p, {v0, vn, dev(v + v0, vn * 4), MEM, NULL, NULL, 0, 0}};
            bp[0].lora = &l2;
            uint64_t nb = c == 4 && rank == size - 1 ? 1 : 2;
            st = lsl_writer_put_batch_all(w, nb, idx, bp);
            CHECK(st == cases[c].want, "%s: batch returned %s (%s)", cases[c].what,
                  lsl_status_name(st), lsl_last_error());
            lsl_writer_abort_all(&w);
            CHECK(w == NULL, "%s: abort", cases[c].what);
        } else if (c != 2) {
            st = lsl_writer_put_all(w, 0, &p);
            CHECK(st == cases[c].want, "%s: put returned %s (%s)", cases[c].what,
                  lsl_status_name(st), lsl_last_error());
            st = lsl_writer_close_all(&w);
            CHECK(st != LSL_OK && w == NULL, "%s: close after failure", cases[c].what);
        } else {
            st = lsl_writer_put_all(w, 0, &p);
            CHECK(st == LSL_OK, "put: %s", lsl_last_error());
            st = lsl_writer_close_all(&w);
            CHECK(st == cases[c].want, "%s: close returned %s (%s)", cases[c].what,
                  lsl_status_name(st), lsl_last_error());
            CHECK(strstr(lsl_last_error(), "`b`") != NULL, "message names the tensor: %s",
                  lsl_last_error());
        }
        /* every rank holds the same message */
        char mine[1024], first[1024];
        snprintf(mine, sizeof mine, "%s", lsl_last_error());
        memcpy(first, mine, sizeof first);
        MPI_Bcast(first, sizeof first, MPI_CHAR, 0, MPI_COMM_WORLD);
        CHECK(strcmp(mine, first) == 0, "messages differ: \"%s\" vs \"%s\"", mine, first);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) {
            CHECK(!file_exists(path), "%s: a file was left at %s", cases[c].what, path);
            CHECK(!leftover_tmp(), "%s: a temporary file was left in %s", cases[c].what, dir);
        }
        lsl_check_report(cases[c].what, before);
    }
}

static void test_define_checks(void)
{
    int before = lsl_check_total();
    char path[600];
    snprintf(path, sizeof path, "%s/def.h5", dir);
    lsl_writer *w = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = 1;
    /* ranks disagreeing on the tensor list */
    lsl_tensor_info t = {"x", LSL_F32, 1, {(uint64_t)(size > 1 ? 4 + rank : 4)}};
    lsl_status st = create_writer(path, &cfg, &w);
    CHECK(st == LSL_OK, "create: %s", lsl_last_error());
    st = lsl_writer_define_all(w, 1, &t);
    if (size > 1)
        CHECK(st == LSL_ERR_INCONSISTENT, "define returned %s", lsl_status_name(st));
    lsl_writer_abort_all(&w);
    CHECK(w == NULL, "abort sets NULL");
    /* names HDF5 cannot hold, duplicates, sub-byte dtypes */
    lsl_tensor_info bad[3][2] = {{{"a/b", LSL_F32, 1, {1}}, {"c", LSL_F32, 1, {1}}},
                                 {{"a", LSL_F32, 1, {1}}, {"a", LSL_F32, 1, {1}}},
                                 {{"a", LSL_F4, 1, {2}}, {"c", LSL_F32, 1, {1}}}};
    lsl_status want[3] = {LSL_ERR_INVALID_ARG, LSL_ERR_INVALID_ARG, LSL_ERR_DTYPE};
    for (int i = 0; i < 3; i++) {
        st = create_writer(path, &cfg, &w);
        st = st ? st : lsl_writer_define_all(w, 2, bad[i]);
        CHECK(st == want[i], "bad list %d: %s (%s)", i, lsl_status_name(st), lsl_last_error());
        lsl_writer_abort_all(&w);
    }
    /* an existing output is kept unless overwrite is asked for */
    if (rank == 0) {
        FILE *f = fopen(path, "w");
        fputs("precious", f);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    st = create_writer(path, &cfg, &w);
    CHECK(st == LSL_ERR_EXISTS && w == NULL, "existing output: %s", lsl_status_name(st));
    cfg.overwrite = 1;
    lsl_tensor_info ok = {"x", LSL_F32, 1, {3}};
    float v[3] = {1, 2, 3};
    st = create_writer(path, &cfg, &w);
    st = st ? st : lsl_writer_define_all(w, 1, &ok);
    uint64_t r0, n;
    lsl_partition_rows(3, size, rank, &r0, &n);
    lsl_part p = {r0, n, v + r0, LSL_MEM_HOST, NULL, NULL, 0, 0};
    st = st ? st : lsl_writer_put_all(w, 0, &p);
    st = st ? st : lsl_writer_close_all(&w);
    CHECK(st == LSL_OK, "overwrite: %s", lsl_last_error());
    if (rank == 0) {
        struct stat sb;
        CHECK(stat(path, &sb) == 0 && sb.st_size > 100, "overwritten file");
    }
    /* a LoRA flag bit the API does not define (the library's internal ones included) */
    float a1[3] = {1, 1, 1}, b1[3] = {1, 1, 1};
    lsl_lora_part odd = lora_f32(1, 1, 1, 0, rank == 0, a1, r0, n, b1 + r0);
    odd.flags = 0x80000000u;
    p.lora = &odd;
    st = create_writer(path, &cfg, &w);
    st = st ? st : lsl_writer_define_all(w, 1, &ok);
    st = st ? st : lsl_writer_put_all(w, 0, &p);
    CHECK(st == LSL_ERR_INVALID_ARG && strstr(lsl_last_error(), "flags"), "unknown flags: %s %s",
          lsl_status_name(st), lsl_last_error());
    lsl_writer_abort_all(&w);
    /* the same through a batch, with the internal "A already on the GPU" bit */
    odd.flags = 0x40000000u;
    uint64_t idx0 = 0;
    st = create_writer(path, &cfg, &w);
    st = st ? st : lsl_writer_define_all(w, 1, &ok);
    st = st ? st : lsl_writer_put_batch_all(w, 1, &idx0, &p);
    CHECK(st == LSL_ERR_INVALID_ARG && strstr(lsl_last_error(), "flags"),
          "unknown flags in a batch: %s %s", lsl_status_name(st), lsl_last_error());
    lsl_writer_abort_all(&w);
    /* unwritable directory */
    st = create_writer("/proc/loraslab-test/x.h5", &cfg, &w);
    CHECK(st == LSL_ERR_IO && strstr(lsl_last_error(), "/proc/loraslab-test"),
          "unwritable dir: %s %s", lsl_status_name(st), lsl_last_error());
    lsl_check_report("define and create checks (inconsistent lists, bad names, existing output)",
                     before);
}

/* One tensor of four floats, in each rank's rows, then close: a writer's whole life. */
static void write_four_floats(lsl_writer **w)
{
    lsl_tensor_info t = {"x", LSL_F32, 1, {4}};
    float v[4] = {1, 2, 3, 4};
    uint64_t r0, nr;
    lsl_partition_rows(4, size, rank, &r0, &nr);
    lsl_part part = {r0, nr, v + r0, LSL_MEM_HOST, NULL, NULL, 0, 0};
    CHECK(lsl_writer_define_all(*w, 1, &t) == LSL_OK, "define: %s", lsl_last_error());
    CHECK(lsl_writer_put_all(*w, 0, &part) == LSL_OK, "put: %s", lsl_last_error());
    CHECK(lsl_writer_close_all(w) == LSL_OK, "close: %s", lsl_last_error());
}

/* The writer's own communicator returns MPI errors as codes (they become agreed statuses) instead
 * of aborting the job; creating and closing a writer leaves the umask alone. */
static void test_own_comm(void)
{
    int before = lsl_check_total();
    char path[700];
    snprintf(path, sizeof path, "%s/own-comm.h5", dir);
    lsl_writer *w = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = 1;
    umask_calls = 0;
    lsl_status st = create_writer(path, &cfg, &w);
    CHECK(st == LSL_OK, "create: %s", lsl_last_error());
    if (w) {
        MPI_Errhandler eh = MPI_ERRHANDLER_NULL;
        MPI_Comm_get_errhandler(lsl_i_writer_comm(w), &eh);
        CHECK(eh == MPI_ERRORS_RETURN, "the writer's communicator does not return MPI errors");
        if (eh != MPI_ERRHANDLER_NULL)
            MPI_Errhandler_free(&eh);
        write_four_floats(&w);
    }
    CHECK(umask_calls == 0, "the writer called umask() %d times", umask_calls);
    lsl_check_report("own communicator with MPI_ERRORS_RETURN, umask untouched", before);
}

/* The handle and the config's size: a handle refuses what it cannot use before any collective;
 * a config with size 0 or larger than the library's is refused on every rank, nothing created;
 * an older caller's shorter config (here: the fields before `format`) works, its missing fields
 * taking their defaults. */
static void test_handles_and_sizes(void)
{
    int before = lsl_check_total();
    lsl_comm *c = NULL;
    lsl_comm_ops ops = lsl_test_cb_ops;
    ops.barrier = NULL;
    CHECK(lsl_comm_from_ops(&ops, NULL, 0, 1, &c) == LSL_ERR_INVALID_ARG && !c,
          "a NULL callback was accepted");
    CHECK(lsl_comm_from_ops(&lsl_test_cb_ops, NULL, 2, 2, &c) == LSL_ERR_INVALID_ARG && !c,
          "rank 2 of 2 was accepted");
    CHECK(lsl_comm_from_mpi(MPI_COMM_NULL, &c) == LSL_ERR_INVALID_ARG && !c,
          "MPI_COMM_NULL was accepted");
    CHECK(lsl_writer_create_all(NULL, "x.h5", NULL, NULL) == LSL_ERR_INVALID_ARG,
          "a NULL handle was accepted");
    CHECK(lsl_comm_from_mpi(MPI_COMM_WORLD, &c) == LSL_OK && lsl_comm_rank(c) == rank &&
              lsl_comm_size(c) == size,
          "the world's handle: %s", lsl_last_error());
    char path[700];
    snprintf(path, sizeof path, "%s/config-size.h5", dir);
    lsl_writer *w = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = 1;
    size_t sizes[] = {0, sizeof cfg + 8};
    for (int i = 0; i < 2; i++) {
        cfg.size = sizes[i];
        lsl_status st = lsl_writer_create_all(c, path, &cfg, &w);
        CHECK(st == LSL_ERR_INVALID_ARG && !w && strstr(lsl_last_error(), "cfg->size"),
              "cfg.size %zu: %s (%s)", sizes[i], lsl_status_name(st), lsl_last_error());
        CHECK(!file_exists(path) && !leftover_tmp(), "cfg.size %zu left output", sizes[i]);
    }
    /* an older caller: its struct ended before `format`; whatever lies beyond is not read */
    cfg.size = offsetof(lsl_writer_config, format);
    cfg.format = 77;
    cfg.max_shard_bytes = 1;
    lsl_status st = lsl_writer_create_all(c, path, &cfg, &w);
    CHECK(st == LSL_OK, "a shorter config: %s (%s)", lsl_status_name(st), lsl_last_error());
    if (st == LSL_OK) {
        write_four_floats(&w);
        CHECK(file_exists(path), "the file (HDF5 by its name) is missing");
    }
    lsl_comm_free(&c);
    CHECK(!c, "lsl_comm_free left the handle");
    lsl_comm_free(&c); /* NULL: a no-op */
    lsl_check_report("communicator handles and config sizes", before);
}

/* lsl_set_log: the library's lines go to the caller's sink, whole and without their newline;
 * NULL restores stderr. */
struct log_seen {
    int lines, warn, named, newline, longest;
    const char *path;
};
static void log_sink(int level, const char *line, void *ctx)
{
    struct log_seen *s = ctx;
    size_t n = strlen(line);
    s->lines++;
    s->warn += level == LSL_LOG_WARN;
    s->named += strstr(line, s->path) != NULL;
    s->newline += n && line[n - 1] == '\n';
    s->longest = (int)n > s->longest ? (int)n : s->longest;
}

static void test_log_sink(void)
{
    int before = lsl_check_total();
    char path[700];
    snprintf(path, sizeof path, "%s/log-sink.h5", dir);
    struct log_seen seen = {0, 0, 0, 0, 0, path};
    lsl_set_log(log_sink, &seen);
    lsl_writer *w = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = LSL_PROGRESS_TEXT;
    lsl_status st = create_writer(path, &cfg, &w);
    lsl_tensor_info t = {"x", LSL_F32, 1, {4}};
    float v[4] = {1, 2, 3, 4};
    uint64_t r0, nr;
    lsl_partition_rows(4, size, rank, &r0, &nr);
    lsl_part part = {r0, nr, v + r0, LSL_MEM_HOST, NULL, NULL, 0, 0};
    if (st == LSL_OK)
        st = lsl_writer_define_all(w, 1, &t);
    if (st == LSL_OK)
        st = lsl_writer_put_all(w, 0, &part);
    if (st == LSL_OK)
        st = lsl_writer_close_all(&w);
    else
        lsl_writer_abort_all(&w);
    CHECK(st == LSL_OK, "write: %s", lsl_last_error());
    char big[3000];
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    lsl_i_log(LSL_LOG_WARN, "%s\n", big); /* longer than the sink's stack buffer */
    lsl_set_log(NULL, NULL);
    int lines = seen.lines;
    lsl_i_log(LSL_LOG_INFO, "loraslab: test_log_sink: this line goes to stderr\n");
    CHECK(seen.lines == lines, "the sink was called after lsl_set_log(NULL)");
    CHECK(seen.longest == (int)sizeof big - 1, "a long line reached the sink as %d bytes",
          seen.longest);
    CHECK(seen.warn == 1 && seen.newline == 0, "%d warnings, %d lines with a newline", seen.warn,
          seen.newline);
    if (rank == 0) /* the writer's lines (rank 0 speaks): what it writes, progress, done */
        CHECK(seen.lines >= 3 && seen.named >= 1, "rank 0's sink saw %d lines, %d naming %s",
              seen.lines, seen.named, path);
    else
        CHECK(seen.lines == 1, "rank %d's sink saw %d lines (only rank 0 reports)", rank,
              seen.lines);
    lsl_check_report(
        "lsl_set_log: every line to the sink, whole, without its newline; NULL restores stderr",
        before);
}

/* The MPI-IO hints the writer opens its file with, from its I/O plan: the two-phase buffer is
 * capped (OMPIO would take 32 MiB of host memory per aggregator) at a multiple of the stripe
 * size; on Lustre small pieces get collective buffering with one aggregator per stripe spread
 * over the nodes, large ones none; LSL_MPIIO_HINTS overrides any of it. */
static void test_hints(void)
{
    struct {
        const char *fs;
        uint64_t stripe, count, total, ntensors;
        int ranks, nodes;
        const char *extra, *key, *want;
    } c[] = {
        {"ext4", 0, 0, 1 << 20, 1, 2, 1, NULL, "cb_buffer_size", "8388608"},
        {"ext4", 0, 0, 1 << 20, 1, 2, 1, NULL, "romio_cb_write", "disable"},
        {"lustre", 3 << 20, 4, 1 << 30, 1, 4, 1, NULL, "cb_buffer_size", "9437184"},
        {"lustre", 16 << 20, 4, 1 << 30, 1, 4, 1, NULL, "cb_buffer_size", "16777216"},
        {"ext4", 0, 0, 1 << 20, 1, 2, 1, "cb_buffer_size=1048576;romio_cb_write=enable",
         "cb_buffer_size", "1048576"},
        /* 64 ranks on 8 nodes, 1 MiB pieces, 16 stripes: 16 aggregators, 2 per node */
        {"lustre", 1 << 20, 16, 1ull << 30, 16, 64, 8, NULL, "romio_cb_write", "enable"},
        {"lustre", 1 << 20, 16, 1ull << 30, 16, 64, 8, NULL, "cb_nodes", "16"},
        {"lustre", 1 << 20, 16, 1ull << 30, 16, 64, 8, NULL, "cb_config_list", "*:2"},
        {"lustre", 1 << 20, 16, 1ull << 30, 16, 64, 8, NULL, "striping_unit", "1048576"},
        /* 4 ranks, 64 MiB pieces: each writes its own */
        {"lustre", 1 << 20, 16, 1ull << 30, 4, 4, 1, NULL, "romio_cb_write", "disable"},
        {"gpfs", 16 << 20, 0, 1ull << 30, 4, 4, 1, NULL, "IBM_largeblock_io", "true"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        lsl_i_fsinfo fs = {0};
        uint32_t magic = strcmp(c[i].fs, "lustre") == 0 ? 0x0BD00BD0u
                         : strcmp(c[i].fs, "gpfs") == 0 ? 0x47504653u
                                                        : 0xEF53u;
        lsl_i_fs_classify(magic, c[i].stripe, NULL, 0, &fs);
        if (magic == 0x0BD00BD0u) { /* a directory layout chosen on purpose */
            fs.stripe_size = c[i].stripe;
            fs.stripe_count = c[i].count;
            fs.dir_layout = LSL_I_LAYOUT_PLAIN;
        }
        lsl_i_ioplan_in in = {c[i].total, c[i].ntensors, c[i].ranks, c[i].nodes, 0, 0, 0, 0};
        lsl_i_ioplan plan;
        lsl_i_ioplan_make(&fs, &in, &plan);
        MPI_Info info = MPI_INFO_NULL;
        char v[64] = "";
        int flag = 0;
        CHECK(lsl_i_ioplan_hints(&plan, c[i].extra, &info) == LSL_OK, "hints %zu: %s", i,
              lsl_last_error());
        if (info != MPI_INFO_NULL) {
            MPI_Info_get(info, c[i].key, (int)sizeof v - 1, v, &flag);
            MPI_Info_free(&info);
        }
        CHECK(flag && strcmp(v, c[i].want) == 0, "hints %zu: %s \"%s\", want %s", i, c[i].key, v,
              c[i].want);
    }
}

/* The ranks' element cuts of a tensor of e elements, the same on every rank (sorted draws
 * from seed): cut[k] is rank k's first element, cut[size] = e.  inside: the inner cuts all fall
 * in [inside, inside + 7 * size) (several ranks within one row) when nonzero; empty0: rank 0
 * holds nothing. */
static void elem_cuts(uint64_t seed, uint64_t e, uint64_t inside, int empty0, uint64_t cut[9])
{
    memset(cut, 0, 9 * sizeof *cut);
    for (int k = 1; k < size; k++)
        cut[k] =
            inside ? inside + 7 * (uint64_t)k : (uint64_t)(rnd(&seed) * (double)(e + 1)) % (e + 1);
    for (int a = 1; a < size; a++) /* insertion sort */
        for (int b = a; b > 1 && cut[b - 1] > cut[b]; b--) {
            uint64_t x = cut[b];
            cut[b] = cut[b - 1];
            cut[b - 1] = x;
        }
    if (empty0 && size > 1)
        cut[1] = 0;
    cut[size] = e;
}

/* Rank 0: whether two files hold the same bytes. */
static int same_bytes(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF || cb == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

#ifdef LSL_TEST_DEVICE
#define NMEM 2 /* each file from device parts, then from host parts: the same bytes */
#else
#define NMEM 1
#endif

/* DoRA on element-range parts (FSDP1 pieces split mid-row).  By rows, a row shared by two or
 * more ranks takes its norm from every holder's elements; down the columns (fan_in_fan_out),
 * each rank's column sums count only its own elements.  Random cuts, cuts that leave several
 * ranks inside one row, and an empty rank 0; the values must match the row-part file's within
 * one ulp (the sums of squares are added in another order).  In the GPU build the parts are
 * device memory (merged on the CPU), and each file must equal the host parts' file. */
static void test_elems_dora(int bycol)
{
    int before = lsl_check_total();
    lsl_tensor_info t = {"d.bf16", LSL_BF16, 2, {29, 40}};
    const uint64_t rows = 29, cols = 40, e = rows * cols, r = 4;
    uint16_t *w0 = malloc(e * 2);
    float *A = malloc(r * cols * 4), *B = malloc(rows * r * 4), *mag = malloc(cols * 4);
    float *At = malloc(cols * r * 4), *Bt = malloc(r * rows * 4);
    fill(LSL_BF16, w0, e, 0.05, 71);
    fill(LSL_F32, A, r * cols, 0.1, 72);
    fill(LSL_F32, B, rows * r, 0.1, 73);
    for (uint64_t i = 0; i < r; i++) { /* the transposed delta's factors */
        for (uint64_t j = 0; j < cols; j++)
            At[j * r + i] = A[i * cols + j];
        for (uint64_t j = 0; j < rows; j++)
            Bt[i * rows + j] = B[j * r + i];
    }
    for (uint64_t i = 0; i < cols; i++) /* rows' magnitudes, or every column's */
        mag[i] = 0.5f + 0.01f * (float)i;
    int worst = 0;
    for (int trial = 0; trial < 4; trial++) {
        char pe[NMEM][600], pr[NMEM][600];
        const char *kind = bycol ? "cols" : "rows";
        for (int k = 0; k < NMEM; k++) { /* k = 1: host parts */
            snprintf(pe[k], sizeof pe[k], "%s/dora-%s-elems-%d%s.h5", dir, kind, trial,
                     k ? "-host" : "");
            snprintf(pr[k], sizeof pr[k], "%s/dora-%s-rows%s.h5", dir, kind, k ? "-host" : "");
        }
        for (int pass = 0; pass < 2 * NMEM; pass++) { /* even: element parts, odd: row parts */
            int rowp = pass % 2, host = pass / 2;
            lsl_memspace mem = host ? LSL_MEM_HOST : MEM;
#define ON(p, n) (host ? (const void *)(p) : dev((p), (n)))
            if (rowp && trial > 0)
                continue; /* the row parts' file once */
            lsl_writer *w = NULL;
            lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
            cfg.quiet = 1;
            cfg.staging_bytes = 4096;
            lsl_status st = create_writer(rowp ? pr[host] : pe[host], &cfg, &w);
            if (st == LSL_OK)
                st = lsl_writer_define_all(w, 1, &t);
            uint64_t cut[9]; /* trial 2: the inner cuts all inside row 5; trial 3: rank 0 empty */
            elem_cuts(17 * (uint64_t)trial + 5, e, trial == 2 ? 5 * cols + 3 : 0, trial == 3, cut);
            uint64_t e0 = cut[rank], ne = cut[rank + 1] - cut[rank], r0 = e0 / cols;
            uint64_t nt = ne ? (e0 + ne + cols - 1) / cols - r0 : 0, ra0, ran, q0, qn;
            lsl_partition_rows(r, size, rank, &ra0, &ran);
            lsl_partition_rows(rows, size, rank, &q0, &qn);
            uint64_t b0 = rowp ? q0 : r0, bn = rowp ? qn : nt;
            /* the factors as FSDP holds them: A's and B's rows split as FSDP2 would, so an
             * element part's B rows come from the put's gather */
            lsl_lora_part lp = lora_f32(r, 0.75, cols, ra0, ran, ON(A + ra0 * cols, ran * cols * 4),
                                        q0, qn, ON(B + q0 * r, qn * r * 4));
            (void)b0, (void)bn;
            if (bycol) { /* W = (B' @ A')^T with A' = B^T, B' = A^T, every rank holding them whole,
                            and every column's magnitude: the same delta, its norm down the
                            columns */
                lp.a = (lsl_factor){ON(Bt, rows * r * 4), LSL_F32, 0, r * rows, 0};
                lp.b = (lsl_factor){ON(At, cols * r * 4), LSL_F32, 0, cols * r, 0};
                lp.magnitude = (lsl_factor){ON(mag, cols * 4), LSL_F32, 0, cols, 0};
                lp.flags = LSL_LORA_TRANSPOSED;
            } else { /* the rows' magnitudes split as B's rows */
                lp.magnitude = (lsl_factor){qn ? ON(mag + q0, qn * 4) : NULL, LSL_F32, q0, qn, 0};
            }
            if (st == LSL_OK && !rowp) {
                lsl_elem_part ep = {e0, ne, ON(w0 + e0, ne * 2), mem, NULL, &lp};
                st = lsl_writer_put_elems_all(w, 0, &ep);
            } else if (st == LSL_OK) {
                lsl_part p = {q0, qn, ON(w0 + q0 * cols, qn * cols * 2), mem, NULL, &lp, 0, 0};
                st = lsl_writer_put_all(w, 0, &p);
            }
#undef ON
            CHECK(st == LSL_OK, "DoRA trial %d %s put: %s", trial, rowp ? "row" : "element",
                  lsl_last_error());
            if (st == LSL_OK)
                st = lsl_writer_close_all(&w);
            else
                lsl_writer_abort_all(&w);
            CHECK(st == LSL_OK, "DoRA close: %s", lsl_last_error());
        }
        if (rank != 0)
            continue;
        for (int k = 1; k < NMEM; k++) {
            CHECK(same_bytes(pe[0], pe[k]),
                  "DoRA trial %d: device and host element parts "
                  "wrote other bytes",
                  trial);
            CHECK(trial > 0 || same_bytes(pr[0], pr[k]),
                  "DoRA: device and host row parts wrote other bytes");
        }
        hid_t fe = H5Fopen(pe[0], H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t fr = H5Fopen(pr[0], H5F_ACC_RDONLY, H5P_DEFAULT);
        uint64_t ne_ = 0, nr_ = 0;
        uint32_t ce = 0, cr = 0;
        uint16_t *ve = fe >= 0 ? read_ds(fe, t.name, &ne_, &ce) : NULL;
        uint16_t *vr = fr >= 0 ? read_ds(fr, t.name, &nr_, &cr) : NULL;
        CHECK(ve && vr && ne_ == e * 2 && nr_ == e * 2, "DoRA trial %d: files unreadable", trial);
        for (uint64_t k = 0; ve && vr && ne_ == nr_ && k < e; k++) {
            int d = abs((int)(int16_t)ve[k] - (int)(int16_t)vr[k]);
            worst = d > worst ? d : worst;
        }
        free(ve);
        free(vr);
        if (fe >= 0)
            H5Fclose(fe);
        if (fr >= 0)
            H5Fclose(fr);
    }
    if (rank == 0)
        CHECK(worst <= 1, "DoRA (%s) on element parts: %d ulp from the row parts' file",
              bycol ? "columns" : "rows", worst);
    free(w0);
    free(A);
    free(B);
    free(At);
    free(Bt);
    free(mag);
    lsl_check_report(
        bycol ? "DoRA down the columns (fan_in_fan_out) on element ranges split mid-row"
              : "DoRA by rows on element ranges split mid-row (norms of shared rows across "
                "ranks)",
        before);
}

/* The factors as a model may hold them give the same file: FSDP2's row shards, whole on every
 * rank (DDP), element ranges cut anywhere (FSDP1's pieces), and a transposed delta's factors
 * (A' = B^T, B' = A^T, LSL_LORA_TRANSPOSED) in element ranges; single and batched puts.  Then
 * a lora_B whose ranges leave a hole, and ranks that disagree on lora_A's dtype: every rank
 * fails, naming the factor.  In the GPU build the factors are device memory. */
static void test_factor_layouts(void)
{
    int before = lsl_check_total();
    enum { OUT = 13, IN = 10, R = 3, NP = 7 };
    lsl_tensor_info t[2] = {{"w", LSL_BF16, 2, {OUT, IN}}, {"p", LSL_F32, 1, {NP}}};
    uint16_t w0[OUT * IN];
    float A[R * IN], B[OUT * R], At[IN * R], Bt[R * OUT], pv[NP];
    fill(LSL_BF16, w0, OUT * IN, 0.05, 501);
    fill(LSL_F32, A, R * IN, 0.2, 502);
    fill(LSL_F32, B, OUT * R, 0.1, 503);
    fill(LSL_F32, pv, NP, 1.0, 504);
    for (int i = 0; i < R; i++) {
        for (int j = 0; j < IN; j++)
            At[j * R + i] = A[i * IN + j];
        for (int j = 0; j < OUT; j++)
            Bt[i * OUT + j] = B[j * R + i];
    }
    uint64_t r0, nr, p0, pn, a0, an, idx[2] = {0, 1};
    lsl_partition_rows(OUT, size, rank, &r0, &nr);
    lsl_partition_rows(NP, size, rank, &p0, &pn);
    lsl_partition_rows(R, size, rank, &a0, &an);
    static const char *what[] = {"FSDP2 row shards", "whole on every rank",
                                 "element ranges",   "transposed, element ranges",
                                 "a hole in lora_B", "lora_A's dtype differs"};
    char path[4][600];
    for (int k = 0; k < 6; k++) {
        if (k == 5 && size == 1)
            continue; /* one rank cannot disagree with itself */
        char p[600];
        snprintf(p, sizeof p, "%s/factors-%d.h5", dir, k);
        if (k < 4)
            memcpy(path[k], p, sizeof p);
        const float *fa = k == 3 ? Bt : A, *fb = k == 3 ? At : B;
        uint64_t na = R * (k == 3 ? OUT : IN), nb = (k == 3 ? IN : OUT) * R, ca[9], cb[9];
        uint64_t ae = a0 * IN, an_ = an * IN, be = r0 * R, bn = nr * R;
        if (k == 1)
            ae = 0, an_ = na, be = 0, bn = nb;
        if (k == 2 || k == 3) { /* the same random cuts on every rank */
            elem_cuts(601 + (uint64_t)k, na, 0, k == 3, ca);
            elem_cuts(701 + (uint64_t)k, nb, 0, 0, cb);
            ae = ca[rank], an_ = ca[rank + 1] - ca[rank];
            be = cb[rank], bn = cb[rank + 1] - cb[rank];
        }
        if (k == 4 && rank == 0) /* rank 0's B starts one element late: element 0 is nobody's */
            be = 1, bn -= 1;
        lsl_lora_part lp = {.rank = R,
                            .alpha = 1.5,
                            .scaling = 0.5,
                            .a = {an_ ? dev(fa + ae, an_ * 4) : NULL, LSL_F32, ae, an_, 0},
                            .b = {bn ? dev(fb + be, bn * 4) : NULL, LSL_F32, be, bn, 0},
                            .flags = k == 3 ? LSL_LORA_TRANSPOSED : 0};
        if (k == 5 && rank == 0)
            lp.a.dtype = LSL_BF16;
        lsl_part parts[2] = {{r0, nr, dev(w0 + r0 * IN, nr * IN * 2), MEM, NULL, &lp, 0, 0},
                             {p0, pn, dev(pv + p0, pn * 4), MEM, NULL, NULL, 0, 0}};
        lsl_writer *w = NULL;
        lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
        cfg.quiet = 1;
        lsl_status st = create_writer(p, &cfg, &w);
        if (st == LSL_OK)
            st = lsl_writer_define_all(w, 2, t);
        if (st == LSL_OK && k % 2) {
            st = lsl_writer_put_batch_all(w, 2, idx, parts);
        } else if (st == LSL_OK) {
            st = lsl_writer_put_all(w, 0, &parts[0]);
            if (st == LSL_OK)
                st = lsl_writer_put_all(w, 1, &parts[1]);
        }
        if (k < 4) {
            CHECK(st == LSL_OK, "factors %s: %s", what[k], lsl_last_error());
            st = st == LSL_OK ? lsl_writer_close_all(&w) : st;
            CHECK(st == LSL_OK, "factors %s: close: %s", what[k], lsl_last_error());
        } else {
            lsl_status want = k == 4 ? LSL_ERR_SHAPE : LSL_ERR_INCONSISTENT;
            const char *name = k == 4 ? "lora_B" : "lora_A";
            CHECK(st == want && strstr(lsl_last_error(), name) && strstr(lsl_last_error(), "`w`"),
                  "%s: returned %s (%s)", what[k], lsl_status_name(st), lsl_last_error());
            lsl_writer_abort_all(&w);
            CHECK(w == NULL && !file_exists(p), "%s: output left behind", what[k]);
        }
    }
    if (rank == 0)
        for (int k = 1; k < 4; k++)
            CHECK(same_bytes(path[0], path[k]), "factors %s: other bytes than FSDP2 row shards",
                  what[k]);
    lsl_check_report("LoRA factors as held (row shards, whole, element ranges, transposed) give "
                     "the same file; a hole or a dtype disagreement fails everywhere by name",
                     before);
}

/* Parts of columns (FSDP2's Shard(1), tensor parallelism): the ranks' blocks of each tensor, in
 * any arrangement, give the file row parts give, byte for byte, HDF5 and directory alike; LoRA
 * factors held as Shard(1) column blocks (passed transposed), whole, or in element ranges; a
 * transposed delta (Conv1D) and PEFT's Embedding rule on blocks; a tensor copied unchanged.
 * An overlap or a hole fails every rank naming the tensor, DoRA on blocks is refused by name,
 * and nothing is left behind. */
static void block_of(int k, int rk, uint64_t rows, uint64_t cols, uint64_t seed, uint64_t *r0,
                     uint64_t *nr, uint64_t *c0, uint64_t *nc)
{
    uint64_t cut[9];
    *r0 = 0, *nr = rows, *c0 = 0, *nc = cols;
    if (k == 0) { /* row parts: the reference */
        lsl_partition_rows(rows, size, rk, r0, nr);
        *nc = 0;
    } else if (k == 8) { /* row parts: DoRA's reference */
        lsl_partition_rows(rows, size, rk, r0, nr);
        *nc = 0;
    } else if (k == 1 || k == 4 || k == 5) { /* every row, random column cuts (empty ones too) */
        elem_cuts(seed, cols, 0, 0, cut);
        *c0 = cut[rk], *nc = cut[rk + 1] - cut[rk];
    } else if (k == 2) { /* column blocks in reverse rank order */
        lsl_partition_rows(cols, size, size - 1 - rk, c0, nc);
    } else if (k == 6) { /* row parts in reverse rank order (FSDP2 over TP: _StridedShard) */
        lsl_partition_rows(rows, size, size - 1 - rk, r0, nr);
        *nc = 0;
    } else if (k == 7) { /* a grid (2 x 2 at 4 ranks, 1 x size else) at random cuts, ranks
                          * down its columns first: blocks of one element on a small tensor */
        uint64_t gr = size == 4 ? 2 : 1, gc = (uint64_t)size / gr, i = (uint64_t)rk % gr;
        uint64_t j = (uint64_t)rk / gr,
                 rc = gr == 2 ? (uint64_t)(rnd(&seed) * 7.0 + 7.0) % (rows + 1) : rows;
        uint64_t cc[5] = {0};
        for (uint64_t q = 1; q < gc; q++)
            cc[q] = (uint64_t)(rnd(&seed) * 9.0 + 9.0) % (cols + 1);
        for (uint64_t a = 1; a < gc; a++) /* insertion sort */
            for (uint64_t b = a; b > 1 && cc[b - 1] > cc[b]; b--) {
                uint64_t x = cc[b];
                cc[b] = cc[b - 1];
                cc[b - 1] = x;
            }
        cc[gc] = cols;
        *r0 = i ? rc : 0, *nr = i ? rows - rc : rc;
        *c0 = cc[j], *nc = cc[j + 1] - cc[j];
        if (*nc == 0) /* no columns: nothing */
            *nr = 0;
        if (*nc == cols || !*nr) /* every column: a row part; or nothing */
            *nc = 0;
        return;
    } else { /* k == 3: rank 0 the top third of the rows whole, the others the rest in columns */
        uint64_t top = size > 1 ? rows / 3 : rows;
        if (rk == 0) {
            *nr = top;
            *nc = 0;
        } else {
            *r0 = top, *nr = rows - top;
            lsl_partition_rows(cols, size - 1, rk - 1, c0, nc);
        }
    }
    if (*nc == 0 && k != 0 && k != 6 && k != 8 && !(k == 3 && rk == 0))
        *nr = 0; /* an empty block */
}

static void test_blocks(void)
{
    int before = lsl_check_total();
    enum { NT = 5, NK = 9 };
    lsl_tensor_info t[NT] = {{"w", LSL_BF16, 2, {13, 11}},
                             {"embed", LSL_F16, 2, {9, 14}},
                             {"conv", LSL_F32, 2, {10, 7}}, /* W [in, out]: a transposed delta */
                             {"plain", LSL_F32, 2, {5, 6}},
                             {"tiny", LSL_BF16, 2, {2, 3}}};
    const uint64_t rr[NT] = {3, 2, 4, 0, 1};
    const lsl_dtype fdt[NT] = {LSL_F32, LSL_F16, LSL_BF16, LSL_F32, LSL_F32};
    const unsigned flags[NT] = {0, LSL_LORA_DELTA_IN_WEIGHT_DTYPE, LSL_LORA_TRANSPOSED, 0, 0};
    void *w0[NT], *A[NT], *B[NT], *TA[NT], *TB[NT], *M = malloc(64);
    uint64_t na[NT], nb[NT], ain[NT], bout[NT];
    for (int i = 0; i < NT; i++) {
        uint64_t rows = t[i].shape[0], cols = t[i].shape[1], r = rr[i], es = esz(fdt[i]);
        int tr = (flags[i] & LSL_LORA_TRANSPOSED) != 0;
        ain[i] = tr ? rows : cols, bout[i] = tr ? cols : rows; /* A [r, in], B [out, r] */
        na[i] = r * ain[i], nb[i] = bout[i] * r;
        w0[i] = malloc(rows * cols * esz(t[i].dtype));
        A[i] = malloc(na[i] * es + 1), B[i] = malloc(nb[i] * es + 1);
        TA[i] = malloc(na[i] * es + 1), TB[i] = malloc(nb[i] * es + 1);
        fill(t[i].dtype, w0[i], rows * cols, 0.05, 2100 + (uint64_t)i);
        fill(fdt[i], A[i], na[i], 0.2, 2200 + (uint64_t)i);
        fill(fdt[i], B[i], nb[i], 0.1, 2300 + (uint64_t)i);
        for (uint64_t k = 0; k < r; k++) { /* A^T [in, r], B^T [r, out] */
            for (uint64_t j = 0; j < ain[i]; j++)
                memcpy((unsigned char *)TA[i] + (j * r + k) * es,
                       (unsigned char *)A[i] + (k * ain[i] + j) * es, es);
            for (uint64_t j = 0; j < bout[i]; j++)
                memcpy((unsigned char *)TB[i] + (k * bout[i] + j) * es,
                       (unsigned char *)B[i] + (j * r + k) * es, es);
        }
    }
    fill(LSL_BF16, M, 13, 0.3, 2400);
    static const char *what[NK] = {"row parts",
                                   "column cuts, A held in Shard(1) column blocks",
                                   "column blocks in reverse rank order, B in row shards",
                                   "a row part beside column blocks, factors in element ranges",
                                   "overlapping blocks",
                                   "DoRA on column blocks, by rows and down the columns",
                                   "row parts out of rank order",
                                   "a grid at random cuts, blocks of one element",
                                   "DoRA on row parts"};
    char path[NK][2][600];
    uint64_t idx[NT] = {0, 1, 2, 3, 4};
    for (int k = 0; k < NK; k++)
        for (int hf = 0; hf < 2; hf++) {
            if (k == 4 && hf && size == 1)
                continue; /* one hole is enough */
            snprintf(path[k][hf], sizeof path[k][hf], "%s/blocks-%d%s", dir, k, hf ? "" : ".h5");
            lsl_lora_part lp[NT];
            lsl_part parts[NT];
            unsigned char *blk[NT]; /* each tensor's block of this rank, contiguous */
            for (int i = 0; i < NT; i++) {
                uint64_t rows = t[i].shape[0], cols = t[i].shape[1], r = rr[i], es = esz(fdt[i]);
                uint64_t r0, nr, c0, nc, a0, an, b0, bn, cut[9];
                block_of(k, rank, rows, cols, 2500 + (uint64_t)(10 * k + i), &r0, &nr, &c0, &nc);
                if (k == 4 && rank == 1 && nr) /* rank 1 also claims rank 0's first column */
                    nc += c0, c0 = 0;
                if (k == 4 && size == 1)
                    nc = cols - 1; /* a hole: the last column is nobody's */
                const void *fa = A[i], *fb = B[i];
                int ta = 0, tb = 0;
                lsl_partition_rows(r, size, rank, &a0, &an); /* A by rows of A */
                a0 *= ain[i], an *= ain[i];
                lsl_partition_rows(bout[i], size, rank, &b0, &bn); /* B by rows of B */
                b0 *= r, bn *= r;
                if (k == 1) { /* A in Shard(1): columns of A, passed transposed; B whole */
                    lsl_partition_rows(ain[i], size, rank, &a0, &an);
                    a0 *= r, an *= r, fa = TA[i], ta = 1;
                    b0 = 0, bn = nb[i];
                } else if (k == 3) { /* A in element ranges; B's columns passed transposed */
                    elem_cuts(2600 + (uint64_t)i, na[i], 0, 0, cut);
                    a0 = cut[rank], an = cut[rank + 1] - cut[rank];
                    lsl_partition_rows(r, size, rank, &b0, &bn);
                    b0 *= bout[i], bn *= bout[i], fb = TB[i], tb = 1;
                } else if (k == 2) {
                    a0 = 0, an = na[i];
                }
                lp[i] =
                    (lsl_lora_part){.rank = r,
                                    .alpha = 2.0,
                                    .scaling = 0.75,
                                    .a = {an ? dev((unsigned char *)fa + a0 * es, an * es) : NULL,
                                          fdt[i], a0, an, ta},
                                    .b = {bn ? dev((unsigned char *)fb + b0 * es, bn * es) : NULL,
                                          fdt[i], b0, bn, tb},
                                    .flags = flags[i]};
                uint64_t m0, mn;
                lsl_partition_rows(rows, size, rank, &m0, &mn);
                if ((k == 5 || k == 8) && i == 0) /* DoRA by rows: the magnitude in row shards */
                    lp[i].magnitude = (lsl_factor){mn ? dev((uint16_t *)M + m0, mn * 2) : NULL,
                                                   LSL_BF16, m0, mn, 0};
                if ((k == 5 || k == 8) && i == 2) /* down the columns: every column's, whole */
                    lp[i].magnitude = (lsl_factor){dev(M, cols * 2), LSL_BF16, 0, cols, 0};
                uint64_t es_w = esz(t[i].dtype), w = nc ? nc : cols;
                blk[i] = malloc(nr * w * es_w + 1);
                for (uint64_t q = 0; q < nr; q++)
                    memcpy(blk[i] + q * w * es_w,
                           (unsigned char *)w0[i] + ((r0 + q) * cols + (nc ? c0 : 0)) * es_w,
                           w * es_w);
                parts[i] = (lsl_part){.row0 = r0,
                                      .nrows = nr,
                                      .data = nr ? dev(blk[i], nr * w * es_w) : NULL,
                                      .mem = MEM,
                                      .lora = r ? &lp[i] : NULL,
                                      .col0 = nc ? c0 : 0,
                                      .ncols = nc};
            }
            lsl_writer *wr = NULL;
            lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
            cfg.quiet = 1;
            lsl_status st = create_writer(path[k][hf], &cfg, &wr);
            if (st == LSL_OK)
                st = lsl_writer_define_all(wr, NT, t);
            if (st == LSL_OK && k % 2)
                st = lsl_writer_put_batch_all(wr, NT, idx, parts);
            for (int i = 0; st == LSL_OK && !(k % 2) && i < NT; i++)
                st = lsl_writer_put_all(wr, (uint64_t)i, &parts[i]);
            if (k != 4) {
                CHECK(st == LSL_OK, "blocks, %s%s: %s", what[k], hf ? ", directory" : "",
                      lsl_last_error());
                st = st == LSL_OK ? lsl_writer_close_all(&wr) : st;
                CHECK(st == LSL_OK, "blocks, %s: close: %s", what[k], lsl_last_error());
            } else {
                lsl_status want = LSL_ERR_SHAPE;
                const char *word = size == 1 ? "hold" : "overlaps";
                CHECK(
                    st == want && strstr(lsl_last_error(), "`w`") && strstr(lsl_last_error(), word),
                    "blocks, %s: returned %s (%s)", what[k], lsl_status_name(st), lsl_last_error());
                lsl_writer_abort_all(&wr);
                CHECK(wr == NULL && !file_exists(path[k][hf]), "blocks, %s: output left behind",
                      what[k]);
            }
            for (int i = 0; i < NT; i++)
                free(blk[i]);
        }
    if (rank == 0)
        for (int k = 1; k < NK; k++) {
            if (k == 4 || k == 5 || k == 8)
                continue;
            CHECK(same_bytes(path[0][0], path[k][0]), "blocks, %s: other bytes than row parts",
                  what[k]);
            static const char *files[] = {"model.safetensors", "loraslab.json", "checksums.json"};
            for (int f = 0; f < 3; f++) {
                char a[700], b[700];
                snprintf(a, sizeof a, "%s/%s", path[0][1], files[f]);
                snprintf(b, sizeof b, "%s/%s", path[k][1], files[f]);
                CHECK(same_bytes(a, b), "blocks, %s: directory's %s differs from row parts'",
                      what[k], files[f]);
            }
        }
    /* DoRA's norms add the ranks' partial sums: within 1 ulp of row parts, not always the same
     * bytes */
    if (rank == 0) {
        hid_t fa = H5Fopen(path[8][0], H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t fb = H5Fopen(path[5][0], H5F_ACC_RDONLY, H5P_DEFAULT);
        int64_t worst = fa >= 0 && fb >= 0 ? 0 : 1 << 30;
        for (int i = 0; i < NT && worst <= 1; i++) {
            uint64_t na_ = 0, nb_ = 0;
            uint32_t ca, cb;
            void *x = read_ds(fa, t[i].name, &na_, &ca), *y = read_ds(fb, t[i].name, &nb_, &cb);
            if (!x || !y || na_ != nb_)
                worst = 1 << 30;
            for (uint64_t e = 0; x && y && na_ == nb_ && e < na_ / esz(t[i].dtype); e++) {
                int64_t d = ordered(t[i].dtype, x, e) - ordered(t[i].dtype, y, e);
                worst = d < 0 ? (-d > worst ? -d : worst) : (d > worst ? d : worst);
            }
            free(x), free(y);
        }
        if (fa >= 0)
            H5Fclose(fa);
        if (fb >= 0)
            H5Fclose(fb);
        CHECK(worst <= 1, "blocks, DoRA: %lld ulp from row parts' DoRA", (long long)worst);
    }
    for (int i = 0; i < NT; i++) {
        free(w0[i]), free(A[i]), free(B[i]), free(TA[i]), free(TB[i]);
    }
    free(M);
    lsl_check_report("blocks of columns (Shard(1), a 2-D arrangement, a row part beside blocks, "
                     "rows out of rank order, a random grid) give the row parts' file and "
                     "directory; DoRA on blocks within 1 ulp of row parts; overlaps and holes "
                     "refused by name",
                     before);
}

/* The merges with no device kernel, from device parts in the GPU build (the CPU merge, W0 copied
 * down chunk by chunk): DoRA by rows, DoRA down the columns, and PEFT's Embedding rule
 * (LSL_LORA_DELTA_IN_WEIGHT_DTYPE), beside a plain LoRA tensor the kernel merges, put one by one
 * and in one batch.  Every file must hold the bytes host parts write (whose values the CLI and
 * torch tests check against their references). */
static void test_cpu_formulas(void)
{
    int before = lsl_check_total();
    enum { NT = 4 };
    lsl_tensor_info t[NT] = {{"dora.rows", LSL_BF16, 2, {19, 16}},
                             {"dora.cols", LSL_F16, 2, {23, 12}},
                             {"embed", LSL_BF16, 2, {31, 10}},
                             {"plain", LSL_F32, 2, {7, 5}}};
    const uint64_t rr[NT] = {3, 5, 2, 4};
    const lsl_dtype fdt[NT] = {LSL_F32, LSL_BF16, LSL_BF16, LSL_F16};
    const unsigned flags[NT] = {0, LSL_LORA_TRANSPOSED, LSL_LORA_DELTA_IN_WEIGHT_DTYPE, 0};
    void *w0[NT], *A[NT], *B[NT], *M[NT], *TA[NT], *TB[NT];
    for (int i = 0; i < NT; i++) {
        uint64_t out = t[i].shape[0], in = t[i].shape[1], r = rr[i];
        w0[i] = malloc(out * in * esz(t[i].dtype));
        A[i] = malloc(r * in * esz(fdt[i]));
        B[i] = malloc(out * r * esz(fdt[i]));
        M[i] = malloc((out > in ? out : in) * 2);
        fill(t[i].dtype, w0[i], out * in, 0.05, 1100 + (uint64_t)i);
        fill(fdt[i], A[i], r * in, 0.2, 1200 + (uint64_t)i);
        fill(fdt[i], B[i], out * r, 0.1, 1300 + (uint64_t)i);
        fill(LSL_BF16, M[i], out > in ? out : in, 0.3, 1400 + (uint64_t)i);
        for (uint64_t k = 0; k < (out > in ? out : in); k++) /* positive magnitudes */
            ((uint16_t *)M[i])[k] &= 0x7FFFu;
        /* A^T ([in, r]) and B^T ([r, out]): the factors of the same delta, transposed */
        uint64_t es = esz(fdt[i]);
        TA[i] = malloc(in * r * es);
        TB[i] = malloc(r * out * es);
        for (uint64_t k = 0; k < r; k++) {
            for (uint64_t j = 0; j < in; j++)
                memcpy((unsigned char *)TA[i] + (j * r + k) * es,
                       (unsigned char *)A[i] + (k * in + j) * es, es);
            for (uint64_t j = 0; j < out; j++)
                memcpy((unsigned char *)TB[i] + (k * out + j) * es,
                       (unsigned char *)B[i] + (j * r + k) * es, es);
        }
    }
    char path[2][NMEM][600];
    for (int batch = 0; batch < 2; batch++)
        for (int host = 0; host < NMEM; host++) {
            snprintf(path[batch][host], sizeof path[batch][host], "%s/cpu-formulas%s%s.h5", dir,
                     batch ? "-batch" : "", host ? "-host" : "");
            lsl_memspace mem = host ? LSL_MEM_HOST : MEM;
#define ON(p, n) (host ? (const void *)(p) : dev((p), (n)))
            lsl_writer *w = NULL;
            lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
            cfg.quiet = 1;
            cfg.staging_bytes = 4096; /* several chunks a tensor */
            lsl_status st = create_writer(path[batch][host], &cfg, &w);
            if (st == LSL_OK)
                st = lsl_writer_define_all(w, NT, t);
            CHECK(st == LSL_OK, "setup: %s", lsl_last_error());
            lsl_part parts[NT];
            lsl_lora_part lp[NT];
            uint64_t order[NT];
            for (int i = 0; i < NT && st == LSL_OK; i++) {
                uint64_t out = t[i].shape[0], in = t[i].shape[1], r = rr[i], es = esz(fdt[i]);
                uint64_t q0, qn, a0, an, p0, pn;
                lsl_partition_rows(out, size, rank, &q0, &qn);
                lsl_partition_rows(r, size, rank, &a0, &an);
                lsl_partition_rows(in, size, rank, &p0, &pn);
                const unsigned char *a = A[i], *b = B[i];
                lp[i] = (lsl_lora_part){
                    .rank = r,
                    .alpha = 2.0 * (double)r,
                    .scaling = 2.0,
                    .a = {ON(a + a0 * in * es, an * in * es), fdt[i], a0 * in, an * in, 0},
                    .b = {ON(b + q0 * r * es, qn * r * es), fdt[i], q0 * r, qn * r, 0},
                    .flags = flags[i]};
                if (flags[i] == LSL_LORA_TRANSPOSED) { /* W = ((A^T) @ (B^T))^T, in row shards */
                    a = TB[i];
                    b = TA[i];
                    lp[i].a = (lsl_factor){ON(a + a0 * out * es, an * out * es), fdt[i], a0 * out,
                                           an * out, 0};
                    lp[i].b =
                        (lsl_factor){ON(b + p0 * r * es, pn * r * es), fdt[i], p0 * r, pn * r, 0};
                }
                if (i < 2) { /* DoRA: rows' magnitudes, or every column's on every rank */
                    uint64_t m0 = i == 1 ? 0 : q0, mn = i == 1 ? in : qn;
                    lp[i].magnitude =
                        (lsl_factor){ON((uint16_t *)M[i] + m0, mn * 2), LSL_BF16, m0, mn, 0};
                }
                uint64_t rb = in * esz(t[i].dtype);
                parts[i] = (lsl_part){
                    q0, qn, ON((unsigned char *)w0[i] + q0 * rb, qn * rb), mem, NULL, &lp[i], 0, 0};
                order[i] = (uint64_t)i;
                if (!batch) {
                    st = lsl_writer_put_all(w, (uint64_t)i, &parts[i]);
                    CHECK(st == LSL_OK, "put %s: %s", t[i].name, lsl_last_error());
                }
            }
#undef ON
            if (batch && st == LSL_OK) {
                st = lsl_writer_put_batch_all(w, NT, order, parts);
                CHECK(st == LSL_OK, "batched put: %s", lsl_last_error());
            }
            if (st == LSL_OK)
                st = lsl_writer_close_all(&w);
            else
                lsl_writer_abort_all(&w);
            CHECK(st == LSL_OK, "close: %s", lsl_last_error());
        }
    if (rank == 0) {
        for (int host = 1; host < NMEM; host++)
            for (int batch = 0; batch < 2; batch++)
                CHECK(same_bytes(path[batch][0], path[batch][host]),
                      "%s: device parts wrote other bytes than host parts",
                      batch ? "batched" : "single puts");
        /* a batch's A arrives whole: the same merge, the same bytes */
        CHECK(same_bytes(path[0][NMEM - 1], path[1][NMEM - 1]),
              "the batched put wrote other bytes than single puts");
    }
    for (int i = 0; i < NT; i++) {
        free(w0[i]);
        free(A[i]);
        free(B[i]);
        free(M[i]);
        free(TA[i]);
        free(TB[i]);
    }
    lsl_check_report(
        NMEM > 1 ? "DoRA (rows, columns) and the Embedding rule from device parts: the host "
                   "parts' bytes, single and batched"
                 : "DoRA (rows, columns) and the Embedding rule, single and batched puts",
        before);
}

/* Element-range parts (FSDP1's pieces): random rank-ordered cuts of each tensor's elements, mid-row
 * starts and ends, empty ranks.  The merge of a row does not depend on W0's other elements, so
 * the file must be the bytes the row-part file holds (that one is checked against float64). */
static void test_elems(void)
{
    int before = lsl_check_total();
    lsl_tensor_info t[4] = {{"w.bf16", LSL_BF16, 2, {37, 24}},
                            {"w.f32", LSL_F32, 2, {11, 9}},
                            {"plain", LSL_I64, 2, {5, 7}},
                            {"vec", LSL_F16, 1, {13}}};
    const uint64_t rr[2] = {8, 3};
    void *w0[4], *A[2], *B[2];
    for (int i = 0; i < 4; i++) {
        uint64_t e = t[i].shape[0] * (t[i].ndim > 1 ? t[i].shape[1] : 1);
        w0[i] = calloc(e * esz(t[i].dtype) + 1, 1);
        if (t[i].dtype == LSL_I64)
            for (uint64_t k = 0; k < e * 8; k++)
                ((unsigned char *)w0[i])[k] = (unsigned char)(k * 13 + 1);
        else
            fill(t[i].dtype, w0[i], e, 0.05, 700 + (uint64_t)i);
    }
    for (int i = 0; i < 2; i++) {
        A[i] = malloc(rr[i] * t[i].shape[1] * 4);
        B[i] = malloc(t[i].shape[0] * rr[i] * 4);
        fill(LSL_F32, A[i], rr[i] * t[i].shape[1], 0.1, 800 + (uint64_t)i);
        fill(LSL_F32, B[i], t[i].shape[0] * rr[i], 0.1, 900 + (uint64_t)i);
    }
    for (int trial = 0; trial < 6; trial++) {
        char pe[600], pr[600];
        snprintf(pe, sizeof pe, "%s/elems-%d.h5", dir, trial);
        snprintf(pr, sizeof pr, "%s/elems-rows.h5", dir);
        for (int pass = 0; pass < 2; pass++) { /* 0: element parts, 1: row parts (once) */
            if (pass == 1 && trial > 0)
                break;
            lsl_writer *w = NULL;
            lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
            cfg.quiet = 1;
            cfg.staging_bytes = 4096; /* several chunks, so windows meet chunk edges too */
            lsl_status st = create_writer(pass ? pr : pe, &cfg, &w);
            if (st == LSL_OK)
                st = lsl_writer_define_all(w, 4, t);
            CHECK(st == LSL_OK, "setup: %s", lsl_last_error());
            for (uint64_t i = 0; i < 4 && st == LSL_OK; i++) {
                uint64_t cols = t[i].ndim > 1 ? t[i].shape[1] : 1, e = t[i].shape[0] * cols;
                /* the same cuts on every rank: sorted draws from one seed */
                uint64_t cut[9]; /* trial 1: rank 0 empty */
                elem_cuts(31 * (uint64_t)trial + i + 1, e, 0, trial == 1, cut);
                uint64_t e0 = cut[rank], ne = cut[rank + 1] - cut[rank], es = esz(t[i].dtype);
                uint64_t ra0, ran, r0 = cols ? e0 / cols : 0;
                lsl_lora_part lp;
                /* the factors in FSDP2's row shards: an element part's B rows (those its range
                 * touches) come from the put's gather */
                uint64_t q0, qn;
                lsl_partition_rows(t[i].shape[0], size, rank, &q0, &qn);
                if (i < 2) {
                    lsl_partition_rows(rr[i], size, rank, &ra0, &ran);
                    lp = lora_f32(rr[i], 0.75, cols, ra0, ran,
                                  dev((float *)A[i] + ra0 * cols, ran * cols * 4), q0, qn,
                                  dev((float *)B[i] + q0 * rr[i], qn * rr[i] * 4));
                }
                (void)r0;
                if (pass == 0) {
                    lsl_elem_part ep = {e0,  ne,   dev((unsigned char *)w0[i] + e0 * es, ne * es),
                                        MEM, NULL, i < 2 ? &lp : NULL};
                    st = lsl_writer_put_elems_all(w, i, &ep);
                } else {
                    lsl_part p = {
                        q0,  qn,   dev((unsigned char *)w0[i] + q0 * cols * es, qn * cols * es),
                        MEM, NULL, i < 2 ? &lp : NULL,
                        0,   0};
                    st = lsl_writer_put_all(w, i, &p);
                }
                CHECK(st == LSL_OK, "trial %d %s put of %s: %s", trial, pass ? "row" : "element",
                      t[i].name, lsl_last_error());
            }
            if (st == LSL_OK)
                st = lsl_writer_close_all(&w);
            else
                lsl_writer_abort_all(&w);
            CHECK(st == LSL_OK, "close: %s", lsl_last_error());
        }
        if (rank == 0)
            CHECK(same_bytes(pe, pr), "trial %d: element parts wrote other bytes than row parts",
                  trial);
    }
    /* Refusals, alike on every rank: a range out of rank order; device memory where the library
     * has no CUDA; host memory on some ranks and device memory on others (a GPU build's test). */
#if !defined(LSL_HAVE_CUDA) || defined(LSL_TEST_DEVICE)
    const int ncases = 2;
#else
    const int ncases = 1; /* device memory goes to the GPU path, which needs a GPU */
#endif
    for (int c = 0; c < ncases; c++) {
        lsl_writer *w = NULL;
        lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
        cfg.quiet = 1;
        char p[600];
        snprintf(p, sizeof p, "%s/elems-bad.h5", dir);
        lsl_status st = create_writer(p, &cfg, &w);
        if (st == LSL_OK)
            st = lsl_writer_define_all(w, 4, t);
        uint64_t e = 35, e0 = e * (uint64_t)rank / (uint64_t)size;
        uint64_t ne = e * (uint64_t)(rank + 1) / (uint64_t)size - e0;
        if (c == 0 && size > 1 && rank == size - 1 && ne)
            e0 -= 1; /* overlaps the rank before */
#ifdef LSL_TEST_DEVICE
        int on_dev = c == 1 && rank == 0; /* the others host */
        lsl_status want1 = size > 1 ? LSL_ERR_INCONSISTENT : LSL_OK;
#else
        int on_dev = c == 1;
        lsl_status want1 = LSL_ERR_UNSUPPORTED;
#endif
        const unsigned char *h = (unsigned char *)w0[2] + e0 * 8;
        lsl_elem_part ep = {
            e0,   ne,  on_dev ? dev(h, ne * 8) : h, on_dev ? LSL_MEM_DEVICE : LSL_MEM_HOST,
            NULL, NULL};
        if (st == LSL_OK)
            st = lsl_writer_put_elems_all(w, 2, &ep);
        lsl_status want = c == 0 ? (size > 1 ? LSL_ERR_SHAPE : LSL_OK) : want1;
        CHECK(st == want, "refusal %d: %s (%s)", c, lsl_status_name(st), lsl_last_error());
        lsl_writer_abort_all(&w);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0)
            CHECK(!file_exists(p) && !leftover_tmp(), "refusal %d left a file", c);
    }
    for (int i = 0; i < 4; i++)
        free(w0[i]);
    for (int i = 0; i < 2; i++) {
        free(A[i]);
        free(B[i]);
    }
    lsl_check_report(
        "element-range parts (random mid-row cuts): the bytes of row parts; bad tilings refused",
        before);
}

/* The callback suite writes each merge file over MPI-IO too: the two must be the same bytes. */
static void test_same_as_mpi(int big, int batch)
{
    int before = lsl_check_total();
    use_cb = 0;
    test_merge_and_copy(big, batch);
    use_cb = 1;
    test_merge_and_copy(big, batch);
    if (rank == 0) {
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/merge%s%s.h5", dir, big ? "-big" : "", batch ? "-batch" : "");
        snprintf(b, sizeof b, "%s/merge%s%s-cb.h5", dir, big ? "-big" : "", batch ? "-batch" : "");
        CHECK(same_bytes(a, b), "%s and %s differ", a, b);
    }
    lsl_check_report("callbacks + pwrite give the bytes MPI-IO gives", before);
}

/* One rank: the Nth callback fails, for every N a whole write makes.  Each failure comes back
 * as LSL_ERR_COMM from some call, and nothing is left in the directory. */
/* What a put costs in collectives (callbacks): each is a round of latency, and at a thousand
 * ranks times a model's hundreds of tensors they add up.  A plain put: the opening all-gather,
 * the chunk count, the closing all-gather (+ the memory-space agreement of a CUDA build); a
 * LoRA put adds the A gather (sizes, the buffers' agreement, the data).  Before the opening and
 * closing agreements were folded into those all-gathers: 6 and 9 (+1). */
static void test_put_collectives(void)
{
    int before = lsl_check_total();
    char path[700];
    snprintf(path, sizeof path, "%s/collectives.h5", dir);
    lsl_writer *w = NULL;
    lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
    cfg.quiet = 1;
    lsl_status st = create_writer(path, &cfg, &w);
    lsl_tensor_info t[2] = {{"plain", LSL_F32, 2, {8, 4}}, {"lora", LSL_F32, 2, {8, 4}}};
    float v[32] = {0}, a[8] = {0}, b[16] = {0};
    uint64_t r0, nr, a0, an;
    lsl_partition_rows(8, size, rank, &r0, &nr);
    lsl_partition_rows(2, size, rank, &a0, &an);
    if (st == LSL_OK)
        st = lsl_writer_define_all(w, 2, t);
    lsl_lora_part lp = lora_f32(2, 0.5, 4, a0, an, a + a0 * 4, r0, nr, b + r0 * 2);
    lsl_part plain = {r0, nr, v + r0 * 4, LSL_MEM_HOST, NULL, NULL, 0, 0};
    lsl_part lora = {r0, nr, v + r0 * 4, LSL_MEM_HOST, NULL, &lp, 0, 0};
    long c0 = lsl_test_cb_calls;
    if (st == LSL_OK)
        st = lsl_writer_put_all(w, 0, &plain);
    long c1 = lsl_test_cb_calls;
    if (st == LSL_OK)
        st = lsl_writer_put_all(w, 1, &lora);
    long c2 = lsl_test_cb_calls;
    if (st == LSL_OK)
        st = lsl_writer_close_all(&w);
    else
        lsl_writer_abort_all(&w);
    CHECK(st == LSL_OK, "write: %s", lsl_last_error());
    /* plain: the call's first all-gather (the factors' records, which carry the route a CUDA
     * build needs), the put's record, its chunk count, its checksums; with LoRA: the factors'
     * agreement and their all-gatherv, and the agreement before the merge writes */
    CHECK(c1 - c0 <= 4 && c2 - c1 <= 7, "a plain put made %ld collectives, a LoRA put %ld", c1 - c0,
          c2 - c1);
    if (rank == 0)
        printf("put collectives: %ld plain, %ld with LoRA\n", c1 - c0, c2 - c1);
    lsl_check_report("a put's collectives: at most 4 plain, 7 with LoRA", before);
}

static void test_callback_failures(void)
{
    int before = lsl_check_total();
    char path[700];
    snprintf(path, sizeof path, "%s/cb-fail.h5", dir);
    lsl_tensor_info t[2] = {{"a", LSL_F32, 2, {6, 4}}, {"b", LSL_F32, 1, {5}}};
    float a[24] = {0}, b[5] = {0}, la[8] = {1, 2, 3, 4, 5, 6, 7, 8}, lb[12] = {0};
    int n_fail = 0, n_ok = 0;
    for (long k = 1; k < 200 && n_ok == 0; k++) {
        lsl_writer *w = NULL;
        lsl_writer_config cfg = LSL_WRITER_CONFIG_INIT;
        cfg.quiet = 1;
        lsl_test_cb_calls = 0;
        lsl_test_cb_fail_at = k;
        lsl_lora_part lp = lora_f32(2, 1.0, 4, 0, 2, la, 0, 6, lb);
        lsl_part p0 = {0, 6, a, LSL_MEM_HOST, NULL, &lp, 0, 0},
                 p1 = {0, 5, b, LSL_MEM_HOST, NULL, NULL, 0, 0};
        lsl_status st = create_writer(path, &cfg, &w);
        if (st == LSL_OK)
            st = lsl_writer_define_all(w, 2, t);
        if (st == LSL_OK)
            st = lsl_writer_put_all(w, 0, &p0);
        if (st == LSL_OK)
            st = lsl_writer_put_all(w, 1, &p1);
        if (st == LSL_OK)
            st = lsl_writer_close_all(&w);
        else
            lsl_writer_abort_all(&w);
        if (lsl_test_cb_calls < k) { /* the write made fewer calls: it ran through */
            CHECK(st == LSL_OK, "no failure injected, yet %s", lsl_status_name(st));
            n_ok++;
            remove(path);
            continue;
        }
        n_fail++;
        CHECK(st == LSL_ERR_COMM, "callback %ld failed: returned %s (%s)", k, lsl_status_name(st),
              lsl_last_error());
        CHECK(!file_exists(path) && !leftover_tmp(), "callback %ld failed: output left behind", k);
    }
    lsl_test_cb_fail_at = 0;
    CHECK(n_fail > 10 && n_ok == 1, "%d failure points, %d clean runs", n_fail, n_ok);
    lsl_check_report("a failing callback: LSL_ERR_COMM at every point, nothing left", before);
}

#ifdef LSL_TEST_DEVICE
static void CUDART_CB sleep_300ms(void *arg)
{
    (void)arg;
    usleep(300 * 1000);
}

/* The caller's stream orders the put: W0, A and B are written on a non-blocking stream behind
 * 300 ms of other work (a host function that sleeps), and the put is told that stream.  Read
 * before that work is done, they are the zeros the buffers held, and the file is W0 = 0 or an
 * unmerged W0.  Each path reads them: the single put, the batch (A gathered first), and at
 * several ranks the host gather of A shards. */
static void test_stream_order(int batch)
{
    int before = lsl_check_total();
    char path[600];
    snprintf(path, sizeof path, "%s/stream-order%s.h5", dir, batch ? "-batch" : "");
    const uint64_t out = 96, in = 80, r = 8;
    const double scaling = 0.5;
    float *w0 = malloc(out * in * 4), *a = malloc(r * in * 4), *b = malloc(out * r * 4);
    fill(LSL_F32, w0, out * in, 1.0, 11);
    fill(LSL_F32, a, r * in, 0.5, 12);
    fill(LSL_F32, b, out * r, 0.5, 13);
    uint64_t row0, nrows, a0, an;
    lsl_partition_rows(out, size, rank, &row0, &nrows);
    lsl_partition_rows(r, size, rank, &a0, &an);
    /* what the put must read: pinned copies, copied up behind the sleep */
    cudaStream_t s = NULL;
    void *hw = NULL, *ha = NULL, *hb = NULL, *dw = NULL, *da = NULL, *db = NULL;
    uint64_t bw = nrows * in * 4, ba = an * in * 4, bb = nrows * r * 4;
    int ok = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
             cudaMallocHost(&hw, bw + 4) == cudaSuccess &&
             cudaMallocHost(&ha, ba + 4) == cudaSuccess &&
             cudaMallocHost(&hb, bb + 4) == cudaSuccess && cudaMalloc(&dw, bw + 4) == cudaSuccess &&
             cudaMalloc(&da, ba + 4) == cudaSuccess && cudaMalloc(&db, bb + 4) == cudaSuccess &&
             cudaMemset(dw, 0, bw + 4) == cudaSuccess && cudaMemset(da, 0, ba + 4) == cudaSuccess &&
             cudaMemset(db, 0, bb + 4) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess;
    CHECK(ok, "CUDA setup failed");
    if (ok) {
        memcpy(hw, w0 + row0 * in, bw);
        memcpy(ha, a + a0 * in, ba);
        memcpy(hb, b + row0 * r, bb);
        ok = cudaLaunchHostFunc(s, sleep_300ms, NULL) == cudaSuccess &&
             cudaMemcpyAsync(dw, hw, bw, cudaMemcpyHostToDevice, s) == cudaSuccess &&
             cudaMemcpyAsync(da, ha, ba, cudaMemcpyHostToDevice, s) == cudaSuccess &&
             cudaMemcpyAsync(db, hb, bb, cudaMemcpyHostToDevice, s) == cudaSuccess;
        CHECK(ok, "queueing the caller's copies failed");
    }
    lsl_writer *w = NULL;
    lsl_tensor_info t = {.name = "w", .dtype = LSL_F32, .ndim = 2, .shape = {out, in}};
    lsl_lora_part l = lora_f32(r, scaling, in, a0, an, da, row0, nrows, db);
    lsl_part part = {
        .row0 = row0, .nrows = nrows, .data = dw, .mem = LSL_MEM_DEVICE, .stream = s, .lora = &l};
    uint64_t idx = 0;
    lsl_status st = create_writer(path, NULL, &w);
    if (st == LSL_OK)
        st = lsl_writer_define_all(w, 1, &t);
    if (st == LSL_OK)
        st = batch ? lsl_writer_put_batch_all(w, 1, &idx, &part) : lsl_writer_put_all(w, 0, &part);
    if (st == LSL_OK)
        st = lsl_writer_close_all(&w);
    else
        lsl_writer_abort_all(&w);
    CHECK(st == LSL_OK, "stream-ordered put failed: %s (%s)", lsl_status_name(st),
          lsl_last_error());
    if (rank == 0 && st == LSL_OK) {
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        uint64_t nb = 0;
        uint32_t crc = 0;
        float *got = f >= 0 ? read_ds(f, "w", &nb, &crc) : NULL;
        uint64_t bad = 0;
        for (uint64_t o = 0; got && nb == out * in * 4 && o < out; o++)
            for (uint64_t k = 0; k < in; k++) {
                double ref = w0[o * in + k];
                for (uint64_t j = 0; j < r; j++)
                    ref += scaling * (double)b[o * r + j] * (double)a[j * in + k];
                bad += fabs(got[o * in + k] - ref) > 1e-5 * (1.0 + fabs(ref));
            }
        CHECK(got && nb == out * in * 4 && bad == 0,
              "%llu of %llu elements differ from the merge of what the caller's stream wrote",
              (unsigned long long)bad, (unsigned long long)(out * in));
        free(got);
        if (f >= 0)
            H5Fclose(f);
    }
    cudaStreamDestroy(s);
    cudaFreeHost(hw), cudaFreeHost(ha), cudaFreeHost(hb);
    cudaFree(dw), cudaFree(da), cudaFree(db);
    free(w0), free(a), free(b);
    lsl_check_report(batch ? "device parts ordered by the caller's stream (batch)"
                           : "device parts ordered by the caller's stream",
                     before);
}
#endif

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    lsl_check_rank = rank;
    lsl_check_sum = sum_over_ranks;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
#ifdef LSL_TEST_DEVICE
    pick_device();
#endif
    const char *base = getenv("LSL_TESTOUTDIR") ? getenv("LSL_TESTOUTDIR") : "/tmp";
    use_cb = argc > 1 && strcmp(argv[1], "--callbacks") == 0;
    snprintf(dir, sizeof dir, "%s/writer%s-np%d", base, use_cb ? "-cb" : "", size);
    if (rank == 0) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
        if (system(cmd) != 0)
            return 1;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (use_cb) {
        test_same_as_mpi(0, 0);
        test_same_as_mpi(1, 0);
        test_same_as_mpi(0, 1);
        test_error_agreement();
        test_elems();
        test_elems_dora(0);
        test_elems_dora(1);
        test_cpu_formulas();
        test_factor_layouts();
        test_blocks();
        test_put_collectives();
        if (size == 1) /* with peers, a failed collective is the transport's to fail */
            test_callback_failures();
        test_define_checks();
        goto done;
    }
    test_merge_and_copy(0, 0);
    test_merge_and_copy(1, 0);
    test_merge_and_copy(0, 1);
    test_error_agreement();
    test_elems(); /* device pointers in the GPU build: the partial rows' device path */
    test_elems_dora(0);
    test_elems_dora(1);
    test_cpu_formulas();
    test_factor_layouts();
    test_blocks();
#ifndef LSL_TEST_DEVICE
    test_define_checks();
    test_hints();
    test_own_comm();
    test_log_sink();
    test_handles_and_sizes();
#else
    test_stream_order(0);
    test_stream_order(1);
    (void)test_define_checks; /* host-only checks: the host build runs them */
    (void)test_hints;
    (void)test_log_sink;
    (void)test_own_comm;
    (void)test_handles_and_sizes;
#endif
done:;
    char what[32];
    snprintf(what, sizeof what, "%d ranks", size);
    int rc = lsl_check_finish(what);
    if (lsl_test_cb_comm != MPI_COMM_NULL)
        MPI_Comm_free(&lsl_test_cb_comm);
    MPI_Finalize();
    return rc;
}
