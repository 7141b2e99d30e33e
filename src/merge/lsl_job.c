/* The offline merge: plan on rank 0, then every rank streams its own rows of every tensor from
 * the checkpoint through the writer, reading only its byte ranges. */
#include "lsl_plan.h"
#include "lsl_writer_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lsl_status read_lora(const lsl_plan *p, const int *fds, const lsl_plan_tensor *t,
                            uint64_t row0, uint64_t nrows, int nranks, int rank, lsl_lora_part *lp,
                            void **a, void **b)
{
    uint64_t in = t->info.shape[1], r = t->r;
    uint64_t a_es = lsl_dtype_bits(t->a_dtype) / 8, b_es = lsl_dtype_bits(t->b_dtype) / 8;
    uint64_t a0, an;
    /* An FSDP2 Shard(0) shard of A: the same chunking as the weights, over A's r rows. */
    lsl_partition_rows(r, nranks, rank, &a0, &an);
    *a = malloc(an * in * a_es + 1);
    *b = malloc(nrows * r * b_es + 1);
    if (!*a || !*b)
        return lsl_i_fail(LSL_ERR_NOMEM, "tensor `%s`: out of memory for LoRA factors",
                          t->info.name);
    lsl_status st = lsl_i_pread_full(fds[t->a_file], *a, an * in * a_es, t->a_off + a0 * in * a_es,
                                     p->files[t->a_file]);
    if (st == LSL_OK)
        st = lsl_i_pread_full(fds[t->b_file], *b, nrows * r * b_es, t->b_off + row0 * r * b_es,
                              p->files[t->b_file]);
    *lp = (lsl_lora_part){.rank = r,
                          .alpha = t->alpha,
                          .scaling = t->scaling,
                          .a_dtype = t->a_dtype,
                          .b_dtype = t->b_dtype,
                          .a_shard = LSL_SHARD_ROWS,
                          .a_off = a0,
                          .a_count = an,
                          .a = *a,
                          .b = *b};
    return st;
}

lsl_status lsl_merge_all(MPI_Comm comm, const lsl_job_config *cfg, lsl_job_stats *stats)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    lsl_plan plan;
    lsl_writer *w = NULL;
    lsl_tensor_info *infos = NULL;
    int *fds = NULL, rank = 0, size = 1;
    double t0 = lsl_i_now();
    uint64_t rss0 = lsl_i_rss_current();
    memset(&plan, 0, sizeof plan);
    lsl_i_clear_error();
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (!cfg)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_merge_all: cfg is NULL");
    else if (rank == 0)
        st = lsl_plan_build(cfg, &plan);
    LSL_TRY(lsl_plan_bcast(comm, &plan, st));

    fds = malloc(sizeof *fds * (plan.nfiles ? plan.nfiles : 1));
    infos = calloc(plan.n ? plan.n : 1, sizeof *infos);
    st = fds && infos ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t f = 0; fds && f < plan.nfiles; f++) {
        fds[f] = open(plan.files[f], O_RDONLY | O_CLOEXEC);
        if (fds[f] < 0 && st == LSL_OK)
            st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: open", plan.files[f]);
    }
    for (uint64_t i = 0; infos && i < plan.n; i++)
        infos[i] = plan.t[i].info;
    LSL_TRY(lsl_i_agree(comm, st));

    lsl_writer_config wc = LSL_WRITER_CONFIG_INIT;
    wc.staging_bytes = cfg->staging_bytes;
    wc.alignment = cfg->alignment;
    wc.overwrite = cfg->overwrite;
    wc.quiet = cfg->quiet;
    wc.progress_label = cfg->adapter ? "merge" : "import";
    LSL_TRY(lsl_writer_create_all(comm, cfg->output, &wc, &w));
    for (uint64_t i = 0; i < plan.nattrs; i++)
        LSL_TRY(lsl_writer_set_attr_all(w, plan.keys[i], plan.vals[i]));
    LSL_TRY(lsl_writer_define_all(w, plan.n, infos));
    for (uint64_t i = 0; i < plan.n; i++) {
        const lsl_plan_tensor *t = &plan.t[i];
        uint64_t rows = t->info.ndim ? t->info.shape[0] : 1, rb = lsl_dtype_bits(t->info.dtype) / 8;
        for (int d = 1; d < t->info.ndim; d++)
            rb *= t->info.shape[d];
        uint64_t row0, nrows;
        lsl_partition_rows(rows, size, rank, &row0, &nrows);
        lsl_i_src src = {NULL, fds[t->file], t->off + row0 * rb, plan.files[t->file]};
        lsl_lora_part lp;
        void *a = NULL, *b = NULL;
        st = LSL_OK;
        if (t->has_lora)
            st = read_lora(&plan, fds, t, row0, nrows, size, rank, &lp, &a, &b);
        st = lsl_i_writer_put(w, i, row0, nrows, &src, t->has_lora ? &lp : NULL, st);
        free(a);
        free(b);
        LSL_TRY(st);
    }
    LSL_TRY(lsl_writer_close_all(&w));

    if (stats) {
        uint64_t bytes = 0;
        for (uint64_t i = 0; i < plan.n; i++) {
            uint64_t e = 1, nb = 0;
            for (int d = 0; d < plan.t[i].info.ndim; d++)
                e *= plan.t[i].info.shape[d];
            lsl_i_dtype_bytes(plan.t[i].info.dtype, e, &nb);
            bytes += nb;
        }
        lsl_i_fill_stats(comm, t0, rss0, plan.n, plan.nmerged, bytes, stats);
    }
fail:
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
