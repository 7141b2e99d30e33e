/* HDF5 -> Hugging Face safetensors: rank 0 plans the shards and writes their headers; all ranks
 * copy equal shares of the tensor bytes (cut at the shards' write pieces) from the datasets'
 * offsets to their places in the shards, checking CRC-32C on the way; rank 0 writes the index and
 * side files and renames the directory into place. */
#define _GNU_SOURCE
#include "lsl_ioplan.h"

#include "lsl_blob.h"
#include "lsl_crc32c.h"
#include "lsl_h5.h"
#include "lsl_hfdir.h"
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

/* What rank 0 plans and every rank needs. */
typedef struct cplan {
    lsl_i_out out; /* the directory, its temporary */
    lsl_i_hfplan hf;
    uint64_t *piece; /* per shard: the plan's write piece, where the ranks' shares are cut */
    uint32_t *head_crc;
    uint64_t nranges;
    lsl_i_range *ranges;
    uint64_t *tensor; /* rank 0: the tensor each range copies */
} cplan;

static void cplan_free(cplan *p)
{
    lsl_i_hfplan_free(&p->hf);
    free(p->piece);
    free(p->head_crc);
    free(p->ranges);
    free(p->tensor);
    memset(p, 0, sizeof *p);
}

/* Rank 0: the input's tensors, the shards and their headers (lsl_i_hfdir_layout, the writer's
 * own layout, so a converted directory is the bytes a direct write gives), and the ranges every
 * rank copies, in output order so each rank's share follows the files. */
static lsl_status plan_rank0(const lsl_convert_config *cfg, lsl_i_h5_file *f, cplan *p, int ranks,
                             int nodes)
{
    lsl_status rc = LSL_OK;
    lsl_st_entry *ent = NULL;
    lsl_i_ioplan *plans = NULL;
    LSL_TRY(lsl_i_check_utf8(cfg->input, "the input path (recorded in loraslab.json)"));
    LSL_TRY(lsl_i_h5_list(cfg->input, f));
    ent = lsl_i_calloc(f->n ? f->n : 1, sizeof *ent);
    p->ranges = lsl_i_calloc(f->n ? f->n : 1, sizeof *p->ranges);
    p->tensor = lsl_i_calloc(f->n ? f->n : 1, sizeof *p->tensor);
    if (!ent || !p->ranges || !p->tensor)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < f->n; i++)
        ent[i] = (lsl_st_entry){f->t[i].name, f->t[i].dtype, f->t[i].ndim, f->t[i].shape,
                                f->t[i].nbytes};
    LSL_TRY(lsl_i_hfplan_split(f->n, ent, cfg->max_shard_bytes, &p->hf));
    p->piece = lsl_i_calloc(p->hf.nshards, sizeof *p->piece);
    p->head_crc = lsl_i_calloc(p->hf.nshards, sizeof *p->head_crc);
    plans = lsl_i_calloc(p->hf.nshards, sizeof *plans);
    if (!p->piece || !p->head_crc || !plans)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    {
        const char *in[1] = {cfg->input};
        LSL_TRY(lsl_i_out_create(cfg->outdir, 1, cfg->overwrite, cfg->quiet, in, 1, &p->out));
    }
    lsl_i_ioplan_in pin = {0, 0, ranks, nodes, cfg->stripe_count, cfg->stripe_size, 0, 0};
    LSL_TRY(lsl_i_hfdir_layout(&p->out.fs, p->out.tmp, &p->hf, f->n, ent, pin, cfg->plan != 0,
                               plans, p->head_crc));
    lsl_i_hfplan_drop_heads(&p->hf);
    for (uint32_t s = 0; s < p->hf.nshards; s++)
        p->piece[s] = plans[s].piece;
    /* ranges in output order (shard by shard, each in file order), empty tensors left out */
    uint64_t m = 0;
    for (uint64_t k = 0; k < f->n; k++) {
        uint64_t i = p->hf.in_file[k];
        if (!f->t[i].nbytes)
            continue;
        p->tensor[m] = i;
        p->ranges[m++] = (lsl_i_range){0, f->t[i].offset, f->t[i].nbytes,
                                       (int32_t)p->hf.shard_of[i], p->hf.offset[i]};
    }
    p->nranges = m;
fail:
    free(plans);
    free(ent);
    return rc;
}

static lsl_status finish_rank0(const lsl_convert_config *cfg, const lsl_i_h5_file *f, cplan *p,
                               const uint32_t *crcs)
{
    lsl_status rc = LSL_OK;
    uint64_t total = 0;
    /* Each shard's CRC from its header's and its tensors' (in data order = range order). */
    uint32_t *fc = lsl_i_calloc(p->hf.nshards, sizeof *fc);
    lsl_i_hfdir_tensor *t = lsl_i_calloc(f->n ? f->n : 1, sizeof *t);
    if (!fc || !t)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t s = 0; s < p->hf.nshards; s++)
        fc[s] = p->head_crc[s];
    for (uint64_t k = 0; k < p->nranges; k++)
        fc[p->ranges[k].dst] = lsl_crc32c_combine(fc[p->ranges[k].dst], crcs[k], p->ranges[k].len);
    for (uint64_t i = 0; i < f->n; i++) {
        const lsl_i_h5_tensor *h = &f->t[i];
        t[i] = (lsl_i_hfdir_tensor){h->name,     p->hf.shard_of[i], h->crc32c,     h->has_crc,
                                    h->has_lora, h->lora_rank,      h->lora_alpha, h->lora_scaling};
        total += h->nbytes;
    }
    lsl_i_hfdir_desc d = {p->out.tmp,
                          cfg->outdir,
                          p->hf.nshards,
                          (const char(*)[64])p->hf.names,
                          fc,
                          f->n,
                          t,
                          total,
                          f->attrs[0],
                          cfg->input,
                          f->attrs[1],
                          f->attrs[2],
                          f->attrs[3],
                          f->attrs[4],
                          f->nfiles,
                          f->files,
                          cfg->quiet};
    LSL_TRY(lsl_i_hfdir_finish(&d));
    /* The directory's entries are on disk before the rename publishes it, and the rename
     * before we report success. */
    LSL_TRY(lsl_i_out_publish(&p->out, cfg->overwrite));
