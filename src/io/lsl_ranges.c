#define _GNU_SOURCE /* copy_file_range */
#include "lsl_ranges.h"
#include "lsl_trace.h"

#include "lsl_crc32c.h"
#include "lsl_iopool.h"
#include "lsl_progress.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One range's part on one rank: the unit the ranks exchange to combine CRCs. */
typedef struct part {
    uint64_t range, crc, len;
} part;

/* Collective: each range's CRC from the ranks' parts, combined in rank (= byte) order.  A rank
 * holds a contiguous share of the byte space, so the parts number at most n + size - 1 in all:
 * the exchange stays small at any rank count. */
static lsl_status combine_crcs(lsl_i_comm *comm, const lsl_i_range_job *job, const uint64_t *pairs,
                               uint32_t *crcs)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    uint64_t mine = 0, total = 0;
    for (uint64_t i = 0; i < job->n; i++)
        mine += pairs[2 * i + 1] != 0;
    uint64_t *counts = lsl_i_malloc(sizeof *counts * (size_t)comm->size);
    part *send = lsl_i_malloc(sizeof *send * (mine + 1)), *all = NULL;
    if (!counts || !send)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory combining checksums");
    LSL_TRY(lsl_i_agree(comm, st));
    for (uint64_t i = 0, k = 0; i < job->n; i++)
        if (pairs[2 * i + 1])
            send[k++] = (part){i, pairs[2 * i], pairs[2 * i + 1]};
    LSL_TRY(lsl_i_allgather(comm, &mine, counts, sizeof mine));
    for (int k = 0; k < comm->size; k++) {
        total += counts[k];
        counts[k] *= sizeof(part);
    }
    all = lsl_i_malloc(sizeof *all * (total + 1));
    LSL_TRY(lsl_i_agree(comm, all ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory")));
    LSL_TRY(lsl_i_allgatherv(comm, send, all, counts));
    for (uint64_t i = 0; i < job->n; i++)
        crcs[i] = 0;
    for (uint64_t k = 0; k < total; k++) /* rank order, and within a rank range order */
        if (all[k].range < job->n)
            crcs[all[k].range] =
                lsl_crc32c_combine(crcs[all[k].range], (uint32_t)all[k].crc, all[k].len);
fail:
    free(counts);
    free(send);
    free(all);
    return rc;
}

static lsl_status write_to(int fd, const void *buf, uint64_t n, uint64_t off, const char *path)
{
    char what[4200];
    snprintf(what, sizeof what, "%s: write", path);
    return lsl_i_pwrite_full(fd, buf, n, off, what);
}

/* Kernel-side copy when no checksum is needed; falls back to the staging path where the
 * filesystem pair does not support it. */
static lsl_status copy_kernel(int in, uint64_t ioff, int out, uint64_t ooff, uint64_t n,
                              bool *unsupported)
{
    int64_t a = (int64_t)ioff, b = (int64_t)ooff;
    while (n > 0) {
        ssize_t c = lsl_i_copy_file_range(in, &a, out, &b, n > (1u << 30) ? (1u << 30) : (size_t)n);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP) {
                *unsupported = true;
                return LSL_OK;
            }
            return lsl_i_fail_errno(LSL_ERR_IO, errno, "copy_file_range");
        }
        if (c == 0)
            return lsl_i_fail(LSL_ERR_FORMAT, "source ended early (file truncated?)");
        n -= (uint64_t)c;
    }
    return LSL_OK;
}

/* Whether range i continues range i - 1 in the same destination file. */
static int continues(const lsl_i_range_job *job, uint64_t i)
{
    const lsl_i_range *a = &job->r[i - 1], *b = &job->r[i];
    return a->dst == b->dst && a->dst >= 0 && a->dst_off + a->len == b->dst_off;
}

/* Cut k of `size` in the byte space (total bytes): the even split's, moved to the nearest byte
 * whose destination offset is a multiple of its file's piece, within the run of ranges that go
 * contiguously through that file (a run's ends are file boundaries, never shared).  Rounding to
 * a lattice within a run, and runs in order, keep the cuts in order: the shares tile. */
