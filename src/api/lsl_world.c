/* The handle over MPI_COMM_WORLD for callers that have no MPI communicator of their own (the
 * Python package, scripts): MPI is started on first use, not before, and finished at exit if we
 * started it.  Only the public API is used below this line. */
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

void lsl_world_finalize(void)
{
    finish();
}

lsl_status lsl_comm_world(lsl_comm **out)
{
    int up = 0;
    MPI_Initialized(&up);
    if (!up) {
        int provided = 0;
        /* helper threads never call MPI: the calling thread is the only one that does */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            if (out)
                *out = NULL;
            return LSL_ERR_MPI;
        }
        started = 1;
        atexit(finish);
    }
    return lsl_comm_from_mpi(MPI_COMM_WORLD, out);
}

void lsl_free(void *p)
{
    free(p);
}
