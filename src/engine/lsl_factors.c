/* The LoRA factors as the model holds them, resolved into what each rank's merge needs: one
 * all-gather of the ranks' factor ranges, one all-gatherv of the factors that must be whole.
 * Every verdict here is computed from the gathered ranges, so every rank reaches it without a
 * further agreement. */
#include "lsl_factors.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

enum { FA, FB, FM, NFAC };
/* own[] slots: the factors (gathered or copied), a transposed delta's two (3, 4), the factors
 * held transposed turned back (T_OWN + f) */
enum { T_OWN = 5 };
static const char *const FNAME[NFAC] = {"lora_A", "lora_B", "the DoRA magnitude"};

/* How the ranks hold a factor. */
enum { K_ABSENT, K_WHOLE /* every rank all of it */, K_TILED /* ranges in rank order */ };

/* What each rank says about one part, all int64 so one all-gather of bytes carries it.  mem
 * carries MEM_BLOCK when the part is a block of columns; dt[f] carries DT_TRANSPOSED when the
 * factor's range is of its transpose. */
#define MEM_BLOCK     256
#define DT_TRANSPOSED 256
typedef struct fac_rec {
    int64_t lora, index, mem, flags, r;
    int64_t failed, route[3]; /* this rank failed already; its answers to the route's questions */
    int64_t e0[NFAC], n[NFAC], dt[NFAC];
    int64_t match[NFAC]; /* B's (the magnitude's) range is exactly the part's rows */
} fac_rec;
_Static_assert(sizeof(fac_rec) <= LSL_I_PER_RANK * sizeof(uint64_t),
               "a single put's records fit w->per_rank");

/* A part's plan, the same on every rank. */
typedef struct fac_plan {
    int kind[NFAC];
    bool match[NFAC], gather[NFAC], aligned; /* aligned: A's ranges are whole rows of A */
    bool ft[NFAC]; /* held transposed (lsl_factor.transposed): gathered, then turned back */
    lsl_dtype dt[NFAC];
    uint64_t numel[NFAC], in, row0, nrows;
    bool dev, host, cpu, tr;
} fac_plan;

static bool float_dt(int64_t d)
{
    return d == LSL_F32 || d == LSL_BF16 || d == LSL_F16;
}

static uint64_t esz(lsl_dtype d)
{
    return lsl_dtype_bits(d) / 8;
}

static const lsl_factor *factor(const lsl_lora_part *l, int f)
{
    return f == FA ? &l->a : f == FB ? &l->b : &l->magnitude;
}

/* The rows of the tensor a part's merge covers: its rows, or those its element range touches. */
static void rows_needed(const lsl_tensor_info *t, const lsl_i_part *p, uint64_t *row0,
                        uint64_t *nrows)
{
    if (p->elems) {
        lsl_i_rows_touched(lsl_i_row_elems(t), p->first, p->count, row0, nrows);
    } else {
        *row0 = p->first;
        *nrows = p->count;
    }
}

/* Elements of the whole factors, and A's row length, from the tensor's shape: A [r, in] and
 * B [out, r] with W [out, in], or W [in, out] when transposed. */
static lsl_status shapes(const lsl_tensor_info *t, uint64_t r, unsigned flags, uint64_t numel[NFAC],
                         uint64_t *in)
{
    uint64_t rows = lsl_i_rows(t), cols = lsl_i_row_elems(t);
    bool tr = (flags & LSL_LORA_TRANSPOSED) != 0;
    *in = tr ? rows : cols;
    numel[FM] = tr ? cols : rows;
    if (lsl_mul_overflow(r, *in, &numel[FA]) || lsl_mul_overflow(r, tr ? cols : rows, &numel[FB]))
        return lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: LoRA rank %llu overflows the factors' size",
                          t->name, (unsigned long long)r);
    return LSL_OK;
}

