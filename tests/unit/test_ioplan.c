/* The I/O plan (src/io/lsl_ioplan.c) with the detection injected: statfs magics, Lustre layout
 * blobs (v1, PFL), GPFS block sizes, rank and node counts and the user's overrides; and the
 * write-piece tiling against brute force. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lsl_ioplan.h"
#include "lsl_tiles.h"

#define LUSTRE 0x0BD00BD0u
#define GPFS   0x47504653u
#define NFS    0x6969u
#define EXT4   0xEF53u
#define MiB    ((uint64_t)1 << 20)
#define GiB    ((uint64_t)1 << 30)

static size_t v1(unsigned char *b, uint32_t ss, uint16_t sc)
{
    uint32_t magic = 0x0BD10BD0u;
    memset(b, 0, 32);
    memcpy(b, &magic, 4);
    memcpy(b + 24, &ss, 4);
    memcpy(b + 28, &sc, 2);
    return 32;
}

/* A one-component PFL blob whose component is a plain layout of ss x sc. */
static size_t pfl(unsigned char *b, uint32_t ss, uint16_t sc)
{
    uint32_t magic = 0x0BD60BD0u, off = 80, len = 32;
    uint16_t n = 1;
    uint64_t start = 0, end = UINT64_MAX;
    memset(b, 0, 112);
    memcpy(b, &magic, 4);
    memcpy(b + 14, &n, 2);
    memcpy(b + 32 + 8, &start, 8);
    memcpy(b + 32 + 16, &end, 8);
    memcpy(b + 32 + 24, &off, 4);
    memcpy(b + 32 + 28, &len, 4);
    v1(b + 80, ss, sc);
    return 112;
}

static lsl_i_ioplan plan(uint32_t magic, uint64_t blksize, const unsigned char *lov, size_t n,
                         uint64_t total, uint64_t ntensors, int ranks, int nodes, uint64_t count,
                         uint64_t size, uint64_t align)
{
    lsl_i_fsinfo fs = {0};
    lsl_i_fs_classify(magic, blksize, lov, n, &fs);
    lsl_i_ioplan_in in = {total, ntensors, ranks, nodes, count, size, align, 0};
    lsl_i_ioplan p;
    lsl_i_ioplan_make(&fs, &in, &p);
    return p;
}

/* The layout the plan sets, read back through the layout parser. */
static void lov_is(const lsl_i_ioplan *p, uint64_t size, uint64_t count)
{
    unsigned char b[32];
    uint64_t s = 0, c = 0;
    assert_int_equal(lsl_i_ioplan_lov(p, b), 32);
    assert_true(lsl_i_lustre_layout(b, 32, &s, &c));
    assert_int_equal(s, size);
    assert_int_equal(c, count);
}

static void test_lustre_layouts(void **st)
{
    (void)st;
    unsigned char b[128];
    /* the Lustre default (one stripe) and a multi-GiB file: the plan sets one stripe per GiB */
    lsl_i_ioplan p = plan(LUSTRE, 0, b, v1(b, 1 << 20, 1), 8 * GiB, 100, 8, 1, 0, 0, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_SET);
    assert_int_equal(p.stripe_count, 8);
    assert_int_equal(p.stripe_size, 4 * MiB);
    assert_int_equal(p.alignment, 4 * MiB);
    assert_int_equal(p.piece, 4 * MiB);
    lov_is(&p, 4 * MiB, 8);
    /* no xattr at all: the same (the filesystem default is one stripe) */
    p = plan(LUSTRE, 0, NULL, 0, 65 * GiB, 771, 64, 8, 0, 0, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_SET);
    assert_int_equal(p.stripe_count, 64); /* capped */
    /* a small file keeps the default */
    p = plan(LUSTRE, 0, NULL, 0, GiB, 10, 4, 1, 0, 0, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_INHERIT);
    assert_int_equal(p.stripe_size, MiB);
    assert_int_equal(lsl_i_ioplan_lov(&p, b), 0);
    /* a layout chosen on purpose is kept: several stripes, or PFL */
    p = plan(LUSTRE, 0, b, v1(b, 16 << 20, 4), 100 * GiB, 10, 4, 1, 0, 0, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_INHERIT);
    assert_int_equal(p.stripe_size, 16 * MiB);
    assert_int_equal(p.stripe_count, 4);
    assert_int_equal(p.piece, 16 * MiB);
    p = plan(LUSTRE, 0, b, pfl(b, 2 << 20, 1), 100 * GiB, 10, 4, 1, 0, 0, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_INHERIT);
    assert_non_null(strstr(p.why, "PFL"));
    assert_int_equal(p.stripe_size, 2 * MiB);
    /* the user's overrides win over all of it; -1 is every OST */
    p = plan(LUSTRE, 0, b, pfl(b, 2 << 20, 1), 100 * GiB, 10, 4, 1, 16, 8 * MiB, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_USER);
    lov_is(&p, 8 * MiB, 16);
    p = plan(LUSTRE, 0, NULL, 0, GiB, 10, 4, 1, UINT64_MAX, 0, 0);
    lov_is(&p, MiB, 0); /* 0xFFFF: every OST, a count the blob does not say */
    /* --align wins over the stripe */
    p = plan(LUSTRE, 0, NULL, 0, GiB, 10, 4, 1, 0, 0, 64 << 10);
    assert_int_equal(p.alignment, 64 << 10);
    assert_int_equal(p.piece, MiB);
}

