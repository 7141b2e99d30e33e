/* The safetensors reader against the golden vectors of the Rust crate and the malformed-input
 * cases of reference/formats.md 4.3 (S1-S31). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lsl_safetensors.h"

/* A file image: u64le(len(header)) + header + `data` zero bytes (+ extra). */
static unsigned char *image(const char *header, uint64_t hlen, uint64_t data, uint64_t *len)
{
    *len = 8 + hlen + data;
    unsigned char *b = calloc(1, *len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    return b;
}

static lsl_status parse_str(const char *header, uint64_t data, lsl_st_file *f)
{
    uint64_t len;
    unsigned char *b = image(header, strlen(header), data, &len);
    lsl_status st = lsl_st_parse("t.safetensors", b, len, len, f);
    free(b);
    return st;
}

static void expect_reject(const char *header, uint64_t data, const char *needle)
{
    lsl_st_file f;
    lsl_status st = parse_str(header, data, &f);
    if (st != LSL_ERR_FORMAT || !strstr(lsl_last_error(), needle))
        fail_msg("header %s: got %s \"%s\", expected LSL_ERR_FORMAT mentioning \"%s\"", header,
                 lsl_status_name(st), lsl_last_error(), needle);
    assert_true(strstr(lsl_last_error(), "t.safetensors") != NULL); /* names the file */
}

static void test_empty_golden(void **s)
{
    (void)s;
    /* test_empty: {} + 6 spaces, N = 8 */
    static const unsigned char b[] = {8,   0,   0,   0,   0,   0,   0,   0,
                                      '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    lsl_st_file f;
    assert_int_equal(lsl_st_parse("e", b, sizeof b, sizeof b, &f), LSL_OK);
    assert_int_equal(f.ntensors, 0);
    assert_int_equal(f.data_start, 16);
    lsl_st_free(&f);
}

static void test_serialization_golden(void **s)
{
    (void)s;
    const char *h = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    assert_int_equal(strlen(h), 64);
    lsl_st_file f;
    assert_int_equal(parse_str(h, 24, &f), LSL_OK);
    assert_int_equal(f.ntensors, 1);
    assert_string_equal(f.tensors[0].name, "attn.0");
    assert_int_equal(f.tensors[0].dtype, LSL_F32);
    assert_int_equal(f.tensors[0].ndim, 3);
    assert_int_equal(f.tensors[0].shape[2], 3);
    assert_int_equal(f.data_start, 72);
    lsl_st_free(&f);
}

static void test_valid_variants(void **s)
{
    (void)s;
    lsl_st_file f;
    /* S31 leading whitespace, S30 unknown field ignored, metadata, scalar and empty tensors. */
    assert_int_equal(
        parse_str("\t\n {\"__metadata__\":{\"format\":\"pt\"},"
                  "\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,2],\"foo\":1},"
                  "\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[2,2]},"
                  "\"z2\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[2,2]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[2,5]}}   ",
                  5, &f),
        LSL_OK);
    assert_int_equal(f.ntensors, 4);
    assert_string_equal(f.format, "pt");
    assert_int_equal(f.tensors[0].begin, 0);
    assert_int_equal(lsl_st_find(&f, "b") >= 0, 1);
    lsl_st_free(&f);
    assert_int_equal(parse_str("{\"__metadata__\":null}", 0, &f), LSL_OK);
    lsl_st_free(&f);
}

static void test_length_rules(void **s)
{
    (void)s;
    lsl_st_file f;
    unsigned char b[16] = {0};
    /* S1: shorter than 8 bytes */
    assert_int_equal(lsl_st_parse("t.safetensors", b, 0, 0, &f), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "shorter than the 8-byte"));
    assert_int_equal(lsl_st_parse("t.safetensors", b, 7, 7, &f), LSL_ERR_FORMAT);
    /* S2: N > 100,000,000 */
    uint64_t n = 100000001;
    memcpy(b, &n, 8);
    assert_int_equal(lsl_st_parse("t.safetensors", b, 16, 16, &f), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "exceeds the safetensors limit"));
    /* S3: N = 2^64 - 1 */
    memset(b, 0xFF, 8);
    assert_int_equal(lsl_st_parse("t.safetensors", b, 16, 16, &f), LSL_ERR_FORMAT);
    /* S4: 8 + N > file size */
    n = 60;
    memcpy(b, &n, 8);
    assert_int_equal(lsl_st_parse("t.safetensors", b, 16, 16, &f), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "runs past the end"));
}

