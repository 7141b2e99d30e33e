/* The put protocol every put path shares: agree on the tensor and the tiling, write each chunk
 * through the data path while a helper thread checksums it, combine the ranks' checksums,
 * report progress and the profile. */
#include "lsl_writer_s.h"

#include "lsl_crc32c.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool float_dtype(lsl_dtype d)
{
    return d == LSL_F32 || d == LSL_BF16 || d == LSL_F16;
}

lsl_status lsl_i_check_lora_target(const lsl_tensor_info *t, uint64_t rank, double scaling)
{
    if (t->ndim != 2 && t->ndim != 1)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "tensor `%s`: a LoRA delta needs a 2-D weight (or a 1-D bias), it has "
                          "%d dims",
                          t->name, t->ndim);
    if (!float_dtype(t->dtype))
        return lsl_i_fail(LSL_ERR_DTYPE,
                          "tensor `%s`: LoRA target has dtype %s; only BF16, F16 and F32 weights "
                          "can be merged",
                          t->name, lsl_dtype_name(t->dtype));
    if (rank == 0 || !isfinite(scaling))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: LoRA rank 0 or non-finite scaling",
                          t->name);
    return LSL_OK;
}

lsl_status lsl_i_check_lora(const lsl_tensor_info *t, uint64_t nrows, const lsl_i_lora *l)
{
    lsl_status st = lsl_i_check_lora_target(t, l->rank, l->scaling);
    if (st != LSL_OK)
        return st;
    if (!float_dtype(l->a_dtype) || !float_dtype(l->b_dtype))
        return lsl_i_fail(LSL_ERR_DTYPE, "tensor `%s`: LoRA A/B dtypes must be F32, BF16 or F16",
                          t->name);
    if ((nrows && !l->b) || (l->a_count && !l->a))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: LoRA A or B pointer is NULL", t->name);
    if (l->a_shard != LSL_SHARD_ROWS && l->a_shard != LSL_SHARD_COLS)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: bad a_shard", t->name);
    if ((l->flags & LSL_I_LORA_DORA_COLUMNS) && !l->magnitude)
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "tensor `%s`: LSL_I_LORA_DORA_COLUMNS needs the magnitude vector",
                          t->name);
    if (l->magnitude && !float_dtype(l->magnitude_dtype))
        return lsl_i_fail(LSL_ERR_DTYPE,
                          "tensor `%s`: DoRA magnitude dtype must be F32, BF16 or F16", t->name);
    return LSL_OK;
}

static void progress(lsl_writer *w, bool last)
{
    if (w->rank != 0 || !lsl_i_progress_due(&w->prog, last))
        return;
    if (w->prog.mode == LSL_PROGRESS_JSON) {
        lsl_i_progress_json(&w->prog, w->tensors_done, w->bytes_done, last);
        return;
    }
    double el = w->prog.last - w->t0 > 1e-9 ? w->prog.last - w->t0 : 1e-9;
    double rate = (double)w->bytes_done / el;
    char b1[32], b2[32];
    double eta = rate > 0 ? (double)(w->total_bytes - w->bytes_done) / rate : 0;
    char line[256];
    snprintf(line, sizeof line, "loraslab: %s %llu/%llu tensors  %s / %s  %.2f GB/s  %s %.0fs",
             w->prog.verb, (unsigned long long)w->tensors_done, (unsigned long long)w->n,
             lsl_i_fmt_bytes(w->bytes_done, b1, sizeof b1),
             lsl_i_fmt_bytes(w->total_bytes, b2, sizeof b2), rate / 1e9, last ? "elapsed" : "eta",
             last ? el : eta);
    lsl_i_log_progress(line, last);
}

/* A put's time in none of the phases goes to P_PUT_REST; with LSL_PROFILE=2 rank 0 prints one
 * line per put (its own figures: the slowest rank shows in the agreements of the others). */
static void put_clock_start(lsl_writer *w)
{
    w->put_t0 = lsl_i_now();
    memcpy(w->put_p0, w->prof, sizeof w->prof);
    w->put_calls0 = w->file.calls;
}

