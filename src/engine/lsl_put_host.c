/* The host chunk loop: W0 rows from memory, a file or (copied down) a device part, merged on the
 * CPU (fp64, or PEFT's low-precision rule, or DoRA) chunk by chunk through the staging budget,
 * each chunk written while the reader thread fetches the next.  The entry points that choose it
 * are in lsl_put_entry.c. */
#include "lsl_writer_s.h"

#include "lsl_gather.h"
#include "lsl_merge.h"

#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_src_read(const lsl_i_src *s, uint64_t off, uint64_t n, void *dst)
{
#ifdef LSL_HAVE_CUDA
    if (s->dev)
        return lsl_i_cuda_download_on(dst, s->dev + off, n, s->stream,
                                      "copying W0 rows of a device part to the host");
#endif
    if (s->mem) {
        memcpy(dst, s->mem + off, n);
        return LSL_OK;
    }
    return lsl_i_pread_full(s->fd, dst, n, s->off + off, s->path);
}

/* Chunk c of this rank's part in tiles tl (units: rows when merging, bytes when copying): its
 * first unit and count, and its byte offset in the part and length. */
static void chunk_rows_of(const lsl_i_tiles *tl, uint64_t c, uint64_t *lr, uint64_t *m)
{
    *lr = lsl_i_tile_first(tl, c);
    *m = lsl_i_tile_count(tl, c);
}

static void chunk_of(const lsl_i_putctx *pc, const lsl_i_tiles *tl, int rows, uint64_t c,
                     uint64_t *off, uint64_t *count)
{
    uint64_t first, m, unit = rows ? pc->rbytes : 1;
    chunk_rows_of(tl, c, &first, &m);
    *off = first * unit;
    *count = m * unit;
}

/* DoRA by rows on an element-range part: the norm of a row two or more ranks share needs every
 * holder's elements.  Each rank sums the squares of V over its own columns of its first and
 * last rows where it holds them in part; one all-gather of (row, sum) pairs gives every holder
 * the whole row's sum, added in rank order.  Collective: a rank that failed (st) sends none.
 * Returns a local status, or the all-gather's failure. */
static lsl_status shared_row_norms(lsl_writer *w, const lsl_i_putctx *pc, const lsl_i_src *src,
                                   lsl_i_cpu_part *cp, unsigned char *row, void *work,
                                   lsl_status st)
{
    double mine[4] = {-1, 0, -1, 0}; /* (global row, partial sum) x 2; -1: none */
    uint64_t lr[2] = {0, pc->nrows ? pc->nrows - 1 : 0};
    int nmine = 0;
    for (int q = 0; st == LSL_OK && q < 2 && pc->nrows && pc->relems; q++) {
        if (q == 1 && lr[1] == lr[0])
            break;
        uint64_t g = pc->row0 + lr[q], rs = g * pc->relems, re = rs + pc->relems;
        uint64_t lo = pc->e0 > rs ? pc->e0 : rs;
        uint64_t hi = pc->e0 + pc->ne < re ? pc->e0 + pc->ne : re;
        if (lo == rs && hi == re)
            continue; /* the whole row is this rank's */
        memset(row, 0, pc->rbytes);
        st = lsl_i_src_read(src, (lo - pc->e0) * pc->esize, (hi - lo) * pc->esize,
                            row + (lo - rs) * pc->esize);
        double sum = 0;
        if (st == LSL_OK)
            st = lsl_i_cpu_part_rowsq(cp, row, lr[q], lo - rs, hi - rs, work, &sum);
        mine[2 * nmine] = (double)g;
        mine[2 * nmine++ + 1] = sum;
    }
    double *all = (double *)w->per_rank; /* LSL_I_PER_RANK values a rank: room for these 4 */
    lsl_status gs = lsl_i_allgather(w->comm, mine, all, sizeof mine);
    if (gs != LSL_OK)
        return gs;
    for (int q = 0; st == LSL_OK && q < nmine; q++) {
        double total = 0;
        for (int k = 0; k < w->size; k++)
            for (int j = 0; j < 2; j++)
                if (all[4 * k + 2 * j] == mine[2 * q])
                    total += all[4 * k + 2 * j + 1];
        lsl_i_cpu_part_row_norm(cp, (uint64_t)mine[2 * q] - pc->row0, total);
    }
    return st;
}

