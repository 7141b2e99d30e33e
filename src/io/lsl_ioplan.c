/* The I/O plan: the filesystem's rules in one place (lsl_ioplan.h). */
#include "lsl_ioplan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/xattr.h>

#define LOV_USER_MAGIC_V1    0x0BD10BD0u
#define LL_IOC_LOV_SETSTRIPE _IOW('f', 154, long)

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

lsl_status lsl_i_ioplan_hints(const lsl_i_ioplan *p, const char *extra, MPI_Info *out)
{
    char v[32];
    MPI_Info info;
    if (MPI_Info_create(&info) != MPI_SUCCESS)
        return lsl_i_fail(LSL_ERR_MPI, "MPI_Info_create failed");
    /* Our writes never interleave, so data sieving would only add fcntl locks (which fail on
     * Lustre mounted without flock) and read-modify-write traffic. */
    MPI_Info_set(info, "romio_ds_write", "disable");
    MPI_Info_set(info, "romio_ds_read", "disable");
    /* striping_unit also aligns ROMIO's collective file domains, on any driver */
    if (p->stripe_size && (p->parallel || !p->legacy)) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)p->stripe_size);
        MPI_Info_set(info, "striping_unit", v);
    }
    if (p->stripe_count && p->stripe_count != UINT64_MAX && p->layout >= LSL_I_LAYOUT_SET) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)p->stripe_count);
        MPI_Info_set(info, "striping_factor", v);
    }
    /* The two-phase buffer is host memory outside the staging budget on every aggregator:
     * OMPIO (Open MPI's default MPI-IO) takes 32 MiB unless told, which put 4 ranks sharing a
     * node 15 MiB over the budget + 64 MiB; 8 MiB measured as fast.  A multiple of the stripe
     * size: ROMIO's Lustre driver aggregates whole stripes. */
    snprintf(v, sizeof v, "%llu", (unsigned long long)p->cb_buffer);
    MPI_Info_set(info, "cb_buffer_size", v);
    if (p->cb_write != LSL_I_CB_AUTO)
        MPI_Info_set(info, "romio_cb_write", p->cb_write == LSL_I_CB_ENABLE ? "enable" : "disable");
    if (p->cb_nodes) {
        snprintf(v, sizeof v, "%llu", (unsigned long long)p->cb_nodes);
        MPI_Info_set(info, "cb_nodes", v);
    }
    if (p->cb_per_node) { /* cb_nodes alone is capped at one aggregator per host */
        snprintf(v, sizeof v, "*:%llu", (unsigned long long)p->cb_per_node);
        MPI_Info_set(info, "cb_config_list", v);
    }
    if (p->gpfs_largeblock)
        MPI_Info_set(info, "IBM_largeblock_io", "true");
    if (extra && *extra) {
        char *copy = lsl_i_strdup(extra), *save = NULL;
        if (!copy) {
            MPI_Info_free(&info);
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        }
        for (char *kv = strtok_r(copy, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
            char *eq = strchr(kv, '=');
            if (!eq || eq == kv) {
                free(copy);
                MPI_Info_free(&info);
                return lsl_i_fail(LSL_ERR_INVALID_ARG, "LSL_MPIIO_HINTS: \"%s\" is not key=value",
                                  kv);
            }
            *eq = '\0';
            MPI_Info_set(info, kv, eq + 1);
        }
        free(copy);
    }
    *out = info;
    return LSL_OK;
}

size_t lsl_i_ioplan_lov(const lsl_i_ioplan *p, unsigned char buf[32])
{
    if (p->layout != LSL_I_LAYOUT_SET && p->layout != LSL_I_LAYOUT_USER)
        return 0;
    /* lov_user_md_v1, packed: {u32 magic; u32 pattern; u8 oi[16]; u32 stripe_size;
     * u16 stripe_count; u16 stripe_offset}: pattern 0 and offset -1 let Lustre choose. */
    uint32_t magic = LOV_USER_MAGIC_V1, size = (uint32_t)p->stripe_size;
    uint16_t count = p->stripe_count == UINT64_MAX ? 0xFFFF
                     : p->stripe_count > 0xFFFE    ? 0xFFFE
                                                   : (uint16_t)p->stripe_count;
    uint16_t offset = 0xFFFF;
    memset(buf, 0, 32);
    memcpy(buf, &magic, 4);
    memcpy(buf + 24, &size, 4);
    memcpy(buf + 28, &count, 2);
    memcpy(buf + 30, &offset, 2);
    return 32;
}

