/* The offline merge: plan on rank 0, then every rank streams its own rows of every tensor from
 * the checkpoint through the writer, reading only its byte ranges. */
#include "lsl_hfdir.h"
#include "lsl_plan.h"
#include "lsl_writer_i.h"
#ifdef LSL_HAVE_CUDA
#include "lsl_cuda.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Read this rank's operands for tensor t's rows [row0, row0 + nrows) and describe them as the
 * writer's lsl_i_lora: b (rows x r), this rank's FSDP2 Shard(0) rows of a (r x cols), and the
 * DoRA magnitude rows.  Owned buffers go to bufs[3] (caller frees). */
static lsl_status read_lora(const lsl_plan *p, const int *fds, const lsl_plan_tensor *t,
                            uint64_t row0, uint64_t nrows, int nranks, int rank, lsl_i_lora *lp,
                            void *bufs[3])
{
    uint64_t r = t->r, cols = t->info.ndim > 1 ? t->info.shape[1] : 1;
    uint64_t a_es = lsl_dtype_bits(t->a_dtype) / 8, b_es = lsl_dtype_bits(t->b_dtype) / 8;
    uint64_t a0, an;
    lsl_status st = LSL_OK;
    const char *ap = p->files[t->a_file], *bp = p->files[t->b_file];
    lsl_partition_rows(r, nranks, rank, &a0, &an);
    *lp = (lsl_i_lora){.rank = r,
                       .alpha = t->alpha,
                       .scaling = t->scaling,
                       .a_dtype = t->a_dtype,
                       .b_dtype = t->b_dtype,
                       .a_shard = LSL_SHARD_ROWS,
                       .a_off = a0,
                       .a_count = an,
                       .flags = t->flags};
    if (t->has_lora == LSL_PLAN_BIAS) {
        /* b' = b + s * v: a rank-1 LoRA with A = [1] (held by rank 0) and B = v. */
        static const float one = 1.0f;
        bufs[1] = lsl_i_malloc(nrows * b_es + 1);
        if (!bufs[1])
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        lp->a = &one;
        lp->b = bufs[1];
        return lsl_i_pread_full(fds[t->b_file], bufs[1], nrows * b_es, t->b_off + row0 * b_es, bp);
    }
    if (t->has_lora == LSL_PLAN_TRANSPOSED) {
        /* W += s * (B @ A)^T = s * A^T @ B^T: b is (A's columns [row0, +nrows))^T, a is B^T. */
        unsigned char *acols = lsl_i_malloc(r * nrows * a_es + 1),
                      *bfull = lsl_i_malloc(cols * r * b_es + 1);
        bufs[0] = lsl_i_malloc(an * cols * b_es + 1);
        bufs[1] = lsl_i_malloc(nrows * r * a_es + 1);
        bufs[2] = NULL;
        if (!acols || !bfull || !bufs[0] || !bufs[1])
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA factors");
        for (uint64_t k = 0; st == LSL_OK && k < r && nrows; k++)
            st = lsl_i_pread_full(fds[t->a_file], acols + k * nrows * a_es, nrows * a_es,
                                  t->a_off + (k * t->a_cols + row0) * a_es, ap);
        if (st == LSL_OK)
            st = lsl_i_pread_full(fds[t->b_file], bfull, cols * r * b_es, t->b_off, bp);
        if (st == LSL_OK) {
            lsl_i_transpose(acols, bufs[1], r, nrows, 0, nrows, a_es);
            unsigned char *bt = lsl_i_malloc(r * cols * b_es + 1);
            if (!bt) {
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            } else {
                lsl_i_transpose(bfull, bt, cols, r, 0, r, b_es);
                memcpy(bufs[0], bt + a0 * cols * b_es, an * cols * b_es);
                free(bt);
            }
        }
        free(acols);
        free(bfull);
        lp->a_dtype = t->b_dtype;
        lp->b_dtype = t->a_dtype;
        lp->a = bufs[0];
        lp->b = bufs[1];
        if (st == LSL_OK && t->has_dora) { /* every column's magnitude, on every rank */
            uint64_t m_es = lsl_dtype_bits(t->m_dtype) / 8;
            if (!(bufs[2] = lsl_i_malloc(cols * m_es + 1)))
                return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            st = lsl_i_pread_full(fds[t->a_file], bufs[2], cols * m_es, t->m_off, ap);
            lp->magnitude = bufs[2];
            lp->magnitude_dtype = t->m_dtype;
        }
        return st;
    }
    bufs[0] = lsl_i_malloc(an * cols * a_es + 1);
    bufs[1] = lsl_i_malloc(nrows * r * b_es + 1);
    if (!bufs[0] || !bufs[1])
        return lsl_i_fail(LSL_ERR_NOMEM, "tensor `%s`: out of memory for LoRA factors",
                          t->info.name);
    st = lsl_i_pread_full(fds[t->a_file], bufs[0], an * cols * a_es, t->a_off + a0 * cols * a_es,
                          ap);
    if (st == LSL_OK)
        st = lsl_i_pread_full(fds[t->b_file], bufs[1], nrows * r * b_es, t->b_off + row0 * r * b_es,
                              bp);
    lp->a = bufs[0];
    lp->b = bufs[1];
    if (st == LSL_OK && t->has_dora) {
        uint64_t m_es = lsl_dtype_bits(t->m_dtype) / 8;
        if (!(bufs[2] = lsl_i_malloc(nrows * m_es + 1)))
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        st = lsl_i_pread_full(fds[t->a_file], bufs[2], nrows * m_es, t->m_off + row0 * m_es, ap);
        lp->magnitude = bufs[2];
        lp->magnitude_dtype = t->m_dtype;
    }
    return st;
}

