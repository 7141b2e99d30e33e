#include "lsl_cuda.h"

#include "lsl_crc32c.h"
#include "lsl_device.h"
#include "lsl_gather.h"
#include "lsl_gather_nccl.h"

#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One staging job: read a W0 chunk into a pinned slot, copy it up, merge, copy it back. */
typedef struct stage_job {
    int slot, fd, has_l;
    uint64_t off, bytes, m, n;
    lsl_dtype wt;
    lsl_lora_part l;
    const void *a_dev, *b_dev;
    const char *path;
    /* results: the thread cannot set this thread's error message (it is thread-local) */
    int err; /* of the read, as lsl_i_pread_raw returns it */
    uint64_t at;
    cudaError_t cerr; /* of the copy up or the launch */
    const char *what;
} stage_job;

struct lsl_i_cuda {
    int device;
    /* 0: MPI path only; 1: NCCL once the A traffic pays for a communicator (NCCL_AFTER_BYTES
     * through host memory first); 2: NCCL from the first gather (LSL_GATHER=nccl). */
    int want_nccl;
    uint64_t host_gathered; /* bytes of A gathered through host memory, the same on every rank */
    const char *why_mpi;
    lsl_i_nccl *nccl;
    uint64_t n_nccl, n_mpi; /* gathers per path, for the closing report */
    uint64_t slot_bytes;
    void *pinned[2], *dslot[2];
    cudaEvent_t done[2];
    unsigned long long *dbad[2];
    unsigned long long *hbad; /* pinned: the flag's copy must not block the launch */
    int merging[2];
    void *a_dev;
    uint64_t a_cap;
    void *batch_dev; /* the A's of a batch gathered over NCCL */
    uint64_t batch_cap;
    void *host_a, *host_full;
    uint64_t host_cap;
    void *b_dev;
    uint64_t b_cap;
    /* Checksums on the GPU: per-slot block CRCs (device, and their pinned copy) over how many
     * bytes, the tree operators, and the host's operator for one block. */
    uint32_t *dcrc[2], *hcrc[2], *dshift, op_block[32];
    uint64_t crc_bytes[2];
    int crc_gpu[2];
    /* File-sourced chunks: W0 lands in din[slot] before the merge writes dslot[slot]. */
    void *din[2];
    cudaStream_t stream;
    pthread_t thr;
    int thr_running, quit, state; /* state: 0 idle, 1 posted, 2 done */
    int staged[2];                /* slot has a job to join */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    stage_job job;
};

/* A communicator costs about a second to start and ~350 MiB of host memory per rank (2 x H100,
 * NCCL 2.28), while the host path moved A at ~1.3 GB/s there: below ~1 GiB of A per job (a
 * typical LoRA has tens to hundreds of MB) the host path is both faster and lighter. */
#define NCCL_AFTER_BYTES (1ull << 30)

static lsl_status cuda_fail(cudaError_t e, const char *what)
{
    return lsl_i_fail(LSL_ERR_CUDA, "%s: %s (%s)", what, cudaGetErrorString(e),
                      cudaGetErrorName(e));
}

#define CU(call, what)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            rc = cuda_fail(e_, what);                                                              \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

static int dev_type(lsl_dtype d)
{
    return d == LSL_F32 ? LSL_DEV_F32 : d == LSL_BF16 ? LSL_DEV_BF16 : LSL_DEV_F16;
}

void lsl_i_cuda_close(lsl_i_cuda **pc)
{
    if (!pc || !*pc)
        return;
    lsl_i_cuda *c = *pc;
    if (c->thr_running) {
        pthread_mutex_lock(&c->mu);
        c->quit = 1;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thr, NULL); /* it finishes a posted job first */
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
    }
    if (c->stream)
        cudaStreamSynchronize(c->stream), cudaStreamDestroy(c->stream);
    for (int s = 0; s < 2; s++) {
        if (c->done[s])
            cudaEventSynchronize(c->done[s]), cudaEventDestroy(c->done[s]);
        cudaFreeHost(c->pinned[s]);
        cudaFree(c->dslot[s]);
        cudaFree(c->din[s]);
        cudaFree(c->dbad[s]);
        cudaFree(c->dcrc[s]);
        cudaFreeHost(c->hcrc[s]);
    }
    cudaFree(c->dshift);
    cudaFree(c->b_dev);
    cudaFreeHost(c->hbad);
    cudaFree(c->a_dev);
    cudaFree(c->batch_dev);
    free(c->host_a);
    free(c->host_full);
    lsl_i_nccl_close(&c->nccl);
    free(c);
    *pc = NULL;
}

