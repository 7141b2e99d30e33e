/* The I/O plan's policy: the filesystem's rules in one place (lsl_ioplan.h).  Its MPI-IO hints
 * are in lsl_iohints.c, the Lustre layout call in lsl_lustre.c, its printed form in
 * lsl_ioplan_print.c, and the tiler that cuts each put at its pieces in lsl_tiles.c. */
#include "lsl_ioplan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static uint64_t round_up(uint64_t v, uint64_t m)
{
    return m ? ceil_div(v, m) * m : v;
}

/* Aggregation on Lustre: one aggregator per stripe (static-cyclic, Howison 2010; the ROMIO
 * Lustre driver), never more than the ranks, spread over the nodes: cb_config_list "*:k"
 * when the nodes are fewer than the aggregators (one per host is MPI's default).  Collective
 * buffering only pays where the pieces are small: each rank's mean piece of a tensor under four
 * stripes. */
static void lustre_aggregators(const lsl_i_ioplan_in *in, lsl_i_ioplan *p)
{
    uint64_t ranks = in->ranks > 0 ? (uint64_t)in->ranks : 1;
    uint64_t nodes = in->nodes > 0 ? (uint64_t)in->nodes : 1;
    uint64_t stripes = p->stripe_count && p->stripe_count != UINT64_MAX ? p->stripe_count : 1;
    uint64_t mean_piece = in->total_bytes / (in->ntensors ? in->ntensors : 1) / ranks;
    if (ranks == 1 || mean_piece >= 4 * p->stripe_size) {
        p->cb_write = LSL_I_CB_DISABLE;
        return;
    }
    p->cb_write = LSL_I_CB_ENABLE;
    p->cb_nodes = stripes < ranks ? stripes : ranks;
    uint64_t per_node = ceil_div(p->cb_nodes, nodes), rpn = ceil_div(ranks, nodes);
    p->cb_per_node = per_node > 1 ? (per_node < rpn ? per_node : rpn) : 0;
}

static void plan_lustre(const lsl_i_fsinfo *fs, const lsl_i_ioplan_in *in, lsl_i_ioplan *p)
{
    char b1[32];
    p->stripe_size = fs->stripe_size ? fs->stripe_size : (1u << 20);
    p->stripe_count = fs->stripe_count;
    p->layout = LSL_I_LAYOUT_INHERIT;
    if (in->stripe_count || in->stripe_size) {
        p->layout = LSL_I_LAYOUT_USER;
        if (in->stripe_size)
            p->stripe_size = in->stripe_size;
        if (in->stripe_count)
            p->stripe_count = in->stripe_count;
        snprintf(p->why, sizeof p->why, "as asked (--stripe-count/--stripe-size)");
    } else if (fs->dir_layout == LSL_I_LAYOUT_COMPOSITE) {
        snprintf(p->why, sizeof p->why,
                 "the directory's progressive (PFL) layout, kept: someone chose it");
    } else if (fs->dir_layout && fs->stripe_count != 1) {
        snprintf(p->why, sizeof p->why, "the directory's layout, kept: someone chose it");
    } else if (in->total_bytes >= LSL_I_WIDE_FILE) {
        uint64_t want = ceil_div(in->total_bytes, (uint64_t)1 << 30);
        p->layout = LSL_I_LAYOUT_SET;
        p->stripe_count = want < 2 ? 2 : want > LSL_I_MAX_STRIPES ? LSL_I_MAX_STRIPES : want;
        p->stripe_size = LSL_I_SET_STRIPE_SIZE;
        snprintf(p->why, sizeof p->why,
                 "set: the directory's %s stripe is narrow for %s (one stripe per GiB, at most "
                 "%u)",
                 fs->dir_layout ? "single" : "default (single)",
                 lsl_i_fmt_bytes(in->total_bytes, b1, sizeof b1), LSL_I_MAX_STRIPES);
    } else {
        snprintf(p->why, sizeof p->why, "the directory's, kept: %s fits in %s stripe%s",
                 lsl_i_fmt_bytes(in->total_bytes, b1, sizeof b1),
                 fs->stripe_count > 1 ? "its" : "one", fs->stripe_count > 1 ? "s" : "");
    }
    p->alignment = p->stripe_size;
    p->piece = p->stripe_size;
    lustre_aggregators(in, p);
}

