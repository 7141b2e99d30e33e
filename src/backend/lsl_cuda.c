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

#include "lsl_cuda_s.h"

lsl_status lsl_i_cuda_fail(cudaError_t e, const char *what)
{
    return lsl_i_fail(LSL_ERR_CUDA, "%s: %s (%s)", what, cudaGetErrorString(e),
                      cudaGetErrorName(e));
}

#define CU(call, what)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            rc = lsl_i_cuda_fail(e_, what);                                                        \
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
    lsl_i_worker_stop(&c->stager); /* it finishes a posted job first */
    if (c->stream)
        cudaStreamSynchronize(c->stream), cudaStreamDestroy(c->stream);
    for (int s = 0; s < LSL_I_RING_MAX; s++) {
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
    cudaFree(c->stash);
    free(c->host_a);
    free(c->host_full);
    lsl_i_nccl_close(&c->nccl);
    free(c);
    *pc = NULL;
}

/* This rank's place among the ranks on its host (by host name, so callbacks serve as MPI does):
 * *lr ranks before it, *ls in all.  An all-gather of 96 bytes per rank. */
static lsl_status node_local(lsl_i_comm *comm, int *lr, int *ls)
{
    enum { H = 96 };
    char host[H];
    memset(host, 0, sizeof host);
    gethostname(host, sizeof host - 1);
    char *all = lsl_i_calloc((size_t)comm->size, H);
    lsl_status st = lsl_i_agree(comm, all ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory"));
    if (st == LSL_OK)
        st = lsl_i_allgather(comm, host, all, H);
    *lr = 0;
    *ls = 0;
    for (int k = 0; st == LSL_OK && k < comm->size; k++)
        if (strncmp(all + (size_t)k * H, host, H) == 0) {
            *lr += k < comm->rank;
            *ls += 1;
        }
    free(all);
    return st;
}

lsl_status lsl_i_cuda_select(lsl_i_comm *comm, int *ranks_per_gpu)
{
    int rank = comm->rank, lr = 0, ls = 1, nd = 0;
    lsl_status rc = node_local(comm, &lr, &ls);
    if (rc != LSL_OK)
        return rc;
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
    int64_t rpg = nd ? (ls + nd - 1) / nd : 0;
    rc = lsl_i_bcast_raw(comm, &rpg, sizeof rpg, 0);
    if (rc != LSL_OK)
        return rc;
    if (ranks_per_gpu)
        *ranks_per_gpu = (int)rpg;
    return lsl_i_agree(comm, st);
}

lsl_status lsl_i_cuda_open(lsl_i_comm *comm, uint64_t staging_bytes, int nslots, lsl_i_cuda **out)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    int rank = comm->rank, size = comm->size;
    lsl_i_cuda *c = lsl_i_calloc(1, sizeof *c);
    char id[160] = "", *all = lsl_i_calloc((size_t)size, sizeof id);
    *out = NULL;
    if (!c || !all) {
        free(c);
        free(all);
        return lsl_i_agree(comm, lsl_i_fail(LSL_ERR_NOMEM, "out of memory"));
    }
    c->nslots = nslots < 2 ? 2 : nslots > LSL_I_RING_MAX ? LSL_I_RING_MAX : nslots;
    uint64_t share = staging_bytes / (uint64_t)c->nslots;
    c->slot_bytes = share < LSL_I_RING_SLOT_MAX ? share / 256 * 256 : LSL_I_RING_SLOT_MAX;
    cudaError_t e = cudaGetDevice(&c->device);
    if (e == cudaSuccess) {
        char bus[64] = "", host[96] = "";
        gethostname(host, sizeof host - 1);
        e = cudaDeviceGetPCIBusId(bus, sizeof bus, c->device);
        snprintf(id, sizeof id, "%s/%s", host, bus);
    }
    if (e == cudaSuccess)
        e = cudaHostAlloc((void **)&c->hbad, LSL_I_RING_MAX * sizeof *c->hbad,
                          cudaHostAllocDefault);
    if (e != cudaSuccess)
        st = lsl_i_cuda_fail(e, "no usable CUDA device");
    for (int s = 0; st == LSL_OK && s < c->nslots; s++) {
        /* Exact size: cudaHostAlloc does not round up the way a caching allocator does. */
        if ((e = cudaHostAlloc(&c->pinned[s], c->slot_bytes, cudaHostAllocDefault)) !=
                cudaSuccess ||
            (e = cudaMalloc(&c->dslot[s], c->slot_bytes)) != cudaSuccess ||
            (e = cudaMalloc((void **)&c->dbad[s], sizeof(unsigned long long))) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&c->done[s], cudaEventDisableTiming)) != cudaSuccess)
            st = lsl_i_cuda_fail(e, "allocating the pinned staging ring");
    }
    uint64_t ncrc = c->slot_bytes / LSL_DEV_CRC_BLOCK + 1;
    uint32_t shifts[LSL_DEV_CRC_LEVELS * 32];
    for (int l = 0; l < LSL_DEV_CRC_LEVELS; l++)
        lsl_crc32c_zeros_op((uint64_t)LSL_DEV_CRC_BLOCK >> (LSL_DEV_CRC_LEVELS - l),
                            shifts + 32 * l);
    lsl_crc32c_zeros_op(LSL_DEV_CRC_BLOCK, c->op_block);
    for (int s = 0; st == LSL_OK && s < c->nslots; s++)
        if ((e = cudaMalloc((void **)&c->dcrc[s], ncrc * 4)) != cudaSuccess ||
            (e = cudaHostAlloc((void **)&c->hcrc[s], ncrc * 4, cudaHostAllocDefault)) !=
                cudaSuccess)
            st = lsl_i_cuda_fail(e, "allocating the checksum buffers");
    if (st == LSL_OK &&
        ((e = cudaMalloc((void **)&c->dshift, sizeof shifts)) != cudaSuccess ||
         (e = cudaMemcpy(c->dshift, shifts, sizeof shifts, cudaMemcpyHostToDevice)) != cudaSuccess))
        st = lsl_i_cuda_fail(e, "uploading the checksum operators");
    LSL_TRY(lsl_i_agree(comm, st));
    /* NCCL needs one GPU per rank: compare host/bus ids across ranks. */
    LSL_TRY(lsl_i_allgather(comm, id, all, sizeof id));
    int shared = 0;
    for (int i = 0; i < size; i++)
        for (int j = i + 1; j < size; j++)
            shared |= strcmp(all + i * sizeof id, all + j * sizeof id) == 0;
    const char *force = lsl_i_env(LSL_ENV_GATHER);
    int64_t mode = !force || !*force            ? 1
                   : strcmp(force, "mpi") == 0  ? 0
                   : strcmp(force, "nccl") == 0 ? 2
                                                : -1;
    LSL_TRY(lsl_i_bcast_raw(comm, &mode, sizeof mode, 0)); /* rank 0's environment decides */
    if (mode < 0 && rank == 0)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "LSL_GATHER=\"%s\": use nccl, mpi, or leave it unset",
                        force);
    if (mode == 2 && !lsl_i_nccl_available() && rank == 0)
        st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                        "LSL_GATHER=nccl: this build of loraslab has no NCCL (configure found "
                        "none under the CUDA toolkit)");
    /* One rank holds all of A already: a communicator would only cost memory. */
    c->want_nccl = size > 1 && !shared && mode > 0 && lsl_i_nccl_available() ? (int)mode : 0;
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
        return "host memory, NCCL (one GPU per rank) once 1 GiB of A has passed";
    snprintf(text, sizeof text, "host memory (%s)", c->why_mpi);
    return text;
}

