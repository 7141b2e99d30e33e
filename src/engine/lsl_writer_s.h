/* The writer's state, shared by the files that implement it: lsl_writer.c (create, define,
 * close), lsl_writer_hf.c (a safetensors directory's shards and small files), lsl_put.c (the put
 * protocol: agree, write, checksum, progress, profile), lsl_put_host.c (the host merge
 * pipeline), lsl_put_device.c (GPU staging), lsl_put_batch.c (batched A gathers) and
 * lsl_put_interleave.c (a directory batch's device chunks in turn).  Nothing outside
 * src/engine includes it. */
#ifndef LSL_WRITER_S_H
#define LSL_WRITER_S_H

#include "lsl_crc_worker.h"
#include "lsl_datafile.h"
#include "lsl_fs.h"
#include "lsl_h5.h"
#include "lsl_hfdir.h"
#include "lsl_ioplan.h"
#include "lsl_tiles.h"
#include "lsl_progress.h"
#include "lsl_publish.h"
#include "lsl_reader.h"
#include "lsl_writer_i.h"
#ifdef LSL_HAVE_CUDA
#include "lsl_cuda.h"
#endif

/* Largest single write from caller memory: one data-path call (lsl_datafile.h). */
#define LSL_I_ZERO_COPY_CHUNK ((uint64_t)1 << 30)

enum lsl_i_wstate { W_CREATED, W_DEFINED, W_FAILED };

/* Values a rank in w->per_rank, the receive buffer of a put's small all-gathers (its record, its
 * checksums, a single put's factor record): allocated once, so a put's first collective needs
 * no allocation that could fail on one rank alone. */
#define LSL_I_PER_RANK 24

/* A part inside the library: rows [first, first + count) of the tensor (elems 0) or elements
 * (elems 1, an FSDP1 piece), its data where mem says, and its factors as the merge takes them.
 * ncols > 0: a block, columns [col0, col0 + ncols) of the rows and never all of them (the
 * public entry turns a block of every column into a row part). */
typedef struct lsl_i_part {
    uint64_t first, count;
    int elems;
    const void *data;
    lsl_memspace mem;
    void *stream;
    const lsl_i_lora *lora;
    uint64_t col0, ncols;
} lsl_i_part;

/* The phases LSL_PROFILE reports, in print order; what falls in none is printed as "other". */
enum lsl_i_phase {
    P_DEFINE,
    P_GPU_OPEN,
    P_GATHER,
    P_LAUNCH,
    P_GPU_WAIT,
    P_WRITE,
    P_CRC_WAIT,
    P_AGREE,
    P_PUT_REST,
    P_CLOSE,
    P_COUNT
};

struct lsl_writer {
    lsl_i_comm *comm; /* the writer's own (a duplicate of the caller's) */
    int rank, size;
    enum lsl_i_wstate state;
    lsl_writer_config cfg;
    uint64_t staging_bytes;
    lsl_i_out out; /* the file: its path, temporary, directory */
    char *hints;
    lsl_i_fsinfo fs;
    lsl_i_ioplan plan; /* made by rank 0 at define, the same everywhere */
    int nodes;
    uint64_t nattrs;
    char **keys, **vals;
    uint64_t n;
    lsl_tensor_info *t;
    uint64_t *offsets, *nbytes, total_bytes;
    unsigned char *done;
    lsl_i_h5_final *fin;
    /* A safetensors directory (lsl_writer_hf.c): its shards (every rank: names, shard_of,
     * offset; rank 0 also the headers until written), where each file's virtual offsets start
     * (nshards + 1), rank 0's header checksums. */
    int hf;
    lsl_i_hfplan hfp;
    uint64_t *vbase;
    uint32_t *head_crc;
    /* rank 0: the serving files (lsl_writer_add_files_all) */
    int files_added;
    uint64_t nfiles;
    lsl_i_hfdir_file *files;
    lsl_i_datafile file;
    unsigned char *staging;
    uint64_t *per_rank; /* 8 * size values: each put's two all-gathers (lsl_put.c) */
    double t0;
    lsl_i_progress prog;
    uint64_t bytes_done, tensors_done;
    lsl_i_crcw crc;
    lsl_i_reader *reader; /* started at the first put from a file */
    /* Where the time goes (seconds, this rank), printed at close when LSL_PROFILE is set: the
     * benchmark's gap to the raw write ceiling is read from these. */
    double prof[P_COUNT];
    int profile;                    /* LSL_PROFILE on rank 0: 0 off, 1 at close, 2 per put */
    double put_t0, put_p0[P_COUNT]; /* the put in progress: its start, the phases then */
    uint64_t put_calls0;            /* and the data path's call count then */
#ifdef LSL_HAVE_CUDA
    lsl_i_cuda *cuda; /* opened at the first device put */
#endif
};

