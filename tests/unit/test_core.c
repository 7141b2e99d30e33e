/* Row partition, bf16/f16 rounding, CRC-32C and its combine, dtype names, the CPU merge, and
 * the adapter-config rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lsl_adapter.h"
/* Each internal header twice: a guard that closes early would redefine its structs here. */
#include "lsl_fs.h"
#include "lsl_h5.h"
#include "lsl_h5.h"
#include "lsl_safetensors.h"
#include "lsl_safetensors.h"
#include "lsl_crc32c.h"
#include "lsl_merge.h"
#include "lsl_numeric.h"
#include "lsl_reader.h"

#include <fcntl.h>
#include <unistd.h>

static void test_partition(void **s)
{
    (void)s;
    uint64_t r0, n;
    /* torch.chunk(10, 4) -> 3,3,3,1 */
    uint64_t expect[4][2] = {{0, 3}, {3, 3}, {6, 3}, {9, 1}};
    for (int k = 0; k < 4; k++) {
        lsl_partition_rows(10, 4, k, &r0, &n);
        assert_int_equal(r0, expect[k][0]);
        assert_int_equal(n, expect[k][1]);
    }
    /* torch.chunk(5, 4) -> 2,2,1 and an empty fourth rank */
    lsl_partition_rows(5, 4, 3, &r0, &n);
    assert_int_equal(n, 0);
    lsl_partition_rows(5, 4, 2, &r0, &n);
    assert_int_equal(r0, 4);
    assert_int_equal(n, 1);
    /* 2 rows over 4 ranks: 1,1,0,0 */
    lsl_partition_rows(2, 4, 2, &r0, &n);
    assert_int_equal(n, 0);
    lsl_partition_rows(0, 3, 0, &r0, &n);
    assert_int_equal(n, 0);
    lsl_partition_rows(7, 0, 0, &r0, &n);
    assert_int_equal(n, 0);
    /* every split tiles the rows exactly */
    for (uint64_t rows = 0; rows < 40; rows++)
        for (int np = 1; np <= 9; np++) {
            uint64_t next = 0;
            for (int k = 0; k < np; k++) {
                lsl_partition_rows(rows, np, k, &r0, &n);
                if (n) {
                    assert_int_equal(r0, next);
                    next += n;
                }
            }
            assert_int_equal(next, rows);
        }
}

static void test_bf16(void **s)
{
    (void)s;
    assert_int_equal(lsl_f32_to_bf16(1.0f), 0x3F80);
    /* ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1 */
    assert_int_equal(lsl_f32_to_bf16(lsl_bits_f32(0x3F808000u)), 0x3F80);
    assert_int_equal(lsl_f32_to_bf16(lsl_bits_f32(0x3F818000u)), 0x3F82);
    assert_int_equal(lsl_f32_to_bf16(lsl_bits_f32(0x3F808001u)), 0x3F81);
    assert_int_equal(lsl_f32_to_bf16(NAN), 0x7FC0);
    assert_int_equal(lsl_f32_to_bf16(INFINITY), 0x7F80);
    assert_int_equal(lsl_f32_to_bf16(3.4e38f), 0x7F80); /* overflow rounds to inf */
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7F80) == 0x7F80 && (h & 0x7F))
            continue; /* NaN payloads canonicalise */
        assert_int_equal(lsl_f32_to_bf16(lsl_bf16_to_f32((uint16_t)h)), h);
    }
}

static void test_f16(void **s)
{
    (void)s;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
            continue;
        assert_int_equal(lsl_f32_to_f16(lsl_f16_to_f32((uint16_t)h)), h);
    }
#if defined(__FLT16_MAX__)
    /* Against the compiler's IEEE conversion on many random floats across the range. */
    uint32_t x = 12345;
    for (int i = 0; i < 2000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f = lsl_bits_f32((x & 0x8FFFFFFFu) | ((x & 1u) << 30)); /* mostly |f| < 2^17 */
        if (isnan(f))
            continue;
        _Float16 h = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &h, 2);
        if (lsl_f32_to_f16(f) != hb)
            fail_msg("f32 %08x -> f16 %04x, compiler says %04x", lsl_f32_bits(f), lsl_f32_to_f16(f),
                     hb);
    }
