/* An I/O plan in words, and where each rank's bytes land under it (--plan, LSL_PLAN_PRINT). */
#include "lsl_ioplan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