static void put_clock_stop(lsl_writer *w, uint64_t index)
{
    double el = lsl_i_now() - w->put_t0, d[P_COUNT], in = 0;
    for (int i = 0; i < P_COUNT; i++)
        in += d[i] = w->prof[i] - w->put_p0[i];
    w->prof[P_PUT_REST] += el - in;
    if (w->profile < 2 || w->rank != 0)
        return;
    lsl_i_log(
        LSL_LOG_INFO,
        "loraslab: put %llu `%s` %.2f MB: %.2f ms (gather %.2f, launches %.2f, GPU waits %.2f, "
        "%llu writes %.2f, checksum waits %.2f, agreements %.2f, rest %.2f)\n",
        (unsigned long long)index, index < w->n ? w->t[index].name : "?",
        index < w->n ? w->nbytes[index] / 1e6 : 0.0, el * 1e3, d[P_GATHER] * 1e3, d[P_LAUNCH] * 1e3,
        d[P_GPU_WAIT] * 1e3, (unsigned long long)(w->file.calls - w->put_calls0), d[P_WRITE] * 1e3,
        d[P_CRC_WAIT] * 1e3, d[P_AGREE] * 1e3, (el - in) * 1e3);
}

/* int64 values per rank in a put's opening all-gather (see begin) */
/* What each rank says about its put, all-gathered once: all int64 so that one all-gather of
 * plain bytes carries it over MPI and callbacks alike.  The first four must equal rank 0's. */
typedef struct put_rec {
    int64_t index, lora, mem, elems; /* the same tensor, kind and memory everywhere */
    int64_t first, count;            /* this rank's rows or elements (0, 0 after a failure) */
    int64_t failed;                  /* this rank already failed: its message goes to everyone */
    int64_t dora;                    /* a magnitude: row norms may span ranks */
    int64_t c0, nc;                  /* a block's columns; nc 0: every column */
} put_rec;
_Static_assert(sizeof(put_rec) <= LSL_I_PER_RANK * sizeof(uint64_t), "w->per_rank holds a put_rec");

/* Local checks, then the collective ones (same tensor everywhere, parts tiling the tensor in
 * rank order, by rows or by elements), agreed before any I/O. */
/* Blocks (some rank passed one): whether the ranks' blocks tile the rows x cols rectangle, each
 * element once.  Pairwise, from the gathered records alone, so every rank reaches the same
 * verdict without allocating: (size^2)/2 comparisons, only for tensors held in blocks. */
static lsl_status check_blocks(const put_rec *all, int size, const lsl_i_putctx *pc)
{
    uint64_t cols = pc->relems, area = 0, want = pc->rows * cols;
    for (int k = 0; k < size; k++) {
        const put_rec *a = &all[k];
        uint64_t ar0 = (uint64_t)a->first, ar1 = ar0 + (uint64_t)a->count;
        uint64_t ac0 = a->nc ? (uint64_t)a->c0 : 0, ac1 = a->nc ? ac0 + (uint64_t)a->nc : cols;
        if (!a->count || ac1 == ac0)
            continue;
        area += (ar1 - ar0) * (ac1 - ac0);
        for (int j = 0; j < k; j++) {
            const put_rec *b = &all[j];
            uint64_t br0 = (uint64_t)b->first, br1 = br0 + (uint64_t)b->count;
            uint64_t bc0 = b->nc ? (uint64_t)b->c0 : 0, bc1 = b->nc ? bc0 + (uint64_t)b->nc : cols;
            if (b->count && bc1 > bc0 && ar0 < br1 && br0 < ar1 && ac0 < bc1 && bc0 < ac1)
                return lsl_i_fail(LSL_ERR_SHAPE,
                                  "tensor `%s`: rank %d's block (rows [%llu, %llu), columns "
                                  "[%llu, %llu)) overlaps rank %d's (rows [%llu, %llu), columns "
                                  "[%llu, %llu))",
                                  pc->t->name, k, (unsigned long long)ar0, (unsigned long long)ar1,
                                  (unsigned long long)ac0, (unsigned long long)ac1, j,
                                  (unsigned long long)br0, (unsigned long long)br1,
                                  (unsigned long long)bc0, (unsigned long long)bc1);
        }
    }
    /* no two overlap, each inside the rectangle: they tile it when the areas add up */
    if (area != want)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "tensor `%s`: the ranks' blocks hold %llu of its %llu x %llu elements "
                          "(blocks must tile the rows x columns, each element once)",
                          pc->t->name, (unsigned long long)area, (unsigned long long)pc->rows,
                          (unsigned long long)cols);
    return LSL_OK;
}