#endif
    assert_int_equal(lsl_f32_to_f16(65520.0f), 0x7C00);
    assert_int_equal(lsl_f32_to_f16(65519.0f), 0x7BFF);
    assert_int_equal(lsl_f32_to_f16(5.9604645e-08f), 0x0001);
    assert_int_equal(lsl_f32_to_f16(2.9802322e-08f), 0x0000); /* 2^-25 ties to even zero */
}

static void test_crc32c(void **s)
{
    (void)s;
    assert_int_equal(lsl_crc32c_extend(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(lsl_crc32c_extend(0, "", 0), 0);
    unsigned char buf[10000];
    for (int i = 0; i < 10000; i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    uint32_t whole = lsl_crc32c_extend(0, buf, sizeof buf);
    /* Any split into parts, combined in order, gives the CRC of the whole. */
    for (int cut = 0; cut <= 10000; cut += 997) {
        uint32_t a = lsl_crc32c_extend(0, buf, (uint64_t)cut);
        uint32_t b = lsl_crc32c_extend(0, buf + cut, (uint64_t)(10000 - cut));
        assert_int_equal(lsl_crc32c_combine(a, b, (uint64_t)(10000 - cut)), whole);
        assert_int_equal(lsl_crc32c_extend(a, buf + cut, (uint64_t)(10000 - cut)), whole);
    }
    assert_int_equal(lsl_crc32c_combine(0, lsl_crc32c_extend(0, buf, 10), 10),
                     lsl_crc32c_extend(0, buf, 10));
    /* A fixed-length operator (the device path folds 256 KiB blocks with one) combines alike. */
    for (int cut = 0; cut <= 10000; cut += 1249) {
        uint32_t op[32];
        lsl_crc32c_zeros_op((uint64_t)(10000 - cut), op);
        uint32_t a = lsl_crc32c_extend(0, buf, (uint64_t)cut);
        uint32_t b = lsl_crc32c_extend(0, buf + cut, (uint64_t)(10000 - cut));
        assert_int_equal(lsl_crc32c_apply(op, a) ^ b, whole);
    }
    uint32_t op[32], big = 0x12345678u;
    lsl_crc32c_zeros_op((uint64_t)1 << 40, op); /* lengths past 32 bits */
    assert_int_equal(lsl_crc32c_apply(op, big) ^ 0u, lsl_crc32c_combine(big, 0, (uint64_t)1 << 40));
}

/* Column blocks: k writers' pieces interleaved in one range, each writer's CRC taken over the
 * whole range with zeros where the others write (zeros appended by operator), folded by XOR. */
static void test_crc32c_masked(void **s)
{
    (void)s;
    enum { ROWS = 37, COLS = 53 };
    unsigned char buf[ROWS * COLS], zero[ROWS * COLS] = {0};
    for (int i = 0; i < ROWS * COLS; i++)
        buf[i] = (unsigned char)(i * 31 + 7);
    uint32_t whole = lsl_crc32c_extend(0, buf, sizeof buf);
    assert_int_equal(lsl_crc32c_extend_zeros(0, sizeof zero),
                     lsl_crc32c_extend(0, zero, sizeof zero));
    assert_int_equal(lsl_crc32c_extend_zeros(whole, 1000), lsl_crc32c_extend(whole, zero, 1000));
    /* k column cuts, empty blocks included, for k = 1 .. 5 */
    const int cuts[][6] = {
        {0, COLS}, {0, 20, COLS}, {0, 0, 17, COLS}, {0, 1, 2, 40, COLS}, {0, 10, 10, 30, 52, COLS}};
    for (int k = 1; k <= 5; k++) {
        uint32_t fold = 0;
        for (int j = 0; j < k; j++) {
            int c0 = cuts[k - 1][j], nc = cuts[k - 1][j + 1] - c0;
            uint32_t op[32], crc = 0;
            uint64_t end = 0;
            lsl_crc32c_zeros_op((uint64_t)(COLS - nc), op);
            for (int r = 0; r < ROWS && nc; r++) {
                uint64_t at = (uint64_t)r * COLS + (uint64_t)c0;
                crc = r ? lsl_crc32c_extend_zeros_op(op, crc) : lsl_crc32c_extend_zeros(crc, at);
                crc = lsl_crc32c_extend(crc, buf + at, (uint64_t)nc);
                end = at + (uint64_t)nc;
            }
            fold ^= lsl_crc32c_extend_zeros(crc, sizeof buf - end);
        }
        assert_int_equal(lsl_crc32c_xor_fold(fold, (uint64_t)k, sizeof buf), whole);
    }
}

static void test_dtypes(void **s)
{
    (void)s;
    lsl_dtype d;
    assert_int_equal(lsl_dtype_from_name("BF16", &d), LSL_OK);
    assert_int_equal(d, LSL_BF16);
    assert_int_equal(lsl_dtype_from_name("bf16", &d), LSL_ERR_DTYPE);
    assert_int_equal(lsl_dtype_bits(LSL_F8_E4M3), 8);
    assert_int_equal(lsl_dtype_bits(LSL_F4), 4);
    assert_string_equal(lsl_dtype_name(LSL_U64), "U64");
    assert_null(lsl_dtype_name((lsl_dtype)99));
    assert_string_equal(lsl_status_name(LSL_ERR_NOSPACE), "LSL_ERR_NOSPACE");
}

static void test_merge_rows(void **s)
{
    (void)s;
    /* w = [[1, 2], [3, 4]] bf16; b = [[1], [2]]; a = [[0.5, -1]]; s = 2 */
    uint16_t w[4] = {lsl_f32_to_bf16(1), lsl_f32_to_bf16(2), lsl_f32_to_bf16(3),
                     lsl_f32_to_bf16(4)};
    double b[2] = {1, 2}, a[2] = {0.5, -1}, work[4];
    uint64_t bad = 0;
    assert_int_equal(lsl_i_merge_rows_cpu(LSL_BF16, w, 2, 2, b, a, 1, 2.0, work, &bad), LSL_OK);
    float want[4] = {2, 0, 5, 0};
    for (int i = 0; i < 4; i++)
        assert_true(lsl_bf16_to_f32(w[i]) == want[i]);
    /* F32 weights accumulate in double: a cancellation to a tiny value is still exact. */
    float wf[2] = {0.1f, 1};
    double bd[1] = {1}, ad[2] = {-0.1 + 1e-9, 1e39}, wd[2];
    assert_int_equal(lsl_i_merge_rows_cpu(LSL_F32, wf, 1, 2, bd, ad, 1, 1.0, wd, &bad),
                     LSL_ERR_NONFINITE);
    assert_int_equal(bad, 1);
    assert_true(wf[0] == (float)((double)0.1f - 0.1 + 1e-9));
    /* One rounding from the double sum: 1 + 2^-8 + 2^-40 lies just above the bf16 tie between 1
     * and 1 + 2^-7, but rounds to exactly the tie in fp32, and a second round-to-even would give
     * 1.  Round-to-odd keeps the direction; the same below the tie, negated, and for f16. */
    const double e = ldexp(1, -40);
    double one[1] = {1}, d3[3] = {ldexp(1, -8) + e, ldexp(1, -8) - e, -(ldexp(1, -8) + e)}, w3[3];
    uint16_t h3[3] = {lsl_f32_to_bf16(1), lsl_f32_to_bf16(1), lsl_f32_to_bf16(-1)};
    assert_int_equal(lsl_i_merge_rows_cpu(LSL_BF16, h3, 1, 3, one, d3, 1, 1.0, w3, &bad), LSL_OK);
    assert_int_equal(h3[0], 0x3F81);
    assert_int_equal(h3[1], 0x3F80);
    assert_int_equal(h3[2], 0xBF81);
    double d1[1] = {ldexp(1, -11) + e};
    uint16_t f1[1] = {0x3C00}; /* f16 1.0; the tie is at 1 + 2^-11 */
    assert_int_equal(lsl_i_merge_rows_cpu(LSL_F16, f1, 1, 1, one, d1, 1, 1.0, w3, &bad), LSL_OK);
    assert_int_equal(f1[0], 0x3C01);
}

/* The read-ahead thread: reads land, a read past the end reports the file and offset in the
 * joining thread, and a failed caller's join keeps the caller's message. */
static void test_reader(void **s)
{
    (void)s;
    char path[] = "/tmp/lsl-reader-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unsigned char data[1000], got[1000];
    for (int i = 0; i < 1000; i++)
        data[i] = (unsigned char)(i * 7);
    assert_int_equal(write(fd, data, sizeof data), (ssize_t)sizeof data);
    lsl_i_reader *r = NULL;
    assert_int_equal(lsl_i_reader_start(&r), LSL_OK);
    assert_int_equal(lsl_i_reader_join(r, 1), LSL_OK); /* nothing posted */
    lsl_i_reader_post(r, fd, 100, 900, got, path);
    assert_int_equal(lsl_i_reader_join(r, 1), LSL_OK);
    assert_memory_equal(got, data + 100, 900);
    lsl_i_reader_post(r, fd, 990, 20, got, path);
    assert_int_equal(lsl_i_reader_join(r, 1), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "unexpected end of file at offset 1000"));
    assert_non_null(strstr(lsl_last_error(), path));
    lsl_i_fail(LSL_ERR_NOSPACE, "the caller's own failure");
    lsl_i_reader_post(r, -1, 0, 10, got, path);
    assert_int_equal(lsl_i_reader_join(r, 0), LSL_ERR_IO);
    assert_string_equal(lsl_last_error(), "the caller's own failure");
    lsl_i_reader_post(r, fd, 0, 10, got, path); /* stopped with a read in flight */
    lsl_i_reader_stop(&r);
    assert_null(r);
    assert_memory_equal(got, data, 10);
    close(fd);
    unlink(path);
}

static lsl_status cfg(const char *text, lsl_adapter_cfg *c)
{
    return lsl_adapter_cfg_parse("adapter_config.json", text, c);
}

static void expect_refused(const char *text, const char *needle)
{
    lsl_adapter_cfg c;
    lsl_status st = cfg(text, &c);
    if (st == LSL_OK || !strstr(lsl_last_error(), needle))
        fail_msg("%s: got %s \"%s\", expected a refusal mentioning %s", text, lsl_status_name(st),
                 lsl_last_error(), needle);
}

/* target_modules, exclude_modules, layers_to_transform and layers_pattern select modules as
 * PEFT's check_target_module_exists does. */
static void test_adapter_targets(void **s)
{
    (void)s;
    lsl_adapter_cfg c;
    const char *q = "model.layers.0.self_attn.q_proj", *k = "model.layers.0.self_attn.k_proj",
               *q3 = "model.layers.3.self_attn.q_proj";
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":4}", &c), LSL_OK);
    assert_true(lsl_adapter_targets(&c, q) && lsl_adapter_targets(&c, k)); /* no list: all */
    lsl_adapter_cfg_free(&c);
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q_proj\"]}", &c),
                     LSL_OK);
    assert_true(lsl_adapter_targets(&c, q) && !lsl_adapter_targets(&c, k));
    assert_false(lsl_adapter_targets(&c, "model.layers.0.self_attn.xq_proj")); /* suffix by dot */
    lsl_adapter_cfg_free(&c);
    /* a string is a regex matched whole; \\. and \\d are taken */
    assert_int_equal(
        cfg("{\"peft_type\":\"LORA\",\"r\":4,"
            "\"target_modules\":\".*\\\\.layers\\\\.\\\\d\\\\.self_attn\\\\.(q|v)_proj\"}",
            &c),
        LSL_OK);
    assert_true(lsl_adapter_targets(&c, q) && !lsl_adapter_targets(&c, k));
    assert_true(lsl_adapter_targets(&c, q3));
    assert_false(lsl_adapter_targets(&c, "model.layers.10.self_attn.q_proj"));
    lsl_adapter_cfg_free(&c);
    assert_int_equal(
        cfg("{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q_proj\","
            "\"k_proj\"],\"exclude_modules\":[\"k_proj\"],\"layers_to_transform\":[3]}",
            &c),
        LSL_OK);
    assert_true(!lsl_adapter_targets(&c, q) && lsl_adapter_targets(&c, q3));
    assert_false(lsl_adapter_targets(&c, "model.layers.3.self_attn.k_proj"));
    lsl_adapter_cfg_free(&c);
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q_proj\"],"
                         "\"layers_to_transform\":0,\"layers_pattern\":\"layers\"}",
                         &c),
                     LSL_OK);
    assert_true(lsl_adapter_targets(&c, q) && !lsl_adapter_targets(&c, q3));
    assert_false(lsl_adapter_targets(&c, "model.blocks.0.q_proj")); /* no "layers" list */
    lsl_adapter_cfg_free(&c);
    expect_refused("{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":\"(?i)q_proj\"}", "(?...)");
}

