/* loraslab: merge sharded LoRA fine-tunes into one parallel-HDF5 checkpoint.
 *
 * This header is the API's documentation.  Conventions:
 *  - Every function whose name ends in `_all` is collective over the communicator it was given:
 *    every rank must call it, in the same order, with the same "logically collective" arguments.
 *    It returns the same status on every rank; a rank with bad input still joins the I/O with
 *    zero bytes, so a local error never hangs the others.
 *  - Functions return LSL_OK (0) or a positive lsl_status.  After a failure, lsl_last_error()
 *    gives a message naming the file / tensor / rank at fault (the same text on every rank
 *    for collective calls).
 *  - Sizes and counts are 64-bit.  No CUDA type appears here: device memory and streams cross
 *    the API as `void *`.
 *  - Objects are opaque; `_free`/`_close_all`/`_abort_all` take the address of the handle, accept
 *    NULL and set it to NULL.
 */
#ifndef LORASLAB_H
#define LORASLAB_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "loraslab_version.h" /* LSL_VERSION_MAJOR, _MINOR, _PATCH (from CMake) */
#define LSL_VERSION_NUMBER (LSL_VERSION_MAJOR * 10000 + LSL_VERSION_MINOR * 100 + LSL_VERSION_PATCH)
/* Version of the HDF5 layout written (root attribute `loraslab_format_version`): 2 adds the
 * serving files under /files; version 1 files are still read. */
#define LSL_FORMAT_VERSION 2
/* Largest dataset alignment (lsl_writer_config.alignment, --align): 1 GiB. */
#define LSL_MAX_ALIGNMENT ((uint64_t)1 << 30)
/* Most dimensions a tensor may have. */
#define LSL_MAX_NDIM 8

#if defined(__GNUC__)
#define LSL_API __attribute__((visibility("default")))
#else
#define LSL_API
#endif

/* ---- status -------------------------------------------------------------------------------- */

/* Published numbers never change.  Ranges: 1-19 usage, 20-39 cross-rank, 40-59 dependencies,
 * 60-79 system, 80-99 input data. */
typedef enum lsl_status {
    LSL_OK = 0,
    LSL_ERR_INVALID_ARG = 1, /* a bad argument (NULL, out-of-range value) */
    LSL_ERR_WRONG_STATE = 2, /* call out of order (put before define, ...) */
    LSL_ERR_SHAPE = 3,       /* shapes do not fit (base vs adapter, slice vs tensor) */
    LSL_ERR_DTYPE = 4,       /* a dtype that cannot be used where it was given */
    LSL_ERR_UNSUPPORTED = 5, /* input loraslab refuses to merge (adapter option, quantized base) */
    LSL_ERR_NOT_FOUND = 6,   /* a file or tensor that should exist does not */
    LSL_ERR_EXISTS = 7,      /* the output exists and overwrite was not asked for */
    LSL_ERR_INCONSISTENT = 20, /* ranks passed different values for a logically collective arg */
    LSL_ERR_MPI = 40,
    LSL_ERR_HDF5 = 41,
    LSL_ERR_CUDA = 42,
    LSL_ERR_BLAS = 43,
    LSL_ERR_NCCL = 44,
    LSL_ERR_COMM = 45, /* a communicator callback (lsl_comm_ops) returned an error */
    LSL_ERR_NOMEM = 60,
    LSL_ERR_IO = 61,          /* read/write/rename failed (message carries errno text) */
    LSL_ERR_NOSPACE = 62,     /* filesystem full or quota exceeded */
    LSL_ERR_INTERRUPTED = 63, /* a signal reached a handler of lsl_signals_install during the
                                 call: its temporary output was removed */
    LSL_ERR_FORMAT = 80,      /* malformed safetensors / JSON / index / HDF5 layout */
    LSL_ERR_CORRUPT = 81,     /* checksum mismatch */
    LSL_ERR_NONFINITE = 82    /* a merge produced NaN or Inf */
} lsl_status;

/* Symbol name of a status ("LSL_ERR_SHAPE"); static storage, never NULL. Not collective. */
LSL_API const char *lsl_status_name(lsl_status st);
/* One-line description of a status; static storage, never NULL. Not collective. */
LSL_API const char *lsl_strerror(lsl_status st);
/* Detailed message of the last failure in this thread ("" if none).  Valid until the next
 * loraslab call on this thread; do not free. Not collective. */
LSL_API const char *lsl_last_error(void);

LSL_API int lsl_version_number(void);         /* LSL_VERSION_NUMBER of the library loaded */
LSL_API const char *lsl_version_string(void); /* "0.3.0"; static storage */

/* ---- dtypes ---------------------------------------------------------------------------------- */

/* safetensors dtypes, in the safetensors enum order (which the writer's sort relies on). */
typedef enum lsl_dtype {
    LSL_BOOL = 0,
    LSL_F4,
    LSL_F6_E2M3,
    LSL_F6_E3M2,
    LSL_U8,
    LSL_I8,
    LSL_F8_E5M2,
    LSL_F8_E4M3,
    LSL_F8_E8M0,
    LSL_F8_E4M3FNUZ,
    LSL_F8_E5M2FNUZ,
    LSL_I16,
    LSL_U16,
    LSL_F16,
    LSL_BF16,
    LSL_I32,
    LSL_U32,
    LSL_F32,
    LSL_C64,
    LSL_F64,
    LSL_I64,
    LSL_U64,
    LSL_DTYPE_COUNT_
} lsl_dtype;