static uint64_t share_cut(const lsl_i_range_job *job, uint64_t total, int size, int k)
{
    uint64_t s = (uint64_t)size, q = total / s, m = total % s, kk = (uint64_t)k;
    uint64_t c = q * kk + (m < kk ? m : kk);
    if (!job->dst_piece || c == 0 || c >= total)
        return c;
    uint64_t pos = 0, i = 0;
    while (i < job->n && pos + job->r[i].len <= c) /* the range holding byte c */
        pos += job->r[i++].len;
    const lsl_i_range *r = &job->r[i];
    uint64_t piece = r->dst >= 0 ? job->dst_piece[r->dst] : 0;
    uint64_t rem = piece ? (r->dst_off + (c - pos)) % piece : 0;
    if (rem == 0)
        return c;
    uint64_t run_lo = pos, run_hi = pos + r->len;
    for (uint64_t j = i; j > 0 && continues(job, j); j--)
        run_lo -= job->r[j - 1].len;
    for (uint64_t j = i + 1; j < job->n && continues(job, j); j++)
        run_hi += job->r[j].len;
    uint64_t down = c - run_lo < rem ? run_lo : c - rem;
    uint64_t up = run_hi - c < piece - rem ? run_hi : c + (piece - rem);
    return c - down <= up - c ? down : up;
}

/* Rank 0's progress line, when one is due: rank 0 sees its own share (done bytes); the others
 * move at about the same pace. */
static void report(const lsl_i_range_job *job, lsl_i_progress *prog, uint64_t done, uint64_t total,
                   int size, double t0)
{
    if (!lsl_i_progress_due(prog, false))
        return;
    uint64_t est = done * (uint64_t)size < total ? done * (uint64_t)size : total;
    char b1[32], b2[32];
    if (prog->mode == LSL_PROGRESS_JSON)
        lsl_i_progress_json(prog, total ? job->tensors * est / total : 0, est, false);
    else {
        char line[256];
        snprintf(line, sizeof line, "loraslab: %s %s / %s  %.2f GB/s", job->label,
                 lsl_i_fmt_bytes(est, b1, sizeof b1), lsl_i_fmt_bytes(total, b2, sizeof b2),
                 (double)est / (prog->last - t0) / 1e9);
        lsl_i_log_progress(line, false);
    }
}

/* This rank's part of range `range`: bytes [off, off + n) of it. */
typedef struct piece {
    uint64_t range, off, n;
} piece;

/* The largest chunk of the pooled copy. */
#define COPY_CHUNK ((uint64_t)8 << 20)

/* The checksummed copy of this rank's pieces into several files at once: the staging budget
 * cut into slots, the pieces' chunks taken from the destination files in turn, each chunk read,
 * checksummed and written by the write pool (lsl_iopool.h); a file takes one stream only, so
 * one file after another would hold the copy to that.  pairs[2i], pairs[2i + 1]: range i's
 * CRC and length on this rank.  Local status. */
