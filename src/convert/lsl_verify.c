/* Re-read a loraslab HDF5 file or a converted directory in parallel and check every checksum it
 * carries: per tensor (HDF5 attribute, loraslab.json) and per file (checksums.json). */
#include "lsl_blob.h"
#include "lsl_checkpoint.h"
#include "lsl_hfdir.h"
#include "lsl_crc32c.h"
#include "lsl_h5.h"
#include "lsl_ranges.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct vplan {
    uint32_t nsrc;
    char **src;
    uint64_t n;
    lsl_i_range *r;
    /* rank 0 only */
    char **what; /* per range: "tensor `x` in file" or NULL for a header range */
    int *has_expect;
    uint32_t *expect;
    json_t *file_sums; /* checksums.json "files", or NULL */
    uint64_t ntensors;
} vplan;

static void vplan_free(vplan *p)
{
    for (uint32_t i = 0; p->src && i < p->nsrc; i++)
        free(p->src[i]);
    for (uint64_t i = 0; p->what && i < p->n; i++)
        free(p->what[i]);
    free(p->src);
    free(p->r);
    free(p->what);
    free(p->has_expect);
    free(p->expect);
    json_decref(p->file_sums);
    memset(p, 0, sizeof *p);
}

static lsl_status grow(vplan *p, uint64_t n)
{
    p->r = lsl_i_realloc(p->r, n * sizeof *p->r);
    p->what = lsl_i_realloc(p->what, n * sizeof *p->what);
    p->has_expect = lsl_i_realloc(p->has_expect, n * sizeof *p->has_expect);
    p->expect = lsl_i_realloc(p->expect, n * sizeof *p->expect);
    return p->r && p->what && p->has_expect && p->expect
               ? LSL_OK
               : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
}

static lsl_status add(vplan *p, uint32_t src, uint64_t off, uint64_t len, const char *what, int has,
                      uint32_t crc)
{
    lsl_status st = grow(p, p->n + 1);
    if (st)
        return st;
    p->r[p->n] = (lsl_i_range){src, off, len, -1, 0};
    p->what[p->n] = what ? lsl_i_strdup(what) : NULL;
    p->has_expect[p->n] = has;
    p->expect[p->n] = crc;
    p->n++;
    return LSL_OK;
}

static lsl_status plan_h5(const char *path, vplan *p)
{
    lsl_i_h5_file f;
    lsl_status rc = lsl_i_h5_list(path, &f);
    if (rc)
        return rc;
    p->src = lsl_i_calloc(1, sizeof *p->src);
    if (!p->src || !(p->src[0] = lsl_i_strdup(path)))
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    p->nsrc = 1;
    p->ntensors = f.n;
    for (uint64_t i = 0; i < f.n; i++) {
        char what[1024];
        if (!f.t[i].has_crc)
            LSL_FAIL(LSL_ERR_FORMAT, "%s: tensor `%s` has no crc32c attribute", path, f.t[i].name);
        snprintf(what, sizeof what, "%s: tensor `%s`", path, f.t[i].name);
        LSL_TRY(add(p, 0, f.t[i].offset, f.t[i].nbytes, what, 1, f.t[i].crc32c));
    }
fail:
    lsl_i_h5_list_free(&f);
    return rc;
}

static json_t *load_json(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
}

static lsl_status plan_dir(const char *dir, vplan *p)
{
    lsl_status rc = LSL_OK;
    lsl_ckpt ck;
    json_t *prov = load_json(dir, "loraslab.json"), *sums = load_json(dir, "checksums.json");
    json_t *tcrc = prov ? json_object_get(prov, "tensors") : NULL;
    LSL_TRY(lsl_ckpt_open(dir, 1, &ck));
    if (sums && json_is_object(json_object_get(sums, "files")))
        p->file_sums = json_incref(json_object_get(sums, "files"));
    p->src = lsl_i_calloc(ck.nfiles, sizeof *p->src);
    if (!p->src)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t fi = 0; fi < ck.nfiles; fi++) {
        const lsl_st_file *sf = &ck.files[fi];
        if (!(p->src[fi] = lsl_i_strdup(sf->path)))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        p->nsrc = fi + 1;
        /* The header, then every tensor in offset order: together they cover the file, so the
         * file's CRC is their combination. */
        LSL_TRY(add(p, fi, 0, sf->data_start, NULL, 0, 0));
        for (uint64_t t = 0; t < sf->ntensors; t++) {
            char what[1024];
            json_t *c = json_object_get(json_object_get(tcrc, sf->tensors[t].name), "crc32c");
            snprintf(what, sizeof what, "%s: tensor `%s`", sf->path, sf->tensors[t].name);
            LSL_TRY(add(p, fi, sf->data_start + sf->tensors[t].begin,
                        sf->tensors[t].end - sf->tensors[t].begin, what, json_is_integer(c),
                        json_is_integer(c) ? (uint32_t)json_integer_value(c) : 0));
            p->ntensors++;
        }
    }