static void test_adapter_config(void **s)
{
    (void)s;
    lsl_adapter_cfg c;
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":16,\"lora_alpha\":32,"
                         "\"rank_pattern\":{\"q_proj\":4,\"layers\\\\b1\\\\.mlp\":2},"
                         "\"alpha_pattern\":{\"model.layers.0.self_attn.v_proj\":7}}",
                         &c),
                     LSL_ERR_UNSUPPORTED); /* Python-only escapes (\b) are refused */
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":16,\"lora_alpha\":32,"
                         "\"rank_pattern\":{\"q_proj\":4,\"layers.1.mlp.(up|down)_proj\":2},"
                         "\"alpha_pattern\":{\"model.layers.0.self_attn.v_proj\":7}}",
                         &c),
                     LSL_OK);
    assert_int_equal(lsl_adapter_rank_for(&c, "model.layers.3.self_attn.q_proj"), 4);
    assert_int_equal(lsl_adapter_rank_for(&c, "model.layers.3.self_attn.xq_proj"), 16);
    assert_int_equal(lsl_adapter_rank_for(&c, "model.layers.1.mlp.up_proj"), 2);
    assert_int_equal(lsl_adapter_rank_for(&c, "model.layers.1.mlp.gate_proj"), 16);
    assert_true(lsl_adapter_alpha_for(&c, "model.layers.0.self_attn.v_proj") == 7.0);
    assert_true(lsl_adapter_alpha_for(&c, "model.layers.10.self_attn.v_proj") == 32.0);
    assert_true(lsl_adapter_scaling(&c, 16, 32) == 2.0);
    lsl_adapter_cfg_free(&c);
    assert_int_equal(
        cfg("{\"peft_type\":\"LORA\",\"r\":16,\"lora_alpha\":8,\"use_rslora\":true}", &c), LSL_OK);
    assert_true(lsl_adapter_scaling(&c, 16, 8) == 2.0);
    lsl_adapter_cfg_free(&c);
    /* DoRA, fan_in_fan_out, LoRA biases, trained biases and modules_to_save are merged. */
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":8,\"use_dora\":true,\"fan_in_fan_out\":"
                         "true,\"lora_bias\":true,\"bias\":\"lora_only\",\"modules_to_save\":"
                         "[\"lm_head\"]}",
                         &c),
                     LSL_OK);
    assert_true(c.use_dora && c.fan_in_fan_out && c.lora_bias);
    lsl_adapter_cfg_free(&c);
    expect_refused("{\"peft_type\":\"ADALORA\",\"r\":8}", "ADALORA");
    expect_refused("{\"peft_type\":\"VERA\",\"r\":8}", "VERA");
    expect_refused("{\"r\":8}", "peft_type");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":0}", "positive integer");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":\"x\"}", "lora_alpha");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"target_parameters\":[\"experts\"]}",
                   "target_parameters");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"bias\":\"some\"}", "bias=\"some\"");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"layer_replication\":[[0,2]]}",
                   "layer_replication");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"init_lora_weights\":\"pissa_niter_4\"}",
                   "pissa");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"init_lora_weights\":\"loftq\"}", "loftq");
    expect_refused("{\"peft_type\":\"LORA\",\"r\":8,\"r\":9}", "duplicate");
    /* Options at their off values are fine. */
    assert_int_equal(cfg("{\"peft_type\":\"LORA\",\"r\":8,\"use_dora\":false,\"modules_to_save\":"
                         "null,\"bias\":\"none\",\"target_parameters\":[],\"layer_replication\":"
                         "null,\"init_lora_weights\":\"gaussian\"}",
                         &c),
                     LSL_OK);
    lsl_adapter_cfg_free(&c);
}

