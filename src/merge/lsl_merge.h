/* Merge of a block of rows on the host: W = round(W0 + s * B @ A), one rounding into W's dtype.
 * The accumulator follows the output: fp32 for BF16/F16 weights (PEFT's precision, far finer
 * than their ulp), fp64 for F32 weights, where an fp32 accumulator's error under cancellation
 * (W0 + delta close to 0) would exceed one ulp of the result. */
#ifndef LSL_MERGE_H
#define LSL_MERGE_H

#include "lsl_internal.h"

/* Bytes per accumulator element for an output dtype (4 or 8). */
static inline uint64_t lsl_i_acc_size(lsl_dtype out)
{
    return out == LSL_F32 ? 8 : 4;
}

/* dst[i] = src[i] converted from a float dtype (F32, F16, BF16) to the accumulator type of
 * `out` (float or double). */
void lsl_i_to_acc(lsl_dtype out, lsl_dtype dt, const void *src, uint64_t n, void *dst);

/* In place on w (m rows x in columns of dtype dt: BF16, F16 or F32): w = round(w + s * (b @ a)),
 * b being m x r and a r x in accumulators (lsl_i_to_acc); work holds m * in accumulators.
 * Returns LSL_ERR_NONFINITE with *bad = the first offending element when the result holds NaN
 * or Inf. */
lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, void *work, uint64_t *bad);

#endif