fail:
    lsl_ckpt_free(&ck);
    json_decref(prov);
    json_decref(sums);
    return rc;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Rank 0, after the parallel read: compare everything. */
static lsl_status judge(const char *path, bool is_dir, const vplan *p, const uint32_t *crcs,
                        uint64_t *checked)
{
    uint64_t k = 0;
    *checked = 0;
    for (uint64_t i = 0; i < p->n; i++)
        if (p->has_expect[i]) {
            (*checked)++;
            if (p->expect[i] != crcs[i])
                return lsl_i_fail(LSL_ERR_CORRUPT,
                                  "%s: CRC-32C of the bytes is %08x but %08x was recorded",
                                  p->what[i], crcs[i], p->expect[i]);
        }
    if (!is_dir || !p->file_sums)
        return LSL_OK;
    for (uint32_t f = 0; f < p->nsrc; f++) {
        uint32_t c = 0;
        for (; k < p->n && p->r[k].src == f; k++)
            c = lsl_crc32c_combine(c, crcs[k], p->r[k].len);
        json_t *want = json_object_get(p->file_sums, base_name(p->src[f]));
        char b64[9];
        lsl_i_crc_base64(c, b64);
        if (!json_is_string(want))
            return lsl_i_fail(LSL_ERR_FORMAT, "%s: checksums.json lists no CRC for %s", path,
                              base_name(p->src[f]));
        if (strcmp(json_string_value(want), b64) != 0)
            return lsl_i_fail(LSL_ERR_CORRUPT, "%s: file CRC-32C is %s but checksums.json says %s",
                              p->src[f], b64, json_string_value(want));
        (*checked)++;
    }
    /* Small side files listed in checksums.json: rank 0 reads them whole. */
    const char *name;
    json_t *v;
    json_object_foreach (p->file_sums, name, v) {
        /* A name is a file of this directory: nothing that climbs out of it or hides in it. */
        if (!lsl_i_plain_name(name))
            return lsl_i_fail(LSL_ERR_FORMAT,
                              "%s/checksums.json: lists \"%.200s\", which is not a file name of "
                              "this directory",
                              path,
                              lsl_i_utf8_valid(name, strlen(name), &k) ? name : "(not UTF-8)");
        if (strstr(name, ".safetensors") && !strstr(name, ".index.json"))
            continue;
        char fp[4096], *text = NULL, b64[9];
        uint64_t len = 0;
        snprintf(fp, sizeof fp, "%s/%s", path, name);
        lsl_status st = lsl_i_read_text(fp, 256u << 20, &text, &len);
        if (st)
            return st;
        lsl_i_crc_base64(lsl_crc32c_extend(0, text, len), b64);
        free(text);
        if (!json_is_string(v) || strcmp(json_string_value(v), b64) != 0)
            return lsl_i_fail(LSL_ERR_CORRUPT, "%s: CRC-32C %s differs from checksums.json", fp,
                              b64);
        (*checked)++;
    }
    return LSL_OK;
}