lsl_status lsl_i_cuda_select(MPI_Comm comm, int *ranks_per_gpu)
{
    int rank, lr = 0, ls = 1, nd = 0;
    MPI_Comm local;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &lr);
    MPI_Comm_size(local, &ls);
    MPI_Comm_free(&local);
    cudaError_t e = cudaGetDeviceCount(&nd);
    if (e == cudaSuccess && nd == 0)
        e = cudaErrorNoDevice;
    if (e == cudaSuccess)
        e = cudaSetDevice(lr % nd);
    char host[96] = "";
    gethostname(host, sizeof host - 1);
    lsl_status st = e == cudaSuccess
                        ? LSL_OK
                        : lsl_i_fail(LSL_ERR_CUDA,
                                     "rank %d on %s: no usable GPU for --device cuda: "
                                     "%s (%s)",
                                     rank, host, cudaGetErrorString(e), cudaGetErrorName(e));
    int rpg = nd ? (ls + nd - 1) / nd : 0;
    MPI_Bcast(&rpg, 1, MPI_INT, 0, comm);
    if (ranks_per_gpu)
        *ranks_per_gpu = rpg;
    return lsl_i_agree(comm, st);
}

lsl_status lsl_i_cuda_open(MPI_Comm comm, uint64_t staging_bytes, lsl_i_cuda **out)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    lsl_i_cuda *c = lsl_i_calloc(1, sizeof *c);
    char id[160] = "", *all = NULL;
    *out = NULL;
    if (!c)
        return lsl_i_agree(comm, lsl_i_fail(LSL_ERR_NOMEM, "out of memory"));
    c->slot_bytes = staging_bytes / 2 < LSL_I_RING_SLOT_MAX ? staging_bytes / 2 / 256 * 256
                                                            : LSL_I_RING_SLOT_MAX;
    cudaError_t e = cudaGetDevice(&c->device);
    if (e == cudaSuccess) {
        char bus[64] = "", host[96] = "";
        gethostname(host, sizeof host - 1);
        e = cudaDeviceGetPCIBusId(bus, sizeof bus, c->device);
        snprintf(id, sizeof id, "%s/%s", host, bus);
    }
    if (e == cudaSuccess)
        e = cudaHostAlloc((void **)&c->hbad, 2 * sizeof *c->hbad, cudaHostAllocDefault);
    if (e != cudaSuccess)
        st = cuda_fail(e, "no usable CUDA device");
    for (int s = 0; st == LSL_OK && s < 2; s++) {
        /* Exact size: cudaHostAlloc does not round up the way a caching allocator does. */
        if ((e = cudaHostAlloc(&c->pinned[s], c->slot_bytes, cudaHostAllocDefault)) !=
                cudaSuccess ||
            (e = cudaMalloc(&c->dslot[s], c->slot_bytes)) != cudaSuccess ||
            (e = cudaMalloc((void **)&c->dbad[s], sizeof(unsigned long long))) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&c->done[s], cudaEventDisableTiming)) != cudaSuccess)
            st = cuda_fail(e, "allocating the pinned staging ring");
    }
    uint64_t ncrc = c->slot_bytes / LSL_DEV_CRC_BLOCK + 1;
    uint32_t shifts[LSL_DEV_CRC_LEVELS * 32];
    for (int l = 0; l < LSL_DEV_CRC_LEVELS; l++)
        lsl_crc32c_zeros_op((uint64_t)LSL_DEV_CRC_BLOCK >> (LSL_DEV_CRC_LEVELS - l),
                            shifts + 32 * l);
    lsl_crc32c_zeros_op(LSL_DEV_CRC_BLOCK, c->op_block);
    for (int s = 0; st == LSL_OK && s < 2; s++)
        if ((e = cudaMalloc((void **)&c->dcrc[s], ncrc * 4)) != cudaSuccess ||
            (e = cudaHostAlloc((void **)&c->hcrc[s], ncrc * 4, cudaHostAllocDefault)) !=
                cudaSuccess)
            st = cuda_fail(e, "allocating the checksum buffers");
    if (st == LSL_OK &&
        ((e = cudaMalloc((void **)&c->dshift, sizeof shifts)) != cudaSuccess ||
         (e = cudaMemcpy(c->dshift, shifts, sizeof shifts, cudaMemcpyHostToDevice)) != cudaSuccess))
        st = cuda_fail(e, "uploading the checksum operators");
    LSL_TRY(lsl_i_agree(comm, st));
    /* NCCL needs one GPU per rank: compare host/bus ids across ranks. */
    all = lsl_i_calloc((size_t)size, sizeof id);
    if (!all)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    MPI_Allgather(id, sizeof id, MPI_CHAR, all ? all : id, all ? (int)sizeof id : 0, MPI_CHAR,
                  comm);
    int shared = 0;
    for (int i = 0; all && i < size; i++)
        for (int j = i + 1; j < size; j++)
            shared |= strcmp(all + i * sizeof id, all + j * sizeof id) == 0;
    const char *force = getenv("LSL_GATHER");
    int mode = !force || !*force            ? 1
               : strcmp(force, "mpi") == 0  ? 0
               : strcmp(force, "nccl") == 0 ? 2
                                            : -1;
    MPI_Bcast(&mode, 1, MPI_INT, 0, comm); /* rank 0's environment decides */
    if (mode < 0 && rank == 0)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "LSL_GATHER=\"%s\": use nccl, mpi, or leave it unset",
                        force);
    if (mode == 2 && !lsl_i_nccl_available() && rank == 0)
        st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                        "LSL_GATHER=nccl: this build of loraslab has no NCCL (configure found "
                        "none under the CUDA toolkit)");
    /* One rank holds all of A already: a communicator would only cost memory. */
    c->want_nccl = size > 1 && !shared && mode > 0 && lsl_i_nccl_available() ? mode : 0;
    c->why_mpi = !lsl_i_nccl_available() ? "this build has no NCCL"
                 : size == 1             ? "one rank"
                 : shared                ? "ranks share a GPU"
                                         : "LSL_GATHER=mpi";
    LSL_TRY(lsl_i_agree(comm, st));
    free(all);
    *out = c;
    return LSL_OK;