/* One tensor's put, shared by the host and device paths. */
typedef struct lsl_i_putctx {
    const lsl_tensor_info *t;
    /* row0, nrows: the rows this part touches; e0, ne: its elements (whole rows unless elems or
     * block: then e0 is the first element, ne the count); base: the file offset of element e0 */
    uint64_t rows, relems, esize, rbytes, row0, nrows, e0, ne, my_bytes, base;
    int elems; /* an element-range part (lsl_writer_put_elems_all) */
    int dora;  /* DoRA, agreed among the parts that hold data */
    uint32_t crc;
    /* Some rank passed a block (agreed): every rank then writes its rows as pieces of c0, nc
     * columns (pbytes bytes each, its whole rows included), rbytes apart, with
     * lsl_i_put_write_rows, and checksums them as the tensor's bytes with zeros elsewhere (crc_end:
     * the tensor byte its running CRC has reached; gap_op: the zero bytes between two of its
     * pieces). */
    int block;
    uint64_t c0, nc, pbytes, crc_end;
    uint32_t gap_op[32];
} lsl_i_putctx;

/* Collective.  Local checks, then the collective ones (same tensor everywhere, parts tiling the
 * rows in rank order), agreed before any I/O.  mem: LSL_MEM_HOST or _DEVICE (the same on every
 * rank).  st: this rank's status so far. */
lsl_status lsl_i_put_begin(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                           bool has_data, const lsl_i_lora *lora, int mem, lsl_status st,
                           lsl_i_putctx *pc);
/* Collective.  As lsl_i_put_begin for the block of rows [row0, row0 + nrows) and columns
 * [col0, col0 + ncols) (ncols 0: every column): when some rank passes a block, the ranks' parts
 * must tile the tensor's rectangle, and pc->block is set on every rank. */
lsl_status lsl_i_put_begin_block(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                                 uint64_t col0, uint64_t ncols, bool has_data,
                                 const lsl_i_lora *lora, int mem, lsl_status st, lsl_i_putctx *pc);
/* Collective.  As lsl_i_put_begin for the elements [e0, e0 + ne) of the row-major tensor: the
 * ranks' ranges must tile the tensor's elements in rank order. */
lsl_status lsl_i_put_begin_elems(lsl_writer *w, uint64_t index, uint64_t e0, uint64_t ne,
                                 bool has_data, const lsl_i_lora *lora, int mem, lsl_status st,
                                 lsl_i_putctx *pc);
/* Collective over MPI-IO.  Writes count bytes at the part's offset + off; a rank that failed
 * (*st) or has nothing left joins with zero bytes.  Checksums what it writes unless crc_done
 * (the GPU did). */
void lsl_i_put_write(lsl_writer *w, lsl_i_putctx *pc, uint64_t off, const void *buf, uint64_t count,
                     int crc_done, lsl_status *st);
/* Collective.  Agrees on st, combines the ranks' CRCs in rank (= byte) order into the tensor's,
 * records it and the LoRA attributes, reports progress. */