static lsl_status begin(lsl_writer *w, uint64_t index, uint64_t first, uint64_t count,
                        uint64_t col0, uint64_t ncols, int elems, bool has_data,
                        const lsl_i_lora *lora, int mem, lsl_status st, lsl_i_putctx *pc)
{
    put_clock_start(w);
    double t0 = lsl_i_now();
    const char *unit = elems ? "elements" : "rows";
    uint64_t units = 0; /* the tensor's rows or elements */
    memset(pc, 0, sizeof *pc);
    if (st == LSL_OK && w->state != W_DEFINED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "put before define or after a failure");
    else if (st == LSL_OK && index >= w->n)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor index %llu out of range (%llu tensors)",
                        (unsigned long long)index, (unsigned long long)w->n);
    if (st == LSL_OK) {
        const lsl_tensor_info *t = pc->t = &w->t[index];
        pc->rows = lsl_i_rows(t);
        pc->relems = lsl_i_row_elems(t);
        pc->esize = lsl_dtype_bits(t->dtype) / 8;
        pc->rbytes = pc->relems * pc->esize;
        pc->elems = elems;
        units = elems ? pc->rows * pc->relems : pc->rows;
        if (w->done[index])
            st = lsl_i_fail(LSL_ERR_WRONG_STATE, "tensor `%s` was already written", t->name);
        else if (first > units || count > units - first)
            st = lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: %s [%llu, +%llu) outside [0, %llu)",
                            t->name, unit, (unsigned long long)first, (unsigned long long)count,
                            (unsigned long long)units);
        else if (ncols && (elems || col0 > pc->relems || ncols > pc->relems - col0))
            st = lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: columns [%llu, +%llu) outside [0, %llu)",
                            t->name, (unsigned long long)col0, (unsigned long long)ncols,
                            (unsigned long long)pc->relems);
        else if (count && pc->rbytes && !has_data)
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: data is NULL", t->name);
        if (st == LSL_OK && elems) {
            /* the rows the range touches: the B rows a LoRA part brings */
            pc->e0 = first;
            pc->ne = count;
            lsl_i_rows_touched(pc->relems, first, count, &pc->row0, &pc->nrows);
        } else if (st == LSL_OK) {
            pc->row0 = first;
            pc->nrows = count;
            pc->e0 = first * pc->relems;
            pc->ne = count * pc->relems;
        }
        if (st == LSL_OK && lora)
            st = lsl_i_check_lora(t, pc->nrows, lora);
    }
    /* One all-gather of every rank's record says all a put must agree on: the same tensor,
     * kind and memory everywhere, the parts tiling it in rank order, and who failed first
     * (whose message then goes to everyone). */
    put_rec rec = {.index = (int64_t)index,
                   .lora = lora != NULL,
                   .mem = mem,
                   .elems = elems,
                   .first = st == LSL_OK ? (int64_t)first : 0,
                   .count = st == LSL_OK ? (int64_t)count : 0,
                   .failed = st != LSL_OK,
                   .dora = lora && lora->magnitude,
                   .c0 = st == LSL_OK ? (int64_t)col0 : 0,
                   .nc = st == LSL_OK ? (int64_t)ncols : 0};
    lsl_status cs = lsl_i_allgather(w->comm, &rec, w->per_rank, sizeof rec);
    if (cs != LSL_OK) {
        w->prof[P_AGREE] += lsl_i_now() - t0;
        return cs;
    }
    const put_rec *all = (const put_rec *)w->per_rank;
    int64_t failed = INT64_MAX;
    int same = 1, bad_k = -1;
    int64_t dora = -1; /* a part with data brings a magnitude (an empty one may pass NULL) */
    uint64_t prefix = 0, bad_at = 0, bad_prefix = 0;
    /* some rank holds columns, not whole rows: then any arrangement that tiles the tensor */
    int block = 0;
    for (int k = 0; k < w->size; k++)
        block |= all[k].count && all[k].nc;
    for (int k = 0; k < w->size; k++) {
        const put_rec *r = &all[k];
        if (r->failed && failed == INT64_MAX)
            failed = k;
        /* against rank 0's: every rank reaches the same verdict */
        same &= r->index == all[0].index && r->lora == all[0].lora && r->mem == all[0].mem &&
                r->elems == all[0].elems;
        if (r->count && r->dora != dora && dora >= 0) /* the parts holding data agree on DoRA */
            same = 0;
        if (r->count && dora < 0)
            dora = r->dora;
        if (r->count && (uint64_t)r->first != prefix && bad_k < 0)
            bad_k = k, bad_at = (uint64_t)r->first, bad_prefix = prefix;
        prefix += (uint64_t)r->count;
    }
    /* rows out of rank order (FSDP2 over tensor parallelism's _StridedShard) tile the tensor
     * as well when no two overlap and none is missing; each rank's rows are still one range */
    int unordered = !elems && bad_k >= 0;
    if (failed != INT64_MAX)
        st = lsl_i_agree_first(w->comm, failed, st);
    else if (!same)
        st = lsl_i_fail(LSL_ERR_INCONSISTENT,
                        "ranks put different tensors, or mixed LoRA/no LoRA, DoRA/no DoRA, "
                        "host/device memory or rows/elements, in the same call");
    else if (block || unordered)
        st = check_blocks(all, w->size, pc);
    else if (bad_k >= 0)
        st = lsl_i_fail(LSL_ERR_SHAPE,
                        "tensor `%s`: rank %d's %s start at %llu but the ranks before it hold "
                        "%llu %s (parts must tile the %s in rank order)",
                        pc->t->name, bad_k, unit, (unsigned long long)bad_at,
                        (unsigned long long)bad_prefix, unit, unit);
    else if (prefix != units)
        st = lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: the ranks' parts hold %llu of %llu %s",
                        pc->t->name, (unsigned long long)prefix, (unsigned long long)units, unit);
    if (st == LSL_OK && block) {
        pc->block = 1;
        pc->c0 = ncols ? col0 : 0;
        pc->nc = ncols ? ncols : pc->relems;
        pc->pbytes = pc->nc * pc->esize;
        pc->e0 = pc->row0 * pc->relems + pc->c0;
        pc->ne = pc->nrows * pc->nc;
        lsl_crc32c_zeros_op(pc->rbytes - pc->pbytes, pc->gap_op);
    }
    if (st == LSL_OK) {
        pc->dora = dora > 0;
        pc->my_bytes = pc->ne * pc->esize;
        pc->base = w->offsets[index] + pc->e0 * pc->esize;
    }
    w->prof[P_AGREE] += lsl_i_now() - t0;
    return st;
}

