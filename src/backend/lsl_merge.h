/* Merge of a block of rows on the host: W = round(W0 + s * B @ A), one rounding into W's dtype.
 * The host accumulates in fp64 (dgemm) for every dtype: under cancellation (W0 + delta near 0,
 * terms around 1e-2 and a result around 1e-8) an fp32 accumulator's error exceeds one ulp of the
 * result, for F32 often and for BF16 rarely (the float64 reference check found both).  The GPU
 * path keeps fp32, PEFT's own precision, for speed. */
#ifndef LSL_MERGE_H
#define LSL_MERGE_H

#include "lsl_internal.h"

/* ---- the CPU backend as the put engine sees it: one tensor part -------------------------- */

/* DoRA by rows on a part whose first or last row it shares with other ranks: those rows' sums
 * of squares of V over the whole row (the ranks' partial sums, added), by row of the block. */
typedef struct lsl_i_row_norms {
    uint64_t row[2];
    double norm2[2];
    int n;
    const double *all; /* a block of columns: every row's whole sum (by row of the block) */
} lsl_i_row_norms;

/* One rank's part of one LoRA tensor on the CPU: its factors in fp64 (A whole, its own rows of
 * B) and, for DoRA down the columns, one value per column (the sums of squares, then the
 * factor).  Which kernel runs (fp64 with one rounding, PEFT's low-precision rule, DoRA by rows
 * or by columns) follows lora's flags; the engine only says which rows. */
typedef struct lsl_i_cpu_part {
    lsl_dtype wt;
    const lsl_i_lora *lora;
    uint64_t r, in, nrows;
    double *a, *b, *colf;
    lsl_i_row_norms shared;  /* by local row of the part (lsl_i_cpu_part_row_norm) */
    const double *row_norm2; /* a block of columns: every row's whole sum (borrowed) */
} lsl_i_cpu_part;

/* Not collective.  Allocates p's factors for a part of nrows rows of `in` columns of dtype wt
 * (LSL_ERR_NOMEM naming `name`; p then owns nothing but is safe to free).  Before A is
 * gathered, so a failure can join the gather's agreement. */
lsl_status lsl_i_cpu_part_alloc(lsl_i_cpu_part *p, const char *name, lsl_dtype wt,
                                const lsl_i_lora *lora, uint64_t nrows, uint64_t in);
/* Takes A's columns [c0, c0 + in) (a: r x lda of lora->a_dtype, gathered; lda = in and c0 = 0
 * for a part of whole rows, a block's columns otherwise) and lora->b into fp64, rounded to wt
 * where the merge runs at the weight's precision. */
void lsl_i_cpu_part_load(lsl_i_cpu_part *p, const void *a, uint64_t c0, uint64_t lda);
/* fp64 work area bytes per row the merges below need. */
static inline uint64_t lsl_i_cpu_part_work_row(const lsl_i_cpu_part *p)
{
    return p->in * sizeof(double);
}
/* DoRA down the columns (LSL_I_LORA_DORA_COLUMNS): whether a first pass is needed; pass 1 adds the
 * squares of V over rows [first, first + n) of the part (w, not modified) into p->colf, only
 * those of the block's elements [k0, k1) (an element-range part's own: its first and last rows
 * may be partial, the rest of them zero in w); after the ranks' sums are reduced into p->colf,
 * every element counted once, lsl_i_cpu_part_columns turns them into factors (LSL_ERR_NOMEM). */
static inline int lsl_i_cpu_part_by_columns(const lsl_i_cpu_part *p)
{
    return p->lora && (p->lora->flags & LSL_I_LORA_DORA_COLUMNS);
}
lsl_status lsl_i_cpu_part_colsq(lsl_i_cpu_part *p, const void *w, uint64_t first, uint64_t n,
                                uint64_t k0, uint64_t k1, void *work);
/* DoRA by rows on an element-range part: this rank's sum of squares of V over columns
 * [c0, c1) of its local row `row` (w: that whole row, the missing elements zero), and, once the
 * ranks' partial sums are added, the row's whole sum for the merge to use (at most two rows:
 * the part's first and last). */
lsl_status lsl_i_cpu_part_rowsq(const lsl_i_cpu_part *p, const void *w, uint64_t row, uint64_t c0,
                                uint64_t c1, void *work, double *out);
