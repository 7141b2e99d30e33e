/* HDF5 -> Hugging Face safetensors: rank 0 plans the shards and writes their headers; all ranks
 * copy equal shares of the tensor bytes (cut at the shards' write pieces) from the datasets'
 * offsets to their places in the shards, checking CRC-32C on the way; rank 0 writes the index and
 * side files and renames the directory into place. */
#define _GNU_SOURCE
#include "lsl_convert.h"
#include "lsl_ioplan.h"

#include "lsl_crc32c.h"
#include "lsl_h5.h"
#include "lsl_publish.h"
#include "lsl_ranges.h"
#include "lsl_safetensors.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SHARD 5000000000ull

lsl_status lsl_i_write_small(const char *dir, const char *name, const char *text, uint32_t *crc)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return lsl_i_fail_errno(LSL_ERR_IO, errno, "%s", path);
    size_t n = strlen(text), done = 0;
    while (done < n) {
        ssize_t w = lsl_i_write(fd, text + done, n - done);
        if (w < 0) {
            int e = errno;
            close(fd);
            return lsl_i_fail_errno(LSL_ERR_IO, e, "%s: write", path);
        }
        done += (size_t)w;
    }
    if (lsl_i_fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return lsl_i_fail_errno(LSL_ERR_IO, e, "%s: fsync", path);
    }
    close(fd);
    if (crc)
        *crc = lsl_crc32c_extend(0, text, n);
    return LSL_OK;
}

void lsl_i_crc_base64(uint32_t crc, char out[9])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char be[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16),
                           (unsigned char)(crc >> 8), (unsigned char)crc};
    uint32_t v = ((uint32_t)be[0] << 16) | ((uint32_t)be[1] << 8) | be[2];
    out[0] = b64[(v >> 18) & 63];
    out[1] = b64[(v >> 12) & 63];
    out[2] = b64[(v >> 6) & 63];
    out[3] = b64[v & 63];
    v = (uint32_t)be[3] << 16;
    out[4] = b64[(v >> 18) & 63];
    out[5] = b64[(v >> 12) & 63];
    out[6] = '=';
    out[7] = '=';
    out[8] = '\0';
}

/* What rank 0 plans and every rank needs. */
typedef struct cplan {
    lsl_i_out out; /* the directory, its temporary */
    uint32_t nshards;
    char (*names)[64];
    uint64_t *piece; /* per shard: the plan's write piece, where the ranks' shares are cut */
    uint64_t nranges;
    lsl_i_range *ranges;
    uint64_t *tensor; /* rank 0: the tensor each range copies */
} cplan;

static void cplan_free(cplan *p)
{
    free(p->names);
    free(p->piece);
    free(p->ranges);
    free(p->tensor);
    memset(p, 0, sizeof *p);
}

/* huggingface_hub's split_state_dict_into_shards_factory: greedy in order; a tensor larger than
 * the limit gets a shard of its own, placed before the one still open. */
