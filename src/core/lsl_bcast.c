/* Rank 0's strings and numbers to every rank, in a fixed sequence of collective calls that every
 * rank makes whatever happened locally: a rank whose allocation failed still joins each step,
 * so nothing waits on it forever. */
#include "lsl_internal.h"

#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_comm_dup(MPI_Comm user, MPI_Comm *out)
{
    *out = MPI_COMM_NULL;
    int mrc = MPI_Comm_dup(user, out);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
    lsl_status st =
        mrc == MPI_SUCCESS ? LSL_OK : lsl_i_mpi_fail(mrc, "duplicating the communicator");
    /* one step on the caller's communicator: the duplicate may not exist everywhere */
    st = lsl_i_agree(user, st);
    if (st != LSL_OK && *out != MPI_COMM_NULL)
        MPI_Comm_free(out);
    return st;
}

/* MPI counts are int: move large buffers in pieces of at most 1 GiB. */
static int bcast_bytes(MPI_Comm comm, void *buf, uint64_t n)
{
    for (uint64_t off = 0; off < n;) {
        uint64_t k = n - off < ((uint64_t)1 << 30) ? n - off : ((uint64_t)1 << 30);
        int mrc = MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, 0, comm);
        if (mrc != MPI_SUCCESS)
            return mrc;
        off += k;
    }
    return MPI_SUCCESS;
}

lsl_status lsl_i_bcast(MPI_Comm comm, int nstr, char **const *strs, int nnum, uint64_t *nums,
                       lsl_status local)
{
    lsl_status rc = LSL_OK, st = local;
    int rank;
    MPI_Comm_rank(comm, &rank);
    uint64_t *h = lsl_i_calloc((size_t)(nstr + nnum) + 1, sizeof *h);
    if (!h && st == LSL_OK)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(lsl_i_agree(comm, st));
    if (rank == 0) {
        for (int i = 0; i < nnum; i++)
            h[i] = nums[i];
        for (int i = 0; i < nstr; i++)
            h[nnum + i] = *strs[i] ? strlen(*strs[i]) + 1 : 0;
    }
    int mrc = bcast_bytes(comm, h, (uint64_t)(nstr + nnum) * sizeof *h);
    if (mrc != MPI_SUCCESS)
        LSL_GOTO(lsl_i_agree(comm, lsl_i_mpi_fail(mrc, "broadcasting a plan")));
    if (rank != 0) {
        for (int i = 0; i < nnum; i++)
            nums[i] = h[i];
        for (int i = 0; i < nstr; i++) {
            free(*strs[i]);
            *strs[i] = h[nnum + i] ? lsl_i_malloc(h[nnum + i]) : NULL;
            if (h[nnum + i] && !*strs[i] && st == LSL_OK)
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for a %llu-byte setting",
                                (unsigned long long)h[nnum + i]);
        }
    }
    LSL_TRY(lsl_i_agree(comm, st));
    for (int i = 0; i < nstr && mrc == MPI_SUCCESS; i++)
        mrc = bcast_bytes(comm, *strs[i], h[nnum + i]);
    LSL_TRY(lsl_i_agree(comm,
                        mrc == MPI_SUCCESS ? LSL_OK : lsl_i_mpi_fail(mrc, "broadcasting a plan")));
fail:
    free(h);
    return rc;
}

lsl_status lsl_i_bcast_strs(MPI_Comm comm, int nstr, char **const *strs, uint64_t *num,
                            lsl_status local)
{
    return lsl_i_bcast(comm, nstr, strs, num ? 1 : 0, num, local);
}

lsl_status lsl_i_bcast_bytes(MPI_Comm comm, void *buf, uint64_t n, lsl_status local)
{
    lsl_status rc = lsl_i_agree(comm, local);
    if (rc != LSL_OK)
        return rc;
    int mrc = bcast_bytes(comm, buf, n);
    return lsl_i_agree(comm,
                       mrc == MPI_SUCCESS ? LSL_OK : lsl_i_mpi_fail(mrc, "broadcasting a plan"));
}
