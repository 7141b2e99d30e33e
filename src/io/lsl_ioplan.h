/* The I/O plan of one output file: made once by rank 0 from what it detected (the filesystem,
 * its striping or block size, the ranks and nodes, the file's size) and the user's overrides,
 * then broadcast, so every rank cuts, aligns and hints the same way (docs/io-estimate.md works
 * one plan through).  Nothing here knows about tensors or LoRA: a write is bytes at an offset. */
#ifndef LSL_IOPLAN_H
#define LSL_IOPLAN_H

#include "lsl_fs.h"
#include "lsl_internal.h"

/* The new file's Lustre layout: none (not Lustre), inherited from the directory, set by the
 * plan, or set from the user's --stripe-count / --stripe-size. */
enum { LSL_I_LAYOUT_NONE, LSL_I_LAYOUT_INHERIT, LSL_I_LAYOUT_SET, LSL_I_LAYOUT_USER };
/* romio_cb_write: MPI's default (automatic), forced on, forced off. */
enum { LSL_I_CB_AUTO, LSL_I_CB_ENABLE, LSL_I_CB_DISABLE };

/* Files from this size up deserve more than one stripe: a directory default of one stripe (the
 * Lustre default) then gets a layout of the plan's choosing. */
#define LSL_I_WIDE_FILE ((uint64_t)4 << 30)
/* Stripes the plan asks for: one per GiB of file, between 2 and this many. */
#define LSL_I_MAX_STRIPES 64u
/* The stripe size of a layout the plan sets (h5py's docs and Howison 2010: 4 MiB and up). */
#define LSL_I_SET_STRIPE_SIZE ((uint64_t)4 << 20)
/* The two-phase aggregation buffer (cb_buffer_size), before rounding up to the stripe size. */
#define LSL_I_CB_BUFFER ((uint64_t)8 << 20)

typedef struct lsl_i_ioplan_in {
    uint64_t total_bytes;  /* the data the file will hold */
    uint64_t ntensors;     /* datasets in it */
    int ranks, nodes;      /* writers, and the hosts they run on */
    uint64_t stripe_count; /* the user's --stripe-count (0: not given; UINT64_MAX: every OST) */
    uint64_t stripe_size;  /* the user's --stripe-size (0: not given) */
    uint64_t alignment;    /* the user's --align (0: not given) */
    int legacy;            /* LSL_IOPLAN=off: alignment and hints as before the plan, no cuts */
} lsl_i_ioplan_in;

typedef struct lsl_i_ioplan {
    char fs[16];
    int parallel, legacy;
    int layout;            /* LSL_I_LAYOUT_* */
    uint64_t stripe_size;  /* of the file (GPFS: its block size; 0: not striped) */
    uint64_t stripe_count; /* of the file (0: unknown; UINT64_MAX: every OST) */
    uint64_t alignment;    /* datasets start on multiples of this */
    uint64_t piece;        /* each rank's write pieces are cut at multiples of this in the file
                              (0: not cut) */
    int cb_write;          /* LSL_I_CB_* */
    uint64_t cb_nodes;     /* aggregators (0: MPI's default) */
    uint64_t cb_per_node;  /* cb_config_list "*:k" (0: MPI's default, one per host) */
    uint64_t cb_buffer;
    int gpfs_largeblock; /* IBM_largeblock_io=true */
    int ranks, nodes;
    uint64_t total_bytes, ntensors;
    char why[160]; /* why this layout: one clause for the printed plan */
} lsl_i_ioplan;

/* Not collective.  The plan for a file on fs with inputs in.  Never fails: a choice it cannot
 * make falls back to what the directory gives. */
void lsl_i_ioplan_make(const lsl_i_fsinfo *fs, const lsl_i_ioplan_in *in, lsl_i_ioplan *out);

/* Not collective.  The user's stripe settings (0: not given): a count of 1 to
 * LSL_MAX_STRIPE_COUNT or LSL_STRIPE_ALL, a size that is a multiple of 64 KiB up to
 * 4 GiB - 64 KiB; else LSL_ERR_INVALID_ARG saying so. */
lsl_status lsl_i_ioplan_check(uint64_t stripe_count, uint64_t stripe_size);

/* Not collective (rank 0).  The plan for the new file `name` (in with legacy read from
 * LSL_IOPLAN), and its Lustre layout given to the empty file fd (created with
 * LSL_I_O_LOV_DELAY_CREATE; -1: none) before anything is written.  A refusal is warned about
 * and the plan then says the file keeps the directory's layout. */
void lsl_i_ioplan_for_file(const lsl_i_fsinfo *fs, lsl_i_ioplan_in in, int fd, const char *name,
                           lsl_i_ioplan *out);

/* Not collective.  MPI_Info for the plan's collective writes: data sieving off (no fcntl locks,
 * no read-modify-write), striping_unit, cb_buffer_size, romio_cb_write, cb_nodes and
 * cb_config_list as planned, IBM_largeblock_io on GPFS; then "key=value;..." from
 * LSL_MPIIO_HINTS as given by rank 0, which win.  Caller frees with MPI_Info_free. */
lsl_status lsl_i_ioplan_hints(const lsl_i_ioplan *p, const char *extra, MPI_Info *out);

/* The Lustre layout the plan sets (LSL_I_LAYOUT_SET or _USER), as a lov_user_md_v1 blob in
 * buf (32 bytes): what LL_IOC_LOV_SETSTRIPE and the "lustre.lov" xattr take.  Returns its
 * length, 0 when the plan sets no layout. */
size_t lsl_i_ioplan_lov(const lsl_i_ioplan *p, unsigned char buf[32]);

/* Not collective (rank 0).  Gives the empty file fd (created with LSL_I_O_LOV_DELAY_CREATE)
 * the plan's layout before anything is written to it.  Returns 0, or the errno of the refusal:
 * the caller warns and the file keeps the directory's layout. */
int lsl_i_ioplan_apply(const lsl_i_ioplan *p, int fd);
/* open(2) flag that creates a Lustre file with no objects yet (lustre_user.h); 0 elsewhere. */
#define LSL_I_O_LOV_DELAY_CREATE (0100000000 | O_NOCTTY | FASYNC)

/* The plan in words (one line per topic), into buf (NUL-terminated, cut at n). */
void lsl_i_ioplan_describe(const lsl_i_ioplan *p, char *buf, size_t n);

/* Not collective.  Where the ranks' bytes land when each of the n datasets (at offsets[k],
 * rows[k] rows of row_bytes[k] bytes) is split in even row blocks over the plan's ranks
 * (lsl_partition_rows, as the offline jobs split): per-rank extents and bytes, and how many
 * stripes (pieces) two ranks share, in words into buf (NUL-terminated, cut at cap). */
void lsl_i_ioplan_extents(const lsl_i_ioplan *p, uint64_t n, const uint64_t *offsets,
                          const uint64_t *rows, const uint64_t *row_bytes, char *buf, size_t cap);

#endif