/* safetensors name ("BF16"); NULL for an invalid value. Not collective. */
LSL_API const char *lsl_dtype_name(lsl_dtype dt);
/* Parse a safetensors dtype name (case-sensitive).  Returns LSL_OK or LSL_ERR_DTYPE. */
LSL_API lsl_status lsl_dtype_from_name(const char *name, lsl_dtype *out);
/* Bits per element (4 for F4, 6 for F6_*, 16 for BF16, ...); 0 for an invalid value. */
LSL_API unsigned lsl_dtype_bits(lsl_dtype dt);

/* ---- progress ------------------------------------------------------------------------------
 * The `quiet` field of the writer, job and convert configs (and lsl_verify_all's quiet): what
 * rank 0 prints on stderr while a job runs. */
#define LSL_PROGRESS_TEXT 0 /* human lines (the default) */
#define LSL_PROGRESS_NONE 1 /* nothing but errors and warnings */
/* One JSON object per line, at most every 2 s and once at the end ("done": true, tensors_done =
 * tensors_total): event, command, tensors_done, tensors_total, bytes_done, bytes_total,
 * rate_bytes_per_s, eta_s, elapsed_s, ranks.  For convert and verify, done counts on the way are
 * extrapolated from rank 0's share of the bytes, as the text lines are. */
#define LSL_PROGRESS_JSON 2

/* ---- messages -------------------------------------------------------------------------------
 * What the library says besides its errors (progress lines, notes such as the GPU path taken,
 * warnings such as a stale temporary removed, the LSL_PROFILE report) goes, one complete line
 * per call without its newline, to stderr, or to the sink set here.  Only rank 0 (or the rank
 * that has something to say) calls it, from the thread that called into the library. */
#define LSL_LOG_INFO 0 /* progress, notes, the profile */
#define LSL_LOG_WARN 1 /* something the user should look at; the call goes on */
typedef void (*lsl_log_fn)(int level, const char *line, void *ctx);
/* Not collective; process-wide.  fn NULL restores stderr.  fn must not call into loraslab; set
 * the sink while no loraslab call is running in another thread. */
LSL_API void lsl_set_log(lsl_log_fn fn, void *ctx);

/* ---- partition ------------------------------------------------------------------------------ */

/* The rows [*row0, *row0 + *nrows) that `rank` of `nranks` owns under FSDP2 Shard(0) chunking
 * (torch.chunk: ceil(rows / nranks) per rank, trailing ranks may be empty).  Not collective,
 * cannot fail (nranks <= 0 or rank out of range gives an empty range). */
LSL_API void lsl_partition_rows(uint64_t rows, int nranks, int rank, uint64_t *row0,
                                uint64_t *nrows);

/* ---- communicators -------------------------------------------------------------------------
 * Every collective of the library runs over an lsl_comm handle, made from one of:
 *  - an MPI communicator (lsl_comm_from_mpi, lsl_comm_world): each collective call duplicates it
 *    for its own traffic and sets MPI_ERRORS_RETURN on the copy; the output's data goes out with
 *    collective MPI-IO;
 *  - callbacks the caller supplies (lsl_comm_from_ops), so a job without an MPI world (a PyTorch
 *    job under torchrun) runs the same protocol.  The output's data is then written with
 *    positional writes (pwrite of each rank's byte ranges into the file rank 0 laid out, each
 *    rank fsyncs its own before the closing agreement): the same file, bytes and checksums.
 *
 * The contract for callbacks:
 *  - Who calls them: the operations given the handle (lsl_merge_all, lsl_convert_all,
 *    lsl_verify_all), and every `lsl_writer_*_all` call (abort included) on a writer created over
 *    it; nothing else (not lsl_inspect, not lsl_remove_temporaries).
 *  - They are called only from the thread that called the loraslab entry point, never from a
 *    helper thread, and every rank makes the same calls in the same order with the same sizes
 *    (the library guarantees it; the implementation may rely on it, as MPI does).
 *  - Each returns 0 on success, anything else on failure.  A failed collective cannot be agreed
 *    on: the entry point returns LSL_ERR_COMM on the rank that saw it, calls no callback again
 *    for that job or writer, and expects the transport to fail the others too (a dead peer makes
 *    torch.distributed raise on every rank, or time out).
 *  - Buffers are host memory, owned by the library, valid for the call only.
 */
typedef enum lsl_reduce_op { LSL_OP_MAX = 0, LSL_OP_MIN = 1, LSL_OP_SUM = 2 } lsl_reduce_op;

typedef struct lsl_comm_ops {
    /* In place: count values of dtype (LSL_I64 or LSL_F64 only) reduced with op over all ranks;
     * every rank receives the result in buf. */
    int (*allreduce)(void *ctx, void *buf, uint64_t count, lsl_dtype dtype, lsl_reduce_op op);
    /* root's bytes at buf reach every rank's buf. */
    int (*bcast)(void *ctx, void *buf, uint64_t bytes, int root);
    /* Each rank's `bytes` bytes at send land at recv + rank * bytes on every rank. */
    int (*allgather)(void *ctx, const void *send, void *recv, uint64_t bytes);
    /* Rank k's recv_bytes[k] bytes (its send, send_bytes == recv_bytes[rank]) land at recv + the
     * sum of recv_bytes[0..k) on every rank; recv_bytes holds size entries, the same everywhere. */
    int (*allgatherv)(void *ctx, const void *send, uint64_t send_bytes, void *recv,
                      const uint64_t *recv_bytes);
    int (*barrier)(void *ctx);
} lsl_comm_ops;

/* Opaque.  A handle may be freed once the calls given it have returned: a writer keeps its own
 * communicator until it is closed or aborted. */
typedef struct lsl_comm lsl_comm;

