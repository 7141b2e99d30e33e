#define _GNU_SOURCE /* renameat2 */
/* The writer's life: create (rank 0 makes the temporary), define (rank 0 lays out the HDF5 file,
 * every rank opens the data path), close (rank 0 finishes the attributes and publishes) or
 * abort.  The puts are in lsl_put*.c. */
#include "lsl_writer_s.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const phase_name[P_COUNT] = {
    "define", "GPU setup",      "A gathers",      "GPU launches", "GPU waits",
    "writes", "checksum waits", "put agreements", "rest of puts", "close"};

static void writer_free(lsl_writer *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->nattrs; i++) {
        free(w->keys[i]);
        free(w->vals[i]);
    }
    free(w->keys);
    free(w->vals);
    for (uint64_t i = 0; i < w->n; i++)
        free((char *)w->t[i].name);
    free(w->t);
    free(w->offsets);
    free(w->nbytes);
    free(w->done);
    free(w->fin);
    lsl_i_hfplan_free(&w->hfp);
    free(w->vbase);
    free(w->head_crc);
    lsl_i_hf_files_free(w->files, w->nfiles);
    free(w->per_rank);
    lsl_i_reader_stop(&w->reader); /* before the staging it may be reading into */
    free(w->staging);
    lsl_i_out_discard(&w->out, w->rank, w->comm && w->comm->broken);
    free(w->hints);
#ifdef LSL_HAVE_CUDA
    lsl_i_cuda_close(&w->cuda);
#endif
    lsl_i_crcw_stop(&w->crc);
    lsl_i_comm_free(&w->comm);
    free(w);
}

lsl_status lsl_i_writer_create(lsl_i_comm *comm, const char *path, const lsl_writer_config *cfg,
                               const char *const *inputs, uint64_t ninputs, lsl_writer **out)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    lsl_writer *w = NULL;
    lsl_i_clear_error();
    if (!out)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_create_all: out is NULL");
    *out = NULL;
    lsl_i_comm *own = NULL;
    LSL_TRY(lsl_i_comm_dup(comm, &own));
    /* Every rank learns whether every rank has a writer before anything else happens. */
    w = lsl_i_calloc(1, sizeof *w);
    uint64_t *per_rank = lsl_i_calloc(LSL_I_PER_RANK * (size_t)own->size, sizeof *per_rank);
    st = lsl_i_agree(own, w && per_rank ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory"));
    if (st != LSL_OK) {
        free(w);
        free(per_rank);
        lsl_i_comm_free(&own);
        return st;
    }
    w->comm = own;
    w->per_rank = per_rank;
    w->file.fd = -1;
    w->out.lock_fd = w->out.slot = -1;
    w->rank = own->rank;
    w->size = own->size;
    if (cfg)
        w->cfg = *cfg;
    w->staging_bytes = w->cfg.staging_bytes ? w->cfg.staging_bytes : LSL_DEFAULT_STAGING;
    if (w->staging_bytes < 4096 || w->staging_bytes > ((uint64_t)1 << 30))
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "staging budget of %llu bytes: use 4 KiB to 1 GiB",
                        (unsigned long long)w->staging_bytes);
    else if (w->cfg.alignment > LSL_MAX_ALIGNMENT)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "alignment of %llu bytes: at most 1 GiB (each large tensor starts on a "
                        "multiple of it, so the file's holes grow with it)",
                        (unsigned long long)w->cfg.alignment);
    else if (w->cfg.format < LSL_OUTPUT_AUTO || w->cfg.format > LSL_OUTPUT_SAFETENSORS)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG,
                        "output format %d: use LSL_OUTPUT_AUTO, _HDF5 or _SAFETENSORS",
                        w->cfg.format);
    else
        st = lsl_i_ioplan_check(w->cfg.stripe_count, w->cfg.stripe_size);
    w->hf = w->cfg.format == LSL_OUTPUT_SAFETENSORS ||
            (w->cfg.format == LSL_OUTPUT_AUTO && path && !lsl_i_is_hdf5_path(path));
    if (w->rank == 0 && st == LSL_OK) {
        st =
            lsl_i_out_create(path, w->hf, w->cfg.overwrite, w->cfg.quiet, inputs, ninputs, &w->out);
        w->fs = w->out.fs;
        const char *h = lsl_i_env(LSL_ENV_MPIIO_HINTS);
        if (st == LSL_OK && h && !(w->hints = lsl_i_strdup(h)))
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    LSL_TRY(lsl_i_out_share(w->comm, &w->out, st));
    /* Settings read on rank 0 only and broadcast, so ranks cannot disagree. */
    char **hints[1] = {&w->hints};
    LSL_TRY(lsl_i_bcast_strs(w->comm, 1, hints, NULL, LSL_OK));
    LSL_TRY(lsl_i_bcast_raw(w->comm, &w->fs, sizeof w->fs, 0));
    LSL_TRY(lsl_i_comm_nodes(w->comm, &w->nodes)); /* for the I/O plan's aggregators */
    /* Rank 0's environment decides, so a variable set on some ranks only cannot leave the
     * others out of the closing reduction. */
    const char *prof = w->rank == 0 ? lsl_i_env(LSL_ENV_PROFILE) : NULL;
    int64_t profile = !prof ? 0 : strcmp(prof, "2") == 0 ? 2 : 1;
    LSL_TRY(lsl_i_bcast_raw(w->comm, &profile, sizeof profile, 0));
    w->profile = (int)profile;
    w->t0 = lsl_i_now();
    lsl_i_crcw_start(&w->crc);
    w->state = W_CREATED;
    *out = w;
    return LSL_OK;
fail:
    writer_free(w);
    return rc;
}