void lsl_i_cuda_gathers(const lsl_i_cuda *c, uint64_t *nccl, uint64_t *mpi)
{
    *nccl = c->n_nccl;
    *mpi = c->n_mpi;
}

uint64_t lsl_i_cuda_slot_bytes(const lsl_i_cuda *c)
{
    return c->slot_bytes;
}

int lsl_i_cuda_slots(const lsl_i_cuda *c)
{
    return c->nslots;
}

const void *lsl_i_cuda_slot_host(const lsl_i_cuda *c, int slot)
{
    return c->pinned[slot];
}

lsl_status lsl_i_cuda_after_caller(void *stream)
{
    cudaError_t e = cudaStreamSynchronize((cudaStream_t)stream);
    return e == cudaSuccess
               ? LSL_OK
               : lsl_i_cuda_fail(e, "waiting for the work queued on the part's stream");
}

lsl_status lsl_i_cuda_download(void *host, const void *dev, uint64_t bytes)
{
    cudaError_t e = bytes ? cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost) : cudaSuccess;
    return e == cudaSuccess ? LSL_OK : lsl_i_cuda_fail(e, "copying a LoRA A shard to the host");
}

lsl_status lsl_i_cuda_download_on(void *host, const void *dev, uint64_t bytes, void *stream,
                                  const char *what)
{
    cudaStream_t st = (cudaStream_t)stream;
    cudaError_t e =
        bytes ? cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, st) : cudaSuccess;
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(st);
    return e == cudaSuccess ? LSL_OK : lsl_i_cuda_fail(e, what);
}

lsl_status lsl_i_cuda_upload_many(lsl_i_cuda *c, uint64_t n, const void *const *host,
                                  const uint64_t *bytes, const void **dev)
{
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++)
        total += host[i] ? (bytes[i] + 255) / 256 * 256 : 0;
    lsl_status st = lsl_i_cuda_ensure(&c->stash, &c->stash_cap, total ? total : 1,
                                      "device memory for a batch's LoRA A");
    for (uint64_t i = 0, off = 0; st == LSL_OK && i < n; i++) {
        dev[i] = NULL;
        if (!host[i])
            continue;
        void *d = (unsigned char *)c->stash + off;
        cudaError_t e = lsl_i_cuda_upload_sync(d, host[i], bytes[i]);
        if (e != cudaSuccess)
            st = lsl_i_cuda_fail(e, "uploading a batch's LoRA A");
        dev[i] = d;
        off += (bytes[i] + 255) / 256 * 256;
    }
    return st;
}