fail:
    free(all);
    lsl_i_cuda_close(&c);
    return rc;
}

const char *lsl_i_cuda_gather_path(const lsl_i_cuda *c)
{
    static __thread char text[128];
    if (c->want_nccl == 2)
        return "NCCL (one GPU per rank, LSL_GATHER=nccl) for A on the GPU";
    if (c->want_nccl == 1)
        return "MPI through host memory, NCCL (one GPU per rank) once 1 GiB of A has passed";
    snprintf(text, sizeof text, "MPI through host memory (%s)", c->why_mpi);
    return text;
}

void lsl_i_cuda_gathers(const lsl_i_cuda *c, uint64_t *nccl, uint64_t *mpi)
{
    *nccl = c->n_nccl;
    *mpi = c->n_mpi;
}

/* Collective.  The communicator costs seconds and hundreds of MiB of host memory (NCCL's
 * buffers and kernels), so it is built only when a gather can use it.  If NCCL cannot start on
 * some rank, every rank falls back to the MPI path (NCCL is detected, not configured). */
static void nccl_start(lsl_i_cuda *c, MPI_Comm comm)
{
    if (lsl_i_nccl_start(comm, &c->nccl))
        return;
    c->want_nccl = 0;
    c->why_mpi = "NCCL failed to start";
}

uint64_t lsl_i_cuda_slot_bytes(const lsl_i_cuda *c)
{
    return c->slot_bytes;
}

