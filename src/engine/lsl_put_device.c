/* The device put: rows on the GPU (the caller's device pointers, or W0 read from a file and
 * copied up), merged by the kernel chunk by chunk into a pinned two-slot ring, each slot written
 * while the next is merged and copied down. */
#include "lsl_writer_s.h"

#include <stdio.h>

/* Opened at the first device put, collectively; its time is the profile's GPU setup. */
lsl_status lsl_i_writer_open_cuda(lsl_writer *w)
{
    lsl_status st = LSL_OK;
    uint64_t any = lsl_i_writer_max(w, w->cuda == NULL, &st);
    if (st != LSL_OK)
        return st;
    if (!any || w->cuda)
        return LSL_OK;
    double t0 = lsl_i_now();
    /* A directory keeps many chunks in flight over its shards (lsl_put_interleave.c): half the
     * staging budget pinned as slots of 4 MiB, at least 2, at most LSL_I_RING_MAX; one file
     * needs only two slots of up to 8 MiB. */
    uint64_t pinned = w->hf ? w->staging_bytes / 2 : w->staging_bytes;
    uint64_t ring = w->hf ? pinned / (LSL_I_RING_SLOT_MAX / 2) : 2;
    ring = ring < 2 ? 2 : ring > LSL_I_RING_MAX ? LSL_I_RING_MAX : ring;
    st = lsl_i_cuda_open(w->comm, pinned, (int)ring, &w->cuda);
    w->prof[P_GPU_OPEN] += lsl_i_now() - t0;
    if (st != LSL_OK)
        return st;
    if (w->rank == 0 && w->cfg.quiet == LSL_PROGRESS_TEXT)
        lsl_i_log(LSL_LOG_INFO,
                  "loraslab: device path: LoRA A gathered with %s, pinned ring %d x %llu bytes\n",
                  lsl_i_cuda_gather_path(w->cuda), lsl_i_cuda_slots(w->cuda),
                  (unsigned long long)lsl_i_cuda_slot_bytes(w->cuda));
    return LSL_OK;
}

/* Where chunk units [first, first + n) (rows when merging, bytes when copying) put the part's
 * own bytes (lsl_i_put_span); a copy's chunks are all its own.  Returns 1 for a partial chunk. */
static int own_span(const lsl_i_putctx *pc, int merging, uint64_t first, uint64_t n, uint64_t *pos,
                    uint64_t *off, uint64_t *count)
{
    if (merging)
        return lsl_i_put_span(pc, first, n, pos, off, count);
    *pos = 0, *off = first, *count = n;
    return 0;
}

/* One device put's chunk loop: what every chunk's launch reads, fixed for the put. */
typedef struct dev_loop {
    lsl_writer *w;
    const lsl_i_putctx *pc;
    const lsl_i_src *src;    /* W0 from a file (the offline merge), or NULL */
    void *stream;            /* the caller's, for W0 at w0 */
    const unsigned char *w0; /* the part's first own element on the device */
    const lsl_i_tiles *tl;   /* the chunks, in units */
    uint64_t unit;           /* bytes a unit: a row when merging, 1 when copying */
    uint64_t slot_bytes;     /* a ring slot */
    const lsl_i_lora *lora;
    const void *a_dev;      /* the whole A on the device */
    const unsigned char *b; /* B's rows of the part (device memory), rb bytes each */
    uint64_t rb;
} dev_loop;

/* Queue chunk ch into ring slot ch % 2, once the writes still reading that slot are done (a
 * directory's writes are queued): from the file (src) or from the caller's device memory, whole
 * or, for a partial chunk of an element-range part, from a zeroed copy of its rows. */
