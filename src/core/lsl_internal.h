/* Internal helpers shared by every module: error recording, collective agreement, small utils. */
#ifndef LSL_INTERNAL_H
#define LSL_INTERNAL_H

#include "loraslab.h"
#include "lsl_comm.h"
#include "lsl_fault.h"

#include <stdarg.h>
#include <stdbool.h>

#define LSL_MSG_MAX         1024
#define LSL_DEFAULT_STAGING ((uint64_t)64 << 20)
/* How a shard of A is cut, inside the library: rows or columns of A ([r, in]). */
typedef enum lsl_shard_dim { LSL_SHARD_ROWS = 0, LSL_SHARD_COLS = 1 } lsl_shard_dim;

/* The factors as the merge needs them, made from the caller's lsl_lora_part by
 * lsl_i_factors_resolve (engine/lsl_factors.c) or read by an offline job.
 * W[rows] = round(W0[rows] + scaling * B[rows] @ A), A ([r, in]) sharded by a_shard and gathered
 * by the put (or whole: LSL_I_LORA_A_FULL), b the part's own rows of B ([nrows, r]) and the
 * magnitude its rows (or every column's: LSL_I_LORA_DORA_COLUMNS); a transposed delta arrives
 * here already rewritten (b = A's columns transposed, a = B^T).  Pointers in the part's memory
 * unless LSL_I_LORA_ON_HOST. */
typedef struct lsl_i_lora {
    uint64_t rank;
    double alpha, scaling;
    lsl_dtype a_dtype, b_dtype;
    lsl_shard_dim a_shard;
    uint64_t a_off, a_count;
    const void *a;
    const void *b;
    const void *magnitude;
    lsl_dtype magnitude_dtype;
    unsigned flags;
} lsl_i_lora;

/* lsl_i_lora.flags, inside the library only: `a` is the whole of A ([r, in]) in host memory
 * on every rank, already gathered (a batched put); the part's memspace applies to b alone. */
#define LSL_I_LORA_A_FULL 0x80000000u
/* With LSL_I_LORA_A_FULL: the whole A is in device memory (gathered over NCCL by a batched put
 * into the writer's CUDA context, or a device A every rank passed whole). */
#define LSL_I_LORA_A_GPU 0x40000000u
/* A device part's factors the library gathered or rewrote: a (whole, LSL_I_LORA_A_FULL), b and
 * the magnitude are in host memory although the part's data is on the device. */
#define LSL_I_LORA_ON_HOST 0x20000000u
/* DoRA whose norm runs down the columns (a transposed delta: W stored [in, out]): `magnitude`
 * holds every column's value on every rank; the put reduces the ranks' partial column norms. */
#define LSL_I_LORA_DORA_COLUMNS 0x10000000u
/* The flags a caller may pass. */
#define LSL_LORA_PUBLIC_FLAGS                                                                      \
    (LSL_LORA_RSLORA | LSL_LORA_DELTA_IN_WEIGHT_DTYPE | LSL_LORA_TRANSPOSED)