/* This rank's checks of its own part, before anything is gathered; fills its record. */
static lsl_status check_local(const lsl_writer *w, uint64_t index, const lsl_i_part *p,
                              const lsl_lora_part *l, fac_rec *rec)
{
    rec->lora = l != NULL;
    rec->index = (int64_t)index;
    rec->mem = p->mem | (p->ncols ? MEM_BLOCK : 0);
    if (!l)
        return LSL_OK;
    rec->flags = l->flags;
    rec->r = (int64_t)l->rank;
    if (index >= w->n)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor index %llu out of range (%llu tensors)",
                          (unsigned long long)index, (unsigned long long)w->n);
    const lsl_tensor_info *t = &w->t[index];
    lsl_status st = lsl_i_check_lora_target(t, l->rank, l->scaling);
    if (st != LSL_OK)
        return st;
    uint64_t numel[NFAC] = {0}, in = 0, row0 = 0, nrows = 0;
    st = shapes(t, l->rank, l->flags, numel, &in);
    if (st != LSL_OK)
        return st;
    rows_needed(t, p, &row0, &nrows);
    for (int f = 0; f < NFAC; f++) {
        const lsl_factor *x = factor(l, f);
        rec->e0[f] = (int64_t)x->e0;
        rec->n[f] = (int64_t)x->n;
        rec->dt[f] = x->dtype | (x->transposed && f != FM && x->n ? DT_TRANSPOSED : 0);
        if (x->n && !x->data)
            return lsl_i_fail(LSL_ERR_INVALID_ARG,
                              "tensor `%s`: %s: data is NULL for %llu elements", t->name, FNAME[f],
                              (unsigned long long)x->n);
        if (x->n && !float_dt(x->dtype))
            return lsl_i_fail(LSL_ERR_DTYPE, "tensor `%s`: %s has dtype %s; F32, BF16 or F16 only",
                              t->name, FNAME[f], lsl_dtype_name(x->dtype));
        if (x->e0 > numel[f] || x->n > numel[f] - x->e0)
            return lsl_i_fail(LSL_ERR_SHAPE,
                              "tensor `%s`: %s elements [%llu, +%llu) outside the %llu it has "
                              "(r %llu%s)",
                              t->name, FNAME[f], (unsigned long long)x->e0,
                              (unsigned long long)x->n, (unsigned long long)numel[f],
                              (unsigned long long)l->rank,
                              (l->flags & LSL_LORA_TRANSPOSED) ? ", transposed" : "");
    }
    uint64_t r = l->rank;
    rec->match[FB] = !l->b.transposed && l->b.e0 == row0 * r && l->b.n == nrows * r;
    rec->match[FM] = l->magnitude.e0 == row0 && l->magnitude.n == nrows;
    return LSL_OK;
}

/* How the ranks hold factor f of part i, checked: the same dtype wherever elements are, and
 * ranges tiling the factor in rank order unless every rank holds all of it. */