/* The A gathers of consecutive tensors are batched (one collective step per batch, not per
 * tensor): up to BATCH_MAX tensors whose whole A's and largest rank's B rows together stay
 * within a quarter of the staging budget per rank (or one tensor's, when larger), so host memory
 * stays independent of the model's size (a 7B layer's seven fp32 r = 32 factors take about
 * 12 MiB at one rank: a batch a layer with the default 64 MiB budget). */
#define BATCH_MAX 64

/* A tensor of a batch: this rank's rows and LoRA operands, and A once gathered. */
typedef struct lsl_job_part {
    uint64_t row0, nrows;
    lsl_i_lora lp;
    void *bufs[3];
    void *full;
} lsl_job_part;

/* The end of the batch that starts at tensor i; the same on every rank (the plan is). */
static uint64_t batch_end(const lsl_plan *p, uint64_t i, int nranks, uint64_t cap)
{
    uint64_t j = i, bytes = 0;
    for (; j < p->n && j - i < BATCH_MAX; j++) {
        const lsl_plan_tensor *t = &p->t[j];
        uint64_t rows = lsl_i_rows(&t->info), cols = lsl_i_row_elems(&t->info), b = 0;
        if (t->has_lora)
            b = t->r * (cols * (lsl_dtype_bits(t->a_dtype) / 8) +
                        (rows + (uint64_t)nranks - 1) / (uint64_t)nranks *
                            (lsl_dtype_bits(t->b_dtype) / 8));
        if (j > i && bytes + b > cap)
            break;
        bytes += b;
    }
    return j;
}

/* Collective: the base directory's serving files (tokenizer, generation config, chat template,
 * remote code) go into the output, read by rank 0. */
static lsl_status carry_files(lsl_i_comm *comm, lsl_writer *w, const lsl_job_config *cfg)
{
    int rank = comm->rank;
    lsl_i_hfdir_file *files = NULL;
    uint64_t n = 0;
    const char **names = NULL;
    const void **data = NULL;
    uint64_t *len = NULL;
    lsl_status st = LSL_OK;
    if (rank == 0) {
        st = lsl_i_hf_files_scan(cfg->base, cfg->quiet, &files, &n);
        names = lsl_i_calloc(n + 1, sizeof *names);
        data = lsl_i_calloc(n + 1, sizeof *data);
        len = lsl_i_calloc(n + 1, sizeof *len);
        if (st == LSL_OK && (!names || !data || !len))
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        for (uint64_t i = 0; st == LSL_OK && i < n; i++) {
            names[i] = files[i].name;
            data[i] = files[i].data;
            len[i] = files[i].len;
        }
    }
    lsl_status rc = lsl_i_agree(comm, st);
    if (rc == LSL_OK)
        rc = lsl_writer_add_files_all(w, n, names, data, len);
    lsl_i_hf_files_free(files, n);
    free(names);
    free(data);
    free(len);
    return rc;
}

