/* A callback communicator for tests: lsl_comm_ops whose callbacks call MPI on a communicator
 * of the test's own, so the callback protocol and the positional data path run at 1-4 ranks
 * under mpiexec.  lsl_test_cb_fail_at = N makes the Nth callback fail (0: never). */
#ifndef LSL_TEST_CB_H
#define LSL_TEST_CB_H

#include "loraslab.h"

#include <mpi.h>
#include <stdlib.h>

static MPI_Comm lsl_test_cb_comm = MPI_COMM_NULL;
static long lsl_test_cb_calls, lsl_test_cb_fail_at;

static int lsl_test_cb_fail(void)
{
    return ++lsl_test_cb_calls == lsl_test_cb_fail_at;
}

static int lsl_test_cb_allreduce(void *ctx, void *buf, uint64_t n, lsl_dtype dt, lsl_reduce_op op)
{
    if (lsl_test_cb_fail())
        return 7;
    MPI_Op o = op == LSL_OP_MAX ? MPI_MAX : op == LSL_OP_MIN ? MPI_MIN : MPI_SUM;
    return MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, dt == LSL_F64 ? MPI_DOUBLE : MPI_INT64_T, o,
                         *(MPI_Comm *)ctx) != MPI_SUCCESS;
}

static int lsl_test_cb_bcast(void *ctx, void *buf, uint64_t bytes, int root)
{
    if (lsl_test_cb_fail())
        return 7;
    return MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, *(MPI_Comm *)ctx) != MPI_SUCCESS;
}

static int lsl_test_cb_allgather(void *ctx, const void *send, void *recv, uint64_t bytes)
{
    if (lsl_test_cb_fail())
        return 7;
    return MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE,
                         *(MPI_Comm *)ctx) != MPI_SUCCESS;
}

static int lsl_test_cb_allgatherv(void *ctx, const void *send, uint64_t send_bytes, void *recv,
                                  const uint64_t *recv_bytes)
{
    if (lsl_test_cb_fail())
        return 7;
    MPI_Comm c = *(MPI_Comm *)ctx;
    int size = 1, d = 0, rc;
    MPI_Comm_size(c, &size);
    int *counts = malloc(sizeof(int) * (size_t)size), *displs = malloc(sizeof(int) * (size_t)size);
    if (!counts || !displs)
        abort(); /* a test helper: no way to tell the peers */
    for (int k = 0; k < size; k++) {
        counts[k] = (int)recv_bytes[k];
        displs[k] = d;
        d += counts[k];
    }
    rc = MPI_Allgatherv(send, (int)send_bytes, MPI_BYTE, recv, counts, displs, MPI_BYTE, c);
    free(counts);
    free(displs);
    return rc != MPI_SUCCESS;
}

static int lsl_test_cb_barrier(void *ctx)
{
    if (lsl_test_cb_fail())
        return 7;
    return MPI_Barrier(*(MPI_Comm *)ctx) != MPI_SUCCESS;
}

static const lsl_comm_ops lsl_test_cb_ops = {lsl_test_cb_allreduce, lsl_test_cb_bcast,
                                             lsl_test_cb_allgather, lsl_test_cb_allgatherv,
                                             lsl_test_cb_barrier};

/* A handle over the callbacks on a duplicate of MPI_COMM_WORLD (made at the first call); the
 * caller frees it with lsl_comm_free. */
static lsl_comm *lsl_test_cb_world(void)
{
    if (lsl_test_cb_comm == MPI_COMM_NULL)
        MPI_Comm_dup(MPI_COMM_WORLD, &lsl_test_cb_comm);
    int rank = 0, size = 1;
    MPI_Comm_rank(lsl_test_cb_comm, &rank);
    MPI_Comm_size(lsl_test_cb_comm, &size);
    lsl_comm *c = NULL;
    if (lsl_comm_from_ops(&lsl_test_cb_ops, &lsl_test_cb_comm, rank, size, &c) != LSL_OK)
        abort(); /* a test helper: the table is complete and the rank in range */
    return c;
}

#endif
