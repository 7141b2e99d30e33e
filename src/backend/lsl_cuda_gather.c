/* LoRA A onto the GPU: gathered through host memory (the library's communicator), or all-gathered
 * over NCCL in place when every rank has its own GPU and holds its FSDP row shard. */
#include "lsl_cuda_s.h"

#include "lsl_gather.h"

#include <stdlib.h>
#include <string.h>

/* Collective.  The communicator costs seconds and hundreds of MiB of host memory (NCCL's
 * buffers and kernels), so it is built only when a gather can use it.  If NCCL cannot start on
 * some rank, every rank falls back to the MPI path (NCCL is detected, not configured). */
static void nccl_start(lsl_i_cuda *c, lsl_i_comm *comm)
{
    if (lsl_i_nccl_start(comm, &c->nccl))
        return;
    c->want_nccl = 0;
    c->why_mpi = "NCCL failed to start";
}

/* cudaMemcpy from pageable host memory may return before the DMA has landed (CUDA's API
 * synchronization notes), and the merge runs on a stream that need not wait for the legacy
 * stream (the staging stream is non-blocking; so may be the caller's).  Copy, then wait. */
cudaError_t lsl_i_cuda_upload_sync(void *dev, const void *host, uint64_t bytes)
{
    cudaError_t e = cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
    return e == cudaSuccess ? cudaStreamSynchronize(cudaStreamLegacy) : e;
}

lsl_status lsl_i_cuda_ensure(void **p, uint64_t *cap, uint64_t need, const char *what)
{
    if (need <= *cap && *p)
        return LSL_OK;
    cudaFree(*p);
    *p = NULL;
    cudaError_t e = cudaMalloc(p, need ? need : 1);
    if (e != cudaSuccess)
        return lsl_i_cuda_fail(e, what);
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

lsl_status lsl_i_cuda_gather_a(lsl_i_cuda *c, lsl_i_comm *comm, const lsl_i_lora *l, uint64_t in,
                               int a_on_host, const void **a_dev, lsl_status local)
{
    lsl_status rc = LSL_OK, st = local;
    int rank = comm->rank, size = comm->size;
    uint64_t es = lsl_dtype_bits(l->a_dtype) / 8, r = l->rank, full = r * in * es;
    if (l->flags & LSL_I_LORA_A_GPU) { /* a batched put gathered A over NCCL already */
        LSL_TRY(lsl_i_agree(comm, st));
        *a_dev = l->a;
        return LSL_OK;
    }
    if (st == LSL_OK)
        st = lsl_i_cuda_ensure(&c->a_dev, &c->a_cap, full * (uint64_t)(size > 1 ? 2 : 1) + 256,
                               "device buffer for LoRA A");
    if (l->flags & LSL_I_LORA_A_FULL) { /* a batched put gathered A already, into host memory */
        c->n_mpi++;
        cudaError_t e = st == LSL_OK ? lsl_i_cuda_upload_sync(c->a_dev, l->a, full) : cudaSuccess;
        if (e != cudaSuccess)
            st = lsl_i_cuda_fail(e, "copying LoRA A to the device");
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
    int64_t v = fsdp ? (int64_t)(chunk * in * es) : -1;
    lsl_status cs = LSL_OK;
    int all_fsdp = lsl_i_same_everywhere(comm, &v, 1, &cs) && v >= 0;
    if (cs != LSL_OK)
        LSL_GOTO(cs);
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
                LSL_TRY(lsl_i_agree(comm, lsl_i_cuda_ensure(&c->a_dev, &c->a_cap, need,
                                                            "device buffer for LoRA A")));
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
            st = lsl_i_cuda_fail(e, "gathering LoRA A");
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
            st = lsl_i_cuda_fail(e, "copying the LoRA A shard to the host");
        LSL_TRY(lsl_i_gather_a(comm, l->a_shard, a_on_host ? l->a : c->host_a, l->a_off, l->a_count,
                               r, in, es, c->host_full, st));
        e = lsl_i_cuda_upload_sync(c->a_dev, c->host_full, full);
        LSL_TRY(lsl_i_agree(
            comm, e == cudaSuccess ? LSL_OK : lsl_i_cuda_fail(e, "copying LoRA A to the device")));
    }
    *a_dev = c->a_dev;
fail:
    return rc;
}

lsl_status lsl_i_cuda_gather_a_batch(lsl_i_cuda *c, lsl_i_comm *comm, uint64_t n,
                                     const lsl_i_lora *const *l, const uint64_t *in, void **full,
                                     lsl_status local)
{
    lsl_status rc = LSL_OK, st = local;
    int rank = comm->rank, size = comm->size;
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
    memcpy(vmax, v, 2 * n * sizeof *v);
    LSL_TRY(lsl_i_allreduce_i64(comm, vmax, 2 * n, LSL_OP_MAX));
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
    LSL_TRY(lsl_i_agree(comm, lsl_i_cuda_ensure(&c->batch_dev, &c->batch_cap, total,
                                                "device buffer for a batch of LoRA A")));
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
        st = lsl_i_cuda_fail(e, "gathering a batch of LoRA A");
    LSL_TRY(lsl_i_agree(comm, st));
fail:
    if (rc != LSL_OK)
        for (uint64_t i = 0; i < n; i++)
            full[i] = NULL;
    free(v);
    return rc;
}