lsl_status lsl_i_put_begin(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                           bool has_data, const lsl_i_lora *lora, int mem, lsl_status st,
                           lsl_i_putctx *pc)
{
    return begin(w, index, row0, nrows, 0, 0, 0, has_data, lora, mem, st, pc);
}

lsl_status lsl_i_put_begin_block(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                                 uint64_t col0, uint64_t ncols, bool has_data,
                                 const lsl_i_lora *lora, int mem, lsl_status st, lsl_i_putctx *pc)
{
    return begin(w, index, row0, nrows, col0, ncols, 0, has_data, lora, mem, st, pc);
}

lsl_status lsl_i_put_begin_elems(lsl_writer *w, uint64_t index, uint64_t e0, uint64_t ne,
                                 bool has_data, const lsl_i_lora *lora, int mem, lsl_status st,
                                 lsl_i_putctx *pc)
{
    return begin(w, index, e0, ne, 0, 0, 1, has_data, lora, mem, st, pc);
}

void lsl_i_put_write(lsl_writer *w, lsl_i_putctx *pc, uint64_t off, const void *buf, uint64_t count,
                     int crc_done, lsl_status *st)
{
    if (*st != LSL_OK)
        count = 0;
    bool async = !crc_done && count >= (1u << 20) && w->crc.running;
    if (async)
        lsl_i_crcw_post(&w->crc, pc->crc, buf, count);
    else if (!crc_done && count)
        pc->crc = lsl_crc32c_extend(pc->crc, buf, count);
    char what[320];
    snprintf(what, sizeof what, "tensor `%s`", pc->t->name);
    double t0 = lsl_i_now();
    lsl_status ws = lsl_i_datafile_write(&w->file, pc->base + off, buf, count, what);
    double t1 = lsl_i_now();
    w->prof[P_WRITE] += t1 - t0;
    if (async) {
        pc->crc = lsl_i_crcw_wait(&w->crc);
        w->prof[P_CRC_WAIT] += lsl_i_now() - t1;
    }
    if (*st == LSL_OK)
        *st = ws;
}