static lsl_status verify_impl(lsl_i_comm *comm, const char *path, uint64_t staging_bytes, int quiet,
                              lsl_job_stats *stats)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    int rank, *fds = NULL;
    lsl_i_blob blob = {0};
    vplan p;
    uint32_t *crcs = NULL;
    void *staging = NULL;
    bool is_dir = false;
    double t0 = lsl_i_now();
    uint64_t rss0 = lsl_i_rss_current();
    memset(&p, 0, sizeof p);
    lsl_i_clear_error();
    rank = comm->rank;
    const lsl_i_arg args[] = {LSL_I_ARG_STR("path", path),
                              LSL_I_ARG_NUM("staging_bytes", staging_bytes)};
    LSL_TRY(lsl_i_agree_args(comm, "verify", 2, args));
    if (!staging_bytes)
        staging_bytes = LSL_DEFAULT_STAGING;
    if (rank == 0) {
        struct stat sb;
        if (!path || stat(path, &sb) != 0)
            st = lsl_i_fail_errno(LSL_ERR_NOT_FOUND, errno, "%s", path ? path : "(null)");
        else if ((is_dir = S_ISDIR(sb.st_mode)))
            st = plan_dir(path, &p);
        else
            st = plan_h5(path, &p);
    }
    LSL_TRY(lsl_i_agree(comm, st));
    /* rank 0's plan in one blob: the counts, the ranges, the source paths */
    uint64_t hdr[2] = {p.nsrc, p.n};
    if (rank == 0) {
        lsl_i_blob_put(&blob, hdr, sizeof hdr);
        lsl_i_blob_put(&blob, p.r, p.n * sizeof *p.r);
        for (uint32_t i = 0; i < p.nsrc; i++)
            lsl_i_blob_put_str(&blob, p.src[i]);
    }
    LSL_TRY(lsl_i_blob_bcast(comm, &blob, LSL_OK));
    lsl_i_blob_get(&blob, hdr, sizeof hdr);
    if (rank != 0) {
        p.nsrc = (uint32_t)hdr[0];
        p.n = hdr[1];
        p.src = lsl_i_calloc(p.nsrc ? p.nsrc : 1, sizeof *p.src);
        p.r = lsl_i_calloc(p.n ? p.n : 1, sizeof *p.r);
        if (p.r)
            lsl_i_blob_get(&blob, p.r, p.n * sizeof *p.r);
        for (uint32_t i = 0; p.src && i < p.nsrc; i++)
            p.src[i] = lsl_i_blob_get_str(&blob);
    }
    fds = lsl_i_malloc(sizeof *fds * (p.nsrc ? p.nsrc : 1));
    for (uint32_t i = 0; fds && i < p.nsrc; i++)
        fds[i] = -1;
    crcs = lsl_i_calloc(p.n ? p.n : 1, sizeof *crcs);
    staging = lsl_i_malloc(staging_bytes);
    st = p.src && p.r && fds && crcs && staging && !blob.bad
             ? LSL_OK
             : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; i < p.nsrc && st == LSL_OK; i++)
        st = lsl_i_open_input(p.src[i], &fds[i], NULL);
    LSL_TRY(lsl_i_agree(comm, st));
    lsl_i_range_job job = {p.n,
                           p.r,
                           fds,
                           (const char *const *)p.src,
                           0,
                           NULL,
                           NULL,
                           staging,
                           staging_bytes,
                           1,
                           "verify",
                           quiet,
                           p.ntensors,
                           NULL};
    LSL_TRY(lsl_i_ranges_run_all(comm, &job, crcs));
    uint64_t checked = 0;
    if (rank == 0)
        st = judge(path, is_dir, &p, crcs, &checked);
    LSL_TRY(lsl_i_agree(comm, st));
    if (rank == 0 && quiet == LSL_PROGRESS_TEXT)
        lsl_i_log(LSL_LOG_INFO, "loraslab: verified %s: %llu tensors, %llu checksums match%s\n",
                  path, (unsigned long long)p.ntensors, (unsigned long long)checked,
                  checked ? "" : " (it carries no checksums: only its structure was checked)");
    if (stats) {
        uint64_t bytes = 0;
        for (uint64_t i = 0; i < p.n; i++)
            bytes += p.r[i].len;
        /* p.ntensors is rank 0's (it planned); fill_stats gives every rank the figure */
        lsl_i_fill_stats(comm, t0, rss0, p.ntensors, 0, bytes, stats);
    }
fail:
    for (uint32_t i = 0; fds && i < p.nsrc; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    lsl_i_blob_free(&blob);
    free(crcs);
    free(staging);
    vplan_free(&p);
    return rc;
}

lsl_status lsl_verify_all(const lsl_comm *comm, const char *path, uint64_t staging_bytes, int quiet,
                          lsl_job_stats *stats)
{
    lsl_i_comm *c = NULL;
    lsl_status st = lsl_i_comm_open(comm, &c);
    return lsl_i_comm_close(&c,
                            st == LSL_OK ? verify_impl(c, path, staging_bytes, quiet, stats) : st);
}