static void test_aggregators(void **st)
{
    (void)st;
    unsigned char b[32];
    size_t n = v1(b, 1 << 20, 16);
    /* 64 ranks on 8 nodes, 1 MiB pieces, 16 stripes: 16 aggregators, 2 per node */
    lsl_i_ioplan p = plan(LUSTRE, 0, b, n, GiB, 16, 64, 8, 0, 0, 0);
    assert_int_equal(p.cb_write, LSL_I_CB_ENABLE);
    assert_int_equal(p.cb_nodes, 16);
    assert_int_equal(p.cb_per_node, 2);
    /* one node per rank: one aggregator per host is MPI's default already */
    p = plan(LUSTRE, 0, b, n, GiB, 16, 64, 64, 0, 0, 0);
    assert_int_equal(p.cb_nodes, 16);
    assert_int_equal(p.cb_per_node, 0);
    /* never more aggregators than ranks, nor per node than ranks there */
    p = plan(LUSTRE, 0, b, n, 64 * MiB, 16, 8, 1, 0, 0, 0);
    assert_int_equal(p.cb_nodes, 8);
    assert_int_equal(p.cb_per_node, 8);
    /* large pieces (64 MiB per rank per tensor): each rank writes its own */
    p = plan(LUSTRE, 0, b, n, GiB, 4, 4, 1, 0, 0, 0);
    assert_int_equal(p.cb_write, LSL_I_CB_DISABLE);
    assert_int_equal(p.cb_nodes, 0);
    /* the buffer is a multiple of the stripe */
    p = plan(LUSTRE, 0, b, v1(b, 3 << 20, 2), GiB, 4, 4, 1, 0, 0, 0);
    assert_int_equal(p.cb_buffer, 9 * MiB);
}