static lsl_status classify(const fac_rec *all, int size, uint64_t n, uint64_t i, int f,
                           const char *name, fac_plan *pl)
{
    uint64_t pre = 0, numel = pl->numel[f];
    bool whole = true, any = false;
    int bad = -1;
    uint64_t bad_e0 = 0, bad_n = 0, bad_pre = 0;
    int64_t dt = -1;
    for (int k = 0; k < size; k++) {
        const fac_rec *r = &all[(uint64_t)k * n + i];
        uint64_t e0 = (uint64_t)r->e0[f], cnt = (uint64_t)r->n[f];
        whole &= e0 == 0 && cnt == numel;
        if (!cnt)
            continue;
        any = true;
        if (dt < 0)
            dt = r->dt[f];
        else if ((r->dt[f] ^ dt) & DT_TRANSPOSED)
            return lsl_i_fail(LSL_ERR_INCONSISTENT,
                              "tensor `%s`: %s is passed transposed on rank %d and not on a rank "
                              "before it, or the reverse (the ranks hold it alike)",
                              name, FNAME[f], k);
        else if (r->dt[f] != dt)
            return lsl_i_fail(LSL_ERR_INCONSISTENT,
                              "tensor `%s`: %s has dtype %s on rank %d, %s on a rank before it",
                              name, FNAME[f], lsl_dtype_name((lsl_dtype)(r->dt[f] & 255)), k,
                              lsl_dtype_name((lsl_dtype)(dt & 255)));
        if (e0 != pre && bad < 0)
            bad = k, bad_e0 = e0, bad_n = cnt, bad_pre = pre;
        pre += cnt;
    }
    pl->dt[f] = dt < 0 ? LSL_F32 : (lsl_dtype)(dt & 255);
    pl->ft[f] = dt >= 0 && (dt & DT_TRANSPOSED);
    if (f == FM && !any) {
        pl->kind[f] = K_ABSENT;
        return LSL_OK;
    }
    if (whole) {
        pl->kind[f] = K_WHOLE;
        return LSL_OK;
    }
    if (bad >= 0)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "tensor `%s`: %s: rank %d holds elements [%llu, +%llu) but the ranks "
                          "before it end at %llu (a factor's shards tile it in rank order, or "
                          "every rank passes it whole)",
                          name, FNAME[f], bad, (unsigned long long)bad_e0,
                          (unsigned long long)bad_n, (unsigned long long)bad_pre);
    if (pre != numel)
        return lsl_i_fail(LSL_ERR_SHAPE,
                          "tensor `%s`: %s: the ranks hold %llu of its %llu elements (a factor's "
                          "shards tile it in rank order, or every rank passes it whole)",
                          name, FNAME[f], (unsigned long long)pre, (unsigned long long)numel);
    pl->kind[f] = K_TILED;
    return LSL_OK;
}

/* Part i's plan from every rank's record (the same on every rank). */
static lsl_status plan_part(const lsl_writer *w, const fac_rec *all, int size, uint64_t n,
                            uint64_t i, fac_plan *pl)
{
    const fac_rec *r0 = &all[i];
    const lsl_tensor_info *t = &w->t[r0->index];
    memset(pl, 0, sizeof *pl);
    lsl_status st = shapes(t, (uint64_t)r0->r, (unsigned)r0->flags, pl->numel, &pl->in);
    for (int f = 0; st == LSL_OK && f < NFAC; f++)
        st = classify(all, size, n, i, f, t->name, pl);
    if (st != LSL_OK)
        return st;
    pl->aligned = true;
    pl->match[FB] = pl->match[FM] = true;
    bool block = false;
    for (int k = 0; k < size; k++) {
        const fac_rec *r = &all[(uint64_t)k * n + i];
        pl->aligned &=
            pl->in && (uint64_t)r->e0[FA] % pl->in == 0 && (uint64_t)r->n[FA] % pl->in == 0;
        pl->match[FB] &= r->match[FB] != 0;
        pl->match[FM] &= r->match[FM] != 0;
        block |= (r->mem & MEM_BLOCK) != 0;
    }
    pl->dev = (r0->mem & ~MEM_BLOCK) == LSL_MEM_DEVICE;
    pl->tr = (r0->flags & LSL_LORA_TRANSPOSED) != 0;
    /* blocks are merged on the CPU, from A whole */
    pl->cpu = pl->kind[FM] != K_ABSENT || (r0->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE) || block;
    /* a factor held transposed is gathered whole wherever it is tiled, then turned back */
    pl->gather[FB] = pl->kind[FB] == K_TILED && (pl->tr || !pl->match[FB] || pl->ft[FB]);
    pl->gather[FM] = pl->kind[FM] == K_TILED && (pl->tr || !pl->match[FM]);
    pl->host = pl->dev && (pl->tr || pl->gather[FB] || pl->gather[FM] || pl->ft[FA] || pl->ft[FB]);
    /* A stays in row shards only for the device gather of a GPU merge (NCCL where it serves) */
    pl->gather[FA] = pl->kind[FA] == K_TILED &&
                     (pl->tr || !pl->dev || pl->host || pl->cpu || !pl->aligned || pl->ft[FA]);
    return LSL_OK;
}