/* Not collective.  A handle over the caller's MPI communicator, which must stay valid while
 * calls use the handle.  MPI must be initialised.  *out owns the handle (lsl_comm_free).
 * Returns LSL_OK, LSL_ERR_INVALID_ARG (MPI_COMM_NULL, MPI not initialised or already
 * finalised, out NULL) or LSL_ERR_NOMEM; *out is NULL on failure. */
LSL_API lsl_status lsl_comm_from_mpi(MPI_Comm comm, lsl_comm **out);
/* Not collective.  A handle over callbacks: *ops is copied; ctx is passed to every callback and
 * must outlive the calls and writers that use the handle; rank is this process's, in [0, size).
 * Returns LSL_OK, LSL_ERR_INVALID_ARG (a NULL table or callback, a rank out of range; a caller
 * error the peers cannot see, reported before any callback) or LSL_ERR_NOMEM; *out is NULL on
 * failure. */
LSL_API lsl_status lsl_comm_from_ops(const lsl_comm_ops *ops, void *ctx, int rank, int size,
                                     lsl_comm **out);
/* Not collective.  A handle over MPI_COMM_WORLD for a caller without an MPI communicator of its
 * own (the Python package, scripts): MPI is initialised here if nobody has (MPI_THREAD_FUNNELED,
 * finalised at exit), never before; under mpiexec/srun each process joins its job, run alone it
 * is a world of one.  Returns LSL_OK, LSL_ERR_MPI (MPI failed to start) or LSL_ERR_NOMEM. */
LSL_API lsl_status lsl_comm_world(lsl_comm **out);
/* Not collective.  This process's rank and the communicator's size; 0 and 1 for NULL. */
LSL_API int lsl_comm_rank(const lsl_comm *c);
LSL_API int lsl_comm_size(const lsl_comm *c);
/* Not collective.  Frees the handle (not the caller's MPI communicator or ctx); *c becomes
 * NULL; NULL is a no-op. */
LSL_API void lsl_comm_free(lsl_comm **c);
/* Collective over the world.  Finalises MPI now if lsl_comm_world started it and it is not
 * finalised yet; otherwise does nothing (MPI someone else started is theirs to finish).  For a
 * caller that leaves without running exit handlers (Python's os._exit): Open MPI's launcher
 * fails a job whose process exits with MPI initialised.  No handle over MPI may be used after it
 * in this process. */
LSL_API void lsl_world_finalize(void);

/* ---- configs -------------------------------------------------------------------------------
 * Each config struct starts with its size: initialise it with its INIT macro (zero is every
 * field's default), then set fields by name.  A library reads the fields the caller's size
 * covers and takes the defaults for the rest, so a program built against an older header runs
 * on a newer library; a size of 0 or larger than the library knows is LSL_ERR_INVALID_ARG. */

/* ---- in-job writer ---------------------------------------------------------------------------
 * The path a training job uses: create the writer, define the tensor list once, put each tensor's
 * local row slice (with optional LoRA factors, merged on the fly), close.  The output appears at
 * `path` only when close succeeds; until then it lives under a hidden temporary name in the same
 * directory, and any failure removes it.
 *
 * The output is one HDF5 file (the archive: `loraslab convert` makes a directory of it) or, by
 * the path or cfg->format, a Hugging Face safetensors directory that transformers and vLLM load,
 * written in one pass:
 *  - model.safetensors, or model-0000i-of-0000K.safetensors split as huggingface_hub splits the
 *    tensors in define order under max_shard_bytes, with model.safetensors.index.json
 *    (metadata.total_size, every tensor once); each header carries {"format": "pt"} and is
 *    padded with spaces so the data section starts on the I/O plan's alignment;
 *  - config.json (the "base_config_json" attribute), the files of lsl_writer_add_files_all,
 *    loraslab.json (the adapter config, each tensor's CRC-32C and LoRA attributes: the same
 *    for any rank count) and checksums.json (each file's CRC-32C), which lsl_verify_all checks.
 * Rank 0 plans the shards and writes every header at define; each rank then writes its own bytes
 * into the shards with positional writes (under MPI too) from a pool of threads, one per shard
 * being written, so a rank writes several files at once (LSL_IO_THREADS, default 8).  The
 * directory's bytes are those `loraslab convert` makes of the HDF5 output of the same call. */

typedef struct lsl_writer lsl_writer;

/* What an output is (lsl_writer_config.format, lsl_job_config.format). */
#define LSL_OUTPUT_AUTO                                                                            \
    0                            /* by the path: ending in .h5 or .hdf5 an HDF5 file, else a       \
                                    safetensors directory */
#define LSL_OUTPUT_HDF5        1 /* one HDF5 file, a dataset per tensor: the archive */
#define LSL_OUTPUT_SAFETENSORS 2 /* a Hugging Face checkpoint directory (see below) */

typedef struct lsl_writer_config {
    size_t size;                /* sizeof(lsl_writer_config): set by LSL_WRITER_CONFIG_INIT */
    uint64_t staging_bytes;     /* host staging budget per rank; 0: 64 MiB */
    uint64_t alignment;         /* dataset alignment in bytes, at most LSL_MAX_ALIGNMENT; 0:
                                   detect from the filesystem */
    int overwrite;              /* nonzero: replace an existing file at path (atomically) */
    int quiet;                  /* LSL_PROGRESS_TEXT (0), _NONE (1) or _JSON (2) */
    const char *progress_label; /* verb shown in progress lines ("merge"); NULL: "write" */
    /* The new file's Lustre layout (0: the I/O plan's choice; see lsl_writer_create_all).
     * stripe_count 1 to LSL_MAX_STRIPE_COUNT or LSL_STRIPE_ALL; stripe_size a multiple of
     * 64 KiB up to 4 GiB - 64 KiB.  On other filesystems stripe_size still sets the alignment
     * and the size write pieces are cut to.  A directory's shards each get their own plan. */
    uint64_t stripe_count, stripe_size;
    int print_plan; /* nonzero: rank 0 logs the I/O plan (LSL_LOG_INFO) at define */
    int format;     /* LSL_OUTPUT_AUTO (0), _HDF5 or _SAFETENSORS */
    /* A directory's shard size: at most this many data bytes a shard (a larger tensor gets one
     * of its own), as save_pretrained's max_shard_size; 0: 5 GB (5,000,000,000 bytes). */
    uint64_t max_shard_bytes;
} lsl_writer_config;
#define LSL_WRITER_CONFIG_INIT                                                                     \
    {                                                                                              \
        .size = sizeof(lsl_writer_config)                                                          \
    }