static void test_encoding_rules(void **s)
{
    (void)s;
    lsl_st_file f;
    uint64_t len;
    unsigned char *b = image("{\"a\xff\":1}", 8, 0, &len); /* S5 */
    assert_int_equal(lsl_st_parse("t.safetensors", b, len, len, &f), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "UTF-8"));
    free(b);
    b = image("\xef\xbb\xbf{}", 5, 0, &len); /* S9 BOM */
    assert_int_equal(lsl_st_parse("t.safetensors", b, len, len, &f), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "byte-order mark"));
    free(b);
    b = image("{}\0\0", 4, 0, &len); /* S8 NUL padding */
    assert_int_equal(lsl_st_parse("t.safetensors", b, len, len, &f), LSL_ERR_FORMAT);
    assert_non_null(strstr(lsl_last_error(), "NUL"));
    free(b);
    b = image("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 61, 0,
              &len); /* S29 NUL in a name */
    assert_int_equal(lsl_st_parse("t.safetensors", b, len, len, &f), LSL_ERR_FORMAT);
    free(b);
}

static void test_json_rules(void **s)
{
    (void)s;
    expect_reject("", 0, "invalid JSON");       /* S6 N = 0 */
    expect_reject("{", 0, "invalid JSON");      /* S6 */
    expect_reject("[]", 0, "not an object");    /* S7 */
    expect_reject("\"x\"", 0, "not an object"); /* S7 */
    expect_reject("{} x", 0, "invalid JSON");   /* S8 trailing */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                  2, "duplicate"); /* S10 */
    expect_reject(
        "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
        "duplicate"); /* S11 */
    expect_reject("{\"a\":{\"dtype\":\"bf16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
                  "unknown dtype \"bf16\""); /* S12 */
    expect_reject("{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16,
                  "unknown dtype"); /* S12 */
    expect_reject("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "missing field `dtype`");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "missing field `shape`");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "missing field `data_offsets`");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1,
                  "array of 2"); /* S14 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":5}}", 1, "array of 2");
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
                  "negative"); /* S15 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 2,
                  "fractional"); /* S15 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1e3],\"data_offsets\":[0,1000]}}", 1000,
                  "fractional"); /* S15 */
    expect_reject(
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616],\"data_offsets\":[0,1]}}", 1,
        "invalid JSON");                                              /* S15 > 2^64-1 */
    expect_reject("{\"__metadata__\":{\"n\":0}}", 0, "not a string"); /* S16 */
    expect_reject("{\"__metadata__\":[]}", 0, "not an object");       /* S16 */
    expect_reject("{\"__metadata__\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  "not a string"); /* S17 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":\"\x01\"}}",
                  1, "invalid JSON"); /* S28 control char */
    expect_reject("{\"a\\ud800\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                  "invalid JSON"); /* S28 lone surrogate */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                  1, "dimensions");
}

static void test_deep_unknown_field(void **s)
{
    (void)s;
    char h[600];
    char deep[400] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    snprintf(h, sizeof h,
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":%s}}", deep);
    expect_reject(h, 1, "nests deeper"); /* S27 */
}

static void test_offset_rules(void **s)
{
    (void)s;
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                  "invalid offset for tensor `a`"); /* S18 first not at 0 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
                  3, "invalid offset"); /* S18 hole */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                  2, "invalid offset"); /* S19 overlap (test_json_attack) */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[3,1]}}", 0,
                  "invalid offset"); /* S20 */
    expect_reject("{\"a\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,4]}}", 4,
                  "needs 16 bytes"); /* S21 test_invalid_info */
    expect_reject(
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[2,9223372036854775807],\"data_offsets\":[0,1]}}", 1,
        "overflow"); /* S22 */
    expect_reject(
        "{\"a\":{\"dtype\":\"I32\",\"shape\":[2,4611686018427387904],\"data_offsets\":[0,1]}}", 1,
        "overflow"); /* S23 */
    expect_reject("{\"a\":{\"dtype\":\"F4\",\"shape\":[1,3],\"data_offsets\":[0,1]}}", 1,
                  "whole number of bytes"); /* S24 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 2,
                  "truncated"); /* S25 */
    expect_reject("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 9,
                  "trailing bytes"); /* S26 polyglot */
}

static void test_open_missing(void **s)
{
    (void)s;
    lsl_st_file f;
    assert_int_equal(lsl_st_open("/nonexistent/x.safetensors", &f), LSL_ERR_NOT_FOUND);
    assert_non_null(strstr(lsl_last_error(), "/nonexistent/x.safetensors"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_golden),       cmocka_unit_test(test_serialization_golden),
        cmocka_unit_test(test_valid_variants),     cmocka_unit_test(test_length_rules),
        cmocka_unit_test(test_encoding_rules),     cmocka_unit_test(test_json_rules),
        cmocka_unit_test(test_deep_unknown_field), cmocka_unit_test(test_offset_rules),
        cmocka_unit_test(test_open_missing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