static lsl_status merge_impl(lsl_i_comm *comm, const lsl_job_config *cfg, lsl_job_stats *stats)
{
    lsl_job_part *lb = NULL;
    lsl_i_ashard sh[BATCH_MAX];
    lsl_status rc = LSL_OK, st = LSL_OK;
    lsl_plan plan;
    lsl_writer *w = NULL;
    lsl_tensor_info *infos = NULL;
    int *fds = NULL, rank = 0, size = 1;
    char **inputs = NULL;
    double t0 = lsl_i_now();
    uint64_t rss0 = lsl_i_rss_current();
    memset(&plan, 0, sizeof plan);
    lsl_i_clear_error();
    rank = comm->rank;
    size = comm->size;
    if (!cfg)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_merge_all: cfg is NULL");
    LSL_TRY(lsl_i_agree(comm, st));
    const lsl_i_arg args[] = {
        LSL_I_ARG_STR("base", cfg->base),
        LSL_I_ARG_STR("adapter", cfg->adapter),
        LSL_I_ARG_STR("output", cfg->output),
        LSL_I_ARG_NUM("staging_bytes", cfg->staging_bytes),
        LSL_I_ARG_NUM("alignment", cfg->alignment),
        LSL_I_ARG_NUM("overwrite", cfg->overwrite != 0),
        LSL_I_ARG_NUM("strict", cfg->strict != 0),
        LSL_I_ARG_NUM("merge_on (--device)", cfg->merge_on),
        LSL_I_ARG_NUM("stripe_count", cfg->stripe_count),
        LSL_I_ARG_NUM("stripe_size", cfg->stripe_size),
        LSL_I_ARG_NUM("plan", cfg->plan),
        LSL_I_ARG_NUM("format", (uint64_t)cfg->format),
        LSL_I_ARG_NUM("max_shard_bytes", cfg->max_shard_bytes),
    };
    LSL_TRY(lsl_i_agree_args(comm, cfg->adapter ? "merge" : "import",
                             (int)(sizeof args / sizeof *args), args));
    if (rank == 0)
        st = lsl_plan_build(cfg, &plan);
    LSL_TRY(lsl_plan_bcast(comm, &plan, st));

    fds = lsl_i_malloc(sizeof *fds * (plan.nfiles ? plan.nfiles : 1));
    infos = lsl_i_calloc(plan.n ? plan.n : 1, sizeof *infos);
    st = fds && infos ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t f = 0; fds && f < plan.nfiles; f++) {
        fds[f] = -1;
        if (st == LSL_OK)
            st = lsl_i_open_input(plan.files[f], &fds[f], NULL);
    }
    for (uint64_t i = 0; infos && i < plan.n; i++)
        infos[i] = plan.t[i].info;
    LSL_TRY(lsl_i_agree(comm, st));
    int gpu = cfg->merge_on == LSL_MEM_DEVICE;
#ifdef LSL_HAVE_CUDA
    if (gpu) {
        int rpg = 0;
        LSL_TRY(lsl_i_cuda_select(comm, &rpg));
        if (rank == 0 && cfg->quiet == LSL_PROGRESS_TEXT)
            lsl_i_log(LSL_LOG_INFO, "loraslab: merging on the GPU (%d rank%s per GPU)\n", rpg,
                      rpg == 1 ? "" : "s");
    }
#else
    if (gpu)
        LSL_TRY(lsl_i_agree(comm, lsl_i_fail(LSL_ERR_UNSUPPORTED,
                                             "merging on the GPU needs a build with CUDA (this "
                                             "one has none)")));