MPI_Comm lsl_i_writer_comm(const lsl_writer *w)
{
    return w->comm->mpi;
}

lsl_status lsl_writer_create_all(const lsl_comm *comm, const char *path,
                                 const lsl_writer_config *cfg, lsl_writer **out)
{
    lsl_i_comm *c = NULL;
    if (out)
        *out = NULL;
    lsl_writer_config kc;
    const lsl_writer_config *k = &kc;
    lsl_status st = lsl_i_comm_open(comm, &c);
    if (st == LSL_OK)
        st = lsl_i_agree(c, lsl_i_config_in(cfg, sizeof kc, &kc, 1, "lsl_writer_create_all"));
    if (st == LSL_OK) {
        const lsl_i_arg args[] = {
            LSL_I_ARG_STR("path", path),
            LSL_I_ARG_NUM("overwrite", k->overwrite != 0),
            LSL_I_ARG_NUM("staging_bytes", k->staging_bytes),
            LSL_I_ARG_NUM("alignment", k->alignment),
            LSL_I_ARG_NUM("stripe_count", k->stripe_count),
            LSL_I_ARG_NUM("stripe_size", k->stripe_size),
            LSL_I_ARG_NUM("print_plan", k->print_plan != 0),
            LSL_I_ARG_NUM("format", (uint64_t)k->format),
            LSL_I_ARG_NUM("max_shard_bytes", k->max_shard_bytes),
        };
        st = lsl_i_agree_args(c, "lsl_writer_create_all", (int)(sizeof args / sizeof *args), args);
    }
    /* the writer makes its own */
    return lsl_i_comm_close(&c, st == LSL_OK ? lsl_i_writer_create(c, path, k, NULL, 0, out) : st);
}

