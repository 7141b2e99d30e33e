/* Entry points for callers that have no MPI communicator of their own (the Python package,
 * scripts): MPI is started on first use, not before, and finished at exit if we started it.
 * Only the public API is used below this line. */
#include "loraslab.h"

#include <stdlib.h>

static int started; /* MPI was initialised here: it is ours to finalise */

static void finish(void)
{
    int fin = 0;
    MPI_Finalized(&fin);
    if (started && !fin)
        MPI_Finalize();
}

/* Under mpiexec/srun each process joins its world; run alone it is a world of one. */
static lsl_status world(void)
{
    int up = 0;
    MPI_Initialized(&up);
    if (up)
        return LSL_OK;
    int provided = 0;
    /* helper threads never call MPI: the calling thread is the only one that does */
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return LSL_ERR_MPI;
    started = 1;
    atexit(finish);
    return LSL_OK;
}

void lsl_world_finalize(void)
{
    finish();
}

int lsl_world_rank(void)
{
    int rank = 0;
    if (world() == LSL_OK)
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

int lsl_world_size(void)
{
    int size = 1;
    if (world() == LSL_OK)
        MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

lsl_status lsl_convert_world(const lsl_convert_config *cfg, lsl_job_stats *stats)
{
    lsl_status st = world();
    return st == LSL_OK ? lsl_convert_all(MPI_COMM_WORLD, cfg, stats) : st;
}

lsl_status lsl_verify_world(const char *path, uint64_t staging_bytes, int quiet,
                            lsl_job_stats *stats)
{
    lsl_status st = world();
    return st == LSL_OK ? lsl_verify_all(MPI_COMM_WORLD, path, staging_bytes, quiet, stats) : st;
}

lsl_status lsl_merge_world(const lsl_job_config *cfg, lsl_job_stats *stats)
{
    lsl_status st = world();
    return st == LSL_OK ? lsl_merge_all(MPI_COMM_WORLD, cfg, stats) : st;
}

lsl_status lsl_writer_create_world(const char *path, const lsl_writer_config *cfg, lsl_writer **out)
{
    lsl_status st = world();
    return st == LSL_OK ? lsl_writer_create_all(MPI_COMM_WORLD, path, cfg, out) : st;
}

void lsl_free(void *p)
{
    free(p);
}