lsl_status lsl_i_put_end(lsl_writer *w, uint64_t index, lsl_i_putctx *pc, const lsl_i_lora *lora,
                         lsl_status st);
/* Collective over MPI-IO, for a put with pc->block: the part's local rows [first_row,
 * first_row + nrows), nrows * pc->pbytes bytes at buf, each row's piece to its place in the
 * tensor; checksummed as they go (lsl_i_putctx).  A rank that failed (*st) or has nothing left
 * joins with nothing. */
void lsl_i_put_write_rows(lsl_writer *w, lsl_i_putctx *pc, uint64_t first_row, uint64_t nrows,
                          const void *buf, lsl_status *st);
/* Rows [first_row, first_row + nrows) of the part (local rows): where the part's own elements
 * among them sit, at byte *pos of those rows and byte *off of the part, *count bytes.  Returns
 * 1 when they are not all the rows' elements (an element-range part's first or last row: the
 * rows are merged from a zeroed copy, and only the own bytes written). */
int lsl_i_put_span(const lsl_i_putctx *pc, uint64_t first_row, uint64_t nrows, uint64_t *pos,
                   uint64_t *off, uint64_t *count);
/* LSL_ERR_NONFINITE naming the tensor, row and column of element `bad` of the chunk whose
 * first (local) row is first_row. */
lsl_status lsl_i_put_nonfinite(const lsl_i_putctx *pc, uint64_t first_row, uint64_t bad);
/* Not collective: whether tensor t can take a LoRA delta at all (a 1-D or 2-D float weight) with
 * this r and scaling; the factors' own checks are lsl_i_check_lora's (and lsl_factors.c's). */
lsl_status lsl_i_check_lora_target(const lsl_tensor_info *t, uint64_t rank, double scaling);
/* Validates a LoRA part against its tensor (local). */
lsl_status lsl_i_check_lora(const lsl_tensor_info *t, uint64_t nrows, const lsl_i_lora *l);
/* Collective: the same value on every rank (the maximum); a failed reduction keeps v and sets
 * *st. */
uint64_t lsl_i_writer_max(lsl_writer *w, uint64_t v, lsl_status *st);

#ifdef LSL_HAVE_CUDA
/* Collective.  Opens the writer's CUDA context at the first device put on any rank (agreed). */
lsl_status lsl_i_writer_open_cuda(lsl_writer *w);
/* Collective.  A device put: rows [first, first + count) at data on stream (the in-job API), or
 * read from src (the offline merge on the GPU); with elems, elements [first, first + count) at
 * data (lsl_writer_put_elems_all; no src). */
lsl_status lsl_i_put_device(lsl_writer *w, uint64_t index, uint64_t first, uint64_t count,
                            int elems, const void *data, void *stream, const lsl_i_src *src,
                            const lsl_i_lora *lora, lsl_status st0);
/* Collective.  A device part whose merge has no kernel (DoRA, LSL_LORA_DELTA_IN_WEIGHT_DTYPE, a
 * block: lsl_i_part_on_cpu):
 * the host chunk loop's CPU merge, with W0 copied down chunk by chunk into the staging budget on
 * the part's stream (after the work queued there), and the factors copied down whole.  The file
 * holds the bytes a host part writes.  st: this rank's status so far (lsl_put_cpudev.c). */
lsl_status lsl_i_put_device_on_cpu(lsl_writer *w, uint64_t index, const lsl_i_part *p,
                                   lsl_status st);
/* Collective.  Step two of lsl_writer_put_batch_all for a directory output whose parts are all
 * plain device row parts with their whole A (parts[i].lora flagged LSL_I_LORA_A_FULL): every put
 * begun, their chunks merged in turn through the ring and queued on the I/O pool, every put
 * ended.  Returns 0 when the batch does not qualify on some rank (nothing done: the caller puts
 * one by one), else 1 with *rc the agreed status. */
