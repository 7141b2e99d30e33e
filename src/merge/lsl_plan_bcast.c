/* The plan's broadcast (lsl_plan_bcast): rank 0 builds it, every other rank receives it as one
 * flat byte encoding (core/lsl_blob.h), so the ranks cannot disagree on what they merge. */
#include "lsl_plan.h"

#include "lsl_blob.h"

#include <stdlib.h>
#include <string.h>

static void encode(const lsl_plan *p, lsl_i_blob *b)
{
    lsl_i_blob_put_u64(b, p->nfiles);
    for (uint32_t i = 0; i < p->nfiles; i++)
        lsl_i_blob_put_str(b, p->files[i]);
    lsl_i_blob_put_u64(b, p->nattrs);
    for (uint64_t i = 0; i < p->nattrs; i++) {
        lsl_i_blob_put_str(b, p->keys[i]);
        lsl_i_blob_put_str(b, p->vals[i]);
    }
    lsl_i_blob_put_u64(b, p->n);
    lsl_i_blob_put_u64(b, p->nmerged);
    for (uint64_t i = 0; i < p->n; i++) {
        lsl_plan_tensor t = p->t[i];
        lsl_i_blob_put_str(b, t.info.name);
        t.info.name = NULL;
        lsl_i_blob_put(b, &t, sizeof t);
    }
}

/* Into an empty plan; false when memory or the bytes ran out (what was decoded is in p). */
static bool decode(lsl_i_blob *b, lsl_plan *p)
{
    p->nfiles = (uint32_t)lsl_i_blob_get_u64(b);
    p->files = lsl_i_calloc(p->nfiles ? p->nfiles : 1, sizeof *p->files);
    for (uint32_t i = 0; p->files && i < p->nfiles; i++)
        p->files[i] = lsl_i_blob_get_str(b);
    uint64_t na = lsl_i_blob_get_u64(b);
    p->keys = lsl_i_calloc(na ? na : 1, sizeof *p->keys);
    p->vals = lsl_i_calloc(na ? na : 1, sizeof *p->vals);
    for (uint64_t i = 0; p->keys && p->vals && i < na; i++) {
        p->keys[i] = lsl_i_blob_get_str(b);
        p->vals[i] = lsl_i_blob_get_str(b);
        p->nattrs = i + 1;
    }
    uint64_t n = lsl_i_blob_get_u64(b);
    p->nmerged = lsl_i_blob_get_u64(b);
    p->t = lsl_i_calloc(n ? n : 1, sizeof *p->t);
    for (uint64_t i = 0; p->t && i < n && !b->bad; i++) {
        char *name = lsl_i_blob_get_str(b);
        lsl_i_blob_get(b, &p->t[i], sizeof p->t[i]);
        p->t[i].info.name = name;
        p->n = i + 1;
    }
    return p->files && p->keys && p->vals && p->t && !b->bad;
}

lsl_status lsl_plan_bcast(lsl_i_comm *comm, lsl_plan *p, lsl_status st)
{
    lsl_status rc = LSL_OK;
    lsl_i_blob b = {0};
    LSL_TRY(lsl_i_agree(comm, st));
    if (comm->rank == 0)
        encode(p, &b);
    LSL_TRY(lsl_i_blob_bcast(comm, &b, LSL_OK));
    st = LSL_OK;
    if (comm->rank != 0) {
        memset(p, 0, sizeof *p);
        if (!decode(&b, p))
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory decoding the plan");
    }
    LSL_TRY(lsl_i_agree(comm, st));
fail:
    lsl_i_blob_free(&b);
    return rc;
}
