/* All-gather of LoRA A from its FSDP shards (rows or columns), over MPI. */
#ifndef LSL_GATHER_H
#define LSL_GATHER_H

#include "lsl_internal.h"

/* One tensor's A in a gather: this rank holds `count` rows (LSL_SHARD_ROWS) or columns
 * (LSL_SHARD_COLS) of A ([r, in], elements of esize bytes) starting at `off`, at `mine` (host
 * memory); full receives the whole of A, row-major (r * in * esize bytes). */
typedef struct lsl_i_ashard {
    lsl_shard_dim dim;
    const void *mine;
    uint64_t off, count, r, in, esize;
    void *full;
} lsl_i_ashard;

/* Collective on comm.  Gathers the A of n tensors with one MPI_Allgather of the shard sizes and
 * one MPI_Allgatherv of all shards, whatever n: a batch costs the collective latency of one
 * tensor.  Every rank passes the same n, r, in and esize per tensor (checked); the shards of each
 * tensor must tile A in rank order.  local_st lets a rank that already failed join without
 * hanging; the return value is agreed across ranks. */
lsl_status lsl_i_gather_a_batch(MPI_Comm comm, uint64_t n, const lsl_i_ashard *s,
                                lsl_status local_st);

/* Collective on comm.  lsl_i_gather_a_batch of one tensor. */
lsl_status lsl_i_gather_a(MPI_Comm comm, lsl_shard_dim dim, const void *mine, uint64_t off,
                          uint64_t count, uint64_t r, uint64_t in, uint64_t esize, void *full,
                          lsl_status local_st);

#endif
