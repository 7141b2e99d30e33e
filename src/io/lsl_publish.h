/* The life of one output (the writer's HDF5 file, convert's directory): checked against the
 * job's inputs, assembled under a hidden temporary name beside its final path, published by one
 * rename once complete and on disk, or removed.  Rank 0 does the filesystem work; every rank
 * registers the temporary so a signal handler can remove it (lsl_remove_temporaries). */
#ifndef LSL_PUBLISH_H
#define LSL_PUBLISH_H

#include "lsl_fs.h"

typedef struct lsl_i_out {
    char *path;      /* the final path, trailing slashes removed */
    char *tmp;       /* the hidden temporary beside it: DIR/.NAME.lsl-tmp-XXXXXXXX */
    char *dir;       /* the directory holding both */
    int is_dir;      /* a directory (convert) rather than a file */
    int lock_fd;     /* rank 0: an open descriptor of tmp, holding flock(LOCK_EX) while it is
                        written on local filesystems, so a later run can tell a dead temporary from
                        a live one; -1 if none */
    int slot;        /* registry slot for signal cleanup, -1 if none */
    lsl_i_fsinfo fs; /* rank 0: the filesystem of dir, probed at create */
} lsl_i_out;

/* Not collective (rank 0).  Fills o for `path` and creates its temporary: a file of mode 0666
 * minus the umask (O_CREAT | O_EXCL, nothing else) or a directory of 0777 minus the umask.
 * Refused first (LSL_ERR_INVALID_ARG, naming both paths): a path that is a symbolic link (also
 * dangling), an existing object of the wrong kind (not a regular file; for a directory output,
 * not a directory), the same file as one of `inputs` (n of them, NULL entries skipped), or for
 * a directory output one that holds an input at any depth.  LSL_ERR_EXISTS when it exists and
 * overwrite is 0.  Temporaries of the same path left by earlier runs are removed when provably
 * dead (a local filesystem, and nobody holds their lock), otherwise reported (unless quiet). */
lsl_status lsl_i_out_create(const char *path, int is_dir, int overwrite, int quiet,
                            const char *const *inputs, uint64_t n, lsl_i_out *o);

/* Collective on comm: rank 0's o (after lsl_i_out_create, with status st) reaches every rank and
 * is registered for signal cleanup there.  Agreed status; on failure every rank's o is freed. */
lsl_status lsl_i_out_share(lsl_i_comm *comm, lsl_i_out *o, lsl_status st);

/* Not collective (rank 0).  Syncs the temporary, renames it to the final path (replacing only
 * with overwrite; a path that appeared meanwhile is LSL_ERR_EXISTS), syncs the directory. */
lsl_status lsl_i_out_publish(lsl_i_out *o, int overwrite);

/* Removes the temporary (rank 0, or any rank with any_rank: after a broken communicator rank 0
 * may be gone; other ranks otherwise only forget it) and frees o.  Safe on a zeroed o and after
 * publish (the temporary's name is then cleared). */
void lsl_i_out_discard(lsl_i_out *o, int rank, int any_rank);

/* "PATH" without trailing slashes (keeps "/"), malloc'ed; NULL when out of memory. */
char *lsl_i_strip_slashes(const char *path);

#endif