static lsl_status split(const lsl_i_h5_file *f, uint64_t max, uint32_t *shard_of, uint32_t *nsh)
{
    uint32_t n = 0, open_id = UINT32_MAX;
    uint64_t cur = 0;
    /* first pass: shard ids in creation order */
    uint32_t *ids = lsl_i_calloc(f->n ? f->n : 1, sizeof *ids);
    uint32_t *seq =
        lsl_i_calloc(f->n + 1, sizeof *seq); /* creation id of the k-th shard in list order */
    if (!ids || !seq) {
        free(ids);
        free(seq);
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    uint32_t nseq = 0;
    for (uint64_t i = 0; i < f->n; i++) {
        uint64_t sz = f->t[i].nbytes;
        if (sz > max) {
            ids[i] = n++;
            seq[nseq++] = ids[i];
            continue;
        }
        if (open_id != UINT32_MAX && cur + sz > max) {
            seq[nseq++] = open_id;
            open_id = UINT32_MAX;
        }
        if (open_id == UINT32_MAX) {
            open_id = n++;
            cur = 0;
        }
        ids[i] = open_id;
        cur += sz;
    }
    if (open_id != UINT32_MAX)
        seq[nseq++] = open_id;
    /* number the shards in list order: position in seq */
    uint32_t *pos = lsl_i_calloc(n ? n : 1, sizeof *pos);
    if (!pos) {
        free(ids);
        free(seq);
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    for (uint32_t k = 0; k < nseq; k++)
        pos[seq[k]] = k;
    for (uint64_t i = 0; i < f->n; i++)
        shard_of[i] = pos[ids[i]];
    *nsh = nseq ? nseq : 1;
    free(pos);
    free(ids);
    free(seq);
    return LSL_OK;
}

static json_t *provenance(const lsl_i_h5_file *f, const char *input)
{
    json_t *doc = json_object(), *tens = json_object();
    json_object_set_new(doc, "loraslab_version", json_string(lsl_version_string()));
    json_object_set_new(doc, "written_by", json_string(f->attrs[0] ? f->attrs[0] : "?"));
    json_object_set_new(doc, "source", json_string(input));
    if (f->attrs[1])
        json_object_set_new(doc, "base_path", json_string(f->attrs[1]));
    if (f->attrs[2])
        json_object_set_new(doc, "adapter_path", json_string(f->attrs[2]));
    if (f->attrs[4]) {
        json_t *ac = json_loads(f->attrs[4], 0, NULL);
        json_object_set_new(doc, "adapter_config", ac ? ac : json_string(f->attrs[4]));
    }
    for (uint64_t i = 0; i < f->n; i++) {
        json_t *t = json_object();
        if (f->t[i].has_crc)
            json_object_set_new(t, "crc32c", json_integer(f->t[i].crc32c));
        if (f->t[i].has_lora) {
            json_t *l = json_object();
            json_object_set_new(l, "rank", json_integer((json_int_t)f->t[i].lora_rank));
            json_object_set_new(l, "alpha", json_real(f->t[i].lora_alpha));
            json_object_set_new(l, "scaling", json_real(f->t[i].lora_scaling));
            json_object_set_new(t, "lora", l);
        }
        json_object_set_new(tens, f->t[i].name, t);
    }
    json_object_set_new(doc, "tensors", tens);
    return doc;
}

static char *dumps(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *t = lsl_i_realloc(s, n + 2);
    if (!t) {
        free(s);
        return NULL;
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    return t;
}

/* Rank 0: shard s's I/O plan (a file of `bytes` holding n tensors): on Lustre its layout is
 * given to the empty file before the header is written; its write piece cuts the ranks' shares
 * (p->piece[s]); with cfg->plan it is logged. */
static void plan_shard(const lsl_convert_config *cfg, cplan *p, uint32_t s, int fd, uint64_t bytes,
                       uint64_t n, int ranks, int nodes)
{
    char path[4160];
    snprintf(path, sizeof path, "%s/%s", cfg->outdir, p->names[s]);
    lsl_i_ioplan_in in = {bytes, n, ranks, nodes, cfg->stripe_count, cfg->stripe_size, 0, 0};
    lsl_i_ioplan plan;
    lsl_i_ioplan_for_file(&p->out.fs, in, fd, path, &plan);
    p->piece[s] = plan.piece;
    if (!cfg->plan)
        return;
    char text[1024], b[32];
    if (s == 0) {
        lsl_i_ioplan_describe(&plan, text, sizeof text);
        lsl_i_log(LSL_LOG_INFO, "%s", text);
    }
    lsl_i_log(LSL_LOG_INFO, "plan: %s: %s, %llu tensors, layout %s\n", p->names[s],
              lsl_i_fmt_bytes(bytes, b, sizeof b), (unsigned long long)n, plan.why);
}

static lsl_status plan_rank0(const lsl_convert_config *cfg, lsl_i_h5_file *f, cplan *p,
                             uint64_t **head_crc_len, uint32_t **shard_of_out, int ranks, int nodes)
{
    lsl_status rc = LSL_OK;
    uint64_t max = cfg->max_shard_bytes ? cfg->max_shard_bytes : DEFAULT_SHARD;
    uint32_t *shard_of = NULL;
    uint64_t *order = NULL, *hc = NULL;
    lsl_st_entry *ent = NULL;
    unsigned char *head = NULL;
    LSL_TRY(lsl_i_check_utf8(cfg->input, "the input path (recorded in loraslab.json)"));
    LSL_TRY(lsl_i_h5_list(cfg->input, f));
    shard_of = lsl_i_calloc(f->n ? f->n : 1, sizeof *shard_of);
    order = lsl_i_calloc(f->n ? f->n : 1, sizeof *order);
    ent = lsl_i_calloc(f->n ? f->n : 1, sizeof *ent);
    p->ranges = lsl_i_calloc(f->n ? f->n : 1, sizeof *p->ranges);
    p->tensor = lsl_i_calloc(f->n ? f->n : 1, sizeof *p->tensor);
    if (!shard_of || !order || !ent || !p->ranges || !p->tensor)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(split(f, max, shard_of, &p->nshards));
    p->names = lsl_i_calloc(p->nshards, sizeof *p->names);
    p->piece = lsl_i_calloc(p->nshards, sizeof *p->piece);
    hc = lsl_i_calloc(2 * (size_t)p->nshards, sizeof *hc);
    if (!p->names || !p->piece || !hc)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    {
        const char *in[1] = {cfg->input};
        LSL_TRY(lsl_i_out_create(cfg->outdir, 1, cfg->overwrite, cfg->quiet, in, 1, &p->out));
    }
    for (uint32_t s = 0; s < p->nshards; s++) {
        uint64_t n = 0, hl = 0, total = 0;
        if (p->nshards == 1)
            snprintf(p->names[s], sizeof p->names[s], "model.safetensors");
        else
            snprintf(p->names[s], sizeof p->names[s], "model-%05u-of-%05u.safetensors", s + 1,
                     p->nshards);
        uint64_t *idx = order; /* reuse: tensor ids of this shard */
        for (uint64_t i = 0; i < f->n; i++)
            if (shard_of[i] == s) {
                ent[n] = (lsl_st_entry){f->t[i].name, f->t[i].dtype, f->t[i].ndim, f->t[i].shape,
                                        f->t[i].nbytes};
                idx[n++] = i;
            }
        uint64_t *ord = lsl_i_malloc((n ? n : 1) * sizeof *ord),
                 *off = lsl_i_malloc((n ? n : 1) * sizeof *off);
        if (!ord || !off) {
            free(ord);
            free(off);
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        }
        lsl_status st = lsl_st_build_header(n, ent, ord, off, &head, &hl);
        /* Ranges in output order: the byte space, and so each rank's share, follows the files. */
        for (uint64_t k = 0; st == LSL_OK && k < n; k++) {
            uint64_t i = idx[ord[k]];
            total += f->t[i].nbytes;
            if (f->t[i].nbytes) {
                p->tensor[p->nranges] = i;
                p->ranges[p->nranges++] =
                    (lsl_i_range){0, f->t[i].offset, f->t[i].nbytes, (int32_t)s, hl + off[ord[k]]};
            }
        }
        free(ord);
        free(off);
        LSL_TRY(st);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", p->out.tmp, p->names[s]);
        /* on Lustre with no objects yet, so the plan can still choose the shard's layout */
        int lazy = strcmp(p->out.fs.name, "lustre") == 0 ? LSL_I_O_LOV_DELAY_CREATE : 0;
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | lazy, 0666);
        if (fd < 0)
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, errno, "%s", path));
        plan_shard(cfg, p, s, fd, hl + total, n, ranks, nodes);
        ssize_t w = lsl_i_pwrite(fd, head, hl, 0);
        int e = errno;
        if (w == (ssize_t)hl && ftruncate(fd, (off_t)(hl + total)) != 0)
            e = errno, w = -1;
        close(fd);
        if (w != (ssize_t)hl)
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, e ? e : EIO, "%s: writing the header", path));
        hc[2 * s] = lsl_crc32c_extend(0, head, hl);
        hc[2 * s + 1] = hl;
        free(head);
        head = NULL;
    }
    *head_crc_len = hc;
    *shard_of_out = shard_of;
    hc = NULL;
    shard_of = NULL;
