#include "lsl_merge.h"

#include "lsl_numeric.h"

#include <cblas.h>
#include <math.h>

static double to_double(lsl_dtype dt, const void *src, uint64_t i)
{
    if (dt == LSL_BF16)
        return lsl_bf16_to_f32(((const uint16_t *)src)[i]);
    if (dt == LSL_F16)
        return lsl_f16_to_f32(((const uint16_t *)src)[i]);
    return ((const float *)src)[i];
}

void lsl_i_to_acc(lsl_dtype out, lsl_dtype dt, const void *src, uint64_t n, void *dst)
{
    if (lsl_i_acc_size(out) == 8) {
        double *d = dst;
        for (uint64_t i = 0; i < n; i++)
            d[i] = to_double(dt, src, i);
    } else {
        float *d = dst;
        for (uint64_t i = 0; i < n; i++)
            d[i] = (float)to_double(dt, src, i);
    }
}

lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, void *work, uint64_t *bad)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    /* OpenBLAS takes int dimensions; a single row wider than INT_MAX is not a LoRA target. */
    if (m > INT32_MAX || in > INT32_MAX || r > INT32_MAX)
        return lsl_i_fail(LSL_ERR_SHAPE, "merge block %llu x %llu x %llu exceeds BLAS limits",
                          (unsigned long long)m, (unsigned long long)in, (unsigned long long)r);
    uint64_t n = m * in, first_bad = UINT64_MAX;
    if (dt == LSL_F32) {
        double *d = work;
        float *x = w;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)in, (int)r, 1.0, b,
                    (int)r, a, (int)in, 0.0, d, (int)in);
        for (uint64_t i = 0; i < n; i++) {
            x[i] = (float)fma(s, d[i], (double)x[i]);
            if (!isfinite(x[i]) && first_bad == UINT64_MAX)
                first_bad = i;
        }
    } else {
        float *d = work, sf = (float)s;
        uint16_t *x = w;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)in, (int)r, 1.0f, b,
                    (int)r, a, (int)in, 0.0f, d, (int)in);
        if (dt == LSL_BF16) {
            for (uint64_t i = 0; i < n; i++) {
                x[i] = lsl_f32_to_bf16(fmaf(sf, d[i], lsl_bf16_to_f32(x[i])));
                if ((x[i] & 0x7F80u) == 0x7F80u && first_bad == UINT64_MAX)
                    first_bad = i;
            }
        } else {
            for (uint64_t i = 0; i < n; i++) {
                x[i] = lsl_f32_to_f16(fmaf(sf, d[i], lsl_f16_to_f32(x[i])));
                if ((x[i] & 0x7C00u) == 0x7C00u && first_bad == UINT64_MAX)
                    first_bad = i;
            }
        }
    }
    if (first_bad != UINT64_MAX) {
        *bad = first_bad;
        return LSL_ERR_NONFINITE;
    }
    return LSL_OK;
}