void lsl_i_put_write_rows(lsl_writer *w, lsl_i_putctx *pc, uint64_t first_row, uint64_t nrows,
                          const void *buf, lsl_status *st)
{
    if (*st != LSL_OK)
        nrows = 0;
    /* the running CRC: zeros up to each piece, then the piece (the zeros between two pieces by
     * the operator made at begin) */
    const unsigned char *p = buf;
    if (nrows && pc->pbytes == pc->rbytes) { /* whole rows: one range */
        uint64_t at = (pc->row0 + first_row) * pc->rbytes;
        pc->crc = lsl_crc32c_extend(lsl_crc32c_extend_zeros(pc->crc, at - pc->crc_end), p,
                                    nrows * pc->pbytes);
        pc->crc_end = at + nrows * pc->pbytes;
    }
    for (uint64_t i = 0; i < nrows && pc->pbytes && pc->pbytes != pc->rbytes; i++) {
        uint64_t at = (pc->row0 + first_row + i) * pc->rbytes + pc->c0 * pc->esize;
        if (pc->crc_end && at - pc->crc_end == pc->rbytes - pc->pbytes)
            pc->crc = lsl_crc32c_extend_zeros_op(pc->gap_op, pc->crc);
        else
            pc->crc = lsl_crc32c_extend_zeros(pc->crc, at - pc->crc_end);
        pc->crc = lsl_crc32c_extend(pc->crc, p + i * pc->pbytes, pc->pbytes);
        pc->crc_end = at + pc->pbytes;
    }
    char what[320];
    snprintf(what, sizeof what, "tensor `%s`", pc->t->name);
    double t0 = lsl_i_now();
    lsl_status ws = lsl_i_datafile_write_rows(&w->file, pc->base + first_row * pc->rbytes,
                                              pc->pbytes, pc->rbytes, nrows, buf, what);
    w->prof[P_WRITE] += lsl_i_now() - t0;
    if (*st == LSL_OK)
        *st = ws;
}

int lsl_i_put_span(const lsl_i_putctx *pc, uint64_t first_row, uint64_t nrows, uint64_t *pos,
                   uint64_t *off, uint64_t *count)
{
    uint64_t rlo = (pc->row0 + first_row) * pc->relems, rhi = rlo + nrows * pc->relems;
    uint64_t lo = rlo > pc->e0 ? rlo : pc->e0, hi = rhi < pc->e0 + pc->ne ? rhi : pc->e0 + pc->ne;
    *pos = (lo - rlo) * pc->esize;
    *off = (lo - pc->e0) * pc->esize;
    *count = (hi - lo) * pc->esize;
    return lo != rlo || hi != rhi;
}

/* The elements a row of the part's chunks holds: its block's columns, or the whole row. */
static uint64_t w_of(const lsl_i_putctx *pc)
{
    return pc->block ? pc->nc : pc->relems;
}

lsl_status lsl_i_put_nonfinite(const lsl_i_putctx *pc, uint64_t first_row, uint64_t bad)
{
    return lsl_i_fail(LSL_ERR_NONFINITE,
                      "tensor `%s`: the merge produced NaN or Inf at row %llu, column %llu (check "
                      "the adapter's scaling and weights)",
                      pc->t->name, (unsigned long long)(pc->row0 + first_row + bad / w_of(pc)),
                      (unsigned long long)(pc->c0 + bad % w_of(pc)));
}