lsl_status lsl_writer_set_attr_all(lsl_writer *w, const char *key, const char *value)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_set_attr_all: writer is NULL");
    lsl_status st = LSL_OK;
    char **k = NULL, **v = NULL;
    if (!key || !*key || !value)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_set_attr_all: NULL or empty argument");
    else if (w->state != W_CREATED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "attributes must be set before define");
    else if (!(k = lsl_i_realloc(w->keys, (w->nattrs + 1) * sizeof *k)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else if (w->keys = k, !(v = lsl_i_realloc(w->vals, (w->nattrs + 1) * sizeof *v)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else {
        w->vals = v;
        w->keys[w->nattrs] = lsl_i_strdup(key);
        w->vals[w->nattrs] = lsl_i_strdup(value);
        w->nattrs++;
        if (!w->keys[w->nattrs - 1] || !w->vals[w->nattrs - 1])
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    /* collective, as documented: one rank's failure is every rank's */
    return lsl_i_agree(w->comm, st);
}

/* Rank 0: the caller's serving files, checked and copied. */
static lsl_status copy_files(lsl_writer *w, uint64_t n, const char *const *names,
                             const void *const *data, const uint64_t *len)
{
    if (n > LSL_HF_MAX_FILES)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "%llu serving files: at most %d",
                          (unsigned long long)n, LSL_HF_MAX_FILES);
    if (n && (!names || !data || !len))
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_add_files_all: NULL array");
    if (!(w->files = lsl_i_calloc(n ? n : 1, sizeof *w->files)))
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        if (!lsl_i_hf_file_name_ok(names[i]))
            return lsl_i_fail(LSL_ERR_INVALID_ARG,
                              "serving file \"%.200s\": not a plain file name, hidden, or one of "
                              "the checkpoint's own (config.json, *.safetensors, the index, "
                              "loraslab.json, checksums.json)",
                              names[i] ? names[i] : "(null)");
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(names[j], names[i]) == 0)
                return lsl_i_fail(LSL_ERR_INVALID_ARG, "serving file %s is given twice", names[i]);
        if (len[i] > LSL_HF_MAX_FILE_SIZE || (len[i] && !data[i]))
            return lsl_i_fail(LSL_ERR_INVALID_ARG, "serving file %s: %s", names[i],
                              len[i] > LSL_HF_MAX_FILE_SIZE ? "over 256 MiB" : "data is NULL");
        w->files[i].name = lsl_i_strdup(names[i]);
        w->files[i].data = lsl_i_malloc(len[i] ? len[i] : 1);
        w->nfiles = i + 1;
        if (!w->files[i].name || !w->files[i].data)
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory for serving file %s", names[i]);
        if (len[i])
            memcpy(w->files[i].data, data[i], len[i]);
        w->files[i].len = len[i];
    }
    return LSL_OK;
}

lsl_status lsl_writer_add_files_all(lsl_writer *w, uint64_t n, const char *const *names,
                                    const void *const *data, const uint64_t *len)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_add_files_all: writer is NULL");
    lsl_i_clear_error();
    lsl_status st = LSL_OK;
    if (w->state != W_CREATED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "serving files must be added before define");
    else if (w->files_added)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "lsl_writer_add_files_all called twice");
    else if (w->rank == 0)
        st = copy_files(w, n, names, data, len);
    w->files_added = 1;
    return lsl_i_agree(w->comm, st);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static lsl_status check_tensors(uint64_t n, const lsl_tensor_info *t, uint64_t *nbytes,
                                uint64_t *total)
{
    lsl_status rc = LSL_OK;
    const char **names = lsl_i_malloc((n ? n : 1) * sizeof *names);
    if (!names)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    *total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *nm = t[i].name;
        if (!nm || !*nm || strchr(nm, '/') || strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
            LSL_FAIL(LSL_ERR_INVALID_ARG, "tensor %llu: name \"%s\" cannot name an HDF5 dataset",
                     (unsigned long long)i, nm ? nm : "(null)");
        /* names go into safetensors headers and JSON, which are UTF-8 */
        LSL_TRY(lsl_i_check_utf8(nm, "tensor name"));
        if (!lsl_dtype_name(t[i].dtype) || lsl_dtype_bits(t[i].dtype) % 8 != 0)
            LSL_FAIL(LSL_ERR_DTYPE, "tensor `%s`: dtype %s is not supported (sub-byte or invalid)",
                     nm, lsl_dtype_name(t[i].dtype) ? lsl_dtype_name(t[i].dtype) : "?");
        if (t[i].ndim < 0 || t[i].ndim > LSL_MAX_NDIM)
            LSL_FAIL(LSL_ERR_SHAPE, "tensor `%s`: %d dimensions", nm, t[i].ndim);
        uint64_t e = 1;
        for (int d = 0; d < t[i].ndim; d++)
            if (lsl_mul_overflow(e, t[i].shape[d], &e))
                LSL_FAIL(LSL_ERR_SHAPE, "tensor `%s`: shape overflows 64 bits", nm);
        if (!lsl_i_dtype_bytes(t[i].dtype, e, &nbytes[i]) ||
            lsl_add_overflow(*total, nbytes[i], total))
            LSL_FAIL(LSL_ERR_SHAPE, "tensor `%s`: size overflows 64 bits", nm);
        names[i] = nm;
    }
    qsort(names, n, sizeof *names, cmp_names);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            LSL_FAIL(LSL_ERR_INVALID_ARG, "tensor `%s` is defined twice", names[i]);
fail:
    free(names);
    return rc;
}

