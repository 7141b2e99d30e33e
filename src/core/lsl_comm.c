/* The two communicators behind lsl_comm.h.  MPI counts are int: large buffers move in pieces of
 * at most 1 GiB, and an all-gather whose counts do not fit fails alike on every rank (the counts
 * are the same everywhere) before any call. */
#include "lsl_comm.h"
#include "lsl_internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PIECE ((uint64_t)1 << 30)

static lsl_status broken(const lsl_i_comm *c)
{
    return lsl_i_fail(c->mpi != MPI_COMM_NULL ? LSL_ERR_MPI : LSL_ERR_COMM,
                      "an earlier collective failed on this rank; the job cannot go on");
}

/* A failed call: remember it, say what failed. */
static lsl_status failed(lsl_i_comm *c, int code, const char *what)
{
    c->broken = 1;
    if (c->mpi != MPI_COMM_NULL)
        return lsl_i_mpi_fail(code, what);
    return lsl_i_fail(LSL_ERR_COMM, "communicator callback %s returned %d", what, code);
}

static lsl_i_comm *comm_new(int size)
{
    lsl_i_comm *c = lsl_i_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->mpi = MPI_COMM_NULL;
    c->counts = lsl_i_calloc((size_t)size + 1, sizeof *c->counts);
    c->displs = lsl_i_calloc((size_t)size + 1, sizeof *c->displs);
    if (!c->counts || !c->displs) {
        free(c->counts);
        free(c->displs);
        free(c);
        return NULL;
    }
    return c;
}

lsl_status lsl_i_comm_from_mpi(MPI_Comm user, lsl_i_comm **out)
{
    *out = NULL;
    int size = 1, rank = 0;
    MPI_Comm_size(user, &size);
    MPI_Comm_rank(user, &rank);
    lsl_i_comm *c = comm_new(size);
    MPI_Comm dup = MPI_COMM_NULL;
    int mrc = MPI_Comm_dup(user, &dup);
    if (mrc == MPI_SUCCESS)
        mrc = MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    lsl_status st = mrc != MPI_SUCCESS ? lsl_i_mpi_fail(mrc, "duplicating the communicator")
                    : !c               ? lsl_i_fail(LSL_ERR_NOMEM, "out of memory")
                                       : LSL_OK;
    /* one agreement on the caller's communicator: the duplicate may not exist everywhere */
    lsl_i_comm caller = {.mpi = user, .rank = rank, .size = size};
    st = lsl_i_agree(&caller, st);
    if (st != LSL_OK) {
        if (dup != MPI_COMM_NULL)
            MPI_Comm_free(&dup);
        if (c) {
            free(c->counts);
            free(c->displs);
            free(c);
        }
        return st;
    }
    c->mpi = dup;
    c->rank = rank;
    c->size = size;
    *out = c;
    return LSL_OK;
}

/* The handle's callbacks: checked when it was made, and again here (a handle is caller memory). */
static lsl_status check_ops(const lsl_comm_ops *o, int rank, int size)
{
    if (!o || !o->allreduce || !o->bcast || !o->allgather || !o->allgatherv || !o->barrier)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "a communicator callback is NULL");
    if (size < 1 || rank < 0 || rank >= size)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "communicator rank %d of size %d", rank, size);
    return LSL_OK;
}

lsl_status lsl_i_comm_from_cb(const struct lsl_comm *cb, lsl_i_comm **out)
{
    *out = NULL;
    lsl_status st = check_ops(&cb->ops, cb->rank, cb->size);
    if (st != LSL_OK)
        return st;
    lsl_i_comm *c = comm_new(cb->size);
    if (!c)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    c->cb = *cb;
    c->rank = cb->rank;
    c->size = cb->size;
    *out = c;
    return LSL_OK;
}

/* lsl_i_comm_from_cb, then, once the handle is known to be usable, an agreement on the
 * allocation over a communicator on the stack: a rank whose memory ran out here must not leave
 * its peers in their next collective with a transport error in place of its own message. */
static lsl_status open_cb(const struct lsl_comm *cb, lsl_i_comm **out)
{
    lsl_status st = lsl_i_comm_from_cb(cb, out);
    if (st != LSL_OK && st != LSL_ERR_NOMEM)
        return st;
    lsl_i_comm tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.mpi = MPI_COMM_NULL;
    tmp.cb = *cb;
    tmp.rank = cb->rank;
    tmp.size = cb->size;
    st = lsl_i_agree(&tmp, st);
    if (st != LSL_OK)
        lsl_i_comm_free(out);
    return st;
}

lsl_status lsl_i_comm_open(const lsl_comm *h, lsl_i_comm **out)
{
    lsl_i_clear_error();
    *out = NULL;
    lsl_status st = !h ? lsl_i_fail(LSL_ERR_INVALID_ARG, "the communicator is NULL")
                    : h->mpi == MPI_COMM_NULL ? open_cb(h, out)
                                              : lsl_i_comm_from_mpi(h->mpi, out);
    if (st == LSL_OK && (*out)->rank == 0) /* every collective entry point starts here */
        lsl_i_env_check();
    return st;
}

