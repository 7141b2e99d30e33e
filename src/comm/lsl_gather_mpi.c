#include "lsl_gather.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* What each rank reports per tensor: its shard and the tensor's geometry, to be checked. */
enum { F_OFF, F_COUNT, F_R, F_IN, F_ES, F_DIM, NF };

/* The shards of tensor i as every rank reported them (all[(k * n + i) * NF + f]): rank 0's
 * geometry on all ranks, shards tiling A in rank order.  Every rank reaches the same verdict
 * and message from the same gathered values, so it needs no agreement. */
static lsl_status check_tiling(const uint64_t *all, int size, uint64_t n, uint64_t i)
{
    const uint64_t *p0 = all + i * NF;
    uint64_t expect = 0, units = p0[F_DIM] ? p0[F_IN] : p0[F_R];
    const char *what = p0[F_DIM] ? "columns" : "rows";
    for (int k = 0; k < size; k++) {
        const uint64_t *p = all + ((uint64_t)k * n + i) * NF;
        if (p[F_R] != p0[F_R] || p[F_IN] != p0[F_IN] || p[F_ES] != p0[F_ES] ||
            p[F_DIM] != p0[F_DIM])
            return lsl_i_fail(LSL_ERR_INCONSISTENT,
                              "LoRA A: rank %d has r %llu, %llu columns, %llu-byte elements, "
                              "sharded by %s; rank 0 %llu, %llu, %llu, by %s",
                              k, (unsigned long long)p[F_R], (unsigned long long)p[F_IN],
                              (unsigned long long)p[F_ES], p[F_DIM] ? "columns" : "rows",
                              (unsigned long long)p0[F_R], (unsigned long long)p0[F_IN],
                              (unsigned long long)p0[F_ES], p0[F_DIM] ? "columns" : "rows");
        if (p[F_OFF] != expect && p[F_COUNT] != 0)
            return lsl_i_fail(LSL_ERR_SHAPE,
                              "LoRA A shards do not tile A in rank order: rank %d holds %s "
                              "[%llu, +%llu), expected to start at %llu",
                              k, what, (unsigned long long)p[F_OFF], (unsigned long long)p[F_COUNT],
                              (unsigned long long)expect);
        expect += p[F_COUNT];
    }
    if (expect != units)
        return lsl_i_fail(LSL_ERR_SHAPE, "LoRA A shards cover %llu %s of %llu",
                          (unsigned long long)expect, what, (unsigned long long)units);
    return LSL_OK;
}

/* Bytes of one shard unit: a row of A, or a column. */
static uint64_t unit_bytes(const lsl_i_ashard *s)
{
    return s->dim == LSL_SHARD_ROWS ? s->in * s->esize : s->r * s->esize;
}

uint64_t lsl_i_ashard_bytes(const lsl_i_ashard *s)
{
    return s->count * unit_bytes(s);
}

lsl_i_ashard lsl_i_ashard_of(const lsl_i_lora *l, uint64_t in)
{
    uint64_t es = lsl_dtype_bits(l->a_dtype) / 8;
    return (lsl_i_ashard){l->a_shard, l->a, l->a_off, l->a_count,
                          l->rank,    in,   es,       lsl_i_malloc(l->rank * in * es + 1)};
}

void lsl_i_lora_set_full(lsl_i_lora *l, void *full)
{
    l->a = full;
    l->a_shard = LSL_SHARD_ROWS;
    l->a_off = 0;
    l->a_count = l->rank;
    l->flags |= LSL_I_LORA_A_FULL;
}

lsl_status lsl_i_gather_a_batch(lsl_i_comm *comm, uint64_t n, const lsl_i_ashard *s,
                                lsl_status local_st)
{
    lsl_status rc = LSL_OK, st = local_st;
    int size = comm->size;
    uint64_t total = 0, my_bytes = 0; /* all n full A's; this rank's shards */
    for (uint64_t i = 0; i < n; i++) {
        total += s[i].r * s[i].in * s[i].esize;
        my_bytes += lsl_i_ashard_bytes(&s[i]);
    }
    uint64_t *mine = lsl_i_malloc((n * NF + 1) * sizeof *mine);
    uint64_t *all = lsl_i_malloc((n * NF + 1) * sizeof *all * (size_t)size);
    uint64_t *counts = lsl_i_malloc(sizeof *counts * (size_t)size),
             *displs = lsl_i_malloc(sizeof *displs * (size_t)size);
    unsigned char *send = lsl_i_malloc(my_bytes + 1), *recv = lsl_i_malloc(total + 1);
    if (st == LSL_OK && (!mine || !all || !counts || !displs || !send || !recv))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory gathering LoRA A");
    else if (st == LSL_OK && total > (uint64_t)INT_MAX)
        st = lsl_i_fail(LSL_ERR_SHAPE, "LoRA A of %llu bytes is too large to gather at once",
                        (unsigned long long)total);
    /* Local failures (and this rank's own) stop every rank here, before any rank's error can
     * show up elsewhere as a hole in the tiling. */
    LSL_TRY(lsl_i_agree(comm, st));
    for (uint64_t i = 0; i < n; i++) {
        uint64_t *p = mine + i * NF;
        p[F_OFF] = s[i].off;
        p[F_COUNT] = s[i].count;
        p[F_R] = s[i].r;
        p[F_IN] = s[i].in;
        p[F_ES] = s[i].esize;
        p[F_DIM] = s[i].dim == LSL_SHARD_COLS;
    }
    LSL_TRY(lsl_i_allgather(comm, mine, all, n * NF * sizeof *mine));
    for (uint64_t i = 0; i < n; i++)
        LSL_TRY(check_tiling(all, size, n, i));
    uint64_t d = 0;
    for (int k = 0; k < size; k++) { /* rank k's shards, tensor after tensor */
        uint64_t b = 0;
        for (uint64_t i = 0; i < n; i++)
            b += all[((uint64_t)k * n + i) * NF + F_COUNT] * unit_bytes(&s[i]);
        counts[k] = b;
        displs[k] = d;
        d += b;
    }
    unsigned char *q = send;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t b = lsl_i_ashard_bytes(&s[i]);
        if (b)
            memcpy(q, s[i].mine, b);
        q += b;
    }
    LSL_TRY(lsl_i_allgatherv(comm, send, recv, counts));
    for (int k = 0; k < size; k++) {
        const unsigned char *blk = recv + displs[k];
        for (uint64_t i = 0; i < n; i++) {
            const uint64_t *p = all + ((uint64_t)k * n + i) * NF;
            uint64_t off = p[F_OFF], cnt = p[F_COUNT], es = s[i].esize, in = s[i].in;
            unsigned char *f = s[i].full;
            if (s[i].dim == LSL_SHARD_ROWS && cnt)
                memcpy(f + off * in * es, blk, cnt * in * es);
            else
                for (uint64_t row = 0; row < s[i].r && cnt; row++)
                    memcpy(f + (row * in + off) * es, blk + row * cnt * es, cnt * es);
            blk += cnt * unit_bytes(&s[i]);
        }
    }
fail:
    free(mine);
    free(all);
    free(counts);
    free(displs);
    free(send);
    free(recv);
    return rc;
}

lsl_status lsl_i_gather_a(lsl_i_comm *comm, lsl_shard_dim dim, const void *mine, uint64_t off,
                          uint64_t count, uint64_t r, uint64_t in, uint64_t esize, void *full,
                          lsl_status local_st)
{
    lsl_i_ashard s = {dim, mine, off, count, r, in, esize, full};
    return lsl_i_gather_a_batch(comm, 1, &s, local_st);
}
