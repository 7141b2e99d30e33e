/* The output's data path: where each rank's bytes go once rank 0 has laid out the file.  Over an
 * MPI communicator, collective MPI-IO (MPI_File_write_at_all with the filesystem's hints); over
 * callbacks, positional writes (each rank opens the file and pwrites its own byte ranges).  The
 * same bytes land at the same offsets either way.  Nothing here knows about tensors or LoRA. */
#ifndef LSL_DATAFILE_H
#define LSL_DATAFILE_H

#include "lsl_ioplan.h"
#include "lsl_internal.h"
#include "lsl_iopool.h"

typedef struct lsl_i_datafile {
    lsl_i_comm *comm;
    const char *path; /* for messages: the name the user gave */
    MPI_File fh;
    int fh_open;
    int fd;         /* the positional path's descriptor, -1 when closed */
    int wrote;      /* this rank wrote something (it must sync it) */
    uint64_t calls; /* write calls made */
    /* A directory of files (lsl_i_datafile_open_set), written by a pool of threads: file i
     * holds the virtual offsets [vbase[i], vbase[i + 1]). */
    uint32_t nfiles;
    int *fds;
    char **names; /* the final paths, for messages */
    uint64_t *vbase;
    lsl_i_iopool *pool;
} lsl_i_datafile;

/* Collective: opens `tmp` (the laid-out temporary) for writing on every rank, with the plan's
 * MPI-IO hints and hints, rank 0's LSL_MPIIO_HINTS (MPI-IO only).  Agreed status; on failure
 * the file is closed everywhere. */
lsl_status lsl_i_datafile_open(lsl_i_comm *comm, const char *tmp, const char *path,
                               const lsl_i_ioplan *plan, const char *hints, lsl_i_datafile *f);

/* Collective: opens the nfiles files `names` that rank 0 laid out in the directory tmpdir on
 * every rank, for positional writes through a pool of `threads` threads (lsl_iopool.h) whatever
 * the communicator: each rank's writes are its own, so several files are written at once.  A
 * write then addresses virtual offset vbase[i] + o for byte o of file i (vbase: nfiles + 1
 * ascending values, copied).  path: the output's final path, for messages.  Agreed status. */
lsl_status lsl_i_datafile_open_set(lsl_i_comm *comm, const char *tmpdir, const char *path,
                                   uint32_t nfiles, const char (*names)[64], const uint64_t *vbase,
                                   int threads, lsl_i_datafile *f);

/* Collective over MPI (every rank calls it, a rank with nothing or a failure passes count 0),
 * local with positional writes.  count bytes at buf to offset off.  buf may be NULL only when
 * count is 0.  LSL_FAULT=write:N fails the Nth write with EIO.  Local status, naming `what`.
 * For a set the write is only queued (see lsl_i_datafile_fence); a failure shows at a later
 * write, fence or the close. */
lsl_status lsl_i_datafile_write(lsl_i_datafile *f, uint64_t off, const void *buf, uint64_t count,
                                const char *what);

/* As lsl_i_datafile_write for n pieces of `piece` bytes, contiguous at buf, to offsets off,
 * off + stride, ... (a block of columns of a row-major tensor: one piece a row).  Over MPI one
 * collective write through a file view (every rank calls it, a rank with nothing passes n 0),
 * so MPI-IO's collective buffering can turn the ranks' interleaved pieces into whole stripes;
 * with positional writes one pwrite a piece; for a set each piece is queued.  n * piece at
 * most 1 GiB over MPI. */
lsl_status lsl_i_datafile_write_rows(lsl_i_datafile *f, uint64_t off, uint64_t piece,
                                     uint64_t stride, uint64_t n, const void *buf,
                                     const char *what);

/* Not collective.  For a set (lsl_i_datafile_open_set) the write is queued and returns at once:
 * the caller may touch [buf, buf + len) again only after this returns (it waits until no
 * queued write reads it).  The first failure of a queued write, else LSL_OK; a no-op for one
 * file. */
lsl_status lsl_i_datafile_fence(lsl_i_datafile *f, const void *buf, uint64_t len);

/* Not collective.  lsl_i_iopool_fence_any for a set: which of the n buffers (len bytes each) no
 * queued write reads; for one file, buffer 0 at once. */
lsl_status lsl_i_datafile_fence_any(lsl_i_datafile *f, const void *const *bufs, int n, uint64_t len,
                                    int *which);

/* Collective over MPI: syncs what this rank wrote (positional path: fsync) and closes.  Local
 * status (the caller agrees on it).  A closed file is a no-op. */
lsl_status lsl_i_datafile_close(lsl_i_datafile *f);

#endif