fail:
    free(fc);
    free(t);
    return rc;
}

static lsl_status convert_impl(lsl_i_comm *comm, const lsl_convert_config *cfg,
                               lsl_job_stats *stats)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    int rank = 0, src_fd = -1, *dst_fds = NULL;
    lsl_i_h5_file f;
    cplan p;
    uint32_t *crcs = NULL;
    char **dst_paths = NULL, *in_path = NULL;
    void *staging = NULL;
    lsl_i_blob blob = {0};
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
        st = plan_rank0(cfg, &f, &p, comm->size, nodes);
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
    /* One blob: the counts, the input's path, the shard names, their pieces, the ranges. */
    uint64_t hdr[4] = {p.hf.nshards, p.nranges, (uint64_t)verify, f.n};
    if (rank == 0) {
        lsl_i_blob_put(&blob, hdr, sizeof hdr);
        lsl_i_blob_put_str(&blob, cfg->input);
        lsl_i_blob_put(&blob, p.hf.names, LSL_HF_NAME_MAX * (uint64_t)p.hf.nshards);
        lsl_i_blob_put(&blob, p.piece, sizeof *p.piece * p.hf.nshards);
        lsl_i_blob_put(&blob, p.ranges, p.nranges * sizeof *p.ranges);
    }
    LSL_TRY(lsl_i_blob_bcast(comm, &blob, LSL_OK));
    lsl_i_blob_get(&blob, hdr, sizeof hdr);
    in_path = lsl_i_blob_get_str(&blob);
    if (rank != 0) {
        p.hf.nshards = (uint32_t)hdr[0];
        p.nranges = hdr[1];
        p.hf.names = lsl_i_calloc(p.hf.nshards ? p.hf.nshards : 1, sizeof *p.hf.names);
        p.piece = lsl_i_calloc(p.hf.nshards ? p.hf.nshards : 1, sizeof *p.piece);
        p.ranges = lsl_i_calloc(p.nranges ? p.nranges : 1, sizeof *p.ranges);
        if (p.hf.names && p.piece && p.ranges) {
            lsl_i_blob_get(&blob, p.hf.names, LSL_HF_NAME_MAX * (uint64_t)p.hf.nshards);
            lsl_i_blob_get(&blob, p.piece, sizeof *p.piece * p.hf.nshards);
            lsl_i_blob_get(&blob, p.ranges, p.nranges * sizeof *p.ranges);
        }
    }
    verify = (int)hdr[2];
    st = p.hf.names && p.piece && p.ranges && in_path && !blob.bad
             ? LSL_OK
             : lsl_i_fail(LSL_ERR_NOMEM, "out of memory for the plan");
    LSL_TRY(lsl_i_agree(comm, st));
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

    dst_fds = lsl_i_malloc(sizeof *dst_fds * p.hf.nshards);
    dst_paths = lsl_i_calloc(p.hf.nshards, sizeof *dst_paths);
    crcs = lsl_i_calloc(p.nranges ? p.nranges : 1, sizeof *crcs);
    staging = lsl_i_malloc(staging_bytes);
    st = dst_fds && dst_paths && crcs && staging && in_path
             ? LSL_OK
             : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t s = 0; st == LSL_OK && s < p.hf.nshards; s++) {
        size_t n = strlen(p.out.tmp) + 70;
        dst_paths[s] = lsl_i_malloc(n);
        dst_fds[s] = -1;
        if (!dst_paths[s]) {
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            break;
        }
        snprintf(dst_paths[s], n, "%s/%s", p.out.tmp, p.hf.names[s]);
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
                           p.hf.nshards,
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
            st = finish_rank0(cfg, &f, &p, crcs);
    }
    LSL_TRY(lsl_i_agree(comm, st));
    if (rank == 0 && cfg->quiet == LSL_PROGRESS_TEXT)
        lsl_i_log(LSL_LOG_INFO, "loraslab: wrote %s: %u safetensors file%s, %llu tensors%s\n",
                  cfg->outdir, p.hf.nshards, p.hf.nshards > 1 ? "s" : "", (unsigned long long)f.n,
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
    for (uint32_t s = 0; dst_fds && dst_paths && s < p.hf.nshards; s++) {
        if (dst_paths[s] && dst_fds[s] >= 0)
            close(dst_fds[s]);
        free(dst_paths[s]);
    }
    free(dst_fds);
    free(dst_paths);
    free(crcs);
    free(staging);
    free(in_path);
    lsl_i_blob_free(&blob);
    cplan_free(&p);
    lsl_i_h5_list_free(&f);
    return rc;
}

lsl_status lsl_convert_all(const lsl_comm *comm, const lsl_convert_config *cfg,
                           lsl_job_stats *stats)
{
    lsl_i_comm *c = NULL;
    lsl_convert_config k;
    lsl_status st = lsl_i_comm_open(comm, &c);
    if (st == LSL_OK)
        st = lsl_i_agree(c, lsl_i_config_in(cfg, sizeof k, &k, 0, "lsl_convert_all"));
    return lsl_i_comm_close(&c, st == LSL_OK ? convert_impl(c, &k, stats) : st);
}