/* cudaMemcpy from pageable host memory may return before the DMA has landed (CUDA's API
 * synchronization notes), and the merge runs on a stream that need not wait for the legacy
 * stream (the staging stream is non-blocking; so may be the caller's).  Copy, then wait. */
static cudaError_t upload(void *dev, const void *host, uint64_t bytes)
{
    cudaError_t e = cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
    return e == cudaSuccess ? cudaStreamSynchronize(cudaStreamLegacy) : e;
}

/* A device buffer of at least `need` bytes in *p (grown, never shrunk; *cap its size). */
static lsl_status ensure(void **p, uint64_t *cap, uint64_t need, const char *what)
{
    if (need <= *cap && *p)
        return LSL_OK;
    cudaFree(*p);
    *p = NULL;
    cudaError_t e = cudaMalloc(p, need ? need : 1);
    if (e != cudaSuccess)
        return cuda_fail(e, what);
    *cap = need;
    return LSL_OK;
}

/* Whether A goes over NCCL now, given FSDP row shards on the GPU: the same answer on every rank
 * (each input is agreed). */
static int nccl_due(const lsl_i_cuda *c)
{
    return c->nccl || c->want_nccl == 2 ||
           (c->want_nccl == 1 && c->host_gathered >= NCCL_AFTER_BYTES);
}

lsl_status lsl_i_cuda_gather_a(lsl_i_cuda *c, MPI_Comm comm, const lsl_lora_part *l, uint64_t in,
                               int a_on_host, const void **a_dev, lsl_status local)
{
    lsl_status rc = LSL_OK, st = local;
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    uint64_t es = lsl_dtype_bits(l->a_dtype) / 8, r = l->rank, full = r * in * es;
    if (l->flags & LSL_I_LORA_A_GPU) { /* a batched put gathered A over NCCL already */
        LSL_TRY(lsl_i_agree(comm, st));
        *a_dev = l->a;
        return LSL_OK;
    }
    if (st == LSL_OK)
        st = ensure(&c->a_dev, &c->a_cap, full * (uint64_t)(size > 1 ? 2 : 1) + 256,
                    "device buffer for LoRA A");
    if (l->flags & LSL_I_LORA_A_FULL) { /* a batched put gathered A already, into host memory */
        c->n_mpi++;
        cudaError_t e = st == LSL_OK ? upload(c->a_dev, l->a, full) : cudaSuccess;
        if (e != cudaSuccess)
            st = cuda_fail(e, "copying LoRA A to the device");
        LSL_TRY(lsl_i_agree(comm, st));
        *a_dev = c->a_dev;
        return LSL_OK;
    }
    /* NCCL all-gathers equal counts: FSDP2 Shard(0) rows of A are ceil(r / N) per rank with a
     * shorter tail and empty trailing ranks, so gathering ceil(r / N) rows from everyone lands
     * every row at its final place.  Other tilings take the MPI path, and so do ranks that
     * disagree on that count ([count, -count] under MAX): NCCL would hang on it, while the MPI
     * path checks the geometry and reports it. */
    uint64_t chunk = (r + (uint64_t)size - 1) / (uint64_t)size, e0, en;
    lsl_partition_rows(r, size, rank, &e0, &en);
    int fsdp = !a_on_host && l->a_shard == LSL_SHARD_ROWS && l->a_off == e0 && l->a_count == en;
    int64_t v[2] = {fsdp ? (int64_t)(chunk * in * es) : -1, fsdp ? -(int64_t)(chunk * in * es) : 1},
            vmax[2];
    MPI_Allreduce(v, vmax, 2, MPI_INT64_T, MPI_MAX, comm);
    int all_fsdp = vmax[0] >= 0 && vmax[0] == -vmax[1];
    if (all_fsdp && !c->nccl && nccl_due(c))
        nccl_start(c, comm);
    if (c->nccl && all_fsdp) {
        LSL_TRY(lsl_i_agree(comm, st));
        c->n_nccl++;
        char *base = c->a_dev;
        uint64_t row = in * es;
        /* padded receive area after the real A when the tail is short */
        char *recv = chunk * (uint64_t)size > r ? base + full + 256 - (full + 256) % 256 : base;
        cudaError_t e = cudaSuccess;
        if (recv != base) {
            uint64_t need = full + 256 + chunk * (uint64_t)size * row;
            if (need > c->a_cap) {
                LSL_TRY(lsl_i_agree(
                    comm, ensure(&c->a_dev, &c->a_cap, need, "device buffer for LoRA A")));
                base = c->a_dev;
                recv = base + full + 256 - (full + 256) % 256;
            }
        }
        /* in-place all-gather: my rows go to my slot first */
        if (en)
            e = cudaMemcpy(recv + (uint64_t)rank * chunk * row, l->a, en * row,
                           cudaMemcpyDeviceToDevice);
        void *rv = recv;
        uint64_t cb = chunk * row;
        st = lsl_i_nccl_allgather(c->nccl, 1, &rv, &cb);
        if (e == cudaSuccess && st == LSL_OK && recv != base)
            e = cudaMemcpy(base, recv, full, cudaMemcpyDeviceToDevice);
        if (e == cudaSuccess)
            e = cudaDeviceSynchronize();
        if (st == LSL_OK && e != cudaSuccess)
            st = cuda_fail(e, "gathering LoRA A");
        LSL_TRY(lsl_i_agree(comm, st));
    } else {
        /* Through host memory: A is small (r x in). */
        c->n_mpi++;
        c->host_gathered += full;
        uint64_t mine = l->a_shard == LSL_SHARD_ROWS ? l->a_count * in * es : l->a_count * r * es;
        if (st == LSL_OK && full > c->host_cap) {
            free(c->host_full);
            c->host_full = lsl_i_malloc(full + 1);
            c->host_cap = c->host_full ? full : 0;
            if (!c->host_cap)
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A");
        }
        free(c->host_a);
        c->host_a = a_on_host ? NULL : lsl_i_malloc(mine + 1);
        if (st == LSL_OK && !a_on_host && !c->host_a)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A");
        cudaError_t e;
        if (st == LSL_OK && !a_on_host && mine &&
            (e = cudaMemcpy(c->host_a, l->a, mine, cudaMemcpyDeviceToHost)) != cudaSuccess)
            st = cuda_fail(e, "copying the LoRA A shard to the host");
        LSL_TRY(lsl_i_gather_a(comm, l->a_shard, a_on_host ? l->a : c->host_a, l->a_off, l->a_count,
                               r, in, es, c->host_full, st));
        e = upload(c->a_dev, c->host_full, full);
        LSL_TRY(lsl_i_agree(comm, e == cudaSuccess ? LSL_OK
                                                   : cuda_fail(e, "copying LoRA A to the device")));
    }
    *a_dev = c->a_dev;
fail:
    return rc;
}