lsl_status lsl_i_cuda_upload_b(lsl_i_cuda *c, const void *host, uint64_t bytes, const void **dev)
{
    lsl_status st = lsl_i_cuda_ensure(&c->b_dev, &c->b_cap, bytes, "device buffer for LoRA B");
    cudaError_t e;
    if (st == LSL_OK && bytes && (e = lsl_i_cuda_upload_sync(c->b_dev, host, bytes)) != cudaSuccess)
        st = lsl_i_cuda_fail(e, "copying LoRA B to the device");
    *dev = c->b_dev;
    return st;
}

/* The work of one chunk, queued on stream; returns the first error and what failed (no error
 * message is set: the staging thread calls this too).  crc: checksum the slot on the GPU (not
 * for a partial chunk: its own bytes are only a part of it, which the caller checksums). */
static cudaError_t enqueue(lsl_i_cuda *c, int slot, cudaStream_t st, lsl_dtype wt, const void *src,
                           uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                           const void *b_dev, uint64_t m, uint64_t n, int crc, const char **what)
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
    c->crc_gpu[slot] = crc;
    c->crc_bytes[slot] = bytes;
    uint64_t nb = crc ? bytes / LSL_DEV_CRC_BLOCK : 0;
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
                             uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                             const void *b_dev, uint64_t m, uint64_t n)
{
    const char *what = "";
    cudaError_t e =
        enqueue(c, slot, (cudaStream_t)stream, wt, src, bytes, l, a_dev, b_dev, m, n, 1, &what);
    return e == cudaSuccess ? LSL_OK : lsl_i_cuda_fail(e, what);
}

static cudaError_t alloc_din(lsl_i_cuda *c)
{
    cudaError_t e = cudaSuccess;
    for (int s = 0; s < c->nslots && e == cudaSuccess; s++)
        if (!c->din[s])
            e = cudaMalloc(&c->din[s], c->slot_bytes);
    return e;
}

lsl_status lsl_i_cuda_launch_rows_of(lsl_i_cuda *c, int slot, void *stream, lsl_dtype wt,
                                     const void *own, uint64_t pos, uint64_t own_bytes,
                                     uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                                     const void *b_dev, uint64_t m, uint64_t n)
{
    const char *what = "allocating the device input slots";
    cudaStream_t st = (cudaStream_t)stream;
    cudaError_t e =
        bytes > c->slot_bytes || pos + own_bytes > bytes ? cudaErrorInvalidValue : alloc_din(c);
    if (e == cudaSuccess) {
        /* zeros for the elements the part does not hold: they are merged, never written */
        what = "zeroing a partial chunk";
        e = cudaMemsetAsync(c->din[slot], 0, bytes, st);
    }
    if (e == cudaSuccess) {
        what = "copying a partial chunk's elements";
        e = cudaMemcpyAsync((unsigned char *)c->din[slot] + pos, own, own_bytes,
                            cudaMemcpyDeviceToDevice, st);
    }
    if (e == cudaSuccess)
        e = enqueue(c, slot, st, wt, c->din[slot], bytes, l, a_dev, b_dev, m, n, 0, &what);
    return e == cudaSuccess ? LSL_OK : lsl_i_cuda_fail(e, what);
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
                          j->b_dev, j->m, j->n, 1, &j->what);
}

static void stage_run(void *arg)
{
    lsl_i_cuda *c = arg;
    cudaSetDevice(c->device); /* the thread starts on device 0; cheap when already set */
    run_job(c, &c->job);
}

lsl_status lsl_i_cuda_stage(lsl_i_cuda *c, int slot, int fd, uint64_t off, const char *path,
                            lsl_dtype wt, uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                            const void *b_dev, uint64_t m, uint64_t n)
{
    cudaError_t e = cudaSuccess;
    if (!c->stream && (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)))
        return lsl_i_cuda_fail(e, "creating the staging stream");
    if (l && (e = alloc_din(c)) != cudaSuccess)
        return lsl_i_cuda_fail(e, "allocating the device input slots");
    int te = c->stager.running ? 0 : lsl_i_worker_start(&c->stager);
    if (te)
        return lsl_i_fail_errno(LSL_ERR_NOMEM, te, "cannot start the staging thread");
    c->crc_gpu[slot] = 0;          /* a plain copy from the file never reaches the GPU */
    lsl_i_worker_wait(&c->stager); /* the job is the thread's until then */
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
    c->staged[slot] = 1;
    lsl_i_worker_post(&c->stager, stage_run, c);
    return LSL_OK;
}

/* Wait for slot's posted job and take its results. */
static stage_job take_job(lsl_i_cuda *c, int slot)
{
    lsl_i_worker_wait(&c->stager);
    stage_job j = c->job;
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
        return lsl_i_cuda_fail(j.cerr, j.what);
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
        return lsl_i_cuda_fail(e, "waiting for a chunk");
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