static lsl_status launch_chunk(const dev_loop *d, uint64_t ch)
{
    double t0 = lsl_i_now();
    const lsl_i_putctx *pc = d->pc;
    int slot = (int)(ch % 2);
    uint64_t first = lsl_i_tile_first(d->tl, ch), n = lsl_i_tile_count(d->tl, ch);
    const unsigned char *bc = d->b ? d->b + first * d->rb : NULL;
    uint64_t m = d->lora ? n : 0, pos, off, own;
    lsl_i_cuda *c = d->w->cuda;
    lsl_status st = lsl_i_datafile_fence(&d->w->file, lsl_i_cuda_slot_host(c, slot), d->slot_bytes);
    if (st != LSL_OK)
        ;
    else if (d->src)
        st = lsl_i_cuda_stage(c, slot, d->src->fd, d->src->off + first * d->unit, d->src->path,
                              pc->t->dtype, n * d->unit, d->lora, d->a_dev, bc, m, pc->relems);
    else if (own_span(pc, d->lora != NULL, first, d->lora ? n : n * d->unit, &pos, &off, &own))
        st = lsl_i_cuda_launch_rows_of(c, slot, d->stream, pc->t->dtype, d->w0 + off, pos, own,
                                       n * d->unit, d->lora, d->a_dev, bc, m, pc->relems);
    else
        st = lsl_i_cuda_launch(c, slot, d->stream, pc->t->dtype, d->w0 + off, n * d->unit, d->lora,
                               d->a_dev, bc, m, pc->relems);
    d->w->prof[P_LAUNCH] += lsl_i_now() - t0;
    return st;
}

/* Rows on the GPU: merge (or copy) chunk c + 1 and copy it into the other pinned slot while
 * chunk c is being written, so the kernel and the D2H copy hide behind the file I/O.  Two
 * sources: device pointers (the in-job API: data on stream, lora's factors on the device), or
 * W0 rows in a file (src; the offline merge on the GPU: lora's factors in host memory), which
 * the staging thread reads into the free slot and copies up while the other is written.  With
 * elems, [first, first + count) are elements (an FSDP1 piece, device pointers only): merged in
 * whole rows as on the host (lsl_writer_put_elems_all), the partial first and last rows from a
 * zeroed device copy. */
