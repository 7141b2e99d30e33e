/* Conversions between fp32 and the 16-bit float formats, round-to-nearest-even, shared by the
 * CPU merge and the CUDA kernels (hence the host/device qualifier). */
#ifndef LSL_NUMERIC_H
#define LSL_NUMERIC_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define LSL_HD __host__ __device__ __forceinline__
#else
#define LSL_HD static inline
#endif

LSL_HD uint32_t lsl_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

LSL_HD float lsl_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

LSL_HD float lsl_bf16_to_f32(uint16_t h)
{
    return lsl_bits_f32((uint32_t)h << 16);
}

/* PyTorch's round_to_nearest_even (c10/util/BFloat16.h): NaN becomes the canonical 0x7FC0. */
LSL_HD uint16_t lsl_f32_to_bf16(float f)
{
    uint32_t u = lsl_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

LSL_HD float lsl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1Fu) /* inf / nan */
        return lsl_bits_f32(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return lsl_bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return lsl_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* IEEE binary16 with round-to-nearest-even, subnormals and overflow to infinity. */
LSL_HD uint16_t lsl_f32_to_f16(float f)
{
    uint32_t u = lsl_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u)
        return (uint16_t)(sign | 0x7E00u); /* quiet NaN */
    if (a >= 0x477FF000u)                  /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7C00u);
    if (a < 0x38800000u) {   /* below 2^-14: subnormal or zero */
        if (a < 0x33000000u) /* below 2^-25: rounds to zero (2^-25 exactly ties to even 0) */
            return sign;
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a + 0xFFFu + ((a >> 13) & 1u); /* RNE on the 13 dropped bits */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

#endif