fail:
    free(head);
    free(hc);
    free(ent);
    free(order);
    free(shard_of);
    return rc;
}

/* Write a side file into the checkpoint and record its CRC-32C for checksums.json. */
static lsl_status add_side_file(const char *dir, const char *name, const char *text, json_t *files)
{
    uint32_t c;
    char b64[9];
    lsl_status st = lsl_i_write_small(dir, name, text, &c);
    if (st == LSL_OK) {
        lsl_i_crc_base64(c, b64);
        json_object_set_new(files, name, json_string(b64));
    }
    return st;
}

static lsl_status finish_rank0(const lsl_convert_config *cfg, const lsl_i_h5_file *f, cplan *p,
                               const uint32_t *shard_of, const uint64_t *hc, const uint32_t *crcs)
{
    lsl_status rc = LSL_OK;
    json_t *files = json_object(), *wm = json_object(), *sums = json_object();
    char *text = NULL, b64[9];
    uint64_t total = 0;
    /* Each shard's CRC from its header's and its tensors' (in data order = range order). */
    uint32_t *fc = lsl_i_calloc(p->nshards, sizeof *fc);
    if (!fc)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t s = 0; s < p->nshards; s++)
        fc[s] = (uint32_t)hc[2 * s];
    for (uint64_t k = 0; k < p->nranges; k++)
        fc[p->ranges[k].dst] = lsl_crc32c_combine(fc[p->ranges[k].dst], crcs[k], p->ranges[k].len);
    for (uint32_t s = 0; s < p->nshards; s++) {
        lsl_i_crc_base64(fc[s], b64);
        json_object_set_new(files, p->names[s], json_string(b64));
    }
    for (uint64_t i = 0; i < f->n; i++) {
        json_object_set_new(wm, f->t[i].name, json_string(p->names[shard_of[i]]));
        total += f->t[i].nbytes;
    }
    if (p->nshards > 1) {
        json_t *idx = json_object(), *meta = json_object();
        json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
        json_object_set_new(idx, "metadata", meta);
        json_object_set(idx, "weight_map", wm);
        text = dumps(idx);
        json_decref(idx);
        if (!text)
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        LSL_TRY(add_side_file(p->out.tmp, "model.safetensors.index.json", text, files));
        free(text);
        text = NULL;
    }
    if (f->attrs[3]) {
        LSL_TRY(add_side_file(p->out.tmp, "config.json", f->attrs[3], files));
    } else if (cfg->quiet != LSL_PROGRESS_NONE) { /* a warning: JSON mode keeps it */
        lsl_i_log(LSL_LOG_WARN,
                  "loraslab: warning: %s carries no base config.json; the output needs one "
                  "before transformers can load it\n",
                  cfg->input);
    }
    json_t *prov = provenance(f, cfg->input);
    text = dumps(prov);
    json_decref(prov);
    if (!text)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(add_side_file(p->out.tmp, "loraslab.json", text, files));
    free(text);
    json_object_set_new(sums, "algorithm", json_string("crc32c"));
    json_object_set_new(sums, "encoding",
                        json_string("base64 of the big-endian 4-byte CRC-32C, as cloud object "
                                    "stores report it"));
    json_object_set(sums, "files", files);
    text = dumps(sums);
    if (!text)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(lsl_i_write_small(p->out.tmp, "checksums.json", text, NULL));
    /* The directory's entries are on disk before the rename publishes it, and the rename
     * before we report success. */
    LSL_TRY(lsl_i_out_publish(&p->out, cfg->overwrite));