lsl_status lsl_i_config_in(const void *cfg, size_t cur, void *copy, int null_ok, const char *fn)
{
    memset(copy, 0, cur);
    *(size_t *)copy = cur;
    if (!cfg)
        return null_ok ? LSL_OK : lsl_i_fail(LSL_ERR_INVALID_ARG, "%s: cfg is NULL", fn);
    size_t size = *(const size_t *)cfg;
    if (size < sizeof size || size > cur)
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "%s: cfg->size is %zu, this library's config is %zu bytes: initialise "
                          "the config with its INIT macro (and build against this library's "
                          "loraslab.h or an older one)",
                          fn, size, cur);
    memcpy(copy, cfg, size);
    return LSL_OK;
}

lsl_status lsl_comm_from_mpi(MPI_Comm comm, lsl_comm **out)
{
    lsl_i_clear_error();
    if (!out)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_comm_from_mpi: out is NULL");
    *out = NULL;
    int up = 0, down = 0, rank = 0, size = 1;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    if (!up || down)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_comm_from_mpi: MPI is %s",
                          down ? "finalised" : "not initialised");
    if (comm == MPI_COMM_NULL)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_comm_from_mpi: the communicator is "
                                               "MPI_COMM_NULL");
    if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_comm_from_mpi: not a valid communicator");
    lsl_comm *h = lsl_i_calloc(1, sizeof *h);
    if (!h)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    h->mpi = comm;
    h->rank = rank;
    h->size = size;
    *out = h;
    return LSL_OK;
}

lsl_status lsl_comm_from_ops(const lsl_comm_ops *ops, void *ctx, int rank, int size, lsl_comm **out)
{
    lsl_i_clear_error();
    if (!out)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_comm_from_ops: out is NULL");
    *out = NULL;
    lsl_status st = check_ops(ops, rank, size);
    if (st != LSL_OK)
        return st;
    lsl_comm *h = lsl_i_calloc(1, sizeof *h);
    if (!h)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    h->mpi = MPI_COMM_NULL;
    h->ops = *ops;
    h->ctx = ctx;
    h->rank = rank;
    h->size = size;
    *out = h;
    return LSL_OK;
}

int lsl_comm_rank(const lsl_comm *c)
{
    return c ? c->rank : 0;
}

int lsl_comm_size(const lsl_comm *c)
{
    return c ? c->size : 1;
}

void lsl_comm_free(lsl_comm **c)
{
    if (!c)
        return;
    free(*c);
    *c = NULL;
}

lsl_status lsl_i_comm_dup(lsl_i_comm *c, lsl_i_comm **out)
{
    *out = NULL;
    if (c->broken)
        return broken(c);
    if (c->mpi != MPI_COMM_NULL)
        return lsl_i_comm_from_mpi(c->mpi, out);
    lsl_status st = lsl_i_comm_from_cb(&c->cb, out);
    st = lsl_i_agree(c, st);
    if (st != LSL_OK)
        lsl_i_comm_free(out);
    return st;
}

lsl_status lsl_i_comm_close(lsl_i_comm **c, lsl_status st)
{
    lsl_i_comm_free(c);
    return st;
}

void lsl_i_comm_free(lsl_i_comm **pc)
{
    if (!pc || !*pc)
        return;
    lsl_i_comm *c = *pc;
    if (c->mpi != MPI_COMM_NULL)
        MPI_Comm_free(&c->mpi);
    free(c->counts);
    free(c->displs);
    free(c);
    *pc = NULL;
}

static MPI_Op mpi_op(lsl_reduce_op op)
{
    return op == LSL_OP_MAX ? MPI_MAX : op == LSL_OP_MIN ? MPI_MIN : MPI_SUM;
}

static lsl_status reduce(lsl_i_comm *c, void *buf, uint64_t n, lsl_dtype dt, lsl_reduce_op op)
{
    if (c->broken)
        return broken(c);
    if (n == 0)
        return LSL_OK;
    if (c->mpi == MPI_COMM_NULL) {
        int r = c->cb.ops.allreduce(c->cb.ctx, buf, n, dt, op);
        return r ? failed(c, r, "allreduce") : LSL_OK;
    }
    MPI_Datatype t = dt == LSL_F64 ? MPI_DOUBLE : MPI_INT64_T;
    for (uint64_t off = 0; off < n;) {
        uint64_t k = n - off < PIECE / 8 ? n - off : PIECE / 8;
        int mrc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * 8, (int)k, t, mpi_op(op), c->mpi);
        if (mrc != MPI_SUCCESS)
            return failed(c, mrc, "MPI_Allreduce");
        off += k;
    }
    return LSL_OK;
}

lsl_status lsl_i_allreduce_i64(lsl_i_comm *c, int64_t *buf, uint64_t n, lsl_reduce_op op)
{
    return reduce(c, buf, n, LSL_I64, op);
}

lsl_status lsl_i_allreduce_u64(lsl_i_comm *c, uint64_t *buf, uint64_t n, lsl_reduce_op op)
{
    return reduce(c, buf, n, LSL_I64, op);
}

