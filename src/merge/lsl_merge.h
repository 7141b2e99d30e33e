/* Merge of a block of rows on the host: W = round(W0 + s * B @ A), fp32 accumulation, one
 * rounding into W's dtype. */
#ifndef LSL_MERGE_H
#define LSL_MERGE_H

#include "lsl_internal.h"

/* dst[i] = (float)src[i] for a float dtype (F32, F16, BF16). */
void lsl_i_to_f32(lsl_dtype dt, const void *src, uint64_t n, float *dst);

/* In place on w (m rows x in columns of dtype dt, BF16/F16/F32): w = round(w + s * (b @ a)) where
 * b is m x r fp32 and a is r x in fp32.  work holds m * in floats.  Returns LSL_ERR_NONFINITE with
 * *bad set to the first offending element when the result holds NaN or Inf. */
lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const float *b,
                                const float *a, uint64_t r, float s, float *work, uint64_t *bad);

#endif
