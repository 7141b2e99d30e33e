/* The flat encoding rank 0's plans travel in (lsl_blob.h). */
#include "lsl_blob.h"

#include "lsl_comm.h"

#include <stdlib.h>
#include <string.h>

void lsl_i_blob_put(lsl_i_blob *b, const void *v, uint64_t n)
{
    if (b->bad)
        return;
    if (b->len + n > b->cap) {
        uint64_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *np = lsl_i_realloc(b->p, cap);
        if (!np) {
            b->bad = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, v, n);
    b->len += n;
}

void lsl_i_blob_put_u64(lsl_i_blob *b, uint64_t v)
{
    lsl_i_blob_put(b, &v, 8);
}

void lsl_i_blob_put_str(lsl_i_blob *b, const char *s)
{
    uint64_t n = s ? strlen(s) : 0;
    lsl_i_blob_put_u64(b, n);
    lsl_i_blob_put(b, s, n);
}

const void *lsl_i_blob_take(lsl_i_blob *b, uint64_t n)
{
    if (b->bad || n > b->len - b->pos) {
        b->bad = true;
        return NULL;
    }
    const void *p = b->p + b->pos;
    b->pos += n;
    return p;
}

void lsl_i_blob_get(lsl_i_blob *b, void *v, uint64_t n)
{
    const void *p = lsl_i_blob_take(b, n);
    if (p)
        memcpy(v, p, n);
    else
        memset(v, 0, n);
}

uint64_t lsl_i_blob_get_u64(lsl_i_blob *b)
{
    uint64_t v;
    lsl_i_blob_get(b, &v, 8);
    return v;
}

char *lsl_i_blob_get_str(lsl_i_blob *b)
{
    uint64_t n = lsl_i_blob_get_u64(b);
    const char *p = lsl_i_blob_take(b, n);
    char *s = p ? lsl_i_malloc(n + 1) : NULL;
    if (!s) {
        b->bad = true;
        return NULL;
    }
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

lsl_status lsl_i_blob_bcast(lsl_i_comm *comm, lsl_i_blob *b, lsl_status st)
{
    lsl_status rc = LSL_OK;
    if (st == LSL_OK && comm->rank == 0 && b->bad)
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory encoding the plan");
    LSL_TRY(lsl_i_agree(comm, st));
    uint64_t len = b->len;
    LSL_TRY(lsl_i_bcast_raw(comm, &len, sizeof len, 0));
    if (comm->rank != 0) {
        free(b->p);
        memset(b, 0, sizeof *b);
        if (!(b->p = lsl_i_malloc(len ? len : 1)))
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for the plan");
        else
            b->len = b->cap = len;
    }
    LSL_TRY(lsl_i_agree(comm, st));
    LSL_TRY(lsl_i_bcast_raw(comm, b->p, len, 0));
    b->pos = 0;
fail:
    return rc;
}

void lsl_i_blob_free(lsl_i_blob *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