/* Copy `bytes` of a part's memory at src to host memory dst: a plain copy, or down from the
 * device on the part's stream. */
static lsl_status fetch(void *dst, const void *src, uint64_t bytes, const lsl_i_part *p,
                        const char *what)
{
    if (!bytes)
        return LSL_OK;
    if (p->mem != LSL_MEM_DEVICE) {
        memcpy(dst, src, bytes);
        return LSL_OK;
    }
#ifdef LSL_HAVE_CUDA
    return lsl_i_cuda_download_on(dst, src, bytes, p->stream, what);
#else
    (void)what;
    return lsl_i_fail(LSL_ERR_UNSUPPORTED,
                      "device pointers need a build with CUDA (this one has none)");
#endif
}

/* Factor f of the plan, held transposed (its transpose, [cols, rows], at src), into its own
 * layout at dst. */
static void turn_back(const fac_plan *pl, int f, const void *src, void *dst)
{
    uint64_t cols = f == FA ? pl->in : pl->numel[FA] / (pl->in ? pl->in : 1);
    uint64_t rows = cols ? pl->numel[f] / cols : 0;
    lsl_i_transpose(src, dst, cols, rows, 0, rows, esz(pl->dt[f]));
}

/* out->own[k] = a host buffer of `bytes`. */
static void *own(lsl_i_factors *out, int k, uint64_t bytes)
{
    return out->own[k] = lsl_i_malloc(bytes ? bytes : 1);
}

/* This rank's local work for one part before the gather: whole buffers for the factors that
 * will be gathered, its own shards of them into the send buffer at *q, host copies of what a
 * device part in host mode needs, and out->l as far as it is known now. */