fail:
    free(text);
    free(fc);
    json_decref(files);
    json_decref(wm);
    json_decref(sums);
    return rc;
}

static lsl_status convert_impl(lsl_i_comm *comm, const lsl_convert_config *cfg,
                               lsl_job_stats *stats)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    int rank = 0, src_fd = -1, *dst_fds = NULL;
    lsl_i_h5_file f;
    cplan p;
    uint64_t *hc = NULL;
    uint32_t *shard_of = NULL, *crcs = NULL;
    char **dst_paths = NULL, *in_path = NULL;
    void *staging = NULL;
    double t0 = lsl_i_now();
    uint64_t rss0 = lsl_i_rss_current();
    memset(&f, 0, sizeof f);
    memset(&p, 0, sizeof p);
    lsl_i_clear_error();
    rank = comm->rank;
    uint64_t staging_bytes = cfg && cfg->staging_bytes ? cfg->staging_bytes : LSL_DEFAULT_STAGING;
    int nodes = 1;
    if (!cfg || !cfg->input || !cfg->outdir)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "convert needs an input file and an output directory");
    else
        st = lsl_i_ioplan_check(cfg->stripe_count, cfg->stripe_size);
    LSL_TRY(lsl_i_agree(comm, st));
    const lsl_i_arg args[] = {
        LSL_I_ARG_STR("input", cfg->input),
        LSL_I_ARG_STR("outdir", cfg->outdir),
        LSL_I_ARG_NUM("max_shard_bytes", cfg->max_shard_bytes),
        LSL_I_ARG_NUM("staging_bytes", cfg->staging_bytes),
        LSL_I_ARG_NUM("no_verify", cfg->no_verify != 0),
        LSL_I_ARG_NUM("overwrite", cfg->overwrite != 0),
        LSL_I_ARG_NUM("stripe_count", cfg->stripe_count),
        LSL_I_ARG_NUM("stripe_size", cfg->stripe_size),
        LSL_I_ARG_NUM("plan", cfg->plan),
    };
    LSL_TRY(lsl_i_agree_args(comm, "convert", (int)(sizeof args / sizeof *args), args));
    LSL_TRY(lsl_i_comm_nodes(comm, &nodes)); /* for the shards' I/O plans */
    if (rank == 0)
        st = plan_rank0(cfg, &f, &p, &hc, &shard_of, comm->size, nodes);
    int verify = cfg && !cfg->no_verify;
    for (uint64_t i = 0; st == LSL_OK && rank == 0 && i < f.n; i++)
        if (!f.t[i].has_crc && verify)
            st = lsl_i_fail(LSL_ERR_FORMAT,
                            "%s: tensor `%s` has no crc32c attribute, so its bytes cannot be "
                            "verified (--no-verify converts it anyway, with checksums computed "
                            "from the bytes as they are)",
                            cfg->input, f.t[i].name);
        else if (!f.t[i].has_crc)
            verify = 1; /* the files' checksums must come from somewhere: computed, not checked */
    /* Everyone learns the plan: temporary dir, shard names, ranges (on failure, lsl_i_out_share
     * removes rank 0's temporary). */
    LSL_TRY(lsl_i_out_share(comm, &p.out, st));
    uint64_t hdr[4] = {p.nshards, p.nranges, (uint64_t)verify, f.n};
    in_path = rank == 0 ? lsl_i_strdup(cfg->input) : NULL;
    char **strs[1] = {&in_path};
    LSL_TRY(
        lsl_i_bcast(comm, 1, strs, 4, hdr,
                    rank == 0 && !in_path ? lsl_i_fail(LSL_ERR_NOMEM, "out of memory") : LSL_OK));
    if (rank != 0) {
        p.nshards = (uint32_t)hdr[0];
        p.nranges = hdr[1];
        p.names = lsl_i_calloc(p.nshards, sizeof *p.names);
        p.piece = lsl_i_calloc(p.nshards ? p.nshards : 1, sizeof *p.piece);
        p.ranges = lsl_i_calloc(p.nranges ? p.nranges : 1, sizeof *p.ranges);
    }
    verify = (int)hdr[2];
    st = p.names && p.piece && p.ranges ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    LSL_TRY(lsl_i_bcast_bytes(comm, p.names, 64 * (uint64_t)p.nshards, st));
    LSL_TRY(lsl_i_bcast_bytes(comm, p.piece, sizeof *p.piece * p.nshards, LSL_OK));
    LSL_TRY(lsl_i_bcast_bytes(comm, p.ranges, p.nranges * sizeof *p.ranges, LSL_OK));
    if (cfg->plan == LSL_PLAN_ONLY) { /* the plan was the job: the temporary goes */
        if (rank == 0) {
            uint64_t total = 0;
            char b[32];
            for (uint64_t k = 0; k < p.nranges; k++)
                total += p.ranges[k].len;
            lsl_i_log(LSL_LOG_INFO,
                      "plan: each of %d rank%s copies about %s (equal shares of the tensors' "
                      "bytes, cut across the shards at the nearest write piece)\n",
                      comm->size, comm->size == 1 ? "" : "s",
                      lsl_i_fmt_bytes(total / (uint64_t)comm->size, b, sizeof b));
        }
        if (stats)
            memset(stats, 0, sizeof *stats);
        goto fail;
    }

    dst_fds = lsl_i_malloc(sizeof *dst_fds * p.nshards);
    dst_paths = lsl_i_calloc(p.nshards, sizeof *dst_paths);
    crcs = lsl_i_calloc(p.nranges ? p.nranges : 1, sizeof *crcs);
    staging = lsl_i_malloc(staging_bytes);
    st = dst_fds && dst_paths && crcs && staging && in_path
             ? LSL_OK
             : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t s = 0; st == LSL_OK && s < p.nshards; s++) {
        size_t n = strlen(p.out.tmp) + 70;
        dst_paths[s] = lsl_i_malloc(n);
        dst_fds[s] = -1;
        if (!dst_paths[s]) {
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            break;
        }
        snprintf(dst_paths[s], n, "%s/%s", p.out.tmp, p.names[s]);
        dst_fds[s] = open(dst_paths[s], O_WRONLY | O_CLOEXEC);
        if (dst_fds[s] < 0)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s", dst_paths[s]);
    }
    if (st == LSL_OK)
        st = lsl_i_open_input(in_path, &src_fd, NULL);
    LSL_TRY(lsl_i_agree(comm, st));
    const char *src_paths[1] = {in_path};
    lsl_i_range_job job = {p.nranges,
                           p.ranges,
                           &src_fd,
                           src_paths,
                           p.nshards,
                           dst_fds,
                           (const char *const *)dst_paths,
                           staging,
                           staging_bytes,
                           verify,
                           "convert",
                           cfg->quiet,
                           f.n,
                           p.piece};
    LSL_TRY(lsl_i_ranges_run_all(comm, &job, crcs));
    st = LSL_OK;
    if (rank == 0) {
        for (uint64_t k = 0; st == LSL_OK && k < p.nranges; k++) {
            const lsl_i_h5_tensor *t = &f.t[p.tensor[k]];
            if (!verify)
                crcs[k] = t->crc32c; /* trusted: --no-verify */
            else if (t->has_crc && t->crc32c != crcs[k])
                st = lsl_i_fail(LSL_ERR_CORRUPT,
                                "%s: tensor `%s`: CRC-32C of its bytes is %08x but the file "
                                "records %08x (corrupted file?)",
                                cfg->input, t->name, crcs[k], t->crc32c);
        }
        if (st == LSL_OK)
            st = finish_rank0(cfg, &f, &p, shard_of, hc, crcs);
    }
    LSL_TRY(lsl_i_agree(comm, st));
    if (rank == 0 && cfg->quiet == LSL_PROGRESS_TEXT)
        lsl_i_log(LSL_LOG_INFO, "loraslab: wrote %s: %u safetensors file%s, %llu tensors%s\n",
                  cfg->outdir, p.nshards, p.nshards > 1 ? "s" : "", (unsigned long long)f.n,
                  cfg->no_verify ? "" : ", every checksum verified");
    if (stats) {
        uint64_t bytes = 0;
        for (uint64_t k = 0; k < p.nranges; k++)
            bytes += p.ranges[k].len;
        lsl_i_fill_stats(comm, t0, rss0, hdr[3], 0, bytes, stats);
    }