static lsl_status define_impl(lsl_writer *w, uint64_t ntensors, const lsl_tensor_info *tensors)
{
    lsl_status rc = LSL_OK, st = LSL_OK;
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_define_all: writer is NULL");
    lsl_i_clear_error();
    if (w->state != W_CREATED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "define called twice or after a failure");
    else if (ntensors && !tensors)
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_define_all: tensors is NULL");
    else {
        w->t = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->t);
        w->offsets = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->offsets);
        w->nbytes = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->nbytes);
        w->done = lsl_i_calloc(ntensors ? ntensors : 1, 1);
        w->fin = lsl_i_calloc(ntensors ? ntensors : 1, sizeof *w->fin);
        w->staging = lsl_i_malloc(w->staging_bytes);
        if (!w->t || !w->offsets || !w->nbytes || !w->done || !w->fin || !w->staging)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for %llu tensors and staging",
                            (unsigned long long)ntensors);
        for (uint64_t i = 0; st == LSL_OK && i < ntensors; i++) {
            w->t[i] = tensors[i];
            w->t[i].name = NULL;
            if (tensors[i].name && !(w->t[i].name = lsl_i_strdup(tensors[i].name)))
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            w->n = i + 1;
        }
        if (st == LSL_OK)
            st = check_tensors(ntensors, w->t, w->nbytes, &w->total_bytes);
    }
    /* A local failure first: a rank that could not copy the list would otherwise look like one
     * that defined a different list, and the others would report that instead. */
    LSL_TRY(lsl_i_agree(w->comm, st));
    /* The list is logically collective: compare a digest of it with every other rank's. */
    uint64_t h = LSL_I_FNV_SEED;
    for (uint64_t i = 0; st == LSL_OK && i < ntensors; i++) {
        h = lsl_i_fnv1a(h, w->t[i].name, strlen(w->t[i].name) + 1);
        h = lsl_i_fnv1a(h, &w->t[i].dtype, sizeof w->t[i].dtype);
        h = lsl_i_fnv1a(h, &w->t[i].ndim, sizeof w->t[i].ndim);
        h = lsl_i_fnv1a(h, w->t[i].shape, sizeof(uint64_t) * (size_t)w->t[i].ndim);
    }
    int64_t hv = (int64_t)h;
    if (!lsl_i_same_everywhere(w->comm, &hv, 1, &st) && st == LSL_OK)
        st = lsl_i_fail(LSL_ERR_INCONSISTENT, "ranks defined different tensor lists");
    LSL_TRY(lsl_i_agree(w->comm, st));
    lsl_i_progress_start(&w->prog, w->cfg.progress_label ? w->cfg.progress_label : "write",
                         w->cfg.quiet, w->size, w->n, w->total_bytes);
    w->prog.t0 = w->t0;

    if (w->rank == 0) {
        lsl_i_ioplan_in in = {
            w->total_bytes,   w->n, w->size, w->nodes, w->cfg.stripe_count, w->cfg.stripe_size,
            w->cfg.alignment, 0};
        if (!w->hf) /* a directory's shards get plans of their own (lsl_writer_hf.c) */
            lsl_i_ioplan_for_file(&w->fs, in, w->out.lock_fd, w->out.path, &w->plan);
        uint64_t align = w->plan.alignment;
        /* Alignment holes stay sparse; what must fit is the data plus the metadata. */
        uint64_t need = w->total_bytes + (1u << 20) + w->n * 4096u;
        char b1[32], b2[32], b4[32];
        /* statvfs can overstate what a job may write (Lustre OSTs fill one by one, quotas):
         * LSL_NO_SPACE_CHECK=1 skips this and relies on the write errors alone. */
        const char *nocheck = lsl_i_env(LSL_ENV_NO_SPACE_CHECK);
        if (w->fs.avail_bytes < need && !(nocheck && strcmp(nocheck, "1") == 0))
            st = lsl_i_fail(LSL_ERR_NOSPACE, "%s: needs %s but the filesystem has %s available",
                            w->out.dir, lsl_i_fmt_bytes(need, b1, sizeof b1),
                            lsl_i_fmt_bytes(w->fs.avail_bytes, b2, sizeof b2));
        else if (w->hf)
            st = lsl_i_writer_hf_layout(w); /* the shards' own plans, printed there */
        else
            st = lsl_i_h5_create(w->out.tmp, align, w->nattrs, w->keys, w->vals, w->n, w->t,
                                 w->nfiles, w->files, w->offsets);
        align = w->plan.alignment;
        char shards[64] = "";
        if (w->hf)
            snprintf(shards, sizeof shards, " (%u safetensors file%s)", w->hfp.nshards,
                     w->hfp.nshards == 1 ? "" : "s");
        if (st == LSL_OK && w->cfg.quiet == LSL_PROGRESS_TEXT)
            lsl_i_log(LSL_LOG_INFO,
                      "loraslab: %s %llu tensors (%s) to %s%s on %s, aligned to %s, %d rank%s, "
                      "staging %s per rank\n",
                      w->cfg.progress_label ? w->cfg.progress_label : "write",
                      (unsigned long long)w->n, lsl_i_fmt_bytes(w->total_bytes, b1, sizeof b1),
                      w->out.path, shards, w->fs.name, lsl_i_fmt_bytes(align, b2, sizeof b2),
                      w->size, w->size > 1 ? "s" : "",
                      lsl_i_fmt_bytes(w->staging_bytes, b4, sizeof b4));
        if (st == LSL_OK && w->cfg.print_plan && !w->hf) {
            char text[1024];
            lsl_i_ioplan_describe(&w->plan, text, sizeof text);
            lsl_i_log(LSL_LOG_INFO, "%s", text);
        }
    }
    LSL_TRY(lsl_i_agree(w->comm, st));
    LSL_TRY(lsl_i_bcast_raw(w->comm, w->offsets, w->n * sizeof *w->offsets, 0));
    LSL_TRY(lsl_i_bcast_raw(w->comm, &w->plan, sizeof w->plan, 0));
    if (w->hf)
        LSL_TRY(lsl_i_writer_hf_open(w, LSL_OK));
    else
        LSL_TRY(
            lsl_i_datafile_open(w->comm, w->out.tmp, w->out.path, &w->plan, w->hints, &w->file));
    w->state = W_DEFINED;
    return LSL_OK;
