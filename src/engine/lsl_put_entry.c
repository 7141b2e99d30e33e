/* The public puts of one part (lsl_writer_put_all, lsl_writer_put_elems_all) and the choice of
 * path, made once, top-down: the factors resolved (lsl_factors.c), then the host chunk loop
 * (lsl_put_host.c), the device chunk loop (lsl_put_device.c), or the CPU merge of a device part
 * (lsl_put_cpudev.c).  The batched put resolves and gathers its factors first
 * (lsl_put_batch.c), then comes here for each part. */
#include "lsl_factors.h"

/* Collective: the path of a put (the memory space is logically collective).  Returns 1 when
 * the put went down a device path (*rc its status, or the agreement's failure): the kernels,
 * or the CPU merge for DoRA and LSL_LORA_DELTA_IN_WEIGHT_DTYPE; 0 for the host path.  Without
 * CUDA, device memory is refused into *st. */
static int on_device(lsl_writer *w, uint64_t index, const lsl_i_part *p, const int64_t *route,
                     lsl_status *st, lsl_status *rc)
{
#ifdef LSL_HAVE_CUDA
    int dev = p->mem == LSL_MEM_DEVICE;
    int cpu = lsl_i_part_on_cpu(p);
    lsl_status cs = LSL_OK;
    /* one reduction decides both (or the resolution's, passed as route): 0 host, 1 the
     * kernels, 2 the host chunk loop (a rank with an empty part may pass no magnitude, and one
     * whole-row part of a tensor held in blocks goes where the blocks go) */
    uint64_t any = route ? (route[1] ? 0u : 1u + (route[2] ? 0u : 1u))
                         : lsl_i_writer_max(w, dev ? 1u + (uint64_t)cpu : 0u, &cs);
    if (cs != LSL_OK) {
        w->state = W_FAILED;
        *rc = cs;
        return 1;
    }
    if (!any)
        return 0;
    lsl_status ls =
        *st    ? *st
        : !dev ? lsl_i_fail(LSL_ERR_INCONSISTENT, "some ranks passed device memory, this one host")
               : LSL_OK;
    *rc = any == 2 ? lsl_i_put_device_on_cpu(w, index, p, ls)
                   : lsl_i_put_device(w, index, p->first, p->count, p->elems, p->data, p->stream,
                                      NULL, p->lora, ls);
    return 1;
#else
    (void)w, (void)index, (void)route, (void)rc;
    if (*st == LSL_OK && p->mem != LSL_MEM_HOST)
        *st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                         "device pointers need a build with CUDA (this one has none)");
    return 0;
#endif
}

lsl_status lsl_i_put_one(lsl_writer *w, uint64_t index, const lsl_i_part *p, const int64_t *route,
                         lsl_status st)
{
    static const unsigned char empty = 0;
    lsl_status rc = LSL_OK;
    if (on_device(w, index, p, route, &st, &rc))
        return rc;
    lsl_i_src src = {NULL, -1, 0, NULL, NULL, NULL};
    const lsl_i_lora *lora = st ? NULL : p->lora;
    uint64_t first = st ? 0 : p->first, count = st ? 0 : p->count;
    if (st == LSL_OK)
        src.mem = p->data ? p->data : (count ? NULL : &empty);
    lsl_i_putctx pc;
    if (p->elems)
        rc = lsl_i_put_begin_elems(w, index, first, count, src.mem != NULL, lora, LSL_MEM_HOST, st,
                                   &pc);
    else
        rc = lsl_i_put_begin_block(w, index, first, count, st ? 0 : p->col0, st ? 0 : p->ncols,
                                   src.mem != NULL, lora, LSL_MEM_HOST, st, &pc);
    if (rc != LSL_OK) {
        w->state = W_FAILED;
        return rc;
    }
    return lsl_i_put_body(w, index, &pc, &src, lora, LSL_OK);
}

/* Collective: a public part (pub its LoRA as the caller passed it): the factors resolved, then
 * down the path the resolution's first reduction chose.  st this rank's status so far. */
static lsl_status put_public(lsl_writer *w, uint64_t index, lsl_i_part p, const lsl_lora_part *pub,
                             lsl_status st)
{
    lsl_i_factors f = {0};
    int64_t route[3];
    lsl_status rc = lsl_i_factors_resolve(w, 1, &index, &p, &pub, &f, route, st);
    if (rc == LSL_OK) {
        p.lora = pub ? &f.l : NULL;
        rc = lsl_i_put_one(w, index, &p, route, LSL_OK);
    } else {
        w->state = W_FAILED;
    }
    lsl_i_factors_free(&f, 1);
    return rc;
}

lsl_status lsl_writer_put_elems_all(lsl_writer *w, uint64_t index, const lsl_elem_part *part)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_elems_all: writer is NULL");
    lsl_i_clear_error();
    lsl_i_part p = {.elems = 1, .mem = LSL_MEM_HOST};
    if (!part)
        return put_public(
            w, index, p, NULL,
            lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_elems_all: part is NULL"));
    p = (lsl_i_part){part->e0, part->nelems, 1, part->data, part->mem, part->stream, NULL, 0, 0};
    return put_public(
        w, index, p, part->lora,
        lsl_i_part_entry(part->lora, part->mem, part->stream, "lsl_writer_put_elems_all"));
}

lsl_status lsl_i_part_entry(const lsl_lora_part *l, lsl_memspace mem, void *stream, const char *fn)
{
    if (l && (l->flags & ~LSL_LORA_PUBLIC_FLAGS))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: unknown LoRA flags 0x%x", fn,
                          l->flags & ~LSL_LORA_PUBLIC_FLAGS);
#ifdef LSL_HAVE_CUDA
    if (mem == LSL_MEM_DEVICE)
        return lsl_i_cuda_after_caller(stream);
#else
    (void)mem, (void)stream; /* a device part is refused by the put's path choice */
#endif
    return LSL_OK;
}

lsl_status lsl_writer_put_all(lsl_writer *w, uint64_t index, const lsl_part *part)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_all: writer is NULL");
    lsl_i_clear_error();
    lsl_i_part p = {.mem = LSL_MEM_HOST};
    if (!part)
        return put_public(w, index, p, NULL,
                          lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_all: part is NULL"));
    lsl_status st = lsl_i_part_of(w, index, part, "lsl_writer_put_all", &p);
    return put_public(
        w, index, p, part->lora,
        st ? st : lsl_i_part_entry(part->lora, part->mem, part->stream, "lsl_writer_put_all"));
}

lsl_status lsl_i_part_of(const lsl_writer *w, uint64_t index, const lsl_part *part, const char *fn,
                         lsl_i_part *p)
{
    *p = (lsl_i_part){part->row0,   part->nrows, 0,          part->data, part->mem,
                      part->stream, NULL,        part->col0, part->ncols};
    if (!part->ncols) {
        if (part->col0)
            return lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: col0 %llu with ncols 0 (every column)", fn,
                              (unsigned long long)part->col0);
        return LSL_OK;
    }
    /* a block of every column is a row part; an empty block holds nothing */
    if (index < w->n && part->col0 == 0 && part->ncols == lsl_i_row_elems(&w->t[index]))
        p->ncols = 0;
    return LSL_OK;
}