#define LSL_STRIPE_ALL       UINT64_MAX /* stripe over every OST (lfs setstripe -c -1) */
#define LSL_MAX_STRIPE_COUNT 2000u      /* Lustre's LOV_MAX_STRIPE_COUNT */

typedef struct lsl_tensor_info {
    const char *name; /* the HF tensor name; no '/', not empty */
    lsl_dtype dtype;  /* any dtype but the sub-byte ones (F4, F6_*) */
    int ndim;         /* 0..LSL_MAX_NDIM; rows are shape[0] (a 0-D tensor is one row) */
    uint64_t shape[LSL_MAX_NDIM];
} lsl_tensor_info;

/* Where the data pointers of a part live. */
typedef enum lsl_memspace { LSL_MEM_HOST = 0, LSL_MEM_DEVICE = 1 } lsl_memspace;

/* Flags of an lsl_lora_part: recorded in the file's attributes. */
#define LSL_LORA_RSLORA 1u /* scaling was alpha / sqrt(r) */
/* Round the delta to the weight's precision before adding it in that precision, as PEFT's
 * Embedding layer merges (its Linear layers add an fp32 delta with one rounding: the default).
 * The delta is evaluated in the factors' precision: with F32 factors B @ A and the scaling in
 * fp32; with BF16/F16 factors each rounded to the weight dtype (factors too).  Merged on the CPU
 * (device parts too: see lsl_writer_put_all). */
#define LSL_LORA_DELTA_IN_WEIGHT_DTYPE 2u
/* The delta is transposed: W += scaling * (B @ A)^T, the weight stored [in, out] (GPT-2's Conv1D,
 * fan_in_fan_out) or an embedding ([vocab, dim], A [r, vocab], B [dim, r]).  A DoRA magnitude
 * then has one value per column of W, and its norm runs down the columns (the put reduces the
 * ranks' partial column norms: two passes over this rank's rows). */
#define LSL_LORA_TRANSPOSED 4u

/* One LoRA factor as the model holds it: this rank's elements [e0, e0 + n) of the whole factor,
 * row-major.  The ranks' ranges tile the factor in rank order (empty ranges anywhere): FSDP2's
 * Shard(0) rows are e0 = row0 * cols, n = nrows * cols; FSDP1's pieces are their own ranges,
 * mid-row or not.  A factor every rank holds whole (DDP, no wrapper) is passed whole on every rank,
 * e0 = 0 and n = all its elements: then nothing of it crosses the network. */
typedef struct lsl_factor {
    const void *data; /* n elements, contiguous, where the part's data lives (NULL when n is 0) */
    lsl_dtype dtype;  /* F32, BF16 or F16 (the same on every rank that holds elements) */
    uint64_t e0, n;
    /* 1: the range is of the factor's transpose (column-major elements), the same on every rank
     * that holds elements.  A factor sharded by columns (Shard(1): columns [c0, c1) of every
     * row) is passed as its local block transposed, e0 = c0 * rows, n = (c1 - c0) * rows.  A
     * 1-D factor (the magnitude) ignores it. */
    int transposed;
} lsl_factor;

/* A tensor's LoRA, as the model holds it.  W[rows] = round(W0[rows] + scaling * B[rows] @ A),
 * accumulated in fp32 (fp64 for F32 weights, and on the CPU), rounded once into the tensor's dtype
 * (BF16, F16 or F32).  With a magnitude (DoRA), V = W0 + scaling * B @ A and
 * W[i] = round(m[i] / |V[i]| * V[i]), the norm over a row (down a column when transposed).
 * The factors' shapes follow from the tensor's: A is [r, in] and B [out, r] with W [out, in]
 * ([in, out] when LSL_LORA_TRANSPOSED); a 1-D tensor is [out, 1], so a LoRA bias
 * (b' = b + scaling * lora_B.bias) is r = 1, A = [[1]] and B = lora_B.bias.  The put takes from
 * the factors what this rank's rows need and gathers only that, once, in one collective step per
 * call (a batch's factors together): the whole of A (over NCCL where it serves, see
 * lsl_writer_put_all); B's and the magnitude's rows of the part, gathered only when a rank does not
 * hold exactly those (an FSDP1 piece); for a transposed delta A and B whole.  On failure every rank
 * returns the same status, naming the tensor and the factor. */
typedef struct lsl_lora_part {
    uint64_t rank;        /* r */
    double alpha;         /* lora_alpha: recorded in the file */
    double scaling;       /* alpha / r (or alpha / sqrt(r) with rsLoRA): applied */
    lsl_factor a;         /* lora_A.weight, [r, in] */
    lsl_factor b;         /* lora_B.weight, [out, r] */
    lsl_factor magnitude; /* DoRA's magnitude vector (one value per row of W, per column when
                             transposed); n 0 on every rank: no DoRA */
    unsigned flags;       /* LSL_LORA_*; other bits: LSL_ERR_INVALID_ARG */
} lsl_lora_part;

