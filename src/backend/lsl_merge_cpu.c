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

void lsl_i_to_f64(lsl_dtype dt, const void *src, uint64_t n, double *dst)
{
    for (uint64_t i = 0; i < n; i++)
        dst[i] = to_double(dt, src, i);
}

/* double -> float with round-to-odd: a following RNE into a format with at least two fewer
 * mantissa bits (bf16, f16) then rounds as if straight from the double, with no double rounding.
 * An inexact result with an even last bit moves one step away from the nearer-to-zero side it
 * was rounded from: +1 on the bit pattern grows the magnitude whatever the sign. */
static inline float round_to_odd(double v)
{
    float f = (float)v;
    uint32_t u = lsl_f32_bits(f);
    /* Branch-free (the parity is a coin toss for the branch predictor): step is 1 when the
     * result is inexact, even and finite. */
    uint32_t step =
        (uint32_t)((double)f != v) & ~u & 1u & (uint32_t)((u & 0x7F800000u) != 0x7F800000u);
    u = fabs(v) > fabs((double)f) ? u + step : u - step;
    return lsl_bits_f32(u);
}

static void store_out(lsl_dtype dt, void *w, uint64_t i, double v)
{
    if (dt == LSL_F32)
        ((float *)w)[i] = (float)v;
    else if (dt == LSL_BF16)
        ((uint16_t *)w)[i] = lsl_f32_to_bf16(round_to_odd(v));
    else
        ((uint16_t *)w)[i] = lsl_f32_to_f16(round_to_odd(v));
}

/* d = b @ a for a block of m rows (b: m x r, a: r x in, fp64, row-major): the delta every CPU
 * merge starts from.  OpenBLAS takes int dimensions; a single row wider than INT_MAX is not a
 * LoRA target. */
static lsl_status block_delta(uint64_t m, uint64_t in, const void *b, const void *a, uint64_t r,
                              double *d)
{
    if (m > INT32_MAX || in > INT32_MAX || r > INT32_MAX)
        return lsl_i_fail(LSL_ERR_SHAPE, "merge block %llu x %llu x %llu exceeds BLAS limits",
                          (unsigned long long)m, (unsigned long long)in, (unsigned long long)r);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)in, (int)r, 1.0, b, (int)r,
                a, (int)in, 0.0, d, (int)in);
    return LSL_OK;
}

lsl_status lsl_i_merge_rows_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, void *work, uint64_t *bad)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    double *d = work;
    lsl_status st = block_delta(m, in, b, a, r, d);
    if (st != LSL_OK)
        return st;
    uint64_t n = m * in;
    /* One loop per dtype: this elementwise pass, not the dgemm, is most of the CPU merge's time,
     * and a per-element dtype switch doubled it. */
    if (dt == LSL_BF16) {
        uint16_t *h = w;
        for (uint64_t i = 0; i < n; i++) {
            h[i] = lsl_f32_to_bf16(round_to_odd(fma(s, d[i], lsl_bf16_to_f32(h[i]))));
            if ((h[i] & 0x7F80u) == 0x7F80u) {
                *bad = i;
                return LSL_ERR_NONFINITE;
            }
        }
    } else if (dt == LSL_F16) {
        uint16_t *h = w;
        for (uint64_t i = 0; i < n; i++) {
            h[i] = lsl_f32_to_f16(round_to_odd(fma(s, d[i], lsl_f16_to_f32(h[i]))));
            if ((h[i] & 0x7C00u) == 0x7C00u) {
                *bad = i;
                return LSL_ERR_NONFINITE;
            }
        }
    } else {
        float *f = w;
        for (uint64_t i = 0; i < n; i++) {
            f[i] = (float)fma(s, d[i], f[i]);
            if (!isfinite(f[i])) {
                *bad = i;
                return LSL_ERR_NONFINITE;
            }
        }
    }
    return LSL_OK;
}

