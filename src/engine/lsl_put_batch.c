/* The batched put: the LoRA factors of n tensors resolved in one collective step
 * (lsl_factors.c), the A's left in device row shards gathered in one more (over NCCL where it
 * serves, else through host memory), then n puts with A whole. */
#include "lsl_factors.h"

#include "lsl_gather.h"

#include <stdlib.h>

#ifdef LSL_HAVE_CUDA
/* Batched put, over NCCL: the device A's in FSDP row shards, when NCCL serves this job, in one
 * NCCL group; gpu[i] receives their whole A (device memory of the writer's CUDA context). */
static lsl_status gather_batch_nccl(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                    const lsl_i_part *parts, void **gpu, lsl_status st)
{
    int dev = 0;
    for (uint64_t i = 0; i < n; i++)
        dev |= parts[i].lora && parts[i].mem == LSL_MEM_DEVICE;
    lsl_status rc = LSL_OK;
    uint64_t any = lsl_i_writer_max(w, (uint64_t)dev, &rc);
    if (rc != LSL_OK)
        return rc;
    if (!any)
        return st;
    rc = lsl_i_writer_open_cuda(w);
    if (rc != LSL_OK)
        return rc;
    const lsl_i_lora **l = lsl_i_calloc(n + 1, sizeof *l);
    uint64_t *in = lsl_i_calloc(n + 1, sizeof *in);
    if ((!l || !in) && st == LSL_OK)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    /* A part merged on the CPU keeps its A on the host path: a rank that leaves a part out
     * leaves it out everywhere (lsl_i_cuda_gather_a_batch's agreement). */
    for (uint64_t i = 0; st == LSL_OK && i < n; i++)
        if (parts[i].mem == LSL_MEM_DEVICE && indices[i] < w->n && parts[i].lora &&
            !(parts[i].lora->flags & LSL_I_LORA_A_FULL) && !lsl_i_lora_on_cpu(parts[i].lora)) {
            l[i] = parts[i].lora;
            in[i] = lsl_i_row_elems(&w->t[indices[i]]);
        }
    double t0 = lsl_i_now();
    rc = lsl_i_cuda_gather_a_batch(w->cuda, w->comm, st == LSL_OK ? n : 0, l, in, gpu, st);
    w->prof[P_GATHER] += lsl_i_now() - t0;
    free(l);
    free(in);
    return rc;
}
#endif

/* Batched put, step two: the A's the resolution left in device row shards gathered in one
 * collective step: over NCCL into gpu[i] where it can (gather_batch_nccl), the rest into host
 * memory, full[i] (NULL for a part without LoRA or whose A is whole already). */