/* A part is rows [row0, row0 + nrows) of the tensor, every column of them (ncols 0), or a block
 * of them: columns [col0, col0 + ncols) of those rows (FSDP2's Shard(1), tensor parallelism),
 * held as nrows x ncols elements, contiguous.  The ranks' parts (rows or blocks, empty ones
 * anywhere: nrows 0) tile the tensor's rows x columns rectangle, each element held once: row
 * parts in rank order are the plain case; blocks, and rows in another order (FSDP2 over tensor
 * parallelism's _StridedShard), may come in any arrangement (LSL_ERR_SHAPE naming the tensor
 * and the ranks for an overlap or a hole).  A block is
 * merged from B's rows and A's columns it needs (W[rows, cols] = W0 + scaling * B[rows, :] @
 * A[:, cols]) and written in place in the file, one piece a row; the file and its checksums are
 * those of row parts.  Blocks are merged on the CPU (device parts too: W0 copied down through
 * the staging budget, as lsl_writer_put_all says for DoRA).  DoRA on blocks takes a first pass
 * over each block: its sums of squares, by row (down the columns when transposed), added across
 * the ranks in one all-reduce of a value per row (column) of the tensor; so within 1 ulp of row
 * parts, not always the same bytes. */
typedef struct lsl_part {
    uint64_t row0, nrows;      /* this rank's rows (the ranks' tiling: see above) */
    const void *data;          /* nrows x ncols elements of W0 (or of the tensor itself when lora is
                                  NULL) */
    lsl_memspace mem;          /* where data and lora's a, b and magnitude live */
    void *stream;              /* cudaStream_t for LSL_MEM_DEVICE (NULL: the default stream) */
    const lsl_lora_part *lora; /* NULL: copy the rows unchanged */
    uint64_t col0, ncols;      /* ncols 0 (and col0 0): every column; else this block's columns */
} lsl_part;

/* Collective on comm.  Starts a writer for the output `path` (an HDF5 file or a directory: see
 * the section's head; the writer makes its own communicator from comm, so the handle may be freed
 * afterwards).  With callbacks, every later call on the writer uses them.  cfg may be NULL for
 * defaults; path and cfg are logically collective: ranks given different values (quiet and
 * progress_label excepted) all fail with LSL_ERR_INCONSISTENT naming the argument, and so does a
 * rank that cannot see the temporary file rank 0 created (a node-local path under a job of several
 * nodes). On success *out owns the writer (release with lsl_writer_close_all or
 * lsl_writer_abort_all). Returns LSL_OK, LSL_ERR_EXISTS (path exists, no overwrite), LSL_ERR_IO
 * (directory not writable), LSL_ERR_INVALID_ARG (path is a symbolic link, or exists and is not a
 * regular file (a directory, for a directory output), or is not UTF-8, or format is unknown, or
 * cfg->size is one this library does not know: see "configs"); on failure *out is NULL and
 * nothing was created.  A NULL comm is LSL_ERR_INVALID_ARG on that rank alone (no collective
 * can run without it), as for every function taking a handle.  Temporaries of the same path
 * left by interrupted runs are removed where provably dead (local filesystems), else reported on
 * stderr. */
LSL_API lsl_status lsl_writer_create_all(const lsl_comm *comm, const char *path,
                                         const lsl_writer_config *cfg, lsl_writer **out);

/* Collective.  Adds a root string attribute (e.g. "base_config_json").  Call before define.
 * key and value are logically collective (rank 0's values are written).  A directory output
 * writes "base_config_json" as config.json and keeps the others in loraslab.json. */
LSL_API lsl_status lsl_writer_set_attr_all(lsl_writer *w, const char *key, const char *value);

/* Collective; only rank 0's arguments are read (the others may pass 0 and NULLs).  Files a
 * server needs besides the weights (tokenizer files, generation_config.json, a chat template,
 * *.py for remote code): n names and their bytes, copied.  A directory output holds each as
 * DIR/name; an HDF5 file under /files, from which `loraslab convert` restores them.  Call before
 * define, at most once.  A name must be a plain file name, not hidden, none of the output's own
 * (config.json, *.safetensors, the index, loraslab.json, checksums.json), at most 256 MiB and
 * 256 files (LSL_ERR_INVALID_ARG naming it). */
LSL_API lsl_status lsl_writer_add_files_all(lsl_writer *w, uint64_t n, const char *const *names,
                                            const void *const *data, const uint64_t *len);

/* Not collective; after define.  An order to put the tensors in that keeps several shards of a
 * directory output busy at once: each next tensor from the shard least written so far (by
 * bytes), each shard's in define order, so consecutive puts span the shards (for HDF5 output,
 * define order).  order: the writer's tensor count of indices; the same on every rank. */
LSL_API lsl_status lsl_writer_put_order(const lsl_writer *w, uint64_t *order);

/* Collective.  Defines the file's tensors, in order; creates the temporary file and all its
 * datasets.  The list is logically collective (checked against rank 0's: LSL_ERR_INCONSISTENT).
 * Here rank 0 makes the file's I/O plan from the filesystem, the file's size and the ranks and
 * nodes: on Lustre a directory layout of one stripe (the default) gives a file of 4 GiB or more
 * a layout of one 4 MiB stripe per GiB (2 to 64), a layout chosen on purpose (several stripes,
 * PFL) or the config's stripe_count/stripe_size is kept; datasets are aligned to the stripe
 * (GPFS: block) size; each rank's writes are cut at its multiples; the MPI-IO hints follow
 * (collective buffering on, one aggregator per stripe, only where the pieces are small).
 * LSL_IOPLAN=off keeps the directory's layout and MPI's choices, and cuts nothing.
 * Fails with LSL_ERR_NOSPACE when the filesystem lacks room for the whole file.  The writer
 * copies what it needs; `tensors` may be freed after the call. */