int lsl_i_put_interleaved(lsl_writer *w, uint64_t n, const uint64_t *indices,
                          const lsl_i_part *parts, lsl_status *rc);
#endif

/* Not collective (rank 0, at define): plans the directory's shards and writes their headers into
 * the temporary directory; sets the writer's plan (the largest shard's), vbase and offsets. */
lsl_status lsl_i_writer_hf_layout(lsl_writer *w);
/* Collective: rank 0's shard plan (st: its status so far) reaches every rank, whose data path
 * then opens the shards.  Agreed status. */
lsl_status lsl_i_writer_hf_open(lsl_writer *w, lsl_status st);
/* Not collective (rank 0, at close): the directory's small files, then the rename. */
lsl_status lsl_i_writer_hf_publish(lsl_writer *w);

/* Whether a LoRA part's merge has no device kernel (DoRA, LSL_LORA_DELTA_IN_WEIGHT_DTYPE): its
 * device parts are merged on the CPU. */
static inline bool lsl_i_lora_on_cpu(const lsl_i_lora *l)
{
    return l && (l->magnitude || (l->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE));
}
/* Whether a device part is merged (or copied) by the host chunk loop: its LoRA has no kernel, or
 * it is a block (the device loop writes whole rows only). */
static inline bool lsl_i_part_on_cpu(const lsl_i_part *p)
{
    return p->ncols || lsl_i_lora_on_cpu(p->lora);
}

/* Collective.  The host chunk loop (lsl_put_host.c), after the put's agreement (pcp): merge or
 * copy the part chunk by chunk.  An element-range part (pcp->elems, from memory) is merged in
 * whole rows: the partial first and last rows sit at their place in a zeroed row buffer, and only
 * the part's own elements are written.  st0: a local failure since the agreement, agreed here
 * before any write (a LoRA part only). */
lsl_status lsl_i_put_body(lsl_writer *w, uint64_t index, const lsl_i_putctx *pcp,
                          const lsl_i_src *src, const lsl_i_lora *lora, lsl_status st0);

/* Collective.  lsl_i_put_body for a tensor held in blocks (pcp->block): this rank's rows, each
 * of its block's columns, from memory (copied unchanged straight from it) or the device (through
 * the staging budget), merged on the CPU with A's columns of the block (lsl_put_block.c). */
lsl_status lsl_i_put_block_body(lsl_writer *w, uint64_t index, const lsl_i_putctx *pcp,
                                const lsl_i_src *src, const lsl_i_lora *lora, lsl_status st0);
/* Not collective: n bytes at offset off of a part's data, wherever it lives, into dst. */
lsl_status lsl_i_src_read(const lsl_i_src *s, uint64_t off, uint64_t n, void *dst);

/* Collective: a part whose factors are resolved down its path (host or device, by part->mem);
 * route: the resolution's agreed answer (lsl_i_factors_resolve), NULL to ask here; st this
 * rank's status (lsl_put_entry.c). */
lsl_status lsl_i_put_one(lsl_writer *w, uint64_t index, const lsl_i_part *part,
                         const int64_t *route, lsl_status st);
/* Not collective: what every public put does first with a part.  A LoRA carrying flag bits the
 * API does not define is refused (fn: the public call), so the library's internal bits cannot
 * arrive from a caller; a device part waits for the work its caller queued on `stream`, which
 * the library's own copies and streams are not ordered after (lsl_i_cuda_after_caller). */
lsl_status lsl_i_part_entry(const lsl_lora_part *l, lsl_memspace mem, void *stream, const char *fn);
/* Not collective: a public part as the library takes it, a block of every column made a row
 * part (fn, the public call, names a col0 without ncols: LSL_ERR_INVALID_ARG, *p still set). */
lsl_status lsl_i_part_of(const lsl_writer *w, uint64_t index, const lsl_part *part, const char *fn,
                         lsl_i_part *p);

#endif