void lsl_i_ioplan_make(const lsl_i_fsinfo *fs, const lsl_i_ioplan_in *in, lsl_i_ioplan *p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->fs, sizeof p->fs, "%s", fs->name);
    p->parallel = fs->parallel;
    p->legacy = in->legacy;
    p->ranks = in->ranks;
    p->nodes = in->nodes;
    p->total_bytes = in->total_bytes;
    p->ntensors = in->ntensors;
    p->alignment = fs->alignment;
    p->stripe_size = fs->parallel ? fs->stripe_size : 0;
    p->stripe_count = fs->stripe_count;
    p->layout = strcmp(fs->name, "lustre") == 0 ? LSL_I_LAYOUT_INHERIT : LSL_I_LAYOUT_NONE;
    if (in->legacy) {
        snprintf(p->why, sizeof p->why, "LSL_IOPLAN=off: the directory's, no cuts");
    } else if (strcmp(fs->name, "lustre") == 0) {
        plan_lustre(fs, in, p);
    } else if (strcmp(fs->name, "gpfs") == 0) {
        /* Block-aligned large contiguous pieces: GPFS's own rules (ad_gpfs: file domains on
         * block boundaries; IBM_largeblock_io for big contiguous writes). */
        p->piece = p->stripe_size;
        p->gpfs_largeblock = 1;
        snprintf(p->why, sizeof p->why, "GPFS: block size %llu, no layout to set",
                 (unsigned long long)p->stripe_size);
    } else if (strcmp(fs->name, "nfs") == 0) {
        /* One client's rsize/wsize is typically 1 MiB: pieces cut there keep each RPC whole. */
        p->piece = 1u << 20;
        snprintf(p->why, sizeof p->why, "NFS: no striping; 1 MiB pieces (the usual wsize)");
    } else {
        /* Local: each rank's own contiguous piece written directly measured fastest (the old
         * dev VM's ext4, 4 ranks x 8 datasets of 40 MiB: romio_cb_write disable 1.09 GB/s,
         * automatic 0.86, enable 0.35-0.44; the page cache, not an anchor elsewhere). */
        p->cb_write = LSL_I_CB_DISABLE;
        snprintf(p->why, sizeof p->why, "a local filesystem: no striping");
    }
    if (!in->legacy && p->layout == LSL_I_LAYOUT_NONE && (in->stripe_size || in->stripe_count)) {
        /* Not Lustre: a stripe size still sets alignment and pieces ("as if striped", for
         * traces and for filesystems whose striping statfs cannot see). */
        if (in->stripe_size) {
            p->stripe_size = in->stripe_size;
            p->alignment = in->stripe_size;
            p->piece = in->stripe_size;
        }
        if (in->stripe_count)
            p->stripe_count = in->stripe_count;
        snprintf(p->why, sizeof p->why,
                 "%s is not Lustre: --stripe-size sets alignment and pieces, no layout is set",
                 fs->name);
    }
    if (in->alignment)
        p->alignment = in->alignment;
    p->cb_buffer = LSL_I_CB_BUFFER;
    if (p->stripe_size && (p->parallel || in->stripe_size))
        p->cb_buffer = round_up(p->cb_buffer, p->stripe_size);
}

lsl_status lsl_i_ioplan_check(uint64_t stripe_count, uint64_t stripe_size)
{
    if (stripe_count > LSL_MAX_STRIPE_COUNT && stripe_count != LSL_STRIPE_ALL)
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "stripe count %llu: Lustre stripes a file over 1 to %u OSTs (or all)",
                          (unsigned long long)stripe_count, LSL_MAX_STRIPE_COUNT);
    if (stripe_size % (64u << 10) != 0 || stripe_size > 0xFFFF0000ull)
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "stripe size of %llu bytes: Lustre takes a multiple of 64 KiB up to "
                          "4 GiB - 64 KiB",
                          (unsigned long long)stripe_size);
    return LSL_OK;
}

void lsl_i_ioplan_for_file(const lsl_i_fsinfo *fs, lsl_i_ioplan_in in, int fd, const char *name,
                           lsl_i_ioplan *p)
{
    const char *off = lsl_i_env(LSL_ENV_IOPLAN);
    in.legacy = off && strcmp(off, "off") == 0;
    lsl_i_ioplan_make(fs, &in, p);
    int e = fd >= 0 ? lsl_i_ioplan_apply(p, fd) : 0;
    if (!e)
        return;
    char b[32];
    lsl_i_log(LSL_LOG_WARN,
              "loraslab: warning: %s: Lustre refused the layout %llu x %s (%s); the file keeps "
              "the directory's\n",
              name, (unsigned long long)p->stripe_count,
              lsl_i_fmt_bytes(p->stripe_size, b, sizeof b), strerror(e));
    snprintf(p->why, sizeof p->why, "the directory's: setting one failed (%s)", strerror(e));
    p->layout = LSL_I_LAYOUT_INHERIT;
    p->stripe_size = fs->stripe_size;
    p->stripe_count = fs->stripe_count;
}
