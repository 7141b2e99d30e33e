/* Rank 0's strings and numbers to every rank, in a fixed sequence of collective calls that every
 * rank makes whatever happened locally: a rank whose allocation failed still joins each step,
 * so nothing waits on it forever. */
#include "lsl_internal.h"

#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_bcast(lsl_i_comm *comm, int nstr, char **const *strs, int nnum, uint64_t *nums,
                       lsl_status local)
{
    lsl_status rc = LSL_OK, st = local;
    int rank = comm->rank;
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
    LSL_TRY(lsl_i_bcast_raw(comm, h, (uint64_t)(nstr + nnum) * sizeof *h, 0));
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
    for (int i = 0; i < nstr; i++)
        LSL_TRY(lsl_i_bcast_raw(comm, *strs[i], h[nnum + i], 0));
fail:
    free(h);
    return rc;
}

lsl_status lsl_i_bcast_strs(lsl_i_comm *comm, int nstr, char **const *strs, uint64_t *num,
                            lsl_status local)
{
    return lsl_i_bcast(comm, nstr, strs, num ? 1 : 0, num, local);
}
