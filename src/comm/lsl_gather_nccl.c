#include "lsl_gather_nccl.h"

#ifdef LSL_HAVE_NCCL

#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct lsl_i_nccl {
    ncclComm_t comm;
    int rank;
};

/* How long a rank waits for NCCL to start or finish a call before giving up on it. */
#define NCCL_LIMIT_S 120.0

/* Poll a non-blocking communicator until its pending work settles, for at most `limit` seconds
 * (a peer that failed early must not leave this rank waiting in NCCL forever). */
static ncclResult_t settle(ncclComm_t comm, ncclResult_t nr, double limit)
{
    double t0 = lsl_i_now();
    while (nr == ncclInProgress && lsl_i_now() - t0 < limit) {
        usleep(200);
        if (ncclCommGetAsyncError(comm, &nr) != ncclSuccess)
            return ncclInternalError;
    }
    return nr;
}

int lsl_i_nccl_available(void)
{
    return 1;
}

int lsl_i_nccl_start(lsl_i_comm *comm, lsl_i_nccl **out)
{
    int rank = comm->rank, size = comm->size;
    *out = NULL;
    lsl_i_nccl *c = lsl_i_calloc(1, sizeof *c);
    ncclUniqueId uid;
    memset(&uid, 0, sizeof uid);
    ncclResult_t nr = ncclSuccess;
    if (rank == 0)
        nr = ncclGetUniqueId(&uid);
    int64_t root_ok = nr == ncclSuccess;
    /* a failed broadcast breaks the communicator: every later call fails on this rank */
    if (lsl_i_bcast_raw(comm, &root_ok, sizeof root_ok, 0) != LSL_OK ||
        lsl_i_bcast_raw(comm, &uid, sizeof uid, 0) != LSL_OK)
        root_ok = 0;
    if (root_ok && c) {
        ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
        cfg.blocking = 0;
        nr = ncclCommInitRankConfig(&c->comm, size, uid, rank, &cfg);
        if (c->comm)
            nr = settle(c->comm, nr, NCCL_LIMIT_S);
    }
    int64_t mine = c && root_ok && nr == ncclSuccess, ok = mine;
    if (lsl_i_allreduce_i64(comm, &ok, 1, LSL_OP_MIN) != LSL_OK)
        ok = 0;
    if (ok) {
        c->rank = rank;
        *out = c;
        return 1;
    }
    if (c && c->comm)
        ncclCommAbort(c->comm);
    free(c);
    if (!mine)
        lsl_i_log(LSL_LOG_WARN,
                  "loraslab: rank %d: NCCL failed to start (%s); LoRA A goes through host "
                  "memory (MPI) instead\n",
                  rank,
                  !c                     ? "out of memory"
                  : nr == ncclInProgress ? "timed out"
                                         : ncclGetErrorString(nr));
    return 0;
}

lsl_status lsl_i_nccl_allgather(lsl_i_nccl *c, uint64_t k, void *const *recv, const uint64_t *bytes)
{
    /* Every rank issues the whole group, even after a failed call: a peer must not wait on it. */
    ncclResult_t nr = ncclGroupStart();
    for (uint64_t i = 0; i < k; i++) {
        ncclResult_t r1 = ncclAllGather((char *)recv[i] + (uint64_t)c->rank * bytes[i], recv[i],
                                        bytes[i], ncclChar, c->comm, 0);
        if (nr == ncclSuccess)
            nr = r1 == ncclInProgress ? ncclSuccess : r1;
    }
    ncclResult_t ne = settle(c->comm, ncclGroupEnd(), NCCL_LIMIT_S);
    nr = nr == ncclSuccess ? ne : nr;
    return nr == ncclSuccess
               ? LSL_OK
               : lsl_i_fail(LSL_ERR_NCCL, "ncclAllGather of LoRA A: %s", ncclGetErrorString(nr));
}

void lsl_i_nccl_close(lsl_i_nccl **pc)
{
    if (!pc || !*pc)
        return;
    /* non-blocking communicator: let its finalization settle before freeing it */
    settle((*pc)->comm, ncclCommFinalize((*pc)->comm), NCCL_LIMIT_S);
    ncclCommDestroy((*pc)->comm);
    free(*pc);
    *pc = NULL;
}

#else /* no NCCL in this build: every gather goes through host memory */

int lsl_i_nccl_available(void)
{
    return 0;
}

int lsl_i_nccl_start(lsl_i_comm *comm, lsl_i_nccl **out)
{
    (void)comm;
    *out = NULL;
    return 0;
}

lsl_status lsl_i_nccl_allgather(lsl_i_nccl *c, uint64_t k, void *const *recv, const uint64_t *bytes)
{
    (void)c, (void)k, (void)recv, (void)bytes;
    return lsl_i_fail(LSL_ERR_NCCL, "this build of loraslab has no NCCL");
}

void lsl_i_nccl_close(lsl_i_nccl **c)
{
    if (c)
        *c = NULL;
}

#endif