lsl_status lsl_i_cuda_gather_a_batch(lsl_i_cuda *c, MPI_Comm comm, uint64_t n,
                                     const lsl_lora_part *const *l, const uint64_t *in, void **full,
                                     lsl_status local)
{
    lsl_status rc = LSL_OK, st = local;
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    /* Per part, [bytes, -bytes] of the ceil(r / N) rows each rank sends when this rank holds its
     * FSDP row shard on the GPU, else [-1, 1]: after MAX, a part goes over NCCL only where every
     * rank holds its shard and all agree on the count (a mismatch would hang NCCL; the host path
     * reports it). */
    int64_t *v = lsl_i_calloc(4 * n + 2, sizeof *v), *vmax = v ? v + 2 * n + 1 : NULL;
    if (!v && st == LSL_OK)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(lsl_i_agree(comm, st));
    uint64_t host = 0, total = 0, k = 0;
    for (uint64_t i = 0; i < n; i++) {
        full[i] = NULL;
        int64_t b = -1;
        if (l[i]) {
            uint64_t r = l[i]->rank, e0, en, row = in[i] * (lsl_dtype_bits(l[i]->a_dtype) / 8);
            lsl_partition_rows(r, size, rank, &e0, &en);
            if (l[i]->a_shard == LSL_SHARD_ROWS && l[i]->a_off == e0 && l[i]->a_count == en &&
                (en == 0 || l[i]->a))
                b = (int64_t)((r + (uint64_t)size - 1) / (uint64_t)size * row);
            host += r * row;
        }
        v[2 * i] = b;
        v[2 * i + 1] = -b;
    }
    MPI_Allreduce(v, vmax, (int)(2 * n), MPI_INT64_T, MPI_MAX, comm);
    int64_t *cb = v; /* per part: bytes each rank sends over NCCL, or -1 */
    for (uint64_t i = 0; i < n; i++) {
        cb[i] = vmax[2 * i] >= 0 && vmax[2 * i] == -vmax[2 * i + 1] ? vmax[2 * i] : -1;
        /* 256-byte aligned regions, as cudaMalloc's: the merge kernel loads A in 16 bytes */
        total += cb[i] < 0 ? 0 : ((uint64_t)size * (uint64_t)cb[i] + 255) / 256 * 256;
        k += cb[i] >= 0;
    }
    if (k && !c->nccl && nccl_due(c))
        nccl_start(c, comm);
    if (!k || !c->nccl) {
        c->host_gathered += host;
        goto fail; /* rc is LSL_OK: every part takes the host path */
    }
    LSL_TRY(lsl_i_agree(
        comm, ensure(&c->batch_dev, &c->batch_cap, total, "device buffer for a batch of LoRA A")));
    /* In place, as in lsl_i_cuda_gather_a: this rank's rows go to its slot of each region first,
     * and ceil(r / N) rows from every rank land each row at its final place (padding after). */
    char *p = c->batch_dev;
    cudaError_t e = cudaSuccess;
    for (uint64_t i = 0; i < n; i++) {
        if (cb[i] < 0)
            continue;
        uint64_t row = in[i] * (lsl_dtype_bits(l[i]->a_dtype) / 8);
        if (e == cudaSuccess && l[i]->a_count)
            e = cudaMemcpy(p + (uint64_t)rank * (uint64_t)cb[i], l[i]->a, l[i]->a_count * row,
                           cudaMemcpyDeviceToDevice);
        full[i] = p;
        host -= l[i]->rank * row;
        p += ((uint64_t)size * (uint64_t)cb[i] + 255) / 256 * 256;
    }
    /* Every rank issues the group, even after a failed copy: a peer must not wait on it.  The
     * group's list reuses the count array: part i's receive buffer and byte count, packed. */
    void **rv = (void **)vmax;
    uint64_t *bytes = (uint64_t *)vmax + n, j = 0;
    for (uint64_t i = 0; i < n; i++)
        if (cb[i] >= 0)
            rv[j] = full[i], bytes[j++] = (uint64_t)cb[i];
    st = lsl_i_nccl_allgather(c->nccl, k, rv, bytes);
    if (e == cudaSuccess)
        e = cudaDeviceSynchronize();
    c->n_nccl += k;
    c->host_gathered += host;
    if (st == LSL_OK && e != cudaSuccess)
        st = cuda_fail(e, "gathering a batch of LoRA A");
    LSL_TRY(lsl_i_agree(comm, st));
fail:
    if (rc != LSL_OK)
        for (uint64_t i = 0; i < n; i++)
            full[i] = NULL;
    free(v);
    return rc;
}