static lsl_status copy_pooled(const lsl_i_range_job *job, const piece *pcs, uint64_t np,
                              uint64_t *pairs, unsigned char *touched, int rank, int size,
                              lsl_i_progress *prog, uint64_t total, double t0)
{
    uint64_t posted = 0;
    lsl_status rc = LSL_OK;
    uint64_t slot = job->staging_bytes / 2 < COPY_CHUNK ? job->staging_bytes / 2 : COPY_CHUNK;
    uint64_t nslots = job->staging_bytes / slot, nchunks = 0;
    nslots = nslots > LSL_I_IOPOOL_DEPTH ? LSL_I_IOPOOL_DEPTH : nslots;
    for (uint64_t k = 0; k < np; k++)
        nchunks += (pcs[k].n + slot - 1) / slot;
    uint32_t *ccrc = lsl_i_calloc(nchunks + 1, sizeof *ccrc);
    uint64_t *next = lsl_i_calloc(job->ndst + 1, sizeof *next), *base = NULL;
    uint64_t *chunk = lsl_i_calloc(job->ndst + 1, sizeof *chunk);
    lsl_i_iopool *pool = NULL;
    base = lsl_i_calloc(np + 1, sizeof *base);
    if (!ccrc || !next || !chunk || !base)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory for %llu chunks", (unsigned long long)nchunks);
    for (uint64_t k = 1; k <= np; k++)
        base[k] = base[k - 1] + (pcs[k - 1].n + slot - 1) / slot;
    int threads = lsl_i_iopool_threads();
    /* every thread reads and checksums; one at a time writes a given file */
    LSL_TRY(lsl_i_iopool_start(threads, job->ndst, job->dst_fds, job->dst_paths, rank, &pool));
    /* next[f]: the piece file f is at (np: none left), chunk[f]: its chunk */
    for (uint32_t f = 0; f < job->ndst; f++) {
        next[f] = np;
        for (uint64_t k = np; k-- > 0;)
            if (job->r[pcs[k].range].dst == (int32_t)f)
                next[f] = k;
    }
    uint64_t t = 0;
    for (uint64_t left = nchunks; left > 0 && rc == LSL_OK;) {
        for (uint32_t f = 0; f < job->ndst && left > 0 && rc == LSL_OK; f++) {
            if (next[f] >= np)
                continue;
            const piece *pc = &pcs[next[f]];
            const lsl_i_range *r = &job->r[pc->range];
            uint64_t k = chunk[f], at = k * slot, m = pc->n - at < slot ? pc->n - at : slot;
            unsigned char *buf = (unsigned char *)job->staging + (t++ % nslots) * slot;
            touched[f] = 1;
            LSL_TRY(lsl_i_iopool_fence(pool, buf, slot));
            LSL_TRY(lsl_i_iopool_post_copy(pool, f, r->dst_off + pc->off + at, buf, m,
                                           job->src_fds[r->src], r->src_off + pc->off + at,
                                           job->src_paths[r->src], &ccrc[base[next[f]] + k],
                                           "tensor bytes"));
            left--;
            posted += m;
            if (rank == 0)
                report(job, prog, posted, total, size, t0);
            if (at + m < pc->n) {
                chunk[f]++;
                continue;
            }
            chunk[f] = 0; /* the file's next piece */
            uint64_t j = next[f] + 1;
            while (j < np && job->r[pcs[j].range].dst != (int32_t)f)
                j++;
            next[f] = j;
        }
    }
    lsl_status ds = lsl_i_iopool_drain(pool, NULL);
    rc = rc == LSL_OK ? ds : rc;
    for (uint64_t k = 0; rc == LSL_OK && k < np; k++) {
        uint32_t crc = 0;
        for (uint64_t c = base[k]; c < base[k + 1]; c++) {
            uint64_t at = (c - base[k]) * slot;
            crc = lsl_crc32c_combine(crc, ccrc[c], pcs[k].n - at < slot ? pcs[k].n - at : slot);
        }
        pairs[2 * pcs[k].range] = crc;
        pairs[2 * pcs[k].range + 1] = pcs[k].n;
    }
fail:
    lsl_i_iopool_stop(&pool); /* after its writes: the staging is the caller's again */
    free(ccrc);
    free(next);
    free(chunk);
    free(base);
    return rc;
}