static lsl_status prepare(const fac_plan *pl, const lsl_i_part *p, const lsl_lora_part *l,
                          const char *name, unsigned char **q, lsl_i_factors *out)
{
    lsl_i_lora *o = &out->l;
    uint64_t r = l->rank, es[NFAC];
    for (int f = 0; f < NFAC; f++)
        es[f] = esz(pl->dt[f]);
    *o = (lsl_i_lora){.rank = r,
                      .alpha = l->alpha,
                      .scaling = l->scaling,
                      .a_dtype = pl->dt[FA],
                      .b_dtype = pl->dt[FB],
                      .magnitude_dtype = pl->dt[FM],
                      .flags = l->flags & ~(unsigned)LSL_LORA_TRANSPOSED};
    char what[300];
    snprintf(what, sizeof what, "tensor `%s`: LoRA factors", name);
    void *whole[NFAC] = {0};
    for (int f = 0; f < NFAC; f++) {
        const lsl_factor *x = factor(l, f);
        if (pl->gather[f]) { /* my shard goes out; the whole comes back into own[f] */
            if (!own(out, f, pl->numel[f] * es[f]))
                return lsl_i_fail(LSL_ERR_NOMEM, "%s: out of memory", what);
            lsl_status st = fetch(*q, x->data, x->n * es[f], p, what);
            if (st != LSL_OK)
                return st;
            *q += x->n * es[f];
            whole[f] = out->own[f];
        } else if (pl->kind[f] == K_WHOLE && pl->dev &&
                   (pl->host || (pl->cpu && f == FA) || pl->ft[f])) {
            /* a device factor every rank holds whole, needed on the host */
            if (!own(out, f, pl->numel[f] * es[f]))
                return lsl_i_fail(LSL_ERR_NOMEM, "%s: out of memory", what);
            lsl_status st = fetch(out->own[f], x->data, pl->numel[f] * es[f], p, what);
            if (st != LSL_OK)
                return st;
            whole[f] = out->own[f];
        } else if (pl->kind[f] == K_WHOLE) {
            whole[f] = (void *)x->data; /* in place, where the part's data lives */
        }
        out->held[f] = whole[f];
        if (pl->ft[f] && whole[f]) { /* turned back into own[T_OWN + f] (now or after the gather) */
            if (!own(out, T_OWN + f, pl->numel[f] * es[f]))
                return lsl_i_fail(LSL_ERR_NOMEM, "%s: out of memory", what);
            whole[f] = out->own[T_OWN + f];
            if (!pl->gather[f])
                turn_back(pl, f, out->held[f], whole[f]);
        }
        out->whole[f] = whole[f];
    }
    /* A: whole (in place or on the host), or row shards the device gather takes */
    if (whole[FA]) {
        o->a = whole[FA];
        o->a_shard = LSL_SHARD_ROWS;
        o->a_count = r;
        o->flags |= LSL_I_LORA_A_FULL;
        if (pl->dev && whole[FA] == l->a.data)
            o->flags |= LSL_I_LORA_A_GPU;
    } else {
        o->a = l->a.data;
        o->a_shard = LSL_SHARD_ROWS;
        o->a_off = pl->in ? l->a.e0 / pl->in : 0;
        o->a_count = pl->in ? l->a.n / pl->in : 0;
    }
    if (pl->tr) { /* b and a are made after the gather (finish_transposed) */
        uint64_t cols = pl->numel[FB] / r;
        if (!own(out, 3, pl->nrows * r * es[FA]) || !own(out, 4, r * cols * es[FB]))
            return lsl_i_fail(LSL_ERR_NOMEM, "%s: out of memory for the transposed factors", what);
        return LSL_OK;
    }
    /* B's and the magnitude's rows of the part: a slice of the whole, or the rank's own */
    const int rowf[2] = {FB, FM};
    for (int k = 0; k < 2; k++) {
        int f = rowf[k];
        uint64_t width = f == FB ? r : 1, bytes = pl->nrows * width * es[f];
        const lsl_factor *x = factor(l, f);
        const void *src = pl->kind[f] == K_ABSENT ? NULL
                          : whole[f] ? (const unsigned char *)whole[f] + pl->row0 * width * es[f]
                                     : x->data;
        if (src && pl->host && !whole[f]) { /* the rank's own rows, down to the host */
            if (!own(out, f, bytes))
                return lsl_i_fail(LSL_ERR_NOMEM, "%s: out of memory", what);
            lsl_status st = fetch(out->own[f], src, bytes, p, what);
            if (st != LSL_OK)
                return st;
            src = out->own[f];
        }
        if (f == FB)
            o->b = src;
        else
            o->magnitude = src;
    }
    if (pl->host)
        o->flags |= LSL_I_LORA_ON_HOST;
    return LSL_OK;
}

/* After the gather: a transposed delta's b (A's columns of the part's rows, transposed) and a
 * (B^T, whole) into the buffers prepare() made, and every column's magnitude. */
static void finish_transposed(const fac_plan *pl, const lsl_lora_part *l, lsl_i_factors *out)
{
    lsl_i_lora *o = &out->l;
    uint64_t r = l->rank, cols = pl->numel[FB] / r, ae = esz(pl->dt[FA]), be = esz(pl->dt[FB]);
    const unsigned char *aw = o->a, *bw = out->whole[FB];
    lsl_i_transpose(aw, out->own[3], r, pl->in, pl->row0, pl->nrows, ae);
    lsl_i_transpose(bw, out->own[4], cols, r, 0, r, be);
    o->b = out->own[3];
    o->b_dtype = pl->dt[FA];
    o->a = out->own[4];
    o->a_dtype = pl->dt[FB];
    o->a_shard = LSL_SHARD_ROWS;
    o->a_off = 0;
    o->a_count = r;
    o->flags = (o->flags & ~(unsigned)LSL_I_LORA_A_GPU) | LSL_I_LORA_A_FULL;
    if (pl->kind[FM] != K_ABSENT) {
        o->magnitude = out->own[FM] ? out->own[FM] : l->magnitude.data;
        o->flags |= LSL_I_LORA_DORA_COLUMNS;
    }
    if (pl->dev)
        o->flags |= LSL_I_LORA_ON_HOST;
}