#endif

    lsl_writer_config wc = LSL_WRITER_CONFIG_INIT;
    wc.staging_bytes = cfg->staging_bytes;
    wc.alignment = cfg->alignment;
    wc.overwrite = cfg->overwrite;
    wc.quiet = cfg->quiet;
    wc.progress_label = cfg->adapter ? "merge" : "import";
    wc.stripe_count = cfg->stripe_count;
    wc.stripe_size = cfg->stripe_size;
    wc.print_plan = cfg->plan != 0;
    wc.format = cfg->format;
    wc.max_shard_bytes = cfg->max_shard_bytes;
    /* Every file the job reads: the output may be none of them, even with --overwrite. */
    inputs = lsl_i_calloc((size_t)plan.nfiles + 3, sizeof *inputs);
    st = inputs ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t f = 0; inputs && f < plan.nfiles; f++)
        inputs[f] = plan.files[f];
    if (inputs && rank == 0) {
        inputs[plan.nfiles] = lsl_i_join(cfg->base, "config.json");
        inputs[plan.nfiles + 1] = lsl_i_join(cfg->base, "model.safetensors.index.json");
        inputs[plan.nfiles + 2] =
            cfg->adapter ? lsl_i_join(cfg->adapter, "adapter_config.json") : NULL;
    }
    LSL_TRY(lsl_i_agree(comm, st));
    st = lsl_i_writer_create(comm, cfg->output, &wc, (const char *const *)inputs,
                             rank == 0 ? plan.nfiles + 3 : 0, &w);
    for (int k = 0; k < 3 && inputs; k++)
        free(inputs[plan.nfiles + k]);
    LSL_TRY(st);
    for (uint64_t i = 0; i < plan.nattrs; i++)
        LSL_TRY(lsl_writer_set_attr_all(w, plan.keys[i], plan.vals[i]));
    LSL_TRY(carry_files(comm, w, cfg));
    LSL_TRY(lsl_writer_define_all(w, plan.n, infos));
    if (cfg->plan)
        lsl_i_writer_log_extents(w);
    if (cfg->plan == LSL_PLAN_ONLY) { /* the plan was the job: nothing appears at the path */
        lsl_writer_abort_all(&w);
        if (stats)
            memset(stats, 0, sizeof *stats);
        goto fail;
    }
    lb = lsl_i_calloc(BATCH_MAX, sizeof *lb);
    LSL_TRY(lsl_i_agree(comm, lb ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory")));
    for (uint64_t i = 0, j; i < plan.n; i = j) {
        j = batch_end(&plan, i, size,
                      (cfg->staging_bytes ? cfg->staging_bytes : LSL_DEFAULT_STAGING) / 4);
        /* This rank's LoRA operands for tensors [i, j), then all their A's in one gather. */
        st = LSL_OK;
        uint64_t k = 0;
        for (uint64_t x = i; x < j; x++) {
            const lsl_plan_tensor *t = &plan.t[x];
            lsl_partition_rows(lsl_i_rows(&t->info), size, rank, &lb[x - i].row0, &lb[x - i].nrows);
            if (!t->has_lora)
                continue;
            if (st == LSL_OK)
                st = read_lora(&plan, fds, t, lb[x - i].row0, lb[x - i].nrows, size, rank,
                               &lb[x - i].lp, lb[x - i].bufs);
            sh[k] = lsl_i_ashard_of(&lb[x - i].lp, lsl_i_row_elems(&t->info));
            lb[x - i].full = sh[k++].full;
            if (!lb[x - i].full && st == LSL_OK)
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A");
        }
        st = lsl_i_writer_gather(w, k, sh, st);
        for (uint64_t x = i; x < j && st == LSL_OK; x++) {
            const lsl_plan_tensor *t = &plan.t[x];
            lsl_job_part *b = &lb[x - i];
            uint64_t rb = lsl_i_row_elems(&t->info) * (lsl_dtype_bits(t->info.dtype) / 8);
            lsl_i_src src = {NULL, fds[t->file], t->off + b->row0 * rb, plan.files[t->file],
                             NULL, NULL};
            if (t->has_lora)
                lsl_i_lora_set_full(&b->lp, b->full);
#ifdef LSL_HAVE_CUDA
            /* The plan is the same on every rank, so every rank takes the same path. */
            if (gpu && !t->has_dora && !(t->flags & LSL_LORA_DELTA_IN_WEIGHT_DTYPE))
                st = lsl_i_writer_put_device(w, x, b->row0, b->nrows, &src,
                                             t->has_lora ? &b->lp : NULL, LSL_OK);
            else
#endif
                st = lsl_i_writer_put(w, x, b->row0, b->nrows, &src, t->has_lora ? &b->lp : NULL,
                                      LSL_OK);
        }
        for (uint64_t x = i; x < j; x++) {
            free(lb[x - i].full);
            for (int q = 0; q < 3; q++)
                free(lb[x - i].bufs[q]);
            memset(&lb[x - i], 0, sizeof *lb);
        }
        LSL_TRY(st);
    }
    LSL_TRY(lsl_writer_close_all(&w));

    if (stats) {
        uint64_t bytes = 0;
        for (uint64_t i = 0; i < plan.n; i++) {
            uint64_t nb = 0;
            lsl_i_dtype_bytes(plan.t[i].info.dtype,
                              lsl_i_rows(&plan.t[i].info) * lsl_i_row_elems(&plan.t[i].info), &nb);
            bytes += nb;
        }
        lsl_i_fill_stats(comm, t0, rss0, plan.n, plan.nmerged, bytes, stats);
    }
fail:
    free(lb);
    free(inputs);
    if (w)
        lsl_writer_abort_all(&w);
    for (uint32_t f = 0; fds && f < plan.nfiles; f++)
        if (fds[f] >= 0)
            close(fds[f]);
    free(fds);
    free(infos);
    lsl_plan_free(&plan);
    return rc;
}

lsl_status lsl_merge_all(const lsl_comm *comm, const lsl_job_config *cfg, lsl_job_stats *stats)
{
    lsl_i_comm *c = NULL;
    lsl_job_config k;
    lsl_status st = lsl_i_comm_open(comm, &c);
    if (st == LSL_OK)
        st = lsl_i_agree(c, lsl_i_config_in(cfg, sizeof k, &k, 0, "lsl_merge_all"));
    return lsl_i_comm_close(&c, st == LSL_OK ? merge_impl(c, &k, stats) : st);
}