void lsl_i_cpu_part_row_norm(lsl_i_cpu_part *p, uint64_t row, double norm2);
/* DoRA by rows on a block of columns (a row's norm spans the blocks of every rank holding a piece
 * of it): the sums of squares of V over the block's own columns of its rows [first, first + n)
 * (w: those rows), into out[n]; once the ranks' sums are added, lsl_i_cpu_part_block_norms
 * gives the merge every row's whole sum (norm2: the part's nrows values, borrowed until the
 * part is freed). */
lsl_status lsl_i_cpu_part_rowsq_block(const lsl_i_cpu_part *p, const void *w, uint64_t first,
                                      uint64_t n, void *work, double *out);
void lsl_i_cpu_part_block_norms(lsl_i_cpu_part *p, const double *norm2);
/* The column factors from the reduced sums in p->colf; the magnitude's values from column c0 on
 * (a block of columns; 0 otherwise). */
lsl_status lsl_i_cpu_part_columns(lsl_i_cpu_part *p, uint64_t c0);
/* Merges rows [first, first + n) of the part in place at w.  LSL_ERR_NONFINITE with *bad the
 * first offending element (of these rows). */
lsl_status lsl_i_cpu_part_merge(const lsl_i_cpu_part *p, void *w, uint64_t first, uint64_t n,
                                void *work, uint64_t *bad);
void lsl_i_cpu_part_free(lsl_i_cpu_part *p);

/* ---- the kernels ------------------------------------------------------------------------- */

/* dst[i] = (double)src[i] for a float dtype (F32, F16, BF16). */
void lsl_i_to_f64(lsl_dtype dt, const void *src, uint64_t n, double *dst);

/* In place on w (m rows x in columns of dtype dt: BF16, F16 or F32): w = round(w + s * (b @ a)),
 * b being m x r and a r x in doubles (lsl_i_to_f64); work holds m * in doubles.
 * Returns LSL_ERR_NONFINITE with *bad = the first offending element when the result holds NaN
 * or Inf, LSL_ERR_SHAPE when a dimension exceeds BLAS's int (as do all the merges below). */
lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, void *work, uint64_t *bad);

/* DoRA down the columns, pass 1: adds the squares of V = w + s * (b @ a) (m x in) into
 * colsq[in], over the block's row-major elements [k0, k1) only; w is not modified.  Pass 2:
 * w = round(factor[j] * V). */
lsl_status lsl_i_dora_colsq_cpu(lsl_dtype dt, const void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, uint64_t k0, uint64_t k1,
                                double *work, double *colsq);
lsl_status lsl_i_merge_rows_dora_cols_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in,
                                          const void *b, const void *a, uint64_t r, double s,
                                          const double *factor, double *work, uint64_t *bad);

/* Round every element of x (n doubles) to dtype dt and back: the factors of a merge that runs at
 * the weight's precision (LSL_LORA_DELTA_IN_WEIGHT_DTYPE). */
void lsl_i_round_to_dtype(lsl_dtype dt, double *x, uint64_t n);

/* As lsl_i_merge_rows_cpu, at the weight's precision, as PEFT's Embedding merge computes its
 * delta in the factors' dtype and rounds it to the weight's before the add:
 * w = rd(w + rd(rdp(rdp(b @ a) * s))) with rd the rounding into dt, rdp into pdt, the product and
 * the scaling evaluated in fp32.  pdt is the factors' dtype: dt when they are low precision (b and
 * a already rounded with lsl_i_round_to_dtype), LSL_F32 for fp32 factors. */
lsl_status lsl_i_merge_rows_lowp_cpu(lsl_dtype dt, lsl_dtype pdt, void *w, uint64_t m, uint64_t in,
                                     const void *b, const void *a, uint64_t r, double s, void *work,
                                     uint64_t *bad);

/* DoRA on the same block: V = w + s * (b @ a); w[i] = round(mag[i] / |V[i]| * V[i]), all in
 * fp64.  mag holds m values of dtype mag_dt; given (or NULL) replaces the sums of squares of the
 * rows it names (by row of the block).  A zero norm or a non-finite result gives
 * LSL_ERR_NONFINITE with *bad set. */
lsl_status lsl_i_merge_rows_dora_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                     const void *a, uint64_t r, double s, const void *mag,
                                     lsl_dtype mag_dt, const lsl_i_row_norms *given, void *work,
                                     uint64_t *bad);
/* One row's sum of squares of V = w + s * (b @ a) over columns [c0, c1) (w: in elements, b: r
 * doubles); work holds in doubles. */
lsl_status lsl_i_dora_rowsq_cpu(lsl_dtype dt, const void *w, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, uint64_t c0, uint64_t c1,
                                double *work, double *out);

#endif
