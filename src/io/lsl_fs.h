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
/* The stripe size and count of a Lustre layout blob (the "lustre.lov" xattr): a plain v1/v3
 * layout, or a composite (PFL) one, whose component reaching furthest into the file counts.
 * Returns 0 (outputs untouched) for anything else, a blob cut short or lying about its
 * offsets included; a count of 0 means "not said" (-1: every OST). */
int lsl_i_lustre_layout(const unsigned char *blob, size_t n, uint64_t *size, uint64_t *count);

/* The two-phase aggregation buffer the writer asks for (cb_buffer_size), before rounding up to
 * a multiple of the stripe size. */
#define LSL_I_CB_BUFFER ((uint64_t)8 << 20)

/* MPI_Info for the collective writes: data sieving off (no fcntl locks, no read-modify-write),
 * striping_unit on parallel filesystems, cb_buffer_size (LSL_I_CB_BUFFER), plus "key=value;..."
 * from LSL_MPIIO_HINTS as given by rank 0.  Caller frees with MPI_Info_free. */
lsl_status lsl_i_fs_hints(const lsl_i_fsinfo *fs, const char *extra, MPI_Info *out);

#endif