LSL_API lsl_status lsl_writer_define_all(lsl_writer *w, uint64_t ntensors,
                                         const lsl_tensor_info *tensors);

/* Collective.  Writes this rank's part of tensor `index` (0-based, in define order), merging the
 * LoRA delta when part->lora is set.  Tensors may be put in any order, each exactly once, the
 * same order on every rank.  A rank with no rows passes nrows = 0 (data may be NULL).
 * Device parts (a build with CUDA; every rank passes the same memspace): the pointers belong to
 * the calling thread's current CUDA device; the call first waits for the work queued on
 * part->stream (so a kernel of the caller's still writing A, B or W0 there finishes before they
 * are read, whatever streams the library then reads them on), and returns once the rows are
 * written (the caller may then reuse its buffers).  The first device put
 * pins two slots of half the staging budget, at most 8 MiB each (larger chunks wrote slower);
 * for a directory output, half the staging budget in slots of 4 MiB (2 to 16).
 * A directory output writes behind: the call returns once the caller's memory is no longer
 * read (host rows written; device rows copied to the host), while the library's own buffers
 * may still be on their way to the files; a write that fails then fails a later call on every
 * rank, at the latest lsl_writer_close_all, and nothing is published.
 * The factors (lsl_lora_part) are gathered through host memory, device shards copied down on
 * part->stream; A's rows over NCCL instead when every rank has its own GPU and A arrives in FSDP2
 * row shards (and no factor needs the host: no DoRA, no transposed delta, B's rows those of the
 * part): environment variable LSL_GATHER unset starts NCCL only after 1 GiB
 * of A has been gathered (a communicator costs seconds and hundreds of MiB of host memory per
 * rank), "nccl" from the first put, "mpi" never.  DoRA and LSL_LORA_DELTA_IN_WEIGHT_DTYPE have
 * no kernel: their device parts are merged on the CPU, W0 copied down on part->stream chunk by
 * chunk through the staging budget and the factors whole, so the file holds the bytes host
 * parts give (host memory stays at the staging budget plus the factors).  LSL_PROFILE=1 prints at
 * close where the time went (define, gathers, GPU waits, writes; the slowest rank's figure per
 * phase), LSL_PROFILE=2 also one line per put on rank 0.  Returns LSL_ERR_SHAPE (parts do not tile
 * the rows), LSL_ERR_DTYPE, LSL_ERR_NONFINITE (the merge produced NaN/Inf), LSL_ERR_IO /
 * LSL_ERR_NOSPACE (write failed).  After a failure the writer accepts only lsl_writer_abort_all. */
LSL_API lsl_status lsl_writer_put_all(lsl_writer *w, uint64_t index, const lsl_part *part);

/* A part that is an element range of a tensor, as FSDP1 shards: each rank holds one contiguous
 * row-major range of each parameter, which may start and end mid-row.  Merged in whole rows: the
 * rows the range touches are merged from W0's elements the part holds (the others taken as 0),
 * and only the part's own elements are written, at byte offset e0 * itemsize of the tensor; so
 * the file, and its checksums, are the same as with row parts.  The factors as for lsl_part (an
 * FSDP1 job passes its pieces of lora_A, lora_B and the magnitude as they are; the put gathers
 * the rows of B the range touches).  DoRA by rows: a row split between ranks takes its norm from
 * every holder's elements (one more all-gather in the put), so within 1 ulp of row parts, not
 * always the same bytes.  DoRA down the columns (LSL_LORA_TRANSPOSED): each rank's pass over its
 * rows counts only its own elements, so the reduced column norms are those of row parts.
 * Device parts as for lsl_part (the partial first and last rows are merged from a zeroed copy
 * in the writer's device buffers, the rest in place; DoRA and LSL_LORA_DELTA_IN_WEIGHT_DTYPE on
 * the CPU, as lsl_writer_put_all says). */
typedef struct lsl_elem_part {
    uint64_t e0, nelems; /* elements [e0, e0 + nelems); the ranks' ranges tile the tensor's
                            elements in rank order (empty ranges anywhere) */
    const void *data;    /* nelems elements of W0 (or of the tensor itself when lora is NULL) */
    lsl_memspace mem;    /* where data and lora's a, b and magnitude live (the same on every
                            rank) */
    void *stream;        /* cudaStream_t for LSL_MEM_DEVICE (NULL: the default stream) */
    const lsl_lora_part *lora; /* NULL: copy the elements unchanged */
} lsl_elem_part;

/* Collective.  lsl_writer_put_all for an element-range part (FSDP1's FlatParameter pieces).
 * Returns as lsl_writer_put_all; LSL_ERR_SHAPE when the ranges do not tile the elements. */
LSL_API lsl_status lsl_writer_put_elems_all(lsl_writer *w, uint64_t index,
                                            const lsl_elem_part *part);

/* Collective.  lsl_writer_put_all for n tensors, in this order, with the LoRA factors of all of
 * them gathered in one collective step (one all-gather of the shards' places, one all-gatherv).
 * For a directory output whose parts are all device rows (no DoRA, no
 * LSL_LORA_DELTA_IN_WEIGHT_DTYPE, no transposed delta), the n tensors' chunks are merged in turn,
 * so the writes of n shards proceed at once (take the
 * batch from lsl_writer_put_order).  The gather:
 * each gather costs a few collective latencies, which at a thousand ranks add up over a model's
 * hundreds of LoRA tensors.  Put a layer's tensors at once, for example.  Where NCCL serves the
 * job (as for lsl_writer_put_all), the device A's held in FSDP row shards go in one NCCL group
 * into device memory instead, the others through host memory; every rank holds the whole A of
 * each LoRA tensor of the batch (r x in elements each) until the call returns.  indices[i] and
 * parts[i] as for lsl_writer_put_all; n, indices and which parts carry LoRA are logically
 * collective (LSL_ERR_INCONSISTENT).  Returns as lsl_writer_put_all; a failure in any tensor fails
 * the call on every rank, and the writer then accepts only lsl_writer_abort_all. */