lsl_status lsl_i_cuda_download(void *host, const void *dev, uint64_t bytes)
{
    cudaError_t e = bytes ? cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost) : cudaSuccess;
    return e == cudaSuccess ? LSL_OK : cuda_fail(e, "copying a LoRA A shard to the host");
}

lsl_status lsl_i_cuda_upload_b(lsl_i_cuda *c, const void *host, uint64_t bytes, const void **dev)
{
    lsl_status st = ensure(&c->b_dev, &c->b_cap, bytes, "device buffer for LoRA B");
    cudaError_t e;
    if (st == LSL_OK && bytes && (e = upload(c->b_dev, host, bytes)) != cudaSuccess)
        st = cuda_fail(e, "copying LoRA B to the device");
    *dev = c->b_dev;
    return st;
}

/* The work of one chunk, queued on stream; returns the first error and what failed (no error
 * message is set: the staging thread calls this too). */
static cudaError_t enqueue(lsl_i_cuda *c, int slot, cudaStream_t st, lsl_dtype wt, const void *src,
                           uint64_t bytes, const lsl_lora_part *l, const void *a_dev,
                           const void *b_dev, uint64_t m, uint64_t n, const char **what)
{
    cudaError_t e = cudaSuccess;
    const void *from = src;
    c->merging[slot] = l != NULL;
    if (l) {
        *what = "resetting the NaN flag";
        if ((e = cudaMemsetAsync(c->dbad[slot], 0xFF, sizeof *c->dbad[slot], st)) != cudaSuccess)
            return e;
        *what = "merge kernel launch";
        e = (cudaError_t)lsl_dev_merge(dev_type(wt), dev_type(l->a_dtype), dev_type(l->b_dtype),
                                       c->dslot[slot], src, a_dev, b_dev, (int64_t)m, (int64_t)n,
                                       (int)l->rank, l->scaling, c->dbad[slot], st);
        if (e != cudaSuccess)
            return e;
        *what = "reading the NaN flag";
        if ((e = cudaMemcpyAsync(&c->hbad[slot], c->dbad[slot], sizeof *c->hbad,
                                 cudaMemcpyDeviceToHost, st)) != cudaSuccess)
            return e;
        from = c->dslot[slot];
    }
    c->crc_gpu[slot] = 1;
    c->crc_bytes[slot] = bytes;
    uint64_t nb = bytes / LSL_DEV_CRC_BLOCK;
    if (nb) {
        *what = "checksum kernel launch";
        if ((e = (cudaError_t)lsl_dev_crc32c_blocks(from, (int64_t)nb, c->dcrc[slot], c->dshift,
                                                    st)) != cudaSuccess ||
            (e = cudaMemcpyAsync(c->hcrc[slot], c->dcrc[slot], nb * 4, cudaMemcpyDeviceToHost,
                                 st)) != cudaSuccess)
            return e;
    }
    *what = "device-to-host copy of a chunk";
    if ((e = cudaMemcpyAsync(c->pinned[slot], from, bytes, cudaMemcpyDeviceToHost, st)) !=
        cudaSuccess)
        return e;
    *what = "event record";
    return cudaEventRecord(c->done[slot], st);
}

