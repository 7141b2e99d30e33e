/* The MPI-IO hints of an I/O plan (lsl_ioplan.h), with the user's LSL_MPIIO_HINTS on top. */
#include "lsl_ioplan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_ioplan_hints(const lsl_i_ioplan *p, const char *extra, MPI_Info *out)
{
    char v[32];
    MPI_Info info;
    if (MPI_Info_create(&info) != MPI_SUCCESS)
        return lsl_i_fail(LSL_ERR_MPI, "MPI_Info_create failed");
    /* Our writes never interleave, so data sieving would only add fcntl locks (which fail on
     * Lustre mounted without flock) and read-modify-write traffic. */
    MPI_Info_set(info, "romio_ds_write", "disable");
    MPI_Info_set(info, "romio_ds_read", "disable");
    /* striping_unit also aligns ROMIO's collective file domains, on any driver */
    if (p->stripe_size && (p->parallel || !p->legacy)) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)p->stripe_size);
        MPI_Info_set(info, "striping_unit", v);
    }
    if (p->stripe_count && p->stripe_count != UINT64_MAX && p->layout >= LSL_I_LAYOUT_SET) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)p->stripe_count);
        MPI_Info_set(info, "striping_factor", v);
    }
    /* The two-phase buffer is host memory outside the staging budget on every aggregator:
     * OMPIO (Open MPI's default MPI-IO) takes 32 MiB unless told, which put 4 ranks sharing a
     * node 15 MiB over the budget + 64 MiB; 8 MiB measured as fast.  A multiple of the stripe
     * size: ROMIO's Lustre driver aggregates whole stripes. */
    snprintf(v, sizeof v, "%llu", (unsigned long long)p->cb_buffer);
    MPI_Info_set(info, "cb_buffer_size", v);
    if (p->cb_write != LSL_I_CB_AUTO)
        MPI_Info_set(info, "romio_cb_write", p->cb_write == LSL_I_CB_ENABLE ? "enable" : "disable");
    if (p->cb_nodes) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)p->cb_nodes);
        MPI_Info_set(info, "cb_nodes", v);
    }
    if (p->cb_per_node) { /* cb_nodes alone is capped at one aggregator per host */
        snprintf(v, sizeof v, "*:%llu", (unsigned long long)p->cb_per_node);
        MPI_Info_set(info, "cb_config_list", v);
    }
    if (p->gpfs_largeblock)
        MPI_Info_set(info, "IBM_largeblock_io", "true");
    if (extra && *extra) {
        char *copy = lsl_i_strdup(extra), *save = NULL;
        if (!copy) {
            MPI_Info_free(&info);
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        }
        for (char *kv = strtok_r(copy, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
            char *eq = strchr(kv, '=');
            if (!eq || eq == kv) {
                free(copy);
                MPI_Info_free(&info);
                return lsl_i_fail(LSL_ERR_INVALID_ARG, "LSL_MPIIO_HINTS: \"%s\" is not key=value",
                                  kv);
            }
            *eq = '\0';
            MPI_Info_set(info, kv, eq + 1);
        }
        free(copy);
    }
    *out = info;
    return LSL_OK;
}
