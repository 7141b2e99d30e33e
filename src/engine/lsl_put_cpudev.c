/* Device parts whose merge has no kernel (DoRA, LSL_LORA_DELTA_IN_WEIGHT_DTYPE) or that are
 * blocks of columns, beside the device chunk loop (lsl_put_device.c): merged (or copied) by the
 * host chunk loop, W0 copied down chunk by chunk and the factors copied down whole. */
#include "lsl_writer_s.h"

#include <stdlib.h>

/* A device part's LoRA factors copied to host memory for the CPU merge (they are small: B's
 * rows of the part and the magnitude vector; A arrives whole in host memory, gathered with the
 * other factors by lsl_factors.c). */
typedef struct lora_down {
    lsl_i_lora l;
    void *b, *m;
} lora_down;

static lsl_status down(void **dst, const void *src, uint64_t n, uint64_t m, uint64_t es,
                       void *stream, const lsl_i_putctx *pc, const char *what)
{
    uint64_t bytes = 0;
    if (!src)
        return LSL_OK;
    if (lsl_mul_overflow(n, m, &bytes) || lsl_mul_overflow(bytes, es, &bytes))
        return lsl_i_fail(LSL_ERR_SHAPE, "tensor `%s`: the size of LoRA %s overflows 64 bits",
                          pc->t->name, what);
    if (!(*dst = lsl_i_malloc(bytes ? bytes : 1)))
        return lsl_i_fail(LSL_ERR_NOMEM, "tensor `%s`: out of memory for LoRA %s", pc->t->name,
                          what);
    return lsl_i_cuda_download_on(*dst, src, bytes, stream, what);
}

static lsl_status lora_down_make(const lsl_i_lora *l, const lsl_i_putctx *pc, void *stream,
                                 lora_down *d)
{
    uint64_t r = l->rank, in = pc->relems, n = pc->nrows;
    uint64_t be = lsl_dtype_bits(l->b_dtype) / 8;
    lsl_status st = LSL_OK;
    d->l = *l;
    if (l->flags & LSL_I_LORA_ON_HOST) /* the resolution brought them to the host already */
        return LSL_OK;
    /* a NULL pointer stays NULL (an empty part may pass none); a magnitude down the columns
     * holds every column on every rank */
    if (!(l->flags & LSL_I_LORA_A_FULL))
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "internal: tensor `%s`: LoRA A not gathered",
                        pc->t->name);
    if (st == LSL_OK)
        st = down(&d->b, l->b, n, r, be, stream, pc, "B");
    if (st == LSL_OK)
        st = down(&d->m, l->magnitude, (l->flags & LSL_I_LORA_DORA_COLUMNS) ? in : n, 1,
                  lsl_dtype_bits(l->magnitude_dtype) / 8, stream, pc, "magnitude");
    d->l.b = d->b;
    d->l.magnitude = d->m;
    return st;
}

lsl_status lsl_i_put_device_on_cpu(lsl_writer *w, uint64_t index, const lsl_i_part *p,
                                   lsl_status st)
{
    lsl_i_putctx pc;
    const lsl_i_lora *lora = p->lora, *l = st ? NULL : lora;
    uint64_t first = st ? 0 : p->first, count = st ? 0 : p->count;
    lsl_status rc = p->elems ? lsl_i_put_begin_elems(w, index, first, count, p->data != NULL, l,
                                                     LSL_MEM_DEVICE, st, &pc)
                             : lsl_i_put_begin_block(w, index, first, count, st ? 0 : p->col0,
                                                     st ? 0 : p->ncols, p->data != NULL, l,
                                                     LSL_MEM_DEVICE, st, &pc);
    if (rc != LSL_OK) {
        w->state = W_FAILED;
        return rc;
    }
    /* agreed: every rank has a LoRA part or none (the put's record); a part of a tensor held in
     * blocks may have none */
    lora_down d = {0};
    lsl_i_src src = {NULL, -1, 0, NULL, p->data, p->stream};
    if (lora)
        st = lora_down_make(lora, &pc, p->stream, &d);
    rc = lsl_i_put_body(w, index, &pc, &src, lora ? &d.l : NULL, st);
    free(d.b);
    free(d.m);
    return rc;
}