lsl_status lsl_i_cuda_launch(lsl_i_cuda *c, int slot, void *stream, lsl_dtype wt, const void *src,
                             uint64_t bytes, const lsl_lora_part *l, const void *a_dev,
                             const void *b_dev, uint64_t m, uint64_t n)
{
    const char *what = "";
    cudaError_t e =
        enqueue(c, slot, (cudaStream_t)stream, wt, src, bytes, l, a_dev, b_dev, m, n, &what);
    return e == cudaSuccess ? LSL_OK : cuda_fail(e, what);
}

static void run_job(lsl_i_cuda *c, stage_job *j)
{
    unsigned char *dst = c->pinned[j->slot];
    if ((j->err = lsl_i_pread_raw(j->fd, dst, j->bytes, j->off, &j->at)) != 0)
        return;
    if (!j->has_l)
        return; /* a plain copy: the bytes are where the writer wants them */
    j->what = "copying a chunk to the device";
    j->cerr = cudaMemcpyAsync(c->din[j->slot], dst, j->bytes, cudaMemcpyHostToDevice, c->stream);
    if (j->cerr == cudaSuccess)
        j->cerr = enqueue(c, j->slot, c->stream, j->wt, c->din[j->slot], j->bytes, &j->l, j->a_dev,
                          j->b_dev, j->m, j->n, &j->what);
}

static void *stage_main(void *arg)
{
    lsl_i_cuda *c = arg;
    cudaSetDevice(c->device); /* a new thread starts on device 0 */
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->state != 1 && !c->quit)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->state != 1)
            break;
        pthread_mutex_unlock(&c->mu);
        run_job(c, &c->job);
        pthread_mutex_lock(&c->mu);
        c->state = 2;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