/* Lustre layout blobs as the "lustre.lov" xattr returns them: plain v1 and v3, a composite
 * (PFL) layout whose last component stripes the bulk, and blobs cut short or lying. */
static size_t plain(unsigned char *b, uint32_t magic, uint32_t ss, uint16_t sc)
{
    memset(b, 0, 48);
    memcpy(b, &magic, 4);
    memcpy(b + 24, &ss, 4);
    memcpy(b + 28, &sc, 2);
    return magic == 0x0BD30BD0u ? 48 : 32;
}

static size_t pfl(unsigned char *b, int ncomp, const uint64_t *ends, const uint32_t *ss,
                  const uint16_t *sc)
{
    uint32_t magic = 0x0BD60BD0u;
    uint16_t n16 = (uint16_t)ncomp;
    memset(b, 0, 32 + 48 * (size_t)ncomp);
    memcpy(b, &magic, 4);
    memcpy(b + 14, &n16, 2);
    size_t at = 32 + 48 * (size_t)ncomp;
    for (int i = 0; i < ncomp; i++) {
        unsigned char *e = b + 32 + 48 * (size_t)i;
        uint64_t start = i ? ends[i - 1] : 0;
        uint32_t off = (uint32_t)at, len = (uint32_t)plain(b + at, 0x0BD10BD0u, ss[i], sc[i]);
        memcpy(e + 8, &start, 8);
        memcpy(e + 16, &ends[i], 8);
        memcpy(e + 24, &off, 4);
        memcpy(e + 28, &len, 4);
        at += len;
    }
    return at;
}

