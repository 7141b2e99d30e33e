#include "lsl_gather.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_gather_a(MPI_Comm comm, lsl_shard_dim dim, const void *mine, uint64_t off,
                          uint64_t count, uint64_t r, uint64_t in, uint64_t esize, void *full,
                          void *tmp, lsl_status local_st)
{
    lsl_status rc = LSL_OK;
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    uint64_t *parts = malloc(2 * sizeof(uint64_t) * (size_t)size);
    int *counts = malloc(sizeof(int) * (size_t)size), *displs = malloc(sizeof(int) * (size_t)size);
    uint64_t total_units = dim == LSL_SHARD_ROWS ? r : in;
    uint64_t unit_bytes = dim == LSL_SHARD_ROWS ? in * esize : r * esize;
    uint64_t mypart[2] = {off, local_st == LSL_OK ? count : 0};
    lsl_status st = local_st;
    if (!parts || !counts || !displs)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory gathering LoRA A");
    else if (r * in * esize > (uint64_t)INT_MAX)
        st = lsl_i_fail(LSL_ERR_SHAPE, "LoRA A of %llu x %llu is too large to gather",
                        (unsigned long long)r, (unsigned long long)in);
    if (parts &&
        MPI_Allgather(mypart, 2, MPI_UINT64_T, parts, 2, MPI_UINT64_T, comm) != MPI_SUCCESS)
        st = lsl_i_fail(LSL_ERR_MPI, "MPI_Allgather of LoRA A shard sizes failed");
    if (st == LSL_OK) {
        uint64_t expect = 0;
        for (int k = 0; k < size; k++) {
            if (parts[2 * k] != expect && parts[2 * k + 1] != 0) {
                st = lsl_i_fail(LSL_ERR_SHAPE,
                                "LoRA A shards do not tile A in rank order: rank %d holds %s "
                                "[%llu, +%llu), expected to start at %llu",
                                k, dim == LSL_SHARD_ROWS ? "rows" : "columns",
                                (unsigned long long)parts[2 * k],
                                (unsigned long long)parts[2 * k + 1], (unsigned long long)expect);
                break;
            }
            counts[k] = (int)(parts[2 * k + 1] * unit_bytes);
            displs[k] = (int)(expect * unit_bytes);
            expect += parts[2 * k + 1];
        }
        if (st == LSL_OK && expect != total_units)
            st = lsl_i_fail(LSL_ERR_SHAPE, "LoRA A shards cover %llu %s of %llu",
                            (unsigned long long)expect, dim == LSL_SHARD_ROWS ? "rows" : "columns",
                            (unsigned long long)total_units);
    }
    /* Every rank computed the same verdict from the same gathered sizes, except for local
     * failures, which the agreement spreads. */
    LSL_TRY(lsl_i_agree(comm, st));
    void *dst = dim == LSL_SHARD_ROWS ? full : tmp;
    static const unsigned char none = 0;
    int mc = counts[rank];
    int mrc = MPI_Allgatherv(mc ? mine : &none, mc, MPI_BYTE, dst, counts, displs, MPI_BYTE, comm);
    if (mrc != MPI_SUCCESS)
        LSL_GOTO(lsl_i_mpi_fail(mrc, "MPI_Allgatherv of LoRA A"));
    if (dim == LSL_SHARD_COLS) {
        unsigned char *f = full;
        const unsigned char *t = tmp;
        for (int k = 0; k < size; k++) {
            uint64_t c0 = parts[2 * k], ck = parts[2 * k + 1];
            const unsigned char *blk = t + displs[k];
            for (uint64_t row = 0; row < r && ck; row++)
                memcpy(f + (row * in + c0) * esize, blk + row * ck * esize, ck * esize);
        }
    }
fail:
    free(parts);
    free(counts);
    free(displs);
    return rc;
}
