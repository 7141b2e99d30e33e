/* The writer's safetensors directory: rank 0 plans the shards and writes every header at define,
 * every rank writes its bytes into the shards through the data path's pool, rank 0 writes the
 * small files at close and renames the directory into place.  The put path is the HDF5 one: a
 * tensor's bytes sit at a virtual offset, vbase[shard] + its offset in the shard. */
#include "lsl_writer_s.h"

#include "lsl_crc32c.h"

#include <stdlib.h>
#include <string.h>

lsl_status lsl_i_writer_hf_layout(lsl_writer *w)
{
    lsl_status rc = LSL_OK;
    lsl_st_entry *e = lsl_i_calloc(w->n ? w->n : 1, sizeof *e);
    lsl_i_ioplan *plans = NULL;
    if (!e)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < w->n; i++)
        e[i] =
            (lsl_st_entry){w->t[i].name, w->t[i].dtype, w->t[i].ndim, w->t[i].shape, w->nbytes[i]};
    LSL_TRY(lsl_i_hfplan_split(w->n, e, w->cfg.max_shard_bytes, &w->hfp));
    uint32_t k = w->hfp.nshards;
    plans = lsl_i_calloc(k, sizeof *plans);
    w->head_crc = lsl_i_calloc(k, sizeof *w->head_crc);
    w->vbase = lsl_i_calloc((size_t)k + 1, sizeof *w->vbase);
    if (!plans || !w->head_crc || !w->vbase)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    lsl_i_ioplan_in in = {
        0, 0, w->size, w->nodes, w->cfg.stripe_count, w->cfg.stripe_size, w->cfg.alignment, 0};
    LSL_TRY(lsl_i_hfdir_layout(&w->fs, w->out.tmp, &w->hfp, w->n, e, in, w->cfg.print_plan, plans,
                               w->head_crc));
    lsl_i_hfplan_drop_heads(&w->hfp);
    /* The writer's plan is the largest shard's: its write piece cuts every rank's writes, and
     * each file's virtual base is a multiple of it, so the cuts land on the file's pieces. */
    uint32_t big = 0;
    for (uint32_t s = 1; s < k; s++)
        if (w->hfp.file_bytes[s] > w->hfp.file_bytes[big])
            big = s;
    w->plan = plans[big];
    uint64_t r = w->plan.piece ? w->plan.piece : 4096;
    for (uint32_t s = 0; s < k; s++)
        w->vbase[s + 1] = (w->vbase[s] + w->hfp.file_bytes[s] + r - 1) / r * r;
    for (uint64_t i = 0; i < w->n; i++)
        w->offsets[i] = w->vbase[w->hfp.shard_of[i]] + w->hfp.offset[i];
fail:
    free(plans);
    free(e);
    return rc;
}

