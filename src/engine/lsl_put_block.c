/* The host chunk loop of a tensor held in blocks (FSDP2's Shard(1), tensor parallelism): each
 * rank's rows of its block's columns, merged with A's columns of the block and written one
 * piece a row into the tensor's place (lsl_i_put_write_rows).  DoRA takes a first pass over the
 * block for its sums of squares, added across the ranks (one all-reduce of a value per row, or
 * per column down the columns).  Whole-row parts of such a tensor
 * come here too, so every rank makes the same collective writes. */
#include "lsl_writer_s.h"

#include "lsl_merge.h"

#include <stdlib.h>
#include <string.h>

/* Rows of chunk c (chunk_rows each, the last short) of a part of nrows rows. */
static uint64_t chunk_len(uint64_t c, uint64_t chunk_rows, uint64_t nrows)
{
    uint64_t lr = c * chunk_rows;
    return nrows - lr < chunk_rows ? nrows - lr : chunk_rows;
}

/* The part's rows [lr, lr + m) into the staging buffer, once the writes a directory queued from
 * it are done. */
static lsl_status stage(lsl_writer *w, const lsl_i_putctx *pc, const lsl_i_src *src,
                        unsigned char *rows, uint64_t lr, uint64_t m)
{
    lsl_status st = lsl_i_datafile_fence(&w->file, rows, m * pc->pbytes);
    return st == LSL_OK ? lsl_i_src_read(src, lr * pc->pbytes, m * pc->pbytes, rows) : st;
}

lsl_status lsl_i_put_block_body(lsl_writer *w, uint64_t index, const lsl_i_putctx *pcp,
                                const lsl_i_src *src, const lsl_i_lora *lora, lsl_status st0)
{
    lsl_status rc = LSL_OK, st = st0;
    lsl_i_cpu_part cp = {0};
    lsl_i_putctx pc = *pcp;
    const lsl_tensor_info *t = pc.t;
    /* DoRA: the ranks' sums of squares of V, by row of the tensor (or by column, down the
     * columns), added across the ranks that share a row (a column) before the merge */
    const bool dora = lora && pc.dora, by_cols = dora && (lora->flags & LSL_I_LORA_DORA_COLUMNS);
    uint64_t nsum = !dora ? 0 : by_cols ? pc.relems : pc.rows;
    double *sums = dora ? lsl_i_calloc(nsum + 1, sizeof *sums) : NULL;
    /* rows go through the staging budget unless they are copied unchanged from host memory */
    const bool staged = lora || !src->mem;
    uint64_t chunk_rows = 0, nloc = 0, per_row = pc.pbytes;
    if (st == LSL_OK && !src->mem && !src->dev && pc.nrows)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "internal: tensor `%s`: a block read from a file",
                        t->name);
    if (lora) {
        lsl_status as = lsl_i_cpu_part_alloc(&cp, t->name, t->dtype, lora, pc.nrows, pc.nc);
        if (st == LSL_OK && as != LSL_OK)
            st = as;
        else if (st == LSL_OK && !(lora->flags & LSL_I_LORA_A_FULL))
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "internal: tensor `%s`: LoRA A not gathered",
                            t->name);
        else if (st == LSL_OK && dora && !sums)
            st = lsl_i_fail(LSL_ERR_NOMEM, "tensor `%s`: out of memory for DoRA norms", t->name);
        LSL_TRY(lsl_i_agree(w->comm, st));
        lsl_i_cpu_part_load(&cp, lora->a, pc.c0, pc.relems);
        per_row += lsl_i_cpu_part_work_row(&cp);
    }
    uint64_t budget = !staged                  ? LSL_I_ZERO_COPY_CHUNK
                      : w->staging_bytes > 128 ? w->staging_bytes - 128
                                               : 0;
    chunk_rows = per_row ? budget / per_row : 0;
    if (st == LSL_OK && pc.nrows && chunk_rows == 0)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "tensor `%s`: one row of its block needs %llu bytes of staging, more than "
                        "the budget of %llu (raise the staging size)",
                        t->name, (unsigned long long)per_row, (unsigned long long)w->staging_bytes);
    if (st == LSL_OK && pc.nrows)
        nloc = (pc.nrows + chunk_rows - 1) / chunk_rows;
    unsigned char *rows = w->staging;
    void *work = w->staging + (chunk_rows * pc.pbytes + 63) / 64 * 64;
    /* a directory's queued writes of an earlier put may still read the staging budget */
    if (st == LSL_OK && staged)
        st = lsl_i_datafile_fence(&w->file, w->staging, w->staging_bytes);
    if (dora) {
        /* pass 1: this rank's sums over its block; every rank joins the reduction */
        for (uint64_t c = 0; st == LSL_OK && c < nloc; c++) {
            uint64_t lr = c * chunk_rows, m = chunk_len(c, chunk_rows, pc.nrows);
            st = stage(w, &pc, src, rows, lr, m);
            if (st == LSL_OK && by_cols)
                st = lsl_i_cpu_part_colsq(&cp, rows, lr, m, 0, m * pc.nc, work);
            else if (st == LSL_OK)
                st = lsl_i_cpu_part_rowsq_block(&cp, rows, lr, m, work, sums + pc.row0 + lr);
        }
        if (by_cols && st == LSL_OK && pc.nrows)
            memcpy(sums + pc.c0, cp.colf, pc.nc * sizeof *sums);
        LSL_TRY(lsl_i_allreduce_f64(w->comm, sums, nsum, LSL_OP_SUM));
        if (by_cols && st == LSL_OK) {
            memcpy(cp.colf, sums + pc.c0, pc.nc * sizeof *sums);
            st = lsl_i_cpu_part_columns(&cp, pc.c0);
        } else if (st == LSL_OK) {
            lsl_i_cpu_part_block_norms(&cp, sums + pc.row0);
        }
    }
    uint64_t nchunks = lsl_i_writer_max(w, nloc, &st);
    for (uint64_t c = 0; c < nchunks; c++) {
        uint64_t lr = c * chunk_rows, m = c < nloc ? chunk_len(c, chunk_rows, pc.nrows) : 0;
        uint64_t bad = 0;
        const void *buf = NULL;
        if (st == LSL_OK && m && staged) {
            st = stage(w, &pc, src, rows, lr, m);
            buf = rows;
        } else if (st == LSL_OK && m) {
            buf = src->mem + lr * pc.pbytes;
        }
        if (st == LSL_OK && m && lora) {
            lsl_status ms = lsl_i_cpu_part_merge(&cp, rows, lr, m, work, &bad);
            st = ms == LSL_ERR_NONFINITE ? lsl_i_put_nonfinite(&pc, lr, bad) : ms;
        }
        lsl_i_put_write_rows(w, &pc, lr, m, buf, &st);
    }
    /* the caller's memory is the caller's again when the put returns */
    if (!staged && pc.my_bytes) {
        lsl_status fs = lsl_i_datafile_fence(&w->file, src->mem, pc.my_bytes);
        st = st == LSL_OK ? fs : st;
    }
    LSL_TRY(lsl_i_put_end(w, index, &pc, lora, st));
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    lsl_i_cpu_part_free(&cp);
    free(sums);
    return rc;
}
