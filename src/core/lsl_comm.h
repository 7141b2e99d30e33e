/* The library's communicator: every collective the library makes goes through these functions,
 * over MPI or over the caller's callbacks (lsl_comm_ops).  Each returns LSL_OK or a local error
 * (LSL_ERR_MPI, LSL_ERR_COMM) that cannot be agreed on; after one, the communicator is broken
 * and every later call fails at once without communicating, so this rank never makes a call its
 * peers do not expect. */
#ifndef LSL_COMM_H
#define LSL_COMM_H

#include "loraslab.h"

/* The public handle: what each collective entry point makes its own communicator from. */
struct lsl_comm {
    MPI_Comm mpi;     /* the caller's; MPI_COMM_NULL for callbacks */
    lsl_comm_ops ops; /* callbacks (a copy of the caller's table) */
    void *ctx;
    int rank, size;
};

typedef struct lsl_i_comm {
    MPI_Comm mpi;       /* the library's duplicate; MPI_COMM_NULL for callbacks */
    struct lsl_comm cb; /* callbacks: the handle's table, ctx, rank and size */
    int rank, size;
    int broken;
    int *counts, *displs; /* MPI_Allgatherv's arguments, allocated once (size entries) */
} lsl_i_comm;

/* Collective on user: a duplicate with MPI_ERRORS_RETURN.  Agreed; *out NULL on failure. */
lsl_status lsl_i_comm_from_mpi(MPI_Comm user, lsl_i_comm **out);
/* Not collective: a communicator over a callback handle (LSL_ERR_NOMEM local, before any
 * callback). */
lsl_status lsl_i_comm_from_cb(const struct lsl_comm *cb, lsl_i_comm **out);
/* The library's communicator for one public entry point, from the caller's handle (NULL:
 * LSL_ERR_INVALID_ARG on this rank, which its peers cannot see).  Clears the thread's error
 * message first.  Collective, agreed where it can be (see the two above). */
lsl_status lsl_i_comm_open(const lsl_comm *h, lsl_i_comm **out);
/* A public config struct (its first field the caller's sizeof, cur the library's) copied into
 * *copy (cur bytes): the fields the caller's size covers, zero (the defaults) for the rest.
 * cfg NULL gives the defaults where null_ok, else LSL_ERR_INVALID_ARG; so does a size of 0 or
 * above cur.  Not collective (the caller agrees). fn: the public call, for the message. */
lsl_status lsl_i_config_in(const void *cfg, size_t cur, void *copy, int null_ok, const char *fn);
/* lsl_i_comm_free, then st: the tail of an entry point, return lsl_i_comm_close(&c, job(c)). */
lsl_status lsl_i_comm_close(lsl_i_comm **c, lsl_status st);
/* Collective: a communicator of the same ranks whose traffic never matches c's (MPI: a
 * duplicate; callbacks: the same callbacks, whose calls are ordered by contract).  Agreed. */
lsl_status lsl_i_comm_dup(lsl_i_comm *c, lsl_i_comm **out);
/* Frees (MPI_Comm_free of the duplicate is collective); NULL is a no-op. */
void lsl_i_comm_free(lsl_i_comm **c);
/* Whether the data path is MPI-IO (an MPI communicator) or positional writes (callbacks). */
static inline int lsl_i_comm_is_mpi(const lsl_i_comm *c)
{
    return c->mpi != MPI_COMM_NULL;
}

/* In place over all ranks.  Unsigned values go through the int64 reduction: SUM wraps alike,
 * MAX/MIN are correct below 2^63 and stay consistent for the [v, ~v] agreement checks. */
lsl_status lsl_i_allreduce_i64(lsl_i_comm *c, int64_t *buf, uint64_t n, lsl_reduce_op op);
lsl_status lsl_i_allreduce_u64(lsl_i_comm *c, uint64_t *buf, uint64_t n, lsl_reduce_op op);
lsl_status lsl_i_allreduce_f64(lsl_i_comm *c, double *buf, uint64_t n, lsl_reduce_op op);
lsl_status lsl_i_bcast_raw(lsl_i_comm *c, void *buf, uint64_t bytes, int root);
/* recv holds size * bytes. */
lsl_status lsl_i_allgather(lsl_i_comm *c, const void *send, void *recv, uint64_t bytes);
/* counts[k] bytes from rank k, packed in rank order into recv (counts the same everywhere). */
lsl_status lsl_i_allgatherv(lsl_i_comm *c, const void *send, void *recv, const uint64_t *counts);
lsl_status lsl_i_barrier(lsl_i_comm *c);
/* Collective: how many hosts the ranks run on (distinct host names), the same on every rank.
 * Agreed; *nodes is 1 on failure. */
lsl_status lsl_i_comm_nodes(lsl_i_comm *c, int *nodes);

/* Whether the values v[0..n) are the same on every rank (the [v, -v] MAX agreement); a failed
 * reduction counts as disagreement, its error in *st when st is LSL_OK. */
int lsl_i_same_everywhere(lsl_i_comm *c, const int64_t *v, int n, lsl_status *st);

#endif
