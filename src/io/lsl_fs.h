/* Which filesystem the output lands on, and the alignment and MPI-IO hints that suit it (the
 * I/O plan, lsl_ioplan.h, decides with it). */
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
    int dir_layout;        /* Lustre: the directory has a default layout of its own (a
                              "lustre.lov" xattr): 0 none, LSL_I_LAYOUT_PLAIN or _COMPOSITE */
} lsl_i_fsinfo;

#define LSL_I_LAYOUT_PLAIN     1
#define LSL_I_LAYOUT_COMPOSITE 2 /* PFL: someone chose it, and it grows with the file */

/* Probe the directory that will hold the output.  Not collective. */
lsl_status lsl_i_fs_probe(const char *dir, lsl_i_fsinfo *out);
/* What lsl_i_fs_probe makes of what it read: the statfs magic, the directory's st_blksize and
 * its "lustre.lov" xattr (lov, n bytes; NULL when it has none).  Separate so that the plan's
 * tests can inject any filesystem. */
void lsl_i_fs_classify(uint32_t magic, uint64_t blksize, const unsigned char *lov, size_t n,
                       lsl_i_fsinfo *fs);
/* The stripe size and count of a Lustre layout blob (the "lustre.lov" xattr): a plain v1/v3
 * layout, or a composite (PFL) one, whose component reaching furthest into the file counts.
 * Returns 0 (outputs untouched) for anything else, a blob cut short or lying about its
 * offsets included; a count of 0 means "not said" (-1: every OST). */
int lsl_i_lustre_layout(const unsigned char *blob, size_t n, uint64_t *size, uint64_t *count);

#endif