lsl_status lsl_i_put_device(lsl_writer *w, uint64_t index, uint64_t first, uint64_t count,
                            int elems, const void *data, void *stream, const lsl_i_src *src,
                            const lsl_i_lora *lora, lsl_status st0)
{
    lsl_status rc = LSL_OK, st = st0;
    if (st == LSL_OK && lora && (lora->magnitude || (lora->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE)))
        st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                        "internal: DoRA and LSL_LORA_DELTA_IN_WEIGHT_DTYPE reached the device "
                        "kernels, which do not merge them (the CPU merge does)");
    lsl_i_putctx pc;
    rc = lsl_i_writer_open_cuda(w);
    if (rc != LSL_OK) {
        w->state = W_FAILED;
        return rc;
    }
    const lsl_i_lora *pl = st ? NULL : lora;
    if (elems)
        rc = lsl_i_put_begin_elems(w, index, st ? 0 : first, st ? 0 : count, data != NULL, pl,
                                   LSL_MEM_DEVICE, st, &pc);
    else
        rc = lsl_i_put_begin(w, index, st ? 0 : first, st ? 0 : count, data || src, pl,
                             LSL_MEM_DEVICE, st, &pc);
    LSL_TRY(rc);
    const void *a_dev = NULL;
    const unsigned char *b = NULL;
    if (lora) {
        double t0 = lsl_i_now();
        LSL_TRY(
            lsl_i_cuda_gather_a(w->cuda, w->comm, lora, pc.relems, src != NULL, &a_dev, LSL_OK));
        w->prof[P_GATHER] += lsl_i_now() - t0;
        b = lora->b;
        if (src || (lora->flags & LSL_I_LORA_ON_HOST)) { /* B's rows in host memory */
            const void *bd = NULL;
            uint64_t bb = pc.nrows * lora->rank * (lsl_dtype_bits(lora->b_dtype) / 8);
            LSL_TRY(lsl_i_agree(w->comm, lsl_i_cuda_upload_b(w->cuda, lora->b, bb, &bd)));
            b = bd;
        }
    }
    /* Chunk c covers units (rows when merging, bytes when copying) [first(c), first(c+1)): the
     * first chunk of a tensor is about an eighth of a slot so the GPU-to-host pipeline fills
     * quickly, the rest fill a slot, each cut where the plan's pieces allow (lsl_i_tiles_make). */
    uint64_t slot = lsl_i_cuda_slot_bytes(w->cuda), unit = lora ? pc.rbytes : 1;
    uint64_t units = lora ? pc.nrows : pc.my_bytes, full_u = unit ? slot / unit : 0;
    uint64_t head_u = full_u / 8 ? full_u / 8 : full_u, nloc = 0;
    lsl_i_tiles tl = {0};
    st = LSL_OK;
    if (full_u == 0)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "tensor `%s`: a row of %llu bytes exceeds the pinned slot of %llu bytes "
                        "(half the staging budget, at most 8 MiB)",
                        pc.t->name, (unsigned long long)pc.rbytes, (unsigned long long)slot);
    else
        lsl_i_tiles_make(units, unit, pc.base - (pc.e0 - pc.row0 * pc.relems) * pc.esize,
                         w->plan.piece, head_u, full_u, &tl);
    nloc = st == LSL_OK ? tl.n : 0;
    uint64_t nchunks = lsl_i_writer_max(w, nloc, &st);
    const dev_loop d = {.w = w,
                        .pc = &pc,
                        .src = src,
                        .stream = stream,
                        .w0 = data,
                        .tl = &tl,
                        .unit = unit,
                        .slot_bytes = slot,
                        .lora = lora,
                        .a_dev = a_dev,
                        .b = b,
                        .rb = lora ? lora->rank * (lsl_dtype_bits(lora->b_dtype) / 8) : 0};
    int pending[2] = {0, 0};
    if (st == LSL_OK && nloc > 0)
        pending[0] = (st = launch_chunk(&d, 0)) == LSL_OK;
    for (uint64_t c = 0; c < nchunks; c++) {
        const unsigned char *buf = NULL;
        uint64_t bad = 0, pos = 0, off = 0, n = 0;
        int crc_done = 0;
        /* File chunks: the slot of chunk c + 1 is free only once chunk c - 1 is written, so the
         * read of c + 1 is posted after c is ready and overlaps c's write.  Device chunks are
         * queued one ahead on the caller's stream. */
        if (!src && st == LSL_OK && c + 1 < nloc)
            pending[(c + 1) % 2] = (st = launch_chunk(&d, c + 1)) == LSL_OK;
        if (pending[c % 2]) {
            pending[c % 2] = 0;
            double t0 = lsl_i_now();
            const void *host = NULL;
            lsl_status ws = lsl_i_cuda_wait(w->cuda, (int)(c % 2), &host, &bad, &pc.crc, &crc_done);
            w->prof[P_GPU_WAIT] += lsl_i_now() - t0;
            ws = ws == LSL_ERR_NONFINITE
                     ? lsl_i_put_nonfinite(&pc, lora ? lsl_i_tile_first(&tl, c) : 0, bad)
                     : ws;
            st = st == LSL_OK ? ws : st;
            buf = host;
        }
        if (src && st == LSL_OK && c + 1 < nloc)
            pending[(c + 1) % 2] = (st = launch_chunk(&d, c + 1)) == LSL_OK;
        if (c < nloc)
            own_span(&pc, lora != NULL, lsl_i_tile_first(&tl, c),
                     lsl_i_tile_count(&tl, c) * (lora ? 1 : unit), &pos, &off, &n);
        lsl_i_put_write(w, &pc, off, buf ? buf + pos : NULL, n, crc_done, &st);
    }
    for (int k = 0; k < 2; k++) /* a failure left a chunk in flight: it must land first */
        if (pending[k])
            lsl_i_cuda_drain(w->cuda, k);
    LSL_TRY(lsl_i_put_end(w, index, &pc, lora, st));
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    return rc;
}

lsl_status lsl_i_writer_put_device(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                                   const lsl_i_src *src, const lsl_i_lora *lora,
                                   lsl_status local_st)
{
    return lsl_i_put_device(w, index, row0, nrows, 0, NULL, NULL, src, lora, local_st);
}
