/* CRC-32C through ISA-L (vectorised, well kept); the combine step, which ISA-L lacks, is zlib's
 * GF(2) matrix method with the Castagnoli polynomial. */
#include "lsl_crc32c.h"

#include <string.h>

#include <isa-l/crc.h>

uint32_t lsl_crc32c_extend(uint32_t crc, const void *buf, uint64_t len)
{
    const unsigned char *p = buf;
    uint32_t state = ~crc;
    /* ISA-L takes an int length. */
    while (len > 0) {
        int n = len > (1u << 30) ? (1 << 30) : (int)len;
        state = crc32_iscsi((unsigned char *)p, n, state);
        p += n;
        len -= (uint64_t)n;
    }
    return ~state;
}

#define POLY_REFLECTED 0x82F63B78u

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        sq[n] = gf2_times(mat, mat[n]);
}

void lsl_crc32c_zeros_op(uint64_t len, uint32_t op[32])
{
    uint32_t cur[32], tmp[32];
    for (int n = 0; n < 32; n++)
        op[n] = (uint32_t)1 << n;
    tmp[0] = POLY_REFLECTED; /* one zero bit, squared three times: one zero byte */
    for (int n = 1; n < 32; n++)
        tmp[n] = (uint32_t)1 << (n - 1);
    gf2_square(cur, tmp);
    gf2_square(tmp, cur);
    gf2_square(cur, tmp);
    /* Powers of one operator commute: multiply in the squares for the bits of len. */
    for (; len; len >>= 1) {
        if (len & 1) {
            for (int n = 0; n < 32; n++)
                tmp[n] = gf2_times(cur, op[n]);
            memcpy(op, tmp, sizeof tmp);
        }
        if (len > 1) {
            gf2_square(tmp, cur);
            memcpy(cur, tmp, sizeof tmp);
        }
    }
}

uint32_t lsl_crc32c_apply(const uint32_t op[32], uint32_t crc)
{
    return gf2_times(op, crc);
}

uint32_t lsl_crc32c_extend_zeros_op(const uint32_t op[32], uint32_t crc)
{
    /* the operator acts on the register, which the finished CRC holds inverted */
    return ~gf2_times(op, ~crc);
}

uint32_t lsl_crc32c_extend_zeros(uint32_t crc, uint64_t len)
{
    uint32_t op[32];
    if (!len)
        return crc;
    lsl_crc32c_zeros_op(len, op);
    return lsl_crc32c_extend_zeros_op(op, crc);
}

uint32_t lsl_crc32c_xor_fold(uint32_t xor_of_masked, uint64_t k, uint64_t len)
{
    return k % 2 ? xor_of_masked : xor_of_masked ^ lsl_crc32c_extend_zeros(0, len);
}

uint32_t lsl_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    uint32_t even[32], odd[32];
    if (len_b == 0)
        return crc_a;
    odd[0] = POLY_REFLECTED; /* the operator for one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = (uint32_t)1 << (n - 1);
    gf2_square(even, odd); /* two zero bits */
    gf2_square(odd, even); /* four zero bits */
    /* Apply len_b zero bytes to crc_a, squaring the operator for each bit of the length. */
    do {
        gf2_square(even, odd);
        if (len_b & 1)
            crc_a = gf2_times(even, crc_a);
        len_b >>= 1;
        if (!len_b)
            break;
        gf2_square(odd, even);
        if (len_b & 1)
            crc_a = gf2_times(odd, crc_a);
        len_b >>= 1;
    } while (len_b);
    return crc_a ^ crc_b;
}
