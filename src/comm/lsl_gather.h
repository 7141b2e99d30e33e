/* All-gather of LoRA A from its FSDP shards (rows or columns), over the library's communicator (MPI
 * or callbacks), through host memory. */
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

/* The shard of A that l describes (in: the weight's row length), with a buffer for the whole A
 * allocated into .full (NULL when out of memory: the caller fails and frees it either way). */
lsl_i_ashard lsl_i_ashard_of(const lsl_i_lora *l, uint64_t in);
/* Bytes of the shard this rank holds. */
uint64_t lsl_i_ashard_bytes(const lsl_i_ashard *s);
/* After a batched gather: l describes the whole of A at full (host memory, every rank), flagged
 * LSL_I_LORA_A_FULL so the put uses it as it is. */
void lsl_i_lora_set_full(lsl_i_lora *l, void *full);

/* Collective on comm.  Gathers the A of n tensors with one all-gather of the shard sizes and
 * one all-gatherv of all shards, whatever n: a batch costs the collective latency of one
 * tensor.  Every rank passes the same n, r, in and esize per tensor (checked); the shards of each
 * tensor must tile A in rank order.  local_st lets a rank that already failed join without
 * hanging; the return value is agreed across ranks. */
lsl_status lsl_i_gather_a_batch(lsl_i_comm *comm, uint64_t n, const lsl_i_ashard *s,
                                lsl_status local_st);

/* Collective on comm.  lsl_i_gather_a_batch of one tensor. */
lsl_status lsl_i_gather_a(lsl_i_comm *comm, lsl_shard_dim dim, const void *mine, uint64_t off,
                          uint64_t count, uint64_t r, uint64_t in, uint64_t esize, void *full,
                          lsl_status local_st);

#endif