fail:
    /* removes the temporary unless it was published (any rank, if rank 0 may be gone) */
    lsl_i_out_discard(&p.out, rank, comm->broken);
    if (src_fd >= 0)
        close(src_fd);
    for (uint32_t s = 0; dst_fds && dst_paths && s < p.nshards; s++) {
        if (dst_paths[s] && dst_fds[s] >= 0)
            close(dst_fds[s]);
        free(dst_paths[s]);
    }
    free(dst_fds);
    free(dst_paths);
    free(crcs);
    free(staging);
    free(in_path);
    free(hc);
    free(shard_of);
    cplan_free(&p);
    lsl_i_h5_list_free(&f);
    return rc;
}

lsl_status lsl_convert_all(MPI_Comm comm, const lsl_convert_config *cfg, lsl_job_stats *stats)
{
    lsl_i_comm *c = NULL;
    lsl_status st = lsl_i_comm_open(comm, NULL, &c);
    return lsl_i_comm_close(&c, st == LSL_OK ? convert_impl(c, cfg, stats) : st);
}

lsl_status lsl_convert_cb_all(const lsl_comm_cb *comm, const lsl_convert_config *cfg,
                              lsl_job_stats *stats)
{
    lsl_i_comm *c = NULL;
    lsl_status st = lsl_i_comm_open(MPI_COMM_NULL, comm, &c);
    return lsl_i_comm_close(&c, st == LSL_OK ? convert_impl(c, cfg, stats) : st);
}
