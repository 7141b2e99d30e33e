#include "lsl_merge.h"

#include "lsl_numeric.h"

#include <cblas.h>
#include <math.h>

void lsl_i_to_f32(lsl_dtype dt, const void *src, uint64_t n, float *dst)
{
    const uint16_t *h = src;
    switch (dt) {
    case LSL_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = lsl_bf16_to_f32(h[i]);
        break;
    case LSL_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = lsl_f16_to_f32(h[i]);
        break;
    default: memcpy(dst, src, n * sizeof(float)); break;
    }
}

lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const float *b,
                                const float *a, uint64_t r, float s, float *work, uint64_t *bad)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    /* OpenBLAS takes int dimensions; a single row wider than INT_MAX is not a LoRA target. */
    if (m > INT32_MAX || in > INT32_MAX || r > INT32_MAX)
        return lsl_i_fail(LSL_ERR_SHAPE, "merge block %llu x %llu x %llu exceeds BLAS limits",
                          (unsigned long long)m, (unsigned long long)in, (unsigned long long)r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)in, (int)r, 1.0f, b, (int)r,
                a, (int)in, 0.0f, work, (int)in);
    uint64_t n = m * in, first_bad = UINT64_MAX;
    if (dt == LSL_F32) {
        float *x = w;
        for (uint64_t i = 0; i < n; i++) {
            x[i] = fmaf(s, work[i], x[i]);
            if (!isfinite(x[i]) && first_bad == UINT64_MAX)
                first_bad = i;
        }
    } else if (dt == LSL_BF16) {
        uint16_t *x = w;
        for (uint64_t i = 0; i < n; i++) {
            float v = fmaf(s, work[i], lsl_bf16_to_f32(x[i]));
            x[i] = lsl_f32_to_bf16(v);
            if ((x[i] & 0x7F80u) == 0x7F80u && first_bad == UINT64_MAX)
                first_bad = i;
        }
    } else {
        uint16_t *x = w;
        for (uint64_t i = 0; i < n; i++) {
            float v = fmaf(s, work[i], lsl_f16_to_f32(x[i]));
            x[i] = lsl_f32_to_f16(v);
            if ((x[i] & 0x7C00u) == 0x7C00u && first_bad == UINT64_MAX)
                first_bad = i;
        }
    }
    if (first_bad != UINT64_MAX) {
        *bad = first_bad;
        return LSL_ERR_NONFINITE;
    }
    return LSL_OK;
}
