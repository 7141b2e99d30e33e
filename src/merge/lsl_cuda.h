/* Host orchestration of the GPU path (built with LSL_HAVE_CUDA): device selection facts, the A
 * gather (NCCL when every rank has its own GPU, MPI through host memory otherwise), and the
 * pinned ring that streams merged chunks to the writer. */
#ifndef LSL_CUDA_H
#define LSL_CUDA_H

#include "lsl_internal.h"

typedef struct lsl_i_cuda lsl_i_cuda;

/* Collective on comm.  Pins a ring of two slots of staging_bytes / 2 each (exact size, once),
 * allocates the matching device slots, and picks the gather path: NCCL if no two ranks share a
 * GPU (and LSL_GATHER is not "mpi"), else MPI.  Agreed status. */
lsl_status lsl_i_cuda_open(MPI_Comm comm, uint64_t staging_bytes, lsl_i_cuda **out);
void lsl_i_cuda_close(lsl_i_cuda **c);
const char *lsl_i_cuda_gather_path(const lsl_i_cuda *c);
uint64_t lsl_i_cuda_slot_bytes(const lsl_i_cuda *c);

/* Collective.  All of A on the device (native dtype; returned pointer owned by c, valid until the
 * next gather).  Agreed status. */
lsl_status lsl_i_cuda_gather_a(lsl_i_cuda *c, MPI_Comm comm, const lsl_lora_part *l, uint64_t in,
                               const void **a_dev, lsl_status local);

/* Asynchronous on stream: fill ring slot `slot` with `bytes` of output: a D2H copy of src (l ==
 * NULL), or the merge of m rows x n columns of W0 at src with B rows b_dev and gathered A a_dev. */
lsl_status lsl_i_cuda_launch(lsl_i_cuda *c, int slot, void *stream, lsl_dtype wt, const void *src,
                             uint64_t bytes, const lsl_lora_part *l, const void *a_dev,
                             const void *b_dev, uint64_t m, uint64_t n);
/* Wait for slot; *host points into pinned memory.  LSL_ERR_NONFINITE with *bad = the first bad
 * element index of that chunk when the merge produced NaN/Inf. */
lsl_status lsl_i_cuda_wait(lsl_i_cuda *c, int slot, const void **host, uint64_t *bad);

#endif