lsl_status lsl_i_ranges_run_all(lsl_i_comm *comm, const lsl_i_range_job *job, uint32_t *crcs)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    int rank = comm->rank, size = comm->size;
    uint64_t total = 0;
    for (uint64_t i = 0; i < job->n; i++)
        total += job->r[i].len;
    /* This rank's share of the byte space. */
    uint64_t lo = share_cut(job, total, size, rank), hi = share_cut(job, total, size, rank + 1);
    uint64_t *pairs = lsl_i_calloc(job->n ? 2 * job->n : 2, sizeof(uint64_t));
    unsigned char *touched = lsl_i_calloc(job->ndst ? job->ndst : 1, 1);
    if (!pairs || !touched)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for %llu ranges", (unsigned long long)job->n);
    bool kernel_copy = !job->checksum;
    double t0 = lsl_i_now();
    lsl_i_progress prog;
    lsl_i_progress_start(&prog, job->label, job->label ? job->quiet : LSL_PROGRESS_NONE, size,
                         job->tensors, total);
    uint64_t done = 0, pos = 0, calls = 0;
    /* A checksummed copy into files goes through the write pool, several files at once. */
    bool pooled = job->checksum && job->ndst > 0 && job->staging_bytes >= 2 * 4096;
    piece *pcs = pooled ? lsl_i_calloc(job->n + 1, sizeof *pcs) : NULL;
    uint64_t np = 0;
    if (pooled && !pcs && st == LSL_OK)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; pooled && st == LSL_OK && i < job->n; pos += job->r[i].len, i++) {
        const lsl_i_range *r = &job->r[i];
        uint64_t a = pos > lo ? pos : lo, b = pos + r->len < hi ? pos + r->len : hi;
        if (a < b && r->dst >= 0)
            pcs[np++] = (piece){i, a - pos, b - a};
    }
    if (pooled && st == LSL_OK)
        st = copy_pooled(job, pcs, np, pairs, touched, rank, size, &prog, total, t0);
    free(pcs);
    for (uint64_t i = 0; !pooled && st == LSL_OK && i < job->n; pos += job->r[i].len, i++) {
        const lsl_i_range *r = &job->r[i];
        uint64_t a = pos > lo ? pos : lo, b = pos + r->len < hi ? pos + r->len : hi;
        if (a >= b)
            continue;
        uint64_t off = a - pos, n = b - a;
        int in = job->src_fds[r->src], out = r->dst >= 0 ? job->dst_fds[r->dst] : -1;
        if (out >= 0)
            touched[r->dst] = 1;
        uint32_t crc = 0;
        if (kernel_copy && out >= 0) {
            bool unsupported = false;
            double w0 = lsl_i_trace_on() ? lsl_i_wall() : 0;
            st = copy_kernel(in, r->src_off + off, out, r->dst_off + off, n, &unsupported);
            if (w0 && !unsupported)
                lsl_i_trace_write(rank, job->dst_paths[r->dst], calls++, r->dst_off + off, n, NULL,
                                  w0, lsl_i_wall());
            if (st != LSL_OK)
                st = lsl_i_fail(st, "%s -> %s: %s", job->src_paths[r->src], job->dst_paths[r->dst],
                                lsl_last_error());
            if (!unsupported) {
                done += n;
                goto next;
            }
            kernel_copy = false;
        }
        for (uint64_t k = 0; st == LSL_OK && k < n; k += job->staging_bytes) {
            uint64_t m = n - k < job->staging_bytes ? n - k : job->staging_bytes;
            st =
                lsl_i_pread_full(in, job->staging, m, r->src_off + off + k, job->src_paths[r->src]);
            if (st == LSL_OK && job->checksum)
                crc = lsl_crc32c_extend(crc, job->staging, m);
            if (st == LSL_OK && out >= 0) {
                double w0 = lsl_i_trace_on() ? lsl_i_wall() : 0;
                st = write_to(out, job->staging, m, r->dst_off + off + k, job->dst_paths[r->dst]);
                if (w0)
                    lsl_i_trace_write(rank, job->dst_paths[r->dst], calls++, r->dst_off + off + k,
                                      m, NULL, w0, lsl_i_wall());
            }
            done += m;
        }
        pairs[2 * i] = crc;
        pairs[2 * i + 1] = n;
    next:
        if (rank == 0)
            report(job, &prog, done, total, size, t0);
    }
    for (uint32_t f = 0; st == LSL_OK && f < job->ndst; f++) {
        /* fsync what this rank wrote: on a parallel filesystem each client flushes its own. */
        if (touched[f] && lsl_i_fsync(job->dst_fds[f]) != 0)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: fsync", job->dst_paths[f]);
    }
    LSL_TRY(lsl_i_agree(comm, st));
    if (job->checksum)
        LSL_TRY(combine_crcs(comm, job, pairs, crcs));
    if (rank == 0 && lsl_i_progress_due(&prog, true) && prog.mode == LSL_PROGRESS_JSON) {
        lsl_i_progress_json(&prog, job->tensors, total, true);
    } else if (rank == 0 && prog.mode == LSL_PROGRESS_TEXT) {
        char b[32];
        double el = lsl_i_now() - t0;
        char line[256];
        snprintf(line, sizeof line, "loraslab: %s %s in %.2fs, %.2f GB/s", job->label,
                 lsl_i_fmt_bytes(total, b, sizeof b), el, el > 0 ? (double)total / el / 1e9 : 0.0);
        lsl_i_log_progress(line, true);
    }
fail:
    lsl_i_trace_flush(rank);
    free(pairs);
    free(touched);
    return rc;
}