int lsl_i_ioplan_apply(const lsl_i_ioplan *p, int fd)
{
    unsigned char lov[32];
    size_t n = lsl_i_ioplan_lov(p, lov);
    if (n == 0)
        return 0;
    /* The ioctl ROMIO's Lustre driver used; the xattr where the client refuses it. */
    if (ioctl(fd, LL_IOC_LOV_SETSTRIPE, lov) == 0)
        return 0;
    int e = errno;
    if (fsetxattr(fd, "lustre.lov", lov, n, 0) == 0)
        return 0;
    return e ? e : errno;
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

static const char *cb_name(int cb)
{
    return cb == LSL_I_CB_ENABLE ? "on" : cb == LSL_I_CB_DISABLE ? "off" : "MPI's choice";
}

void lsl_i_ioplan_describe(const lsl_i_ioplan *p, char *buf, size_t n)
{
    char a[32], s[32], c[32], b[32], cb[32], cnt[32], agg[80], per[32] = "";
    if (p->stripe_count == UINT64_MAX)
        snprintf(cnt, sizeof cnt, "every OST");
    else if (p->stripe_count)
        snprintf(cnt, sizeof cnt, "%llu", (unsigned long long)p->stripe_count);
    else
        snprintf(cnt, sizeof cnt, "%s", p->layout == LSL_I_LAYOUT_NONE ? "-" : "?");
    if (p->cb_per_node)
        snprintf(per, sizeof per, ", %llu per node", (unsigned long long)p->cb_per_node);
    if (p->cb_nodes)
        snprintf(agg, sizeof agg, "%llu aggregator%s%s", (unsigned long long)p->cb_nodes,
                 p->cb_nodes == 1 ? "" : "s", per);
    else
        snprintf(agg, sizeof agg, "MPI's default aggregators");
    snprintf(buf, n,
             "plan: %s, %d rank%s on %d node%s, %s in %llu tensors\n"
             "plan: layout %s x %s (%s)\n"
             "plan: datasets aligned to %s; write pieces cut at %s\n"
             "plan: collective buffering %s, %s, buffer %s\n",
             p->fs, p->ranks, p->ranks == 1 ? "" : "s", p->nodes, p->nodes == 1 ? "" : "s",
             lsl_i_fmt_bytes(p->total_bytes, a, sizeof a), (unsigned long long)p->ntensors, cnt,
             p->stripe_size ? lsl_i_fmt_bytes(p->stripe_size, s, sizeof s) : "-", p->why,
             lsl_i_fmt_bytes(p->alignment, c, sizeof c),
             p->piece ? lsl_i_fmt_bytes(p->piece, b, sizeof b) : "nothing (no stripes)",
             cb_name(p->cb_write), agg, lsl_i_fmt_bytes(p->cb_buffer, cb, sizeof cb));
}

void lsl_i_ioplan_extents(const lsl_i_ioplan *p, uint64_t n, const uint64_t *offsets,
                          const uint64_t *rows, const uint64_t *row_bytes, char *buf, size_t cap)
{
    int ranks = p->ranks > 0 ? p->ranks : 1;
    uint64_t unit = p->piece ? p->piece : p->stripe_size;
    uint64_t lo = UINT64_MAX, hi = 0, lo_ext = UINT64_MAX, hi_ext = 0, nb = 0, ns = 0;
    /* the stripes holding a boundary between two ranks' rows, and every stripe written */
    uint64_t *bound = unit ? lsl_i_malloc((size_t)(n * (uint64_t)ranks + 1) * sizeof *bound) : NULL;
    uint64_t *all = NULL;
    char a[32], b[32];
    size_t k = 0;
    buf[0] = '\0';
    for (int r = 0; r < ranks; r++) {
        uint64_t bytes = 0, ext = 0;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t r0, nr;
            lsl_partition_rows(rows[i], ranks, r, &r0, &nr);
            bytes += nr * row_bytes[i];
            ext += nr > 0;
            uint64_t end = offsets[i] + (r0 + nr) * row_bytes[i];
            if (bound && nr > 0 && r0 + nr < rows[i] && end % unit != 0)
                bound[nb++] = end / unit;
        }
        lo = bytes < lo ? bytes : lo, hi = bytes > hi ? bytes : hi;
        lo_ext = ext < lo_ext ? ext : lo_ext, hi_ext = ext > hi_ext ? ext : hi_ext;
        if (ranks <= 8 && k < cap)
            k += (size_t)snprintf(buf + k, cap - k, "plan: rank %d writes %s in %llu extents\n", r,
                                  lsl_i_fmt_bytes(bytes, a, sizeof a), (unsigned long long)ext);
    }
    if (k < cap && ranks > 8)
        k += (size_t)snprintf(buf + k, cap - k,
                              "plan: each rank writes %s to %s in %llu to %llu extents\n",
                              lsl_i_fmt_bytes(lo, a, sizeof a), lsl_i_fmt_bytes(hi, b, sizeof b),
                              (unsigned long long)lo_ext, (unsigned long long)hi_ext);
    uint64_t total = 0;
    for (uint64_t i = 0; unit && i < n; i++) {
        uint64_t len = rows[i] * row_bytes[i];
        total += len ? (offsets[i] + len - 1) / unit - offsets[i] / unit + 1 : 0;
    }
    if (unit && total <= ((uint64_t)1 << 26))
        all = lsl_i_malloc((size_t)total * sizeof *all + 1);
    for (uint64_t i = 0; all && i < n; i++)
        for (uint64_t len = rows[i] * row_bytes[i], s = offsets[i] / unit;
             len && s <= (offsets[i] + len - 1) / unit; s++)
            all[ns++] = s;
    if (k < cap && bound && all)
        snprintf(buf + k, cap - k,
                 "plan: %llu of %llu stripes shared by two ranks (row boundaries inside a "
                 "stripe)\n",
                 (unsigned long long)lsl_i_distinct_u64(bound, nb),
                 (unsigned long long)lsl_i_distinct_u64(all, ns));
    else if (k < cap && !unit)
        snprintf(buf + k, cap - k, "plan: no stripes, so none shared\n");
    free(bound);
    free(all);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* x with a * x = 1 (mod m), for a and m coprime, m >= 1 */
static uint64_t inverse(uint64_t a, uint64_t m)
{
    int64_t t = 0, nt = 1;
    int64_t r = (int64_t)m, nr = (int64_t)(a % m);
    while (nr) {
        int64_t q = r / nr, tmp = t - q * nt;
        t = nt, nt = tmp;
        tmp = r - q * nr;
        r = nr, nr = tmp;
    }
    return t < 0 ? (uint64_t)(t + (int64_t)m) : (uint64_t)t;
}

void lsl_i_tiles_make(uint64_t units, uint64_t unit_bytes, uint64_t origin, uint64_t piece,
                      uint64_t head, uint64_t full, lsl_i_tiles *t)
{
    memset(t, 0, sizeof *t);
    t->units = units;
    t->full = full ? full : 1;
    t->head = head && head < t->full ? head : t->full;
    if (piece && unit_bytes && units && piece <= ((uint64_t)1 << 40)) {
        /* Boundaries at unit k land on a piece multiple when origin + k * unit_bytes = 0 mod
         * piece: solvable when the gcd g divides the gap; then every L = piece / g units. */
        uint64_t g = gcd(unit_bytes, piece);
        uint64_t L = piece / g, gap = (piece - origin % piece) % piece;
        if (gap % g == 0 && L <= t->full) {
            uint64_t k0 = L == 1 ? 0
                                 : (uint64_t)((unsigned __int128)((gap / g) % L) *
                                              inverse((unit_bytes / g) % L, L) % L);
            uint64_t full_a = t->full / L * L, head_a;
            if (k0 == 0)
                head_a = t->head < L ? L : t->head / L * L;
            else
                head_a = k0 + (t->head > k0 ? (t->head - k0) / L * L : 0);
            t->full = full_a;
            t->head = head_a;
            t->aligned = 1;
        }
    }
    t->n = units == 0 ? 0 : units <= t->head ? 1 : 1 + ceil_div(units - t->head, t->full);
}

uint64_t lsl_i_tile_first(const lsl_i_tiles *t, uint64_t c)
{
    return c == 0 ? 0 : t->head + (c - 1) * t->full;
}

uint64_t lsl_i_tile_count(const lsl_i_tiles *t, uint64_t c)
{
    uint64_t first = lsl_i_tile_first(t, c), cap = c == 0 ? t->head : t->full;
    return t->units - first < cap ? t->units - first : cap;
}
