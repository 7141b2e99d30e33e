/* The batched device put for a directory output: the chunks of a batch's tensors taken in turn
 * through the pinned ring, so consecutive chunks belong to different tensors (different shards,
 * when the caller orders its puts by lsl_writer_put_order) and the I/O pool writes several
 * files at once.  One file is held to one stream (the inode's write lock on tmpfs: 3.0-3.1 GB/s
 * on the H100 machine, NOTES.md), which a tensor-by-tensor put never gets past. */
#include "lsl_writer_s.h"

#include <stdlib.h>
#include <string.h>

#ifdef LSL_HAVE_CUDA

/* Chunks whose copy to the host may be in flight at once; the rest of the ring holds chunks
 * being written. */
#define LOOKAHEAD 2

typedef struct lane {
    lsl_i_putctx pc;
    const lsl_i_part *part;
    const void *a_dev;
    lsl_i_tiles tl;
    uint64_t unit; /* bytes a unit: a row when merging, a byte when copying */
    lsl_status st;
} lane;

/* A launched chunk: its ring slot, lane and chunk index. */
typedef struct slot_use {
    int slot;
    uint64_t lane, chunk;
} slot_use;

/* Launch chunk ch of lane l into ring slot s (whose last write is done). */
static lsl_status launch(lsl_writer *w, lane *l, int s, uint64_t ch)
{
    uint64_t first = lsl_i_tile_first(&l->tl, ch), count = lsl_i_tile_count(&l->tl, ch);
    const lsl_i_lora *lo = l->part->lora;
    const unsigned char *w0 = l->part->data;
    double t0 = lsl_i_now();
    lsl_status st;
    if (lo) {
        uint64_t rb = lo->rank * (lsl_dtype_bits(lo->b_dtype) / 8);
        st = lsl_i_cuda_launch(w->cuda, s, l->part->stream, l->pc.t->dtype, w0 + first * l->unit,
                               count * l->unit, lo, l->a_dev,
                               (const unsigned char *)lo->b + first * rb, count, l->pc.relems);
    } else {
        st = lsl_i_cuda_launch(w->cuda, s, l->part->stream, l->pc.t->dtype, w0 + first, count, NULL,
                               NULL, NULL, 0, l->pc.relems);
    }
    w->prof[P_LAUNCH] += lsl_i_now() - t0;
    return st;
}

/* A ring slot no launched chunk holds and no queued write reads (the first to free up, so a
 * slow file does not hold the others' slots), into *s. */
static lsl_status free_slot(lsl_writer *w, const slot_use *q, int nq, int nslots, int *s)
{
    const void *bufs[LSL_I_RING_MAX];
    int ids[LSL_I_RING_MAX], n = 0, which = -1;
    for (int k = 0; k < nslots; k++) {
        int held = 0;
        for (int j = 0; j < nq && !held; j++)
            held = q[j].slot == k;
        if (!held) {
            ids[n] = k;
            bufs[n++] = lsl_i_cuda_slot_host(w->cuda, k);
        }
    }
    double t0 = lsl_i_now();
    lsl_status st =
        lsl_i_datafile_fence_any(&w->file, bufs, n, lsl_i_cuda_slot_bytes(w->cuda), &which);
    w->prof[P_WRITE] += lsl_i_now() - t0; /* waiting for the files */
    *s = which >= 0 ? ids[which] : -1;
    return st == LSL_OK && which < 0 ? lsl_i_fail(LSL_ERR_INVALID_ARG, "internal: no ring slot")
                                     : st;
}

/* The oldest launched chunk has reached the host: queue its write (the GPU checksummed it). */
static void finish(lsl_writer *w, lane *lanes, const slot_use *u)
{
    lane *l = &lanes[u->lane];
    const void *host = NULL;
    uint64_t bad = 0;
    int crc_done = 0;
    double t0 = lsl_i_now();
    lsl_status ws = lsl_i_cuda_wait(w->cuda, u->slot, &host, &bad, &l->pc.crc, &crc_done);
    w->prof[P_GPU_WAIT] += lsl_i_now() - t0;
    uint64_t first = lsl_i_tile_first(&l->tl, u->chunk);
    if (ws == LSL_ERR_NONFINITE)
        ws = lsl_i_put_nonfinite(&l->pc, l->part->lora ? first : 0, bad);
    if (l->st == LSL_OK)
        l->st = ws;
    uint64_t off = first * l->unit, n = lsl_i_tile_count(&l->tl, u->chunk) * l->unit;
    lsl_i_put_write(w, &l->pc, off, host, n, crc_done, &l->st);
}