LSL_API lsl_status lsl_writer_put_batch_all(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                            const lsl_part *parts);

/* Collective.  Checks that every tensor was put, writes checksums and attributes, syncs the
 * file and renames it into place.  Always frees the writer and sets *w to NULL; on failure the
 * temporary file is removed and nothing appears at the path. */
LSL_API lsl_status lsl_writer_close_all(lsl_writer **w);

/* Collective.  Removes the temporary file and frees the writer; *w becomes NULL.  NULL is a
 * no-op. */
LSL_API void lsl_writer_abort_all(lsl_writer **w);

/* ---- offline jobs (what the CLI runs) ------------------------------------------------------ */

typedef struct lsl_job_config {
    size_t size;            /* sizeof(lsl_job_config): set by LSL_JOB_CONFIG_INIT */
    const char *base;       /* HF checkpoint directory (model.safetensors or an index + shards) */
    const char *adapter;    /* PEFT adapter directory; NULL for a plain import */
    const char *output;     /* the output: an HDF5 file, or a safetensors directory (format) */
    uint64_t staging_bytes; /* 0: 64 MiB */
    uint64_t alignment;     /* 0: detect; at most LSL_MAX_ALIGNMENT */
    int overwrite;
    int quiet;  /* LSL_PROGRESS_TEXT (0), _NONE (1) or _JSON (2) */
    int strict; /* refuse an adapter whose base_model_name_or_path does not match */
    /* Where the merge runs.  LSL_MEM_HOST (default): on the CPU, in fp64.  LSL_MEM_DEVICE (a
     * build with CUDA): each rank uses GPU (node-local rank mod GPUs visible), fp32
     * accumulation; a helper thread reads the next chunk of W0 into the pinned ring and copies
     * it up while the previous one is written.  DoRA and LoRA on embeddings are merged on the
     * CPU either way (their exact formulas have no device kernel yet).  LSL_ERR_CUDA (agreed)
     * when a rank has no GPU; LSL_ERR_UNSUPPORTED in a build without CUDA. */
    lsl_memspace merge_on;
    uint64_t stripe_count, stripe_size; /* as lsl_writer_config's */
    /* LSL_PLAN_PRINT: log the I/O plan (filesystem, layout, aggregators, alignment, per-rank
     * extents, stripes shared between ranks) before writing; LSL_PLAN_ONLY: log it and stop,
     * leaving nothing at the output path (the job returns LSL_OK). */
    int plan;
    int format;               /* LSL_OUTPUT_AUTO (0: by the path), _HDF5 or _SAFETENSORS */
    uint64_t max_shard_bytes; /* a directory's shards, as lsl_writer_config's; 0: 5 GB */
} lsl_job_config;
#define LSL_PLAN_PRINT 1
#define LSL_PLAN_ONLY  2
#define LSL_JOB_CONFIG_INIT                                                                        \
    {                                                                                              \
        .size = sizeof(lsl_job_config)                                                             \
    }

/* What a job measured; filled on every rank (min/max are over ranks).  Filling it is collective:
 * a job's stats pointer is NULL on every rank or on none. */
typedef struct lsl_job_stats {
    double seconds;
    uint64_t tensors, merged_tensors, bytes;
    uint64_t rss_baseline_max; /* resident bytes when the job started, max over ranks */
    uint64_t rss_peak_max;     /* peak resident bytes (whole process), max over ranks */
    uint64_t rss_growth_min, rss_growth_max; /* peak minus start, over ranks */
} lsl_job_stats;

/* Collective on comm.  Merges the adapter into the base checkpoint and writes cfg->output: an
 * HDF5 file or a safetensors directory (see "in-job writer"); either carries the base
 * directory's serving files: every regular file at its top level but weights (*.safetensors,
 * *.bin, *.pt, *.pth, *.ckpt, *.h5, *.hdf5, *.msgpack, *.gguf, *.onnx, indexes), adapter_*,
 * config.json (written from the base's), hidden files, and (in name order, each warned about)
 * files over 256 MiB or past 1 GiB or 256 files in all.
 * cfg is logically collective (all but quiet; LSL_ERR_INCONSISTENT names what differs).  The
 * modules merged are those PEFT gives a LoRA layer: target_modules, exclude_modules,
 * layers_to_transform and layers_pattern select them; factors of other modules in the file are
 * left out, with a warning naming them.
 * Rank 0 reads the headers and configs and broadcasts the plan; each rank reads only its own
 * byte ranges.  stats may be NULL.  Every input error is reported before the output is created. */
/* The output may not be any file the job reads (base shards, index, config.json, adapter
 * files), even with overwrite: LSL_ERR_INVALID_ARG. */
LSL_API lsl_status lsl_merge_all(const lsl_comm *comm, const lsl_job_config *cfg,
                                 lsl_job_stats *stats);

