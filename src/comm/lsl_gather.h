/* All-gather of LoRA A from its FSDP shards (rows or columns), over MPI. */
#ifndef LSL_GATHER_H
#define LSL_GATHER_H

#include "lsl_internal.h"

/* Collective on comm.  Each rank holds `count` rows (LSL_SHARD_ROWS) or columns (LSL_SHARD_COLS)
 * of A ([r, in], elements of esize bytes) starting at `off`; the shards must tile A in rank order.
 * full receives the whole of A, row-major (r * in * esize bytes).  tmp must hold as many bytes
 * (used only for column shards).  local_st lets a rank that already failed join without hanging;
 * the return value is agreed across ranks. */
lsl_status lsl_i_gather_a(MPI_Comm comm, lsl_shard_dim dim, const void *mine, uint64_t off,
                          uint64_t count, uint64_t r, uint64_t in, uint64_t esize, void *full,
                          void *tmp, lsl_status local_st);

#endif