lsl_status lsl_i_put_body(lsl_writer *w, uint64_t index, const lsl_i_putctx *pcp,
                          const lsl_i_src *src, const lsl_i_lora *lora, lsl_status st0)
{
    lsl_status rc = LSL_OK, st;
    if (pcp->block)
        return lsl_i_put_block_body(w, index, pcp, src, lora, st0);
    lsl_i_cpu_part cp = {0}; /* the CPU backend's view of this part */
    lsl_i_putctx pc = *pcp;
    uint64_t nrows = pc.nrows;
    const lsl_tensor_info *t = pc.t;
    uint64_t chunk_rows = 0, chunk_bytes = 0, nloc = 0;
    lsl_i_tiles tl = {0};
    /* Rows from a file are read one chunk ahead by the reader thread, into the other half of the
     * staging budget, while this chunk is merged and written. */
    const int ahead = src->mem == NULL && src->dev == NULL;
    st = st0;
    if (st == LSL_OK && ahead && !w->reader)
        st = lsl_i_reader_start(&w->reader);
    if (lora) {
        uint64_t in = pc.relems;
        lsl_status as = lsl_i_cpu_part_alloc(&cp, t->name, t->dtype, lora, nrows, in);
        if (st == LSL_OK && as != LSL_OK)
            st = as;
        /* A arrives whole: gathered with the other factors (lsl_factors.c) or by the offline
         * jobs' batches */
        else if (st == LSL_OK && !(lora->flags & LSL_I_LORA_A_FULL))
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "internal: tensor `%s`: LoRA A not gathered",
                            t->name);
        /* every rank holds its buffers (the column sums too) once this is agreed */
        LSL_TRY(lsl_i_agree(w->comm, st));
        lsl_i_cpu_part_load(&cp, lora->a, 0, in);
        /* The staging budget holds a block of W rows (two when reading ahead) and its fp64 work
         * area, each 64-byte aligned: keep room for the alignment. */
        uint64_t per_row = in * pc.esize * (ahead ? 2 : 1) + lsl_i_cpu_part_work_row(&cp);
        chunk_rows =
            w->staging_bytes > 128 ? (w->staging_bytes - 128) / (per_row ? per_row : 1) : 0;
        if (st == LSL_OK && chunk_rows == 0)
            st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                            "tensor `%s`: one row needs %llu bytes of staging, more than the "
                            "budget of %llu (raise the staging size)",
                            t->name, (unsigned long long)per_row,
                            (unsigned long long)w->staging_bytes);
        else
            /* whole rows, cut where the plan's pieces allow (lsl_i_tiles_make); local row 0
             * sits at the part's first element's row start */
            lsl_i_tiles_make(nrows, pc.rbytes, pc.base - (pc.e0 - pc.row0 * pc.relems) * pc.esize,
                             w->plan.piece, chunk_rows, chunk_rows, &tl);
    } else {
        chunk_bytes = src->mem ? LSL_I_ZERO_COPY_CHUNK : w->staging_bytes / 2;
        lsl_i_tiles_make(pc.my_bytes, 1, pc.base, w->plan.piece, chunk_bytes, chunk_bytes, &tl);
    }
    nloc = tl.n;
    /* Where chunk c's rows are read (half c % 2 when reading ahead) and the fp64 work area. */
    uint64_t half = lora ? (chunk_rows * pc.rbytes + 63) / 64 * 64 : chunk_bytes;
    unsigned char *rbuf[2] = {w->staging, w->staging + (ahead ? half : 0)};
    void *work = lora ? w->staging + (ahead ? 2 : 1) * half : NULL;
    if (st != LSL_OK)
        nloc = 0;
    /* A directory's writes are queued (lsl_i_datafile_fence): the staging budget is this
     * part's once the writes still reading it are done. */
    if (st == LSL_OK)
        st = lsl_i_datafile_fence(&w->file, w->staging, w->staging_bytes);
    uint64_t nchunks = lsl_i_writer_max(w, nloc, &st);
    if (lora && lsl_i_cpu_part_by_columns(&cp)) {
        /* DoRA down the columns: the norm of a column spans every rank's rows.  Pass 1 sums this
         * rank's squares of V per column over its own elements (an element-range part's first
         * and last rows may be partial); the reduction gives every rank the norms. */
        for (uint64_t c = 0; st == LSL_OK && c < nloc; c++) {
            uint64_t lr, m, pos, off, count;
            chunk_rows_of(&tl, c, &lr, &m);
            if (lsl_i_put_span(&pc, lr, m, &pos, &off, &count))
                memset(rbuf[0], 0, m * pc.rbytes);
            st = lsl_i_src_read(src, off, count, rbuf[0] + pos);
            if (st == LSL_OK)
                st = lsl_i_cpu_part_colsq(&cp, rbuf[0], lr, m, pos / pc.esize,
                                          (pos + count) / pc.esize, work);
        }
        lsl_status rs = lsl_i_allreduce_f64(w->comm, cp.colf, pc.relems, LSL_OP_SUM);
        if (rs != LSL_OK)
            LSL_GOTO(rs);
        if (st == LSL_OK)
            st = lsl_i_cpu_part_columns(&cp, 0);
    }
    if (pc.elems && lora && pc.dora && !lsl_i_cpu_part_by_columns(&cp)) {
        /* DoRA by rows on element ranges (every rank: agreed in the put's record) */
        lsl_status ns = shared_row_norms(w, &pc, src, &cp, rbuf[0], work, st);
        if (ns != LSL_OK && ns != st && st == LSL_OK)
            st = ns;
        if (ns == LSL_ERR_MPI || ns == LSL_ERR_COMM)
            LSL_GOTO(ns);
    }