typedef struct lsl_convert_config {
    size_t size;              /* sizeof(lsl_convert_config): set by LSL_CONVERT_CONFIG_INIT */
    const char *input;        /* a loraslab HDF5 file */
    const char *outdir;       /* the HF checkpoint directory to create */
    uint64_t max_shard_bytes; /* 0: 5 GB (5,000,000,000 bytes, huggingface_hub's default) */
    uint64_t staging_bytes;   /* 0: 64 MiB */
    int no_verify;            /* nonzero: do not check each tensor's CRC-32C while copying */
    int overwrite;            /* nonzero: replace an existing non-empty outdir (at the end) */
    int quiet;                /* LSL_PROGRESS_TEXT (0), _NONE (1) or _JSON (2) */
    /* Each shard file's Lustre layout and the I/O plan, as lsl_job_config's: a shard of 4 GiB
     * or more in a one-stripe directory gets one stripe per GiB.  LSL_PLAN_ONLY prints the
     * shards, their layouts and each rank's share, and leaves nothing at outdir. */
    uint64_t stripe_count, stripe_size;
    int plan;
} lsl_convert_config;
#define LSL_CONVERT_CONFIG_INIT                                                                    \
    {                                                                                              \
        .size = sizeof(lsl_convert_config)                                                         \
    }

/* Collective on comm; cfg logically collective, as for lsl_merge_all.  The directory holds the
 * bytes a direct write of the same merge gives (the same shard plan and headers), and the
 * serving files the HDF5 file carries (version 2).  An existing outdir is
 * replaced (overwrite) by swapping the names in one step where the filesystem can
 * (RENAME_EXCHANGE), so outdir never names nothing and a concurrent convert strands nothing.
 * Writes outdir as a Hugging Face checkpoint: model.safetensors, or shards
 * model-0000i-of-0000N.safetensors split as huggingface_hub splits them plus
 * model.safetensors.index.json; config.json from the file's base config; loraslab.json
 * (provenance, per-tensor checksums); checksums.json (each file's CRC-32C, base64).  Ranks copy
 * equal shares of the bytes without decoding (each share ends on a multiple of its shard's
 * stripe, so no two ranks write one stripe), checking every tensor's CRC-32C against the file
 * (LSL_ERR_CORRUPT names the tensor; a tensor without a checksum is LSL_ERR_FORMAT unless
 * no_verify).  Everything is written in a hidden sibling directory that is renamed to outdir only
 * when complete; on failure nothing appears.  outdir may not hold the input at any depth, nor be
 * a symbolic link or a non-directory (LSL_ERR_INVALID_ARG); trailing slashes are ignored. */
LSL_API lsl_status lsl_convert_all(const lsl_comm *comm, const lsl_convert_config *cfg,
                                   lsl_job_stats *stats);

/* Collective on comm.  Re-reads a loraslab HDF5 file or a directory loraslab wrote and checks
 * every checksum it carries (per tensor, per file) and the safetensors rules of every shard.
 * Returns LSL_OK, LSL_ERR_CORRUPT naming what differs, or LSL_ERR_FORMAT. */
LSL_API lsl_status lsl_verify_all(const lsl_comm *comm, const char *path, uint64_t staging_bytes,
                                  int quiet, lsl_job_stats *stats);

/* Not collective, async-signal-safe.  Removes the temporary files and directories that loraslab
 * calls in this process have created or joined and not yet published or removed (at most 16 at
 * a time are tracked; every rank tracks the outputs it writes into), so a SIGINT or SIGTERM
 * handler can leave nothing behind.  The calls that owned them cannot finish afterwards: end the
 * process, or let lsl_signals_install's handler make them fail with LSL_ERR_INTERRUPTED. */
LSL_API void lsl_remove_temporaries(void);

/* Not collective; process-wide.  Installs, for SIGINT, SIGTERM and SIGHUP, a handler that passes
 * each signal on to the disposition it replaces, after loraslab's temporaries are removed:
 *  - the default action (terminate) becomes _exit(128 + signal): the exit status says the
 *    process was killed, to a shell, torchrun and mpiexec alike (MPICH's mpiexec does not always
 *    pass on a death by a signal it forwarded);
 *  - an ignored signal stays ignored, and nothing is removed;
 *  - a handler of the caller's (Python's, a training job's) is called as it would have been;
 *    the loraslab call under way then fails on every rank with LSL_ERR_INTERRUPTED at its next
 *    agreement, leaving nothing at its output.
 * Calls nest: the outermost lsl_signals_restore puts back the dispositions replaced, except
 * where someone installed another handler in between (it stays).  The `loraslab` command and
 * Python's save_merged install it for the time of their calls.  LSL_OK or LSL_ERR_IO. */
LSL_API lsl_status lsl_signals_install(void);
/* Not collective.  Undoes one lsl_signals_install (see there). */
LSL_API void lsl_signals_restore(void);
/* Not collective.  The signal (SIGINT, SIGTERM, SIGHUP) that reached an lsl_signals_install
 * handler since the outermost install, or 0. */
LSL_API int lsl_signal_received(void);

/* Not collective.  Parses "5GB" (decimal units KB MB GB TB), "5GiB" (binary KiB MiB GiB TiB),
 * "1.5GB" or a plain byte count; units are case-insensitive.  LSL_OK or LSL_ERR_INVALID_ARG. */
LSL_API lsl_status lsl_parse_size(const char *text, uint64_t *bytes);

/* Not collective.  Describes a loraslab HDF5 file on `out`: a table, or with json != 0 a JSON
 * document valid against schemas/loraslab-file.schema.json. */
LSL_API lsl_status lsl_inspect(const char *path, int json, FILE *out);

/* Not collective.  lsl_inspect's JSON document as a NUL-terminated string in *out, which the
 * caller releases with lsl_free (NULL on failure). */
LSL_API lsl_status lsl_inspect_json(const char *path, char **out);
/* Releases memory loraslab allocated for the caller (lsl_inspect_json).  NULL is a no-op. */
LSL_API void lsl_free(void *p);

#ifdef __cplusplus
}
#endif
#endif /* LORASLAB_H */