lsl_status lsl_i_cuda_stage(lsl_i_cuda *c, int slot, int fd, uint64_t off, const char *path,
                            lsl_dtype wt, uint64_t bytes, const lsl_lora_part *l, const void *a_dev,
                            const void *b_dev, uint64_t m, uint64_t n)
{
    cudaError_t e = cudaSuccess;
    if (!c->stream && (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)))
        return cuda_fail(e, "creating the staging stream");
    for (int s = 0; s < 2 && l; s++)
        if (!c->din[s] && (e = cudaMalloc(&c->din[s], c->slot_bytes)) != cudaSuccess)
            return cuda_fail(e, "allocating the device input slots");
    if (!c->thr_running) {
        if (pthread_mutex_init(&c->mu, NULL) || pthread_cond_init(&c->cv, NULL) ||
            pthread_create(&c->thr, NULL, stage_main, c))
            return lsl_i_fail(LSL_ERR_NOMEM, "cannot start the staging thread");
        c->thr_running = 1;
    }
    c->crc_gpu[slot] = 0; /* a plain copy from the file never reaches the GPU */
    pthread_mutex_lock(&c->mu);
    c->job = (stage_job){.slot = slot,
                         .fd = fd,
                         .has_l = l != NULL,
                         .off = off,
                         .bytes = bytes,
                         .m = m,
                         .n = n,
                         .wt = wt,
                         .a_dev = a_dev,
                         .b_dev = b_dev};
    c->job.path = path;
    if (l)
        c->job.l = *l;
    c->state = 1;
    c->staged[slot] = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return LSL_OK;
}

/* Wait for slot's posted job and take its results. */
static stage_job take_job(lsl_i_cuda *c, int slot)
{
    pthread_mutex_lock(&c->mu);
    while (c->state == 1)
        pthread_cond_wait(&c->cv, &c->mu);
    c->state = 0;
    stage_job j = c->job;
    pthread_mutex_unlock(&c->mu);
    c->staged[slot] = 0;
    return j;
}

/* Join a posted job: its read or launch error, formatted here where the message belongs. */
static lsl_status join_job(lsl_i_cuda *c, int slot, int *launched)
{
    stage_job j = take_job(c, slot);
    *launched = j.has_l && !j.err;
    if (j.err)
        return lsl_i_pread_error(j.err, j.at, j.path);
    if (j.cerr != cudaSuccess)
        return cuda_fail(j.cerr, j.what);
    return LSL_OK;
}

void lsl_i_cuda_drain(lsl_i_cuda *c, int slot)
{
    if (c->staged[slot])
        (void)take_job(c, slot);
    cudaEventSynchronize(c->done[slot]);
}

lsl_status lsl_i_cuda_wait(lsl_i_cuda *c, int slot, const void **host, uint64_t *bad, uint32_t *crc,
                           int *crc_done)
{
    int launched = 1;
    *crc_done = 0;
    if (c->staged[slot]) {
        lsl_status st = join_job(c, slot, &launched);
        if (st != LSL_OK || !launched) {
            *host = c->pinned[slot];
            return st;
        }
    }
    cudaError_t e = cudaEventSynchronize(c->done[slot]);
    if (e != cudaSuccess)
        return cuda_fail(e, "waiting for a chunk");
    *host = c->pinned[slot];
    if (c->merging[slot] && c->hbad[slot] != ~0ull) {
        *bad = c->hbad[slot];
        return LSL_ERR_NONFINITE;
    }
    if (c->crc_gpu[slot]) { /* the blocks, then the tail (< one block) from the host copy */
        uint32_t v = *crc;
        uint64_t nb = c->crc_bytes[slot] / LSL_DEV_CRC_BLOCK, done = nb * LSL_DEV_CRC_BLOCK;
        for (uint64_t b = 0; b < nb; b++)
            v = lsl_crc32c_apply(c->op_block, v) ^ c->hcrc[slot][b];
        *crc = lsl_crc32c_extend(v, (const unsigned char *)*host + done, c->crc_bytes[slot] - done);
        *crc_done = 1;
    }
    return LSL_OK;
}