static void test_other_filesystems(void **st)
{
    (void)st;
    lsl_i_ioplan p = plan(GPFS, 16 * MiB, NULL, 0, 8 * GiB, 10, 4, 1, 0, 0, 0);
    assert_string_equal(p.fs, "gpfs");
    assert_int_equal(p.layout, LSL_I_LAYOUT_NONE);
    assert_int_equal(p.alignment, 16 * MiB);
    assert_int_equal(p.piece, 16 * MiB);
    assert_true(p.gpfs_largeblock);
    assert_int_equal(p.cb_buffer, 16 * MiB);
    p = plan(NFS, 4096, NULL, 0, 8 * GiB, 10, 4, 1, 0, 0, 0);
    assert_int_equal(p.alignment, MiB);
    assert_int_equal(p.piece, MiB);
    assert_int_equal(p.cb_write, LSL_I_CB_AUTO);
    p = plan(EXT4, 4096, NULL, 0, 8 * GiB, 10, 4, 1, 0, 0, 0);
    assert_int_equal(p.alignment, 64 << 10);
    assert_int_equal(p.piece, 0);
    assert_int_equal(p.cb_write, LSL_I_CB_DISABLE);
    assert_int_equal(lsl_i_ioplan_lov(&p, (unsigned char[32]){0}), 0);
    /* --stripe-size off Lustre: alignment and pieces as if striped, no layout */
    p = plan(EXT4, 4096, NULL, 0, 8 * GiB, 10, 4, 1, 4, 4 * MiB, 0);
    assert_int_equal(p.layout, LSL_I_LAYOUT_NONE);
    assert_int_equal(p.alignment, 4 * MiB);
    assert_int_equal(p.piece, 4 * MiB);
    assert_int_equal(p.cb_buffer, 8 * MiB);
    assert_non_null(strstr(p.why, "not Lustre"));
    /* LSL_IOPLAN=off: the directory's and MPI's choices, nothing cut */
    lsl_i_fsinfo fs = {0};
    lsl_i_fs_classify(LUSTRE, 0, NULL, 0, &fs);
    lsl_i_ioplan_in in = {65 * GiB, 771, 64, 8, 0, 0, 0, 1};
    lsl_i_ioplan_make(&fs, &in, &p);
    assert_int_equal(p.layout, LSL_I_LAYOUT_INHERIT);
    assert_int_equal(p.piece, 0);
    assert_int_equal(p.cb_write, LSL_I_CB_AUTO);
    assert_int_equal(p.alignment, MiB);
    char text[1024];
    lsl_i_ioplan_describe(&p, text, sizeof text);
    assert_non_null(strstr(text, "plan: lustre, 64 ranks on 8 nodes"));
}

static uint64_t rnd(uint64_t *s, uint64_t n)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return n ? *s % n : 0;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b, b = t;
    }
    return a;
}

/* Random parts: the chunks tile the units, respect the caps, and every boundary is a piece
 * multiple in the file exactly when such boundaries exist within `full` units. */
static void test_tiles(void **st)
{
    (void)st;
    uint64_t s = 88172645463325252ull;
    const uint64_t pieces[] = {0, 1 << 16, 1 << 20, 3 << 20, 4 << 20, 16 << 20};
    const uint64_t ubytes[] = {1, 2, 10240, 7168, 3 * 1001, 1 << 20, 5 << 20};
    for (int it = 0; it < 20000; it++) {
        uint64_t piece = pieces[rnd(&s, 6)], ub = ubytes[rnd(&s, 7)];
        uint64_t units = rnd(&s, 5) == 0 ? 0 : 1 + rnd(&s, ub == 1 ? 1u << 26 : 20000);
        uint64_t full = 1 + rnd(&s, ub == 1 ? 1u << 25 : 4000);
        uint64_t head = rnd(&s, 2) ? full : 1 + rnd(&s, full);
        uint64_t origin = rnd(&s, 2) ? rnd(&s, 1ull << 34) : (rnd(&s, 1 << 14) << 20);
        lsl_i_tiles t;
        lsl_i_tiles_make(units, ub, origin, piece, head, full, &t);
        uint64_t at = 0;
        for (uint64_t c = 0; c < t.n; c++) {
            uint64_t f = lsl_i_tile_first(&t, c), k = lsl_i_tile_count(&t, c);
            assert_int_equal(f, at);
            /* head is a target the alignment may move up to the first aligned boundary */
            assert_true(k >= 1 && k <= (c == 0 && !t.aligned ? head : full));
            at += k;
            if (t.aligned && at < units)
                assert_int_equal((origin + at * ub) % piece, 0);
        }
        assert_int_equal(at, units);
        if (piece && units) {
            uint64_t g = gcd(ub, piece), gap = (piece - origin % piece) % piece;
            assert_int_equal(t.aligned, gap % g == 0 && piece / g <= full);
        } else {
            assert_false(t.aligned);
            uint64_t n = units == 0 ? 0 : units <= head ? 1 : 1 + (units - head + full - 1) / full;
            assert_int_equal(t.n, n); /* as before the plan */
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lustre_layouts),
        cmocka_unit_test(test_aggregators),
        cmocka_unit_test(test_other_filesystems),
        cmocka_unit_test(test_tiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
