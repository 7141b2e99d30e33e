/* The plan's broadcast (lsl_plan_bcast): rank 0 builds it, every other rank receives it as one
 * flat byte encoding, so the ranks cannot disagree on what they merge. */
#include "lsl_plan.h"

#include <stdlib.h>
#include <string.h>

typedef struct buf {
    unsigned char *p;
    uint64_t len, cap, pos;
    bool bad;
} buf;

static void put(buf *b, const void *v, uint64_t n)
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
    memcpy(b->p + b->len, v, n);
    b->len += n;
}

static void put_u64(buf *b, uint64_t v)
{
    put(b, &v, 8);
}
static void put_str(buf *b, const char *s)
{
    uint64_t n = strlen(s);
    put_u64(b, n);
    put(b, s, n);
}

static void get(buf *b, void *v, uint64_t n)
{
    if (b->bad || b->pos + n > b->len) {
        b->bad = true;
        memset(v, 0, n);
        return;
    }
    memcpy(v, b->p + b->pos, n);
    b->pos += n;
}

static uint64_t get_u64(buf *b)
{
    uint64_t v;
    get(b, &v, 8);
    return v;
}

static char *get_str(buf *b)
{
    uint64_t n = get_u64(b);
    if (b->bad || b->pos + n > b->len) {
        b->bad = true;
        return NULL;
    }
    char *s = strndup((const char *)b->p + b->pos, n);
    b->pos += n;
    if (!s)
        b->bad = true;
    return s;
}

lsl_status lsl_plan_bcast(lsl_i_comm *comm, lsl_plan *p, lsl_status st)
{
    lsl_status rc = LSL_OK;
    int rank = comm->rank;
    buf b = {0};
    LSL_TRY(lsl_i_agree(comm, st));
    if (rank == 0) {
        put_u64(&b, p->nfiles);
        for (uint32_t i = 0; i < p->nfiles; i++)
            put_str(&b, p->files[i]);
        put_u64(&b, p->nattrs);
        for (uint64_t i = 0; i < p->nattrs; i++) {
            put_str(&b, p->keys[i]);
            put_str(&b, p->vals[i]);
        }
        put_u64(&b, p->n);
        put_u64(&b, p->nmerged);
        for (uint64_t i = 0; i < p->n; i++) {
            lsl_plan_tensor t = p->t[i];
            put_str(&b, t.info.name);
            t.info.name = NULL;
            put(&b, &t, sizeof t);
        }
    }
    st = b.bad ? lsl_i_fail(LSL_ERR_NOMEM, "out of memory encoding the plan") : LSL_OK;
    LSL_TRY(lsl_i_agree(comm, st));
    LSL_TRY(lsl_i_bcast_raw(comm, &b.len, sizeof b.len, 0));
    st = LSL_OK;
    if (rank != 0 && !(b.p = lsl_i_malloc(b.len ? b.len : 1)))
        st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory for the plan");
    LSL_TRY(lsl_i_agree(comm, st));
    LSL_TRY(lsl_i_bcast_raw(comm, b.p, b.len, 0));
    if (rank != 0) {
        memset(p, 0, sizeof *p);
        p->nfiles = (uint32_t)get_u64(&b);
        p->files = lsl_i_calloc(p->nfiles ? p->nfiles : 1, sizeof *p->files);
        for (uint32_t i = 0; p->files && i < p->nfiles; i++)
            p->files[i] = get_str(&b);
        uint64_t na = get_u64(&b);
        p->keys = lsl_i_calloc(na ? na : 1, sizeof *p->keys);
        p->vals = lsl_i_calloc(na ? na : 1, sizeof *p->vals);
        for (uint64_t i = 0; p->keys && p->vals && i < na; i++) {
            p->keys[i] = get_str(&b);
            p->vals[i] = get_str(&b);
            p->nattrs = i + 1;
        }
        uint64_t n = get_u64(&b);
        p->nmerged = get_u64(&b);
        p->t = lsl_i_calloc(n ? n : 1, sizeof *p->t);
        for (uint64_t i = 0; p->t && i < n && !b.bad; i++) {
            char *name = get_str(&b);
            get(&b, &p->t[i], sizeof p->t[i]);
            p->t[i].info.name = name;
            p->n = i + 1;
        }
        if (!p->files || !p->keys || !p->vals || !p->t || b.bad)
            st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory decoding the plan");
    }
    LSL_TRY(lsl_i_agree(comm, st));
fail:
    free(b.p);
    return rc;
}