lsl_status lsl_i_merge_rows_dora_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in, const void *b,
                                     const void *a, uint64_t r, double s, const void *mag,
                                     lsl_dtype mag_dt, const lsl_i_row_norms *given, void *work,
                                     uint64_t *bad)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    double *v = work; /* V = W0 + s * delta, kept in place of the delta */
    lsl_status st = block_delta(m, in, b, a, r, v);
    if (st != LSL_OK)
        return st;
    for (uint64_t i = 0; i < m; i++) {
        double norm2 = 0;
        for (uint64_t j = 0; j < in; j++) {
            uint64_t k = i * in + j;
            v[k] = fma(s, v[k], to_double(dt, w, k));
            norm2 += v[k] * v[k];
        }
        for (int q = 0; given && q < given->n; q++) /* a row whose elements span ranks */
            if (given->row[q] == i)
                norm2 = given->norm2[q];
        if (given && given->all) /* a block of columns: every row's whole sum */
            norm2 = given->all[i];
        double factor = to_double(mag_dt, mag, i) / sqrt(norm2);
        for (uint64_t j = 0; j < in; j++) {
            uint64_t k = i * in + j;
            store_out(dt, w, k, factor * v[k]);
            if (!isfinite(to_double(dt, w, k)) || !isfinite(factor)) {
                *bad = k;
                return LSL_ERR_NONFINITE;
            }
        }
    }
    return LSL_OK;
}

lsl_status lsl_i_dora_rowsq_cpu(lsl_dtype dt, const void *w, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, uint64_t c0, uint64_t c1,
                                double *work, double *out)
{
    *out = 0;
    if (in == 0)
        return LSL_OK;
    lsl_status st = block_delta(1, in, b, a, r, work);
    for (uint64_t j = c0; st == LSL_OK && j < c1 && j < in; j++) {
        double v = fma(s, work[j], to_double(dt, w, j));
        *out += v * v;
    }
    return st;
}

void lsl_i_round_to_dtype(lsl_dtype dt, double *x, uint64_t n)
{
    uint32_t h = 0; /* room for one element of any float dtype */
    for (uint64_t i = 0; i < n; i++) {
        store_out(dt, &h, 0, x[i]);
        x[i] = dt == LSL_F32 ? (double)(float)x[i] : to_double(dt, &h, 0);
    }
}

lsl_status lsl_i_merge_rows_lowp_cpu(lsl_dtype dt, lsl_dtype pdt, void *w, uint64_t m, uint64_t in,
                                     const void *b, const void *a, uint64_t r, double s, void *work,
                                     uint64_t *bad)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    double *d = work;
    lsl_status st = block_delta(m, in, b, a, r, d);
    if (st != LSL_OK)
        return st;
    uint64_t n = m * in;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t h = 0;
        /* product -> pdt; * scaling in fp32 (PyTorch's opmath) -> pdt -> dtype; + W0 in fp32 ->
         * dtype */
        store_out(pdt, &h, 0, d[i]);
        double p = pdt == LSL_F32 ? (double)(float)d[i] : to_double(pdt, &h, 0);
        store_out(pdt, &h, 0, (double)((float)p * (float)s));
        double q = pdt == LSL_F32 ? (double)((float)p * (float)s) : to_double(pdt, &h, 0);
        if (pdt != dt) {
            store_out(dt, &h, 0, q);
            q = dt == LSL_F32 ? (double)(float)q : to_double(dt, &h, 0);
        }
        store_out(dt, w, i, (double)((float)q + (float)to_double(dt, w, i)));
        if (!isfinite(to_double(dt, w, i))) {
            *bad = i;
            return LSL_ERR_NONFINITE;
        }
    }
    return LSL_OK;
}

lsl_status lsl_i_dora_colsq_cpu(lsl_dtype dt, const void *w, uint64_t m, uint64_t in, const void *b,
                                const void *a, uint64_t r, double s, uint64_t k0, uint64_t k1,
                                double *work, double *colsq)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    lsl_status st = block_delta(m, in, b, a, r, work);
    if (st != LSL_OK)
        return st;
    for (uint64_t k = k0, j = k0 % in; k < k1 && k < m * in; k++, j = j + 1 < in ? j + 1 : 0) {
        double v = fma(s, work[k], to_double(dt, w, k));
        colsq[j] += v * v;
    }
    return LSL_OK;
}

lsl_status lsl_i_merge_rows_dora_cols_cpu(lsl_dtype dt, void *w, uint64_t m, uint64_t in,
                                          const void *b, const void *a, uint64_t r, double s,
                                          const double *factor, double *work, uint64_t *bad)
{
    if (m == 0 || in == 0)
        return LSL_OK;
    lsl_status st = block_delta(m, in, b, a, r, work);
    if (st != LSL_OK)
        return st;
    for (uint64_t i = 0; i < m; i++)
        for (uint64_t j = 0; j < in; j++) {
            uint64_t k = i * in + j;
            store_out(dt, w, k, factor[j] * fma(s, work[k], to_double(dt, w, k)));
            if (!isfinite(to_double(dt, w, k))) {
                *bad = k;
                return LSL_ERR_NONFINITE;
            }
        }
    return LSL_OK;
}