static lsl_status gather_batch(lsl_writer *w, uint64_t n, const uint64_t *indices,
                               const lsl_i_part *parts, void **full, void **gpu, lsl_status st)
{
#ifdef LSL_HAVE_CUDA
    st = gather_batch_nccl(w, n, indices, parts, gpu, st);
    if (st != LSL_OK)
        return st; /* agreed */
#endif
    /* which parts still hold A in shards is the same on every rank (the resolution's plan and
     * NCCL's agreed choice): a batch with none skips this step everywhere */
    uint64_t need = 0;
    for (uint64_t i = 0; i < n; i++)
        need += parts[i].lora && !gpu[i] && !(parts[i].lora->flags & LSL_I_LORA_A_FULL);
    if (!need)
        return st;
    lsl_i_ashard *sh = lsl_i_calloc(n + 1, sizeof *sh);
    void **dl = lsl_i_calloc(n + 1, sizeof *dl); /* host copies of device shards */
    uint64_t k = 0;
    if (!sh || !dl)
        st = st ? st : lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; st == LSL_OK && i < n; i++) {
        const lsl_i_lora *l = parts[i].lora;
        if (!l || gpu[i] || (l->flags & LSL_I_LORA_A_FULL))
            continue;
        if (indices[i] >= w->n) {
            st = lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor index %llu out of range (%llu tensors)",
                            (unsigned long long)indices[i], (unsigned long long)w->n);
            break;
        }
        sh[k] = lsl_i_ashard_of(l, lsl_i_row_elems(&w->t[indices[i]]));
        full[i] = sh[k].full;
        if (!full[i] || (l->a_count && !l->a)) {
            st = !full[i] ? lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A")
                          : lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s`: LoRA A is NULL",
                                       w->t[indices[i]].name);
            break;
        }
        if (parts[i].mem == LSL_MEM_DEVICE) {
#ifdef LSL_HAVE_CUDA
            uint64_t mine = lsl_i_ashard_bytes(&sh[k]);
            if (!(dl[i] = lsl_i_malloc(mine + 1)))
                st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for LoRA A");
            else
                st = lsl_i_cuda_download(dl[i], l->a, mine);
            sh[k].mine = dl[i];
#else
            st = lsl_i_fail(LSL_ERR_UNSUPPORTED,
                            "device pointers need a build with CUDA (this one has none)");
#endif
        }
        k++;
    }
    /* A rank that failed joins with no shards; the gather's agreement fails everyone. */
    lsl_status cs = LSL_OK;
    int64_t kv = (int64_t)k;
    int same = lsl_i_same_everywhere(w->comm, &kv, 1, &cs);
    if (cs != LSL_OK) {
        st = cs;
        goto out;
    }
    if (st == LSL_OK && !same)
        st = lsl_i_fail(LSL_ERR_INCONSISTENT,
                        "ranks passed LoRA factors for different tensors of the batch");
    st = lsl_i_writer_gather(w, st == LSL_OK ? k : 0, sh, st);
out:
    for (uint64_t i = 0; dl && i < n; i++)
        free(dl[i]);
    free(dl);
    free(sh);
    return st;
}

lsl_status lsl_writer_put_batch_all(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                    const lsl_part *parts)
{
    if (!w)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_batch_all: writer is NULL");
    lsl_i_clear_error();
    lsl_status rc = LSL_OK, st = LSL_OK;
    void **full = lsl_i_calloc(n + 1, sizeof *full), **gpu = lsl_i_calloc(n + 1, sizeof *gpu);
    lsl_i_lora *lp = lsl_i_calloc(n + 1, sizeof *lp);
    lsl_i_part *pp = lsl_i_calloc(n + 1, sizeof *pp);
    lsl_i_factors *fac = lsl_i_calloc(n + 1, sizeof *fac);
    const lsl_lora_part **pub = lsl_i_calloc(n + 1, sizeof *pub);
    int64_t nv = (int64_t)n;
    int same = lsl_i_same_everywhere(w->comm, &nv, 1, &st);
    if (st != LSL_OK)
        ;
    else if (!full || !gpu || !lp || !pp || !fac || !pub)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else if (!same)
        st = lsl_i_fail(LSL_ERR_INCONSISTENT, "ranks passed batches of different lengths");
    else if (w->state != W_DEFINED)
        st = lsl_i_fail(LSL_ERR_WRONG_STATE, "put before define or after a failure");
    else if (n && (!indices || !parts))
        st = lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_writer_put_batch_all: indices or parts is NULL");
    for (uint64_t i = 0; st == LSL_OK && i < n; i++) {
        st = lsl_i_part_of(w, indices[i], &parts[i], "lsl_writer_put_batch_all", &pp[i]);
        if (st == LSL_OK)
            st = lsl_i_part_entry(parts[i].lora, parts[i].mem, parts[i].stream,
                                  "lsl_writer_put_batch_all");
        pub[i] = parts[i].lora;
    }
    /* A batch whose length or arrays cannot be trusted stops every rank before the gathers. */
    LSL_TRY(lsl_i_agree(w->comm, st));
    LSL_TRY(lsl_i_factors_resolve(w, n, indices, pp, pub, fac, NULL, LSL_OK));
    for (uint64_t i = 0; i < n; i++)
        pp[i].lora = pub[i] ? &fac[i].l : NULL;
    LSL_TRY(gather_batch(w, n, indices, pp, full, gpu, LSL_OK));
    /* Step three: the puts with A whole: in turn, chunk by chunk, where a directory's device
     * parts allow (lsl_put_interleave.c), else one after the other. */
    for (uint64_t i = 0; i < n; i++) {
        if (pp[i].lora && (full[i] || gpu[i])) {
            lp[i] = *pp[i].lora;
            lsl_i_lora_set_full(&lp[i], gpu[i] ? gpu[i] : full[i]);
            lp[i].flags |= gpu[i] ? LSL_I_LORA_A_GPU : 0;
            pp[i].lora = &lp[i];
        }
    }
#ifdef LSL_HAVE_CUDA
    if (lsl_i_put_interleaved(w, n, indices, pp, &rc)) {
        LSL_TRY(rc);
        goto fail; /* done: the cleanup below */
    }
#endif
    for (uint64_t i = 0; i < n; i++)
        LSL_TRY(lsl_i_put_one(w, indices[i], &pp[i], NULL, LSL_OK));
fail:
    if (rc != LSL_OK)
        w->state = W_FAILED;
    for (uint64_t i = 0; full && i < n; i++)
        free(full[i]);
    lsl_i_factors_free(fac, n);
    free(full);
    free(gpu);
    free(lp);
    free(pp);
    free(fac);
    free(pub);
    return rc;
}