static void test_lustre_layout(void **s)
{
    (void)s;
    unsigned char b[1024];
    uint64_t size = 0, count = 0;
    size_t n = plain(b, 0x0BD10BD0u, 4u << 20, 8);
    assert_true(lsl_i_lustre_layout(b, n, &size, &count));
    assert_int_equal(size, 4u << 20);
    assert_int_equal(count, 8);
    n = plain(b, 0x0BD30BD0u, 1u << 20, 0xFFFF); /* v3 (a pool), every OST */
    assert_true(lsl_i_lustre_layout(b, n, &size, &count));
    assert_int_equal(size, 1u << 20);
    assert_int_equal(count, 0);
    /* PFL: [0, 64 MiB) one 1 MiB stripe, [64 MiB, 8 GiB) 4 x 4 MiB, [8 GiB, EOF) 16 x 16 MiB */
    const uint64_t ends[3] = {64ull << 20, 8ull << 30, ~0ull};
    const uint32_t ss[3] = {1u << 20, 4u << 20, 16u << 20};
    const uint16_t sc[3] = {1, 4, 16};
    n = pfl(b, 3, ends, ss, sc);
    assert_true(lsl_i_lustre_layout(b, n, &size, &count));
    assert_int_equal(size, 16u << 20);
    assert_int_equal(count, 16);
    /* cut short: the last component's blob is gone, the one before it counts */
    size = count = 0;
    assert_true(lsl_i_lustre_layout(b, n - 16, &size, &count));
    assert_int_equal(size, 4u << 20);
    /* lying: an entry pointing outside the blob, or inside the header */
    uint32_t far = 100000, inside = 8;
    memcpy(b + 32 + 24, &far, 4);
    memcpy(b + 32 + 48 + 24, &inside, 4);
    memcpy(b + 32 + 96 + 24, &far, 4);
    size = count = 7;
    assert_false(lsl_i_lustre_layout(b, n, &size, &count));
    assert_int_equal(size, 7); /* untouched */
    /* not a layout at all, and too short to be one */
    memset(b, 0xAB, 64);
    assert_false(lsl_i_lustre_layout(b, 64, &size, &count));
    assert_false(lsl_i_lustre_layout(b, 3, &size, &count));
    uint16_t many = 0xFFFF; /* a header claiming more entries than it holds */
    n = pfl(b, 1, ends + 2, ss + 2, sc + 2);
    memcpy(b + 14, &many, 2);
    assert_true(lsl_i_lustre_layout(b, n, &size, &count));
    assert_int_equal(size, 16u << 20);
}