/* Record a failure message for lsl_last_error() and return st. */
lsl_status lsl_i_fail(lsl_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, with the errno text appended ("...: No space left on device"); ENOSPC/EDQUOT/EFBIG give
 * LSL_ERR_NOSPACE whatever st was. */
lsl_status lsl_i_fail_errno(lsl_status st, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lsl_i_clear_error(void);
/* The environment variables the library reads (src/core/lsl_env.c), each through lsl_i_env. */
typedef enum {
    LSL_ENV_FAULT,
    LSL_ENV_FAULT_RANK,
    LSL_ENV_GATHER,
    LSL_ENV_IOPLAN,
    LSL_ENV_IO_THREADS,
    LSL_ENV_MPIIO_HINTS,
    LSL_ENV_NO_SPACE_CHECK,
    LSL_ENV_PROFILE,
    LSL_ENV_TRACE,
    LSL_ENV_COUNT
} lsl_i_env_var;
const char *lsl_i_env(lsl_i_env_var v);
/* Once per process (rank 0 calls it): a warning for each LSL_ variable set that nothing reads. */
void lsl_i_env_check(void);
/* One line (a trailing newline is dropped) to the sink of lsl_set_log, or stderr; level
 * LSL_LOG_INFO or LSL_LOG_WARN. */
/* Rank 0's progress line (text mode): on a terminal (stderr, no lsl_set_log sink) one line
 * rewritten in place, ended by the last update or by any other line the library prints; else a
 * line per update through lsl_i_log. */
void lsl_i_log_progress(const char *line, bool last);
void lsl_i_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Collective: every rank passes its local status; all return the first failing rank's status and
 * carry its message (prefixed with the rank when it is not rank 0).  Never hangs on
 * a local error because it is the only communication it does. */
lsl_status lsl_i_agree(lsl_i_comm *comm, lsl_status local);
/* Collective: lsl_i_agree, with n (at most 7) more values reduced by MIN in the same call (every
 * rank's v[] becomes the minimum), so a caller's first question rides on the agreement. */
lsl_status lsl_i_agree_min(lsl_i_comm *comm, lsl_status local, int64_t *v, int n);
/* Collective: lsl_i_agree's second half, for callers that learnt the first failing rank from a
 * collective of their own (INT64_MAX: none failed; no communication then).  Every rank must pass
 * the same `first`. */
lsl_status lsl_i_agree_first(lsl_i_comm *comm, int64_t first, lsl_status local);

/* One logically collective argument of an entry point: its name as the caller spells it in C
 * and Python (path, overwrite, staging_bytes), and its value: a string (str, with is_str set
 * even when str is NULL) or a number. */
typedef struct lsl_i_arg {
    const char *name;
    const char *str;
    uint64_t num;
    int is_str;
} lsl_i_arg;
#define LSL_I_MAX_ARGS 16
#define LSL_I_ARG_STR(n, s)                                                                        \
    (lsl_i_arg)                                                                                    \
    {                                                                                              \
        .name = (n), .str = (s), .is_str = 1                                                       \
    }
#define LSL_I_ARG_NUM(n, v)                                                                        \
    (lsl_i_arg)                                                                                    \
    {                                                                                              \
        .name = (n), .num = (uint64_t)(v)                                                          \
    }
/* Collective: whether every rank passed rank 0's values of the n (at most LSL_I_MAX_ARGS)
 * arguments; LSL_ERR_INCONSISTENT on every rank alike otherwise, naming the first argument that
 * differs with rank 0's value and the first differing rank's.  Two collectives when they agree.
 * A failed collective is returned as it is (the communicator is then broken). */
lsl_status lsl_i_agree_args(lsl_i_comm *c, const char *call, int n, const lsl_i_arg *args);

/* Collective: rank 0's nstr strings (*strs[i], NULL allowed) and nnum numbers reach every rank
 * (a plan of several parts travels as one blob instead: lsl_blob.h),
 * replacing the others' (their old strings are freed).  Every rank makes the same collective
 * calls whatever fails locally; local lets a rank that already failed join.  Agreed status. */
lsl_status lsl_i_bcast(lsl_i_comm *comm, int nstr, char **const *strs, int nnum, uint64_t *nums,
                       lsl_status local);
/* lsl_i_bcast with at most one number (num may be NULL). */
lsl_status lsl_i_bcast_strs(lsl_i_comm *comm, int nstr, char **const *strs, uint64_t *num,
                            lsl_status local);

/* Jump to the function's one cleanup label on failure. */
#define LSL_TRY(expr)                                                                              \
    do {                                                                                           \
        lsl_status try_st_ = (expr);                                                               \
        if (try_st_ != LSL_OK) {                                                                   \
            rc = try_st_;                                                                          \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

#define LSL_GOTO(st)                                                                               \
    do {                                                                                           \
        rc = (st);                                                                                 \
        goto fail;                                                                                 \
    } while (0)

#define LSL_FAIL(st, ...)                                                                          \
    do {                                                                                           \
        rc = lsl_i_fail((st), __VA_ARGS__);                                                        \
        goto fail;                                                                                 \
    } while (0)

/* MPI calls return codes through MPI_ERRORS_RETURN on the handles we create. */
lsl_status lsl_i_mpi_fail(int mpi_rc, const char *what);

/* Overflow-checked arithmetic (true on overflow). */
static inline bool lsl_mul_overflow(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}
static inline bool lsl_add_overflow(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

/* Bytes of `n` elements of dt; false when it overflows or is not a whole number of bytes. */
bool lsl_i_dtype_bytes(lsl_dtype dt, uint64_t n, uint64_t *bytes);
/* A tensor as rows (dimension 0; a scalar is one row) of row_elems elements each: the unit the
 * ranks split. */
/* Not collective: columns [c0, c0 + nc) of an r x c matrix of es-byte elements, transposed into
 * dst (nc x r): the transposed LoRA delta's factors (the offline job, engine/lsl_factors.c). */
void lsl_i_transpose(const void *src, void *dst, uint64_t r, uint64_t c, uint64_t c0, uint64_t nc,
                     uint64_t es);
/* Not collective: the rows [*row0, *row0 + *nrows) that elements [e0, e0 + ne) of a tensor with
 * rows of `relems` elements touch (none when ne or relems is 0). */
static inline void lsl_i_rows_touched(uint64_t relems, uint64_t e0, uint64_t ne, uint64_t *row0,
                                      uint64_t *nrows)
{
    *row0 = relems ? e0 / relems : 0;
    *nrows = ne && relems ? (e0 + ne + relems - 1) / relems - *row0 : 0;
}

static inline uint64_t lsl_i_rows(const lsl_tensor_info *t)
{
    return t->ndim == 0 ? 1 : t->shape[0];
}
static inline uint64_t lsl_i_row_elems(const lsl_tensor_info *t)
{
    uint64_t e = 1;
    for (int d = 1; d < t->ndim; d++)
        e *= t->shape[d];
    return e;
}

char *lsl_i_strdup(const char *s);
/* Whether n bytes at s are UTF-8 (no overlongs, surrogates or code points past U+10FFFF);
 * *bad_at gets the offset of the first bad sequence. */
bool lsl_i_utf8_valid(const void *s, uint64_t n, uint64_t *bad_at);
/* LSL_OK, or LSL_ERR_FORMAT "WHAT "s" is not valid UTF-8" with the bytes of s escaped: names
 * and paths that go into JSON or safetensors headers must be UTF-8. */
lsl_status lsl_i_check_utf8(const char *s, const char *what);
/* Remove a file, or a directory and everything in it, without following links (nftw, depth
 * first).  0 when all of it went. */
int lsl_i_rmtree(const char *path);
/* Whether s names a file directly inside a directory: not empty, no '/' or '\\', no leading
 * '.' (nothing hidden, nothing that climbs out), valid UTF-8. */
bool lsl_i_plain_name(const char *s);
/* Whether an output path names an HDF5 file: it ends in .h5 or .hdf5 (any case, no trailing
 * slash); anything else is written as a safetensors directory (LSL_OUTPUT_AUTO). */
bool lsl_i_is_hdf5_path(const char *path);
/* "dir/name", malloc'ed; NULL when out of memory. */
char *lsl_i_join(const char *dir, const char *name);
/* Collective: fill stats from this rank's start time and RSS (max/min over ranks). */
void lsl_i_fill_stats(lsl_i_comm *comm, double t0, uint64_t rss0, uint64_t tensors, uint64_t merged,
                      uint64_t bytes, lsl_job_stats *stats);
/* Open an input file read-only (*out the descriptor, *size its size, may be NULL).  Anything but
 * a regular file is refused by name without blocking (a FIFO would wait for a writer forever, a
 * device reads without end): LSL_ERR_INVALID_ARG; LSL_ERR_NOT_FOUND / LSL_ERR_IO otherwise. */
lsl_status lsl_i_open_input(const char *path, int *out, uint64_t *size);
/* Read a whole (small) file into a NUL-terminated buffer; caller frees. */
lsl_status lsl_i_read_text(const char *path, uint64_t max_bytes, char **out, uint64_t *len);
/* pread exactly n bytes or fail with a message naming path. */
lsl_status lsl_i_pread_full(int fd, void *buf, uint64_t n, uint64_t off, const char *path);
/* pwrite exactly n bytes (in pieces of at most 1 GiB, through the fault hook) or fail with
 * LSL_ERR_IO / LSL_ERR_NOSPACE "WHAT at offset N: <errno text>" (a write of 0 bytes is ENOSPC). */
lsl_status lsl_i_pwrite_full(int fd, const void *buf, uint64_t n, uint64_t off, const char *what);
/* fsync a file, or a directory with flags O_RDONLY | O_DIRECTORY (where the filesystem refuses
 * fsync on directories, EINVAL / EBADF, that is not an error: renames there are atomic anyway).
 * LSL_ERR_IO naming path. */
lsl_status lsl_i_sync_path(const char *path, int flags);
/* The same without touching the error message (for helper threads: it is thread-local): 0, an
 * errno, or -1 at end of file; *at is where it failed.  lsl_i_pread_error then reports it. */
int lsl_i_pread_raw(int fd, void *buf, uint64_t n, uint64_t off, uint64_t *at);
lsl_status lsl_i_pread_error(int err, uint64_t at, const char *path);

/* Resident memory of this process: current and peak (bytes). */
uint64_t lsl_i_rss_current(void);
uint64_t lsl_i_rss_peak(void);
double lsl_i_now(void);

/* "1.5 GiB" into buf. */
const char *lsl_i_fmt_bytes(uint64_t n, char *buf, size_t len);
/* FNV-1a over n bytes at p, continuing from h (start from LSL_I_FNV_SEED): digests ranks
 * compare (tensor lists, host names). */
#define LSL_I_FNV_SEED 14695981039346656037ull
uint64_t lsl_i_fnv1a(uint64_t h, const void *p, size_t n);
/* How many distinct values v[0..n) holds (sorts v in place). */
uint64_t lsl_i_distinct_u64(uint64_t *v, uint64_t n);

#endif
