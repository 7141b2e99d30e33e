/* Merge of a block of rows on the host: W = round(W0 + s * B @ A), one rounding into W's dtype.
 * The host accumulates in fp64 (dgemm) for every dtype: under cancellation (W0 + delta near 0,
 * terms around 1e-2 and a result around 1e-8) an fp32 accumulator's error exceeds one ulp of the
 * result, for F32 often and for BF16 rarely (the float64 reference check found both).  The GPU
 * path keeps fp32, PEFT's own precision, for speed. */
#ifndef LSL_MERGE_H
#define LSL_MERGE_H

#include "lsl_internal.h"

/* dst[i] = (double)src[i] for a float dtype (F32, F16, BF16). */
void lsl_i_to_f64(lsl_dtype dt, const void *src, uint64_t n, double *dst);

/* In place on w (m rows x in columns of dtype dt: BF16, F16 or F32): w = round(w + s * (b @ a)),
 * b being m x r and a r x in doubles (lsl_i_to_f64); work holds m * in doubles.
 * Returns LSL_ERR_NONFINITE with *bad = the first offending element when the result holds NaN
 * or Inf, LSL_ERR_SHAPE when a dimension exceeds BLAS's int (as do all the merges below). */
lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, void *work, uint64_t *bad);

/* DoRA down the columns, pass 1: adds the squares of V = w + s * (b @ a) (m x in) into
 * colsq[in]; w is not modified.  Pass 2: w = round(factor[j] * V). */
lsl_status lsl_i_dora_colsq_cpu(lsl_dtype dt, const void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, double *work, double *colsq);
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
 * fp64.  mag holds m values of dtype mag_dt.  A zero norm or a non-finite result gives
 * LSL_ERR_NONFINITE with *bad set. */
lsl_status lsl_i_merge_rows_dora_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                     const void *a, uint64_t r, double s, const void *mag,
                                     lsl_dtype mag_dt, void *work, uint64_t *bad);

#endif