lsl_status lsl_i_writer_hf_open(lsl_writer *w, lsl_status st)
{
    lsl_status rc = LSL_OK;
    uint64_t k = w->hfp.nshards;
    LSL_TRY(lsl_i_agree(w->comm, st));
    LSL_TRY(lsl_i_bcast_raw(w->comm, &k, sizeof k, 0));
    if (w->rank != 0) {
        st = lsl_i_hfplan_alloc(&w->hfp, (uint32_t)k, w->n);
        w->vbase = lsl_i_calloc((size_t)k + 1, sizeof *w->vbase);
        if (st == LSL_OK && !w->vbase)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    LSL_TRY(lsl_i_agree(w->comm, st));
    LSL_TRY(lsl_i_bcast_raw(w->comm, w->hfp.names, k * LSL_HF_NAME_MAX, 0));
    LSL_TRY(lsl_i_bcast_raw(w->comm, w->hfp.shard_of, w->n * sizeof *w->hfp.shard_of, 0));
    LSL_TRY(lsl_i_bcast_raw(w->comm, w->hfp.file_bytes, k * sizeof *w->hfp.file_bytes, 0));
    LSL_TRY(lsl_i_bcast_raw(w->comm, w->vbase, (k + 1) * sizeof *w->vbase, 0));
    int64_t threads = lsl_i_iopool_threads(); /* rank 0's setting, capped by the shard count */
    LSL_TRY(lsl_i_bcast_raw(w->comm, &threads, sizeof threads, 0));
    rc = lsl_i_datafile_open_set(w->comm, w->out.tmp, w->out.path, (uint32_t)k,
                                 (const char(*)[64])w->hfp.names, w->vbase, (int)threads, &w->file);
fail:
    return rc;
}

/* Attribute `key` of the writer, or NULL. */
static const char *attr(const lsl_writer *w, const char *key)
{
    for (uint64_t i = 0; i < w->nattrs; i++)
        if (strcmp(w->keys[i], key) == 0)
            return w->vals[i];
    return NULL;
}

lsl_status lsl_i_writer_hf_publish(lsl_writer *w)
{
    lsl_status rc = LSL_OK;
    uint32_t k = w->hfp.nshards;
    uint32_t *crc = lsl_i_calloc(k ? k : 1, sizeof *crc);
    uint64_t total = 0;
    lsl_i_hfdir_tensor *t = lsl_i_calloc(w->n ? w->n : 1, sizeof *t);
    if (!crc || !t)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    /* each shard's CRC: its header's, then its tensors' in file order */
    for (uint32_t s = 0; s < k; s++) {
        crc[s] = w->head_crc[s];
        for (uint64_t j = w->hfp.first[s]; j < w->hfp.first[s + 1]; j++) {
            uint64_t i = w->hfp.in_file[j];
            crc[s] = lsl_crc32c_combine(crc[s], w->fin[i].crc32c, w->nbytes[i]);
        }
    }
    for (uint64_t i = 0; i < w->n; i++) {
        const lsl_i_h5_final *f = &w->fin[i];
        t[i] =
            (lsl_i_hfdir_tensor){w->t[i].name, w->hfp.shard_of[i], f->crc32c,     1,
                                 f->has_lora,  f->lora_rank,       f->lora_alpha, f->lora_scaling};
        total += w->nbytes[i];
    }
    lsl_i_hfdir_desc d = {w->out.tmp,
                          w->out.path,
                          k,
                          (const char(*)[64])w->hfp.names,
                          crc,
                          w->n,
                          t,
                          total,
                          lsl_version_string(),
                          NULL,
                          attr(w, "base_path"),
                          attr(w, "adapter_path"),
                          attr(w, "base_config_json"),
                          attr(w, "adapter_config_json"),
                          w->nfiles,
                          w->files,
                          w->cfg.quiet};
    LSL_TRY(lsl_i_hfdir_finish(&d));
    rc = lsl_i_out_publish(&w->out, w->cfg.overwrite);
fail:
    free(crc);
    free(t);
    return rc;
}

lsl_status lsl_writer_put_order(const lsl_writer *w, uint64_t *order)
{
    if (!w || !order)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_order: NULL argument");
    if (w->state != W_DEFINED)
        return lsl_i_fail(LSL_ERR_WRONG_STATE, "lsl_writer_put_order: call it after define");
    if (!w->hf || w->hfp.nshards < 2) {
        for (uint64_t i = 0; i < w->n; i++)
            order[i] = i;
        return LSL_OK;
    }
    /* Each shard's tensors in define order; next the shard least written so far (by bytes), so
     * the shards are written evenly and a batch of consecutive puts spans them all. */
    uint32_t k = w->hfp.nshards;
    uint64_t *next = lsl_i_calloc(k, sizeof *next), *issued = lsl_i_calloc(k, sizeof *issued);
    if (!next || !issued) {
        free(next);
        free(issued);
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    }
    for (uint64_t m = 0; m < w->n; m++) {
        uint32_t best = k;
        for (uint32_t s = 0; s < k; s++) {
            while (next[s] < w->n && w->hfp.shard_of[next[s]] != s)
                next[s]++;
            if (next[s] < w->n && (best == k || issued[s] < issued[best]))
                best = s;
        }
        order[m] = next[best];
        issued[best] += w->nbytes[next[best]];
        next[best]++;
    }
    free(issued);
    free(next);
    return LSL_OK;
}