lsl_status lsl_i_allreduce_f64(lsl_i_comm *c, double *buf, uint64_t n, lsl_reduce_op op)
{
    return reduce(c, buf, n, LSL_F64, op);
}

lsl_status lsl_i_bcast_raw(lsl_i_comm *c, void *buf, uint64_t bytes, int root)
{
    if (c->broken)
        return broken(c);
    if (bytes == 0)
        return LSL_OK;
    if (c->mpi == MPI_COMM_NULL) {
        int r = c->cb.ops.bcast(c->cb.ctx, buf, bytes, root);
        return r ? failed(c, r, "bcast") : LSL_OK;
    }
    for (uint64_t off = 0; off < bytes;) {
        uint64_t k = bytes - off < PIECE ? bytes - off : PIECE;
        int mrc = MPI_Bcast((char *)buf + off, (int)k, MPI_BYTE, root, c->mpi);
        if (mrc != MPI_SUCCESS)
            return failed(c, mrc, "MPI_Bcast");
        off += k;
    }
    return LSL_OK;
}

lsl_status lsl_i_allgather(lsl_i_comm *c, const void *send, void *recv, uint64_t bytes)
{
    if (c->broken)
        return broken(c);
    if (c->mpi == MPI_COMM_NULL) {
        int r = c->cb.ops.allgather(c->cb.ctx, send, recv, bytes);
        return r ? failed(c, r, "allgather") : LSL_OK;
    }
    if (bytes > INT_MAX)
        return lsl_i_fail(LSL_ERR_SHAPE, "an all-gather of %llu bytes per rank is too large",
                          (unsigned long long)bytes);
    int mrc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, c->mpi);
    return mrc != MPI_SUCCESS ? failed(c, mrc, "MPI_Allgather") : LSL_OK;
}

lsl_status lsl_i_allgatherv(lsl_i_comm *c, const void *send, void *recv, const uint64_t *counts)
{
    if (c->broken)
        return broken(c);
    if (c->mpi == MPI_COMM_NULL) {
        int r = c->cb.ops.allgatherv(c->cb.ctx, send, counts[c->rank], recv, counts);
        return r ? failed(c, r, "allgatherv") : LSL_OK;
    }
    uint64_t d = 0;
    for (int k = 0; k < c->size; k++) {
        if (counts[k] > INT_MAX || d > INT_MAX)
            return lsl_i_fail(LSL_ERR_SHAPE, "an all-gather of %llu bytes is too large for MPI",
                              (unsigned long long)(d + counts[k]));
        c->counts[k] = (int)counts[k];
        c->displs[k] = (int)d;
        d += counts[k];
    }
    int mrc = MPI_Allgatherv(send, c->counts[c->rank], MPI_BYTE, recv, c->counts, c->displs,
                             MPI_BYTE, c->mpi);
    return mrc != MPI_SUCCESS ? failed(c, mrc, "MPI_Allgatherv") : LSL_OK;
}

lsl_status lsl_i_barrier(lsl_i_comm *c)
{
    if (c->broken)
        return broken(c);
    if (c->mpi == MPI_COMM_NULL) {
        int r = c->cb.ops.barrier(c->cb.ctx);
        return r ? failed(c, r, "barrier") : LSL_OK;
    }
    int mrc = MPI_Barrier(c->mpi);
    return mrc != MPI_SUCCESS ? failed(c, mrc, "MPI_Barrier") : LSL_OK;
}

int lsl_i_same_everywhere(lsl_i_comm *c, const int64_t *v, int n, lsl_status *st)
{
    int64_t m[2 * 16];
    if (n > 16)
        n = 16;
    for (int i = 0; i < n; i++) {
        m[2 * i] = v[i];
        m[2 * i + 1] = v[i] == INT64_MIN ? INT64_MAX : -v[i];
    }
    lsl_status r = lsl_i_allreduce_i64(c, m, (uint64_t)(2 * n), LSL_OP_MAX);
    if (r != LSL_OK) {
        if (*st == LSL_OK)
            *st = r;
        return 0;
    }
    for (int i = 0; i < n; i++)
        if (m[2 * i] != v[i] || m[2 * i + 1] != (v[i] == INT64_MIN ? INT64_MAX : -v[i]))
            return 0;
    return 1;
}

lsl_status lsl_i_comm_nodes(lsl_i_comm *c, int *nodes)
{
    *nodes = 1;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    uint64_t h = lsl_i_fnv1a(LSL_I_FNV_SEED, host, strlen(host));
    uint64_t *all = lsl_i_malloc((size_t)c->size * sizeof *all);
    lsl_status st = lsl_i_agree(c, all ? LSL_OK : lsl_i_fail(LSL_ERR_NOMEM, "out of memory"));
    if (st == LSL_OK)
        st = lsl_i_allgather(c, &h, all, sizeof h);
    if (st == LSL_OK)
        *nodes = (int)lsl_i_distinct_u64(all, (uint64_t)c->size);
    free(all);
    return st;
}