lsl_status lsl_i_factors_resolve(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                 const lsl_i_part *parts, const lsl_lora_part *const *pub,
                                 lsl_i_factors *out, int64_t route[3], lsl_status st)
{
    lsl_status rc = LSL_OK;
    int size = w->comm->size;
    double t0 = lsl_i_now();
    /* A single put's records go through the writer's own buffer: its first collective then
     * needs nothing allocated, and carries a failure and the route itself.  A batch agrees on
     * its allocations first. */
    bool single = n == 1;
    fac_rec one = {0};
    fac_rec *mine = single ? &one : lsl_i_calloc(n + 1, sizeof *mine);
    fac_rec *all =
        single ? (fac_rec *)w->per_rank : lsl_i_calloc((n + 1) * (size_t)size, sizeof *all);
    fac_plan *pl = lsl_i_calloc(n + 1, sizeof *pl);
    uint64_t *counts = lsl_i_calloc((size_t)size, sizeof *counts);
    unsigned char *send = NULL, *recv = NULL;
    if (st == LSL_OK && (!mine || !all || !pl || !counts))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for the LoRA factors' plan");
    for (uint64_t i = 0; st == LSL_OK && i < n; i++)
        st = check_local(w, indices[i], &parts[i], pub[i], &mine[i]);
    /* the route's questions (a MIN over ranks: 0 where any rank answers no) */
    int64_t rt[3] = {1, 1, 1};
    for (uint64_t i = 0; i < n; i++) {
        const lsl_lora_part *l = pub[i];
        rt[0] &= l == NULL;
        rt[1] &= parts[i].mem != LSL_MEM_DEVICE;
        rt[2] &= !(l && (l->magnitude.n || (l->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE))) &&
                 !parts[i].ncols;
    }
    if (single) {
        if (st != LSL_OK)
            one = (fac_rec){.failed = 1};
        memcpy(one.route, rt, sizeof rt);
        lsl_status cs = lsl_i_allgather(w->comm, &one, all, sizeof one);
        if (cs != LSL_OK)
            LSL_GOTO(cs);
        int64_t first = INT64_MAX;
        for (int k = 0; k < size; k++) {
            if (all[k].failed && first == INT64_MAX)
                first = k;
            for (int q = 0; q < 3; q++)
                rt[q] = all[k].route[q] < rt[q] ? all[k].route[q] : rt[q];
        }
        LSL_TRY(lsl_i_agree_first(w->comm, first, st));
        if (route)
            memcpy(route, rt, sizeof rt);
        if (rt[0])
            goto fail;
    } else {
        /* Local failures (and a rank without its arrays) stop every rank before the records
         * go out, so a failed rank's hole cannot show up elsewhere as a tiling error; the same
         * reduction answers the route's questions. */
        LSL_TRY(lsl_i_agree_min(w->comm, st, rt, 3));
        if (route)
            memcpy(route, rt, sizeof rt);
        if (rt[0]) /* no rank has a LoRA: nothing to resolve */
            goto fail;
        LSL_TRY(lsl_i_allgather(w->comm, mine, all, n * sizeof *mine));
    }
    /* from here every verdict comes from the gathered records alone */
    bool local_work = false;
    for (uint64_t i = 0; i < n; i++) {
        const fac_rec *r0 = &all[i];
        for (int k = 1; k < size; k++) {
            const fac_rec *r = &all[(uint64_t)k * n + i];
            if (r->lora != r0->lora || r->index != r0->index ||
                (r->mem & ~MEM_BLOCK) != (r0->mem & ~MEM_BLOCK) ||
                (r0->lora && (r->flags != r0->flags || r->r != r0->r)))
                LSL_GOTO(lsl_i_fail(LSL_ERR_INCONSISTENT,
                                    "tensor index %llu: rank %d's LoRA (present %d, r %lld, flags "
                                    "0x%llx, memory %lld) differs from rank 0's (%d, %lld, 0x%llx, "
                                    "%lld)",
                                    (unsigned long long)r0->index, k, (int)r->lora, (long long)r->r,
                                    (unsigned long long)r->flags, (long long)(r->mem & ~MEM_BLOCK),
                                    (int)r0->lora, (long long)r0->r, (unsigned long long)r0->flags,
                                    (long long)(r0->mem & ~MEM_BLOCK)));
        }
        if (!r0->lora)
            continue;
        LSL_TRY(plan_part(w, all, size, n, i, &pl[i]));
        rows_needed(&w->t[indices[i]], &parts[i], &pl[i].row0, &pl[i].nrows);
        for (int f = 0; f < NFAC; f++)
            local_work |= pl[i].gather[f];
        local_work |= pl[i].dev || pl[i].tr;
    }
    /* who sends what: rank k's shards of every factor gathered, part after part */
    uint64_t total = 0;
    for (int k = 0; k < size; k++) {
        for (uint64_t i = 0; i < n; i++)
            for (int f = 0; f < NFAC; f++)
                if (pub[i] && pl[i].gather[f])
                    counts[k] += (uint64_t)all[(uint64_t)k * n + i].n[f] * esz(pl[i].dt[f]);
        total += counts[k];
    }
    if (total > (uint64_t)INT_MAX)
        LSL_GOTO(lsl_i_fail(LSL_ERR_SHAPE,
                            "LoRA factors of %llu bytes are too large to gather at once (put "
                            "fewer tensors per batch)",
                            (unsigned long long)total));
    /* Without a gather, a device part or a transposed delta, nothing below can fail locally
     * (host parts' factors are used in place), so no agreement is needed. */
    local_work |= total > 0;
    if (total) {
        send = lsl_i_malloc(counts[w->comm->rank] + 1);
        recv = lsl_i_malloc(total + 1);
        if (!send || !recv)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory gathering LoRA factors");
    }
    unsigned char *q = send;
    for (uint64_t i = 0; st == LSL_OK && i < n; i++)
        if (pub[i])
            st = prepare(&pl[i], &parts[i], pub[i], w->t[indices[i]].name, &q, &out[i]);
    if (local_work)
        LSL_TRY(lsl_i_agree(w->comm, st));
    if (total) {
        LSL_TRY(lsl_i_allgatherv(w->comm, send, recv, counts));
        const unsigned char *blk = recv;
        for (int k = 0; k < size; k++)
            for (uint64_t i = 0; i < n; i++)
                for (int f = 0; f < NFAC; f++) {
                    if (!pub[i] || !pl[i].gather[f])
                        continue;
                    const fac_rec *r = &all[(uint64_t)k * n + i];
                    uint64_t es = esz(pl[i].dt[f]), b = (uint64_t)r->n[f] * es;
                    if (b)
                        memcpy((unsigned char *)out[i].own[f] + (uint64_t)r->e0[f] * es, blk, b);
                    blk += b;
                }
    }
    for (uint64_t i = 0; i < n; i++)
        for (int f = 0; pub[i] && f < NFAC; f++)
            if (pl[i].ft[f] && pl[i].gather[f])
                turn_back(&pl[i], f, out[i].held[f], out[i].own[T_OWN + f]);
    for (uint64_t i = 0; i < n; i++)
        if (pub[i] && pl[i].tr)
            finish_transposed(&pl[i], pub[i], &out[i]);
fail:
    w->prof[P_GATHER] += lsl_i_now() - t0;
    if (!single) {
        free(mine);
        free(all);
    }
    free(pl);
    free(counts);
    free(send);
    free(recv);
    return rc;
}

void lsl_i_factors_free(lsl_i_factors *f, uint64_t n)
{
    for (uint64_t i = 0; f && i < n; i++)
        for (int k = 0; k < LSL_I_FACTORS_OWN; k++) {
            free(f[i].own[k]);
            f[i].own[k] = NULL;
        }
}