fail:
    w->state = W_FAILED;
    return rc;
}

void lsl_i_writer_log_extents(const lsl_writer *w)
{
    if (!w || w->rank != 0 || w->state != W_DEFINED)
        return;
    uint64_t *rows = lsl_i_calloc(w->n + 1, sizeof *rows), *rb = lsl_i_calloc(w->n + 1, sizeof *rb);
    char *text = lsl_i_malloc(4096);
    if (rows && rb && text) {
        for (uint64_t i = 0; i < w->n; i++) {
            rows[i] = lsl_i_rows(&w->t[i]);
            rb[i] = rows[i] ? w->nbytes[i] / rows[i] : 0;
        }
        lsl_i_ioplan_extents(&w->plan, w->n, w->offsets, rows, rb, text, 4096);
        lsl_i_log(LSL_LOG_INFO, "%s", text);
    }
    free(rows);
    free(rb);
    free(text);
}

lsl_status lsl_writer_define_all(lsl_writer *w, uint64_t ntensors, const lsl_tensor_info *tensors)
{
    double t0 = lsl_i_now();
    lsl_status st = define_impl(w, ntensors, tensors);
    if (w)
        w->prof[P_DEFINE] += lsl_i_now() - t0;
    return st;
}

void lsl_writer_abort_all(lsl_writer **pw)
{
    if (!pw || !*pw)
        return;
    lsl_writer *w = *pw;
    lsl_i_datafile_close(&w->file);
    /* nobody removes the temporary while a peer may still be writing it */
    lsl_i_barrier(w->comm);
    writer_free(w); /* removes the temporary */
    *pw = NULL;
}