/* A tensor held in blocks: each rank's CRC covers the whole tensor, zeros where the others
 * write; q holds (crc, bytes, failed, first element) per rank. */
static uint32_t xor_crc(const uint64_t *q, int size, uint64_t nbytes)
{
    uint32_t all = 0;
    for (int k = 0; k < size; k++)
        all ^= (uint32_t)q[4 * k];
    return lsl_crc32c_xor_fold(all, (uint64_t)size, nbytes);
}

static int by_key(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Ranges (rows or elements): the ranks' CRCs combined in the order of their bytes, which is
 * rank order but for rows out of it (_StridedShard).  Then sorted by (first element, rank) in
 * w->per_rank's room past the all-gather's 4 values a rank. */
static uint32_t ordered_crc(lsl_writer *w, const uint64_t *q)
{
    uint32_t all = 0;
    int in_order = 1;
    uint64_t at = 0;
    for (int k = 0; k < w->size; k++)
        if (q[4 * k + 1]) {
            in_order &= q[4 * k + 3] >= at;
            at = q[4 * k + 3];
        }
    if (in_order || w->size > (1 << 20)) {
        for (int k = 0; k < w->size; k++)
            all = lsl_crc32c_combine(all, (uint32_t)q[4 * k], q[4 * k + 1]);
        return all;
    }
    uint64_t *key = w->per_rank + 4 * (size_t)w->size, n = 0;
    for (int k = 0; k < w->size; k++)
        if (q[4 * k + 1])
            key[n++] = q[4 * k + 3] << 20 | (uint64_t)k; /* elements < 2^44: a tensor < 16 TiB */
    qsort(key, n, sizeof *key, by_key);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = key[i] & ((1u << 20) - 1);
        all = lsl_crc32c_combine(all, (uint32_t)q[4 * k], q[4 * k + 1]);
    }
    return all;
}

lsl_status lsl_i_put_end(lsl_writer *w, uint64_t index, lsl_i_putctx *pc, const lsl_i_lora *lora,
                         lsl_status st)
{
    lsl_status rc = LSL_OK;
    double t0 = lsl_i_now();
    /* the ranks' checksums, where their bytes start, and who failed first, in one all-gather;
     * a block's CRC runs on to the tensor's end */
    if (pc->block && st == LSL_OK)
        pc->crc = lsl_crc32c_extend_zeros(pc->crc, w->nbytes[index] - pc->crc_end);
    uint64_t quad[4] = {pc->crc, pc->my_bytes, st != LSL_OK, pc->e0}, *q = w->per_rank;
    LSL_TRY(lsl_i_allgather(w->comm, quad, q, sizeof quad));
    int64_t failed = INT64_MAX;
    for (int k = 0; k < w->size && failed == INT64_MAX; k++)
        if (q[4 * k + 2])
            failed = k;
    LSL_TRY(lsl_i_agree_first(w->comm, failed, st));
    w->fin[index].crc32c = pc->block ? xor_crc(q, w->size, w->nbytes[index]) : ordered_crc(w, q);
    w->done[index] = 1;
    if (lora) {
        w->fin[index].has_lora = 1;
        w->fin[index].lora_rank = lora->rank;
        w->fin[index].lora_alpha = lora->alpha;
        w->fin[index].lora_scaling = lora->scaling;
        w->fin[index].rslora = (lora->flags & LSL_LORA_RSLORA) != 0;
        w->fin[index].dora = pc->dora; /* agreed: rank 0's own part may be empty */
    }
    w->tensors_done++;
    w->bytes_done += w->nbytes[index];
    progress(w, w->tensors_done == w->n);
fail:
    w->prof[P_AGREE] += lsl_i_now() - t0;
    put_clock_stop(w, index);
    return rc;
}

uint64_t lsl_i_writer_max(lsl_writer *w, uint64_t v, lsl_status *st)
{
    uint64_t m = v;
    lsl_status r = lsl_i_allreduce_u64(w->comm, &m, 1, LSL_OP_MAX);
    if (r != LSL_OK) {
        if (*st == LSL_OK)
            *st = r;
        return v;
    }
    return m;
}