/* A process's HDF5 error handler (h5py's, a training job's) is the same after loraslab reads or
 * writes a file, failures included: loraslab silences HDF5's printing only for its own calls. */
static int g_h5_calls;
static herr_t count_errors(hid_t stack, void *data)
{
    (void)stack, (void)data;
    g_h5_calls++;
    return 0;
}

static void test_h5_error_handler_kept(void **s)
{
    (void)s;
    H5Eset_auto2(H5E_DEFAULT, count_errors, &g_h5_calls);
    char path[] = "/tmp/lsl-h5-handler-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not an HDF5 file", 16), 16);
    close(fd);
    lsl_i_h5_file f;
    assert_int_equal(lsl_i_h5_list(path, &f), LSL_ERR_FORMAT); /* quietly */
    assert_int_equal(g_h5_calls, 0);
    H5E_auto2_t fn = NULL;
    void *data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &fn, &data);
    assert_ptr_equal(fn, count_errors);
    assert_ptr_equal(data, &g_h5_calls);
    H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); /* the caller's own failure reaches its handler */
    assert_true(g_h5_calls > 0);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_crc32c_masked),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_merge_rows),
        cmocka_unit_test(test_reader),
        cmocka_unit_test(test_adapter_config),
        cmocka_unit_test(test_adapter_targets),
        cmocka_unit_test(test_lustre_layout),
        cmocka_unit_test(test_h5_error_handler_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