#define CHUNK(ch, o, n) chunk_of(&pc, &tl, lora != NULL, (ch), &(o), &(n))
    int posted = 0;
    uint64_t off = 0, count = 0;
    if (ahead && st == LSL_OK && nloc > 0) {
        CHUNK(0, off, count);
        lsl_i_reader_post(w->reader, src->fd, src->off + off, count, rbuf[0], src->path);
        posted = 1;
    }
    for (uint64_t c = 0; c < nchunks; c++) {
        unsigned char *rows = rbuf[c % 2];
        const void *buf = rows;
        uint64_t pos = 0; /* where the part's first element of this chunk sits in the buffer */
        off = count = 0;
        if (c < nloc)
            CHUNK(c, off, count);
        if (posted) { /* chunk c's read; after a failure, only let it land */
            lsl_status rs = lsl_i_reader_join(w->reader, st == LSL_OK);
            posted = 0;
            st = st == LSL_OK ? rs : st;
        }
        if (ahead && st == LSL_OK && c + 1 < nloc) { /* chunk c - 1 is written: its half is free */
            uint64_t o2, n2;
            CHUNK(c + 1, o2, n2);
            st = lsl_i_datafile_fence(&w->file, rbuf[(c + 1) % 2], half);
            if (st == LSL_OK) {
                lsl_i_reader_post(w->reader, src->fd, src->off + o2, n2, rbuf[(c + 1) % 2],
                                  src->path);
                posted = 1;
            }
        }
        if (st == LSL_OK && c < nloc && !ahead) {
            if (lora) {
                uint64_t lr, m;
                chunk_rows_of(&tl, c, &lr, &m);
                /* the chunk's rows, and the part's elements among them */
                st = lsl_i_datafile_fence(&w->file, rows, m * pc.rbytes);
                if (lsl_i_put_span(&pc, lr, m, &pos, &off, &count) && st == LSL_OK)
                    memset(rows, 0, m * pc.rbytes);
                if (st == LSL_OK)
                    st = lsl_i_src_read(src, off, count, rows + pos);
                buf = rows + pos;
            } else {
                buf = src->mem + off;
            }
        }
        if (st == LSL_OK && c < nloc && lora) {
            uint64_t lr, m, bad = 0;
            chunk_rows_of(&tl, c, &lr, &m);
            lsl_status ms = lsl_i_cpu_part_merge(&cp, rows, lr, m, work, &bad);
            st = ms == LSL_ERR_NONFINITE ? lsl_i_put_nonfinite(&pc, lr, bad) : ms;
        }
        lsl_i_put_write(w, &pc, off, buf, c < nloc ? count : 0, 0, &st);
    }
    /* the caller's memory is the caller's again when the put returns */
    if (!lora && src->mem && pc.my_bytes) {
        lsl_status fs = lsl_i_datafile_fence(&w->file, src->mem, pc.my_bytes);
        st = st == LSL_OK ? fs : st;
    }
#undef CHUNK
    LSL_TRY(lsl_i_put_end(w, index, &pc, lora, st));
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    lsl_i_cpu_part_free(&cp);
    return rc;
}

lsl_status lsl_i_writer_put(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                            const lsl_i_src *src, const lsl_i_lora *lora, lsl_status local_st)
{
    lsl_i_putctx pc;
    lsl_status rc = lsl_i_put_begin(w, index, row0, nrows, src->mem || src->fd >= 0, lora,
                                    LSL_MEM_HOST, local_st, &pc);
    if (rc != LSL_OK) {
        w->state = W_FAILED;
        return rc;
    }
    return lsl_i_put_body(w, index, &pc, src, lora, LSL_OK);
}

lsl_status lsl_i_writer_gather(lsl_writer *w, uint64_t n, const lsl_i_ashard *s,
                               lsl_status local_st)
{
    double t0 = lsl_i_now();
    lsl_status st = lsl_i_gather_a_batch(w->comm, n, s, local_st);
    w->prof[P_GATHER] += lsl_i_now() - t0;
    return st;
}