static lsl_status publish(lsl_writer *w)
{
    if (w->hf)
        return lsl_i_writer_hf_publish(w);
    lsl_status rc = lsl_i_h5_finish(w->out.tmp, w->n, w->t, w->fin);
    return rc == LSL_OK ? lsl_i_out_publish(&w->out, w->cfg.overwrite) : rc;
}

/* Collective: the slowest rank's figure for each phase. */
static void report_profile(lsl_writer *w)
{
    if (!w->profile)
        return;
    double mine[P_COUNT + 1], mx[P_COUNT + 1], total = lsl_i_now() - w->t0, sum = 0;
    for (int i = 0; i < P_COUNT; i++)
        sum += mine[i] = w->prof[i];
    mine[P_COUNT] = total - sum; /* in none of the phases, outside the puts */
    memcpy(mx, mine, sizeof mx);
    if (lsl_i_allreduce_f64(w->comm, mx, P_COUNT + 1, LSL_OP_MAX) != LSL_OK || w->rank != 0)
        return;
    char line[512];
    int n = snprintf(line, sizeof line, "loraslab: profile (max over ranks, s):");
    for (int i = 0; i <= P_COUNT && n > 0 && (size_t)n < sizeof line; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, " %s %.3f,",
                      i < P_COUNT ? phase_name[i] : "other", mx[i]);
    lsl_i_log(LSL_LOG_INFO, "%s total %.3f\n", line, total);
}

lsl_status lsl_writer_close_all(lsl_writer **pw)
{
    if (!pw || !*pw)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_close_all: writer is NULL");
    lsl_writer *w = *pw;
    lsl_status rc = LSL_OK, st = LSL_OK;
    lsl_i_clear_error();
    if (w->state != W_DEFINED) {
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, w->state == W_FAILED
                                                 ? "close after a failed call: the file was removed"
                                                 : "close before define");
    } else {
        for (uint64_t i = 0; i < w->n; i++)
            if (!w->done[i]) {
                st = lsl_i_fail(LSL_ERR_WRONG_STATE,
                                "tensor `%s` (and maybe others) was never written; the file "
                                "would be incomplete",
                                w->t[i].name);
                break;
            }
    }
    double tc = lsl_i_now();
    lsl_status cs = lsl_i_datafile_close(&w->file);
    st = st == LSL_OK ? cs : st;
    LSL_TRY(lsl_i_agree(w->comm, st));
    if (w->rank == 0)
        st = publish(w);
    rc = lsl_i_agree(w->comm, st);
    if (rc != LSL_OK && st == LSL_OK && w->rank == 0) {
        /* Published, but the others could not be told (the communicator failed): take it back,
         * so a failure is never reported beside a file that looks complete. */
        if (w->hf)
            lsl_i_rmtree(w->out.path);
        else
            unlink(w->out.path);
    }
    if (rc != LSL_OK)
        goto fail;
    w->prof[P_CLOSE] = lsl_i_now() - tc;
    report_profile(w);
#ifdef LSL_HAVE_CUDA
    if (w->cuda && w->rank == 0 && w->cfg.quiet == LSL_PROGRESS_TEXT) {
        uint64_t nn, nm;
        lsl_i_cuda_gathers(w->cuda, &nn, &nm);
        lsl_i_log(LSL_LOG_INFO,
                  "loraslab: LoRA A gathers: %llu over NCCL, %llu through host memory\n",
                  (unsigned long long)nn, (unsigned long long)nm);
    }
#endif
    writer_free(w);
    *pw = NULL;
    return LSL_OK;
fail:
    writer_free(w); /* removes the temporary */
    *pw = NULL;
    return rc;
}
