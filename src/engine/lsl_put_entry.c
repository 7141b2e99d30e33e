/* The public puts of one part (lsl_writer_put_all, lsl_writer_put_elems_all) and the choice of
 * path, made once, top-down: the host chunk loop (lsl_put_host.c), the device chunk loop
 * (lsl_put_device.c), or the CPU merge of a device part (lsl_put_cpudev.c).  The batched put
 * gathers its A's first (lsl_put_batch.c), then comes here for each part. */
#include "lsl_writer_s.h"

/* Collective: the path of a put (the memory space is logically collective).  Returns 1 when
 * the put went down a device path (*rc its status, or the agreement's failure): the kernels,
 * or the CPU merge for DoRA and LSL_LORA_DELTA_IN_WEIGHT_DTYPE; 0 for the host path.  Without
 * CUDA, device memory is refused into *st. */
static int on_device(lsl_writer *w, uint64_t index, int mem, uint64_t first, uint64_t count,
                     int elems, const void *data, void *stream, const lsl_lora_part *lora,
                     lsl_status *st, lsl_status *rc)
{
#ifdef LSL_HAVE_CUDA
    int dev = mem == LSL_MEM_DEVICE;
    int cpu = lsl_i_lora_on_cpu(lora);
    lsl_status cs = LSL_OK;
    /* one reduction decides both: 0 host, 1 the kernels, 2 the CPU merge (a rank with an empty
     * part may pass no magnitude) */
    uint64_t any = lsl_i_writer_max(w, dev ? 1u + (uint64_t)cpu : 0u, &cs);
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
    *rc = any == 2 ? lsl_i_put_device_on_cpu(w, index, first, count, elems, data, stream, lora, ls)
                   : lsl_i_put_device(w, index, first, count, elems, data, stream, NULL, lora, ls);
    return 1;
#else
    (void)w, (void)index, (void)first, (void)count, (void)elems, (void)data, (void)stream;
    (void)lora, (void)rc;
    if (*st == LSL_OK && mem != LSL_MEM_HOST)
        *st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                         "device pointers need a build with CUDA (this one has none)");
    return 0;
#endif
}

/* Collective: a part of rows (elems 0) or of elements [first, first + count) down its path;
 * st this rank's status so far (a failed rank joins with nothing). */
static lsl_status put_range(lsl_writer *w, uint64_t index, uint64_t first, uint64_t count,
                            int elems, const void *data, int mem, void *stream,
                            const lsl_lora_part *lora, lsl_status st)
{
    static const unsigned char empty = 0;
    lsl_status rc = LSL_OK;
    if (on_device(w, index, mem, first, count, elems, data, stream, lora, &st, &rc))
        return rc;
    lsl_i_src src = {NULL, -1, 0, NULL, NULL, NULL};
    if (st == LSL_OK)
        src.mem = data ? data : (count ? NULL : &empty);
    if (!elems)
        return lsl_i_writer_put(w, index, st ? 0 : first, st ? 0 : count, &src, st ? NULL : lora,
                                st);
    lsl_i_putctx pc;
    rc = lsl_i_put_begin_elems(w, index, st ? 0 : first, st ? 0 : count, src.mem != NULL,
                               st ? NULL : lora, LSL_MEM_HOST, st, &pc);
    if (rc != LSL_OK) {
        w->state = W_FAILED;
        return rc;
    }
    return lsl_i_put_body(w, index, &pc, &src, lora, LSL_OK);
}

lsl_status lsl_writer_put_elems_all(lsl_writer *w, uint64_t index, const lsl_elem_part *part)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_elems_all: writer is NULL");
    lsl_i_clear_error();
    lsl_status st =
        part ? lsl_i_part_entry(part->lora, part->mem, part->stream, "lsl_writer_put_elems_all")
             : lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_elems_all: part is NULL");
    if (!part)
        return put_range(w, index, 0, 0, 1, NULL, LSL_MEM_HOST, NULL, NULL, st);
    return put_range(w, index, part->e0, part->nelems, 1, part->data, part->mem, part->stream,
                     part->lora, st);
}

lsl_status lsl_i_put_one(lsl_writer *w, uint64_t index, const lsl_part *part, lsl_status st)
{
    if (!part)
        return put_range(w, index, 0, 0, 0, NULL, LSL_MEM_HOST, NULL, NULL,
                         st ? st
                            : lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_all: part is NULL"));
    return put_range(w, index, part->row0, part->nrows, 0, part->data, part->mem, part->stream,
                     part->lora, st);
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
    return lsl_i_put_one(
        w, index, part,
        part ? lsl_i_part_entry(part->lora, part->mem, part->stream, "lsl_writer_put_all")
             : LSL_OK);
}