int lsl_i_put_interleaved(lsl_writer *w, uint64_t n, const uint64_t *indices,
                          const lsl_i_part *parts, lsl_status *rc)
{
    /* Every rank must take the same path: a directory, and only plain device row parts. */
    int mine = w->hf && n > 1;
    for (uint64_t i = 0; mine && i < n; i++)
        mine = parts[i].mem == LSL_MEM_DEVICE && !lsl_i_part_on_cpu(&parts[i]) &&
               (parts[i].lora == NULL || ((parts[i].lora->flags & LSL_I_LORA_A_FULL) &&
                                          !(parts[i].lora->flags & LSL_I_LORA_ON_HOST)));
    lsl_status st = LSL_OK;
    uint64_t refuse = lsl_i_writer_max(w, (uint64_t)!mine, &st);
    if (st != LSL_OK) {
        *rc = st;
        return 1;
    }
    if (refuse)
        return 0;
    lane *lanes = lsl_i_calloc(n, sizeof *lanes);
    const void **host = lsl_i_calloc(n, sizeof *host), **dev = lsl_i_calloc(n, sizeof *dev);
    uint64_t *bytes = lsl_i_calloc(n, sizeof *bytes);
    st = lanes && host && dev && bytes ? lsl_i_writer_open_cuda(w)
                                       : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    st = lsl_i_agree(w->comm, st);
    /* Step one, collective: every put agreed, the whole A's that came through host memory on
     * the device together (they stay there until the batch's chunks are done). */
    for (uint64_t i = 0; st == LSL_OK && i < n; i++) {
        const lsl_i_part *p = &parts[i];
        lanes[i].part = p;
        st = lsl_i_put_begin(w, indices[i], p->first, p->count, p->data != NULL, p->lora,
                             LSL_MEM_DEVICE, LSL_OK, &lanes[i].pc);
        if (st == LSL_OK && p->lora && !(p->lora->flags & LSL_I_LORA_A_GPU)) {
            host[i] = p->lora->a;
            bytes[i] = p->lora->rank * lanes[i].pc.relems * (lsl_dtype_bits(p->lora->a_dtype) / 8);
        } else if (st == LSL_OK && p->lora) {
            dev[i] = p->lora->a;
        }
    }
    if (st == LSL_OK) {
        const void **up = lsl_i_calloc(n, sizeof *up);
        lsl_status us = up ? lsl_i_cuda_upload_many(w->cuda, n, host, bytes, up)
                           : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        for (uint64_t i = 0; up && i < n; i++)
            if (host[i])
                dev[i] = up[i];
        free(up);
        st = lsl_i_agree(w->comm, us);
    }
    if (st != LSL_OK)
        goto out;
    /* Step two, local: the chunks of all the puts in turn through the ring. */
    uint64_t slot = lsl_i_cuda_slot_bytes(w->cuda), left = 0;
    int nslots = lsl_i_cuda_slots(w->cuda);
    for (uint64_t i = 0; i < n; i++) {
        lane *l = &lanes[i];
        l->a_dev = dev[i];
        l->unit = l->part->lora ? l->pc.rbytes : 1;
        uint64_t units = l->part->lora ? l->pc.nrows : l->pc.my_bytes;
        uint64_t full = l->unit ? slot / l->unit : 0;
        if (units && full == 0)
            l->st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                               "tensor `%s`: a row of %llu bytes exceeds the pinned slot of %llu "
                               "bytes",
                               l->pc.t->name, (unsigned long long)l->pc.rbytes,
                               (unsigned long long)slot);
        else
            lsl_i_tiles_make(units, l->unit, l->pc.base, w->plan.piece, full, full, &l->tl);
        left += l->st == LSL_OK ? l->tl.n : 0;
    }
    /* Launched chunks in launch order (their copies to the host in flight): the oldest is
     * finished once LOOKAHEAD are, so each lane's chunks reach the pool in order. */
    slot_use q[LSL_I_RING_MAX];
    int nq = 0;
    lsl_status ring = LSL_OK; /* a failure of the ring itself (a slot that never frees) */
    /* Each rank starts its rounds at another lane: the ranks write different rows of the same
     * tensors, and in step they would all queue on the same file. */
    for (uint64_t round = 0; left > 0; round++)
        for (uint64_t j = 0; j < n && left > 0; j++) {
            uint64_t i = (j + (uint64_t)w->rank) % n;
            lane *l = &lanes[i];
            if (round >= l->tl.n)
                continue;
            left--;
            if (l->st != LSL_OK || ring != LSL_OK) /* a failed lane's chunks are dropped */
                continue;
            int s = -1;
            ring = free_slot(w, q, nq, nslots, &s);
            if (ring != LSL_OK) {
                l->st = ring;
                continue;
            }
            l->st = launch(w, l, s, round);
            if (l->st != LSL_OK)
                continue;
            q[nq++] = (slot_use){s, i, round};
            if (nq >= LOOKAHEAD) {
                finish(w, lanes, &q[0]);
                memmove(q, q + 1, (size_t)--nq * sizeof *q);
            }
        }
    for (int k = 0; k < nq; k++) /* the rest, in launch order */
        finish(w, lanes, &q[k]);
    for (uint64_t i = 0; ring != LSL_OK && i < n; i++) /* every lane lost chunks */
        lanes[i].st = lanes[i].st == LSL_OK ? ring : lanes[i].st;
    /* Step three, collective: each put's checksum and status, in order. */
    for (uint64_t i = 0; i < n && st == LSL_OK; i++)
        st = lsl_i_put_end(w, indices[i], &lanes[i].pc, parts[i].lora, lanes[i].st);
out:
    if (st != LSL_OK)
        w->state = W_FAILED;
    free(lanes);
    free(host);
    free(dev);
    free(bytes);
    *rc = st;
    return 1;
}

#endif
