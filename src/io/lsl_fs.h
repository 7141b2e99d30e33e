/* Which filesystem the output lands on, and the alignment and MPI-IO hints that suit it
 * (reference/parallel-io.md a.5, a.6). */
#ifndef LSL_FS_H
#define LSL_FS_H

#include "lsl_internal.h"

typedef struct lsl_i_fsinfo {
    char name[16];         /* "lustre", "gpfs", "nfs", "tmpfs", "ext4", "xfs", "btrfs", "other" */
    uint64_t stripe_size;  /* Lustre stripe size / GPFS block size; 0 when not a parallel FS */
    uint64_t stripe_count; /* Lustre stripe count; 0 when unknown */
    uint64_t alignment;    /* what datasets are aligned to */
    uint64_t avail_bytes;  /* free space for an unprivileged writer */
    int parallel;          /* Lustre or GPFS */
} lsl_i_fsinfo;

/* Probe the directory that will hold the output.  Not collective. */
lsl_status lsl_i_fs_probe(const char *dir, lsl_i_fsinfo *out);

/* MPI_Info for the collective writes: data sieving off (no fcntl locks, no read-modify-write),
 * striping_unit on parallel filesystems, plus "key=value;..." from LSL_MPIIO_HINTS as given by
 * rank 0.  Caller frees with MPI_Info_free. */
lsl_status lsl_i_fs_hints(const lsl_i_fsinfo *fs, const char *extra, MPI_Info *out);

#endif
