/* The output's data path: where each rank's bytes go once rank 0 has laid out the file.  Over an
 * MPI communicator, collective MPI-IO (MPI_File_write_at_all with the filesystem's hints); over
 * callbacks, positional writes (each rank opens the file and pwrites its own byte ranges).  The
 * same bytes land at the same offsets either way.  Nothing here knows about tensors or LoRA. */
#ifndef LSL_DATAFILE_H
#define LSL_DATAFILE_H

#include "lsl_ioplan.h"
#include "lsl_internal.h"

typedef struct lsl_i_datafile {
    lsl_i_comm *comm;
    const char *path; /* for messages: the name the user gave */
    MPI_File fh;
    int fh_open;
    int fd;         /* the positional path's descriptor, -1 when closed */
    int wrote;      /* this rank wrote something (it must sync it) */
    uint64_t calls; /* write calls made */
} lsl_i_datafile;

/* Collective: opens `tmp` (the laid-out temporary) for writing on every rank, with the plan's
 * MPI-IO hints and hints, rank 0's LSL_MPIIO_HINTS (MPI-IO only).  Agreed status; on failure
 * the file is closed everywhere. */
lsl_status lsl_i_datafile_open(lsl_i_comm *comm, const char *tmp, const char *path,
                               const lsl_i_ioplan *plan, const char *hints, lsl_i_datafile *f);

/* Collective over MPI (every rank calls it, a rank with nothing or a failure passes count 0),
 * local with positional writes.  count bytes at buf to offset off.  buf may be NULL only when
 * count is 0.  LSL_FAULT=write:N fails the Nth write with EIO.  Local status, naming `what`. */
lsl_status lsl_i_datafile_write(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                                const char *what);

/* Collective over MPI: syncs what this rank wrote (positional path: fsync) and closes.  Local
 * status (the caller agrees on it).  A closed file is a no-op. */
lsl_status lsl_i_datafile_close(lsl_i_datafile *f);

#endif
