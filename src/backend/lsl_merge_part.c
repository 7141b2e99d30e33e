/* The CPU backend's one entry for the put engine (lsl_merge.h): a tensor part's factors, and
 * the choice of kernel its LoRA options make. */
#include "lsl_merge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_cpu_part_alloc(lsl_i_cpu_part *p, const char *name, lsl_dtype wt,
                                const lsl_i_lora *lora, uint64_t nrows, uint64_t in)
{
    memset(p, 0, sizeof *p);
    p->wt = wt;
    p->lora = lora;
    p->r = lora->rank;
    p->in = in;
    p->nrows = nrows;
    p->a = lsl_i_malloc(p->r * in * sizeof(double) + 1);
    p->b = lsl_i_malloc(nrows * p->r * sizeof(double) + 1);
    if (lsl_i_cpu_part_by_columns(p))
        p->colf = lsl_i_calloc(in ? in : 1, sizeof *p->colf);
    if (p->a && p->b && (p->colf || !lsl_i_cpu_part_by_columns(p)))
        return LSL_OK;
    lsl_i_cpu_part_free(p);
    return lsl_i_fail(LSL_ERR_NOMEM, "tensor `%s`: out of memory for LoRA factors", name);
}

void lsl_i_cpu_part_load(lsl_i_cpu_part *p, const void *a, uint64_t c0, uint64_t lda)
{
    const lsl_i_lora *l = p->lora;
    uint64_t es = lsl_dtype_bits(l->a_dtype) / 8;
    if (c0 == 0 && lda == p->in)
        lsl_i_to_f64(l->a_dtype, a, p->r * p->in, p->a);
    else
        for (uint64_t k = 0; k < p->r; k++)
            lsl_i_to_f64(l->a_dtype, (const unsigned char *)a + (k * lda + c0) * es, p->in,
                         p->a + k * p->in);
    lsl_i_to_f64(l->b_dtype, l->b, p->nrows * p->r, p->b);
    /* fp32 factors keep their precision: PEFT evaluates the delta in them */
    int f32 = l->a_dtype == LSL_F32 && l->b_dtype == LSL_F32;
    if ((l->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE) && !f32) {
        lsl_i_round_to_dtype(p->wt, p->a, p->r * p->in);
        lsl_i_round_to_dtype(p->wt, p->b, p->nrows * p->r);
    }
}

lsl_status lsl_i_cpu_part_colsq(lsl_i_cpu_part *p, const void *w, uint64_t first, uint64_t n,
                                uint64_t k0, uint64_t k1, void *work)
{
    return lsl_i_dora_colsq_cpu(p->wt, w, n, p->in, p->b + first * p->r, p->a, p->r,
                                p->lora->scaling, k0, k1, work, p->colf);
}

lsl_status lsl_i_cpu_part_columns(lsl_i_cpu_part *p, uint64_t c0)
{
    double *mag = lsl_i_malloc(p->in * sizeof *mag + 1);
    if (!mag)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory for DoRA magnitudes");
    lsl_dtype mt = p->lora->magnitude_dtype;
    lsl_i_to_f64(mt, (const unsigned char *)p->lora->magnitude + c0 * (lsl_dtype_bits(mt) / 8),
                 p->in, mag);
    for (uint64_t j = 0; j < p->in; j++)
        p->colf[j] = mag[j] / sqrt(p->colf[j]);
    free(mag);
    return LSL_OK;
}

lsl_status lsl_i_cpu_part_merge(const lsl_i_cpu_part *p, void *w, uint64_t first, uint64_t n,
                                void *work, uint64_t *bad)
{
    const lsl_i_lora *l = p->lora;
    const double *b = p->b + first * p->r;
    if (p->colf)
        return lsl_i_merge_rows_dora_cols_cpu(p->wt, w, n, p->in, b, p->a, p->r, l->scaling,
                                              p->colf, work, bad);
    if (l->magnitude) {
        lsl_i_row_norms given = {{0, 0}, {0, 0}, 0, NULL}; /* the shared rows among these */
        if (p->row_norm2)
            given.all = p->row_norm2 + first;
        for (int q = 0; q < p->shared.n; q++)
            if (p->shared.row[q] >= first && p->shared.row[q] < first + n) {
                given.row[given.n] = p->shared.row[q] - first;
                given.norm2[given.n++] = p->shared.norm2[q];
            }
        return lsl_i_merge_rows_dora_cpu(p->wt, w, n, p->in, b, p->a, p->r, l->scaling,
                                         (const unsigned char *)l->magnitude +
                                             first * (lsl_dtype_bits(l->magnitude_dtype) / 8),
                                         l->magnitude_dtype, &given, work, bad);
    }
    if (l->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE) {
        int f32 = l->a_dtype == LSL_F32 && l->b_dtype == LSL_F32;
        return lsl_i_merge_rows_lowp_cpu(p->wt, f32 ? LSL_F32 : p->wt, w, n, p->in, b, p->a, p->r,
                                         l->scaling, work, bad);
    }
    return lsl_i_merge_rows_cpu(p->wt, w, n, p->in, b, p->a, p->r, l->scaling, work, bad);
}

lsl_status lsl_i_cpu_part_rowsq(const lsl_i_cpu_part *p, const void *w, uint64_t row, uint64_t c0,
                                uint64_t c1, void *work, double *out)
{
    return lsl_i_dora_rowsq_cpu(p->wt, w, p->in, p->b + row * p->r, p->a, p->r, p->lora->scaling,
                                c0, c1, work, out);
}

lsl_status lsl_i_cpu_part_rowsq_block(const lsl_i_cpu_part *p, const void *w, uint64_t first,
                                      uint64_t n, void *work, double *out)
{
    uint64_t es = lsl_dtype_bits(p->wt) / 8;
    lsl_status st = LSL_OK;
    for (uint64_t i = 0; st == LSL_OK && i < n; i++)
        st = lsl_i_dora_rowsq_cpu(p->wt, (const unsigned char *)w + i * p->in * es, p->in,
                                  p->b + (first + i) * p->r, p->a, p->r, p->lora->scaling, 0, p->in,
                                  work, &out[i]);
    return st;
}

void lsl_i_cpu_part_block_norms(lsl_i_cpu_part *p, const double *norm2)
{
    p->row_norm2 = norm2;
}

void lsl_i_cpu_part_row_norm(lsl_i_cpu_part *p, uint64_t row, double norm2)
{
    if (p->shared.n < 2) {
        p->shared.row[p->shared.n] = row;
        p->shared.norm2[p->shared.n++] = norm2;
    }
}

void lsl_i_cpu_part_free(lsl_i_cpu_part *p)
{
    free(p->a);
    free(p->b);
    free(p->colf);
    p->a = p->b = p->colf = NULL;
}
