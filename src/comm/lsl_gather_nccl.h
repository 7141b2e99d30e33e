/* In-place all-gathers of device buffers over NCCL, for LoRA A on the GPU.  A build without
 * NCCL (LSL_HAVE_NCCL undefined) has the same functions: lsl_i_nccl_available() is 0 and
 * lsl_i_nccl_start() fails on every rank alike, so callers take the MPI path. */
#ifndef LSL_GATHER_NCCL_H
#define LSL_GATHER_NCCL_H

#include "lsl_internal.h"

typedef struct lsl_i_nccl lsl_i_nccl;

/* Whether this build can use NCCL at all. */
int lsl_i_nccl_available(void);

/* Collective on comm: a non-blocking communicator over comm's ranks (one GPU each, the calling
 * thread's current device).  Every rank waits a bounded time for NCCL to start, then all agree:
 * returns 1 with *out set on every rank, or 0 with *out NULL on every rank (a rank where NCCL
 * failed says why on stderr).  Never hangs on one rank's failure. */
int lsl_i_nccl_start(lsl_i_comm *comm, lsl_i_nccl **out);

/* Not collective in the MPI sense, but every rank of the communicator must call it with the same
 * k and bytes: k in-place all-gathers in one NCCL group on the default stream.  recv[i] holds
 * size * bytes[i] bytes of device memory, this rank's part already at recv[i] + rank * bytes[i].
 * Waits until NCCL has issued the group (bounded); the caller synchronizes the device.  Returns
 * LSL_OK or LSL_ERR_NCCL (local: the caller agrees). */
lsl_status lsl_i_nccl_allgather(lsl_i_nccl *c, uint64_t k, void *const *recv,
                                const uint64_t *bytes);

/* Finalizes and frees the communicator; NULL is a no-op. */
void lsl_i_nccl_close(lsl_i_nccl **c);

#endif
