/* Host orchestration of the GPU path (built with LSL_HAVE_CUDA): device selection facts, the A
 * gather (NCCL when every rank has its own GPU, MPI through host memory otherwise), and the
 * pinned ring that streams merged chunks to the writer. */
#ifndef LSL_CUDA_H
#define LSL_CUDA_H

#include "lsl_internal.h"

typedef struct lsl_i_cuda lsl_i_cuda;

/* Collective on comm.  Makes GPU (node-local rank mod visible GPUs) this rank's current device,
 * so ranks of one node spread over its GPUs.  Agreed status (LSL_ERR_CUDA when a rank sees no
 * GPU).  *ranks_per_gpu (rank 0's node) may be NULL. */
lsl_status lsl_i_cuda_select(lsl_i_comm *comm, int *ranks_per_gpu);

/* The largest pinned slot.  Measured on one H100 node: 8 MiB slots wrote 5.9 GB to /dev/shm in
 * 2.39-2.57 s against 2.54-3.15 s with 32 MiB, and 1.4 s against 1.8 s into the page cache of a
 * disk; likely because two small slots stay within the share of the CPU cache that the GPU's
 * copies land in, so the write's memcpy reads them from cache.  A larger budget buys nothing on
 * this path. */
#define LSL_I_RING_SLOT_MAX ((uint64_t)8 << 20)
/* The most ring slots: a directory output keeps this many chunks in flight across its shards
 * (lsl_put_interleave.c), each slot's write on the I/O pool while the next ones are merged. */
#define LSL_I_RING_MAX 16

/* Collective on comm.  Pins a ring of nslots slots (2 to LSL_I_RING_MAX) of staging_bytes /
 * nslots each, at most LSL_I_RING_SLOT_MAX (exact size, once), allocates the matching device
 * slots, and picks the gather path.  NCCL needs one GPU per rank and A on the GPU in FSDP row
 * shards; then LSL_GATHER decides: unset, A goes through host memory until 1 GiB of it has (a
 * communicator costs seconds and hundreds of MiB), NCCL after; "nccl", NCCL from the first gather;
 * "mpi", never NCCL. Anything else: LSL_ERR_INVALID_ARG.  The communicator is built at the first
 * gather that uses it.  Agreed status. */
lsl_status lsl_i_cuda_open(lsl_i_comm *comm, uint64_t staging_bytes, int nslots, lsl_i_cuda **out);
void lsl_i_cuda_close(lsl_i_cuda **c);
const char *lsl_i_cuda_gather_path(const lsl_i_cuda *c);
uint64_t lsl_i_cuda_slot_bytes(const lsl_i_cuda *c);
int lsl_i_cuda_slots(const lsl_i_cuda *c);
/* Ring slot `slot`'s pinned host buffer (lsl_i_cuda_slot_bytes long): what a launch into the slot
 * overwrites, so a queued write from it must be done first. */
const void *lsl_i_cuda_slot_host(const lsl_i_cuda *c, int slot);
/* How many gathers went over NCCL and through host memory so far. */
void lsl_i_cuda_gathers(const lsl_i_cuda *c, uint64_t *nccl, uint64_t *mpi);

/* Collective.  All of A on the device (native dtype; returned pointer owned by c, valid until the
 * next gather).  l->a is device memory, or host memory when a_on_host (then A goes through the
 * MPI path); with LSL_I_LORA_A_FULL it is the whole of A in host memory, only uploaded, or with
 * LSL_I_LORA_A_GPU as well, on the device already (lsl_i_cuda_gather_a_batch).  Agreed status. */
lsl_status lsl_i_cuda_gather_a(lsl_i_cuda *c, lsl_i_comm *comm, const lsl_i_lora *l, uint64_t in,
                               int a_on_host, const void **a_dev, lsl_status local);
/* Collective on comm.  The A of a batch of n tensors over NCCL, in one group: part i (l[i] NULL
 * for a tensor without LoRA; in[i] its row length) goes when every rank holds its FSDP row shard
 * of it on the GPU and NCCL serves this job (the rules of lsl_i_cuda_open).  full[i] receives the
 * whole A of each part that went (device memory owned by c, valid until the next batch), NULL
 * for the others, which the caller gathers through host memory.  Agreed status; local lets a
 * rank that already failed join. */
lsl_status lsl_i_cuda_gather_a_batch(lsl_i_cuda *c, lsl_i_comm *comm, uint64_t n,
                                     const lsl_i_lora *const *l, const uint64_t *in, void **full,
                                     lsl_status local);
/* Wait for the work the caller queued on `stream` (a cudaStream_t; NULL: the default stream)
 * before any of its device memory is read.  The library reads a part's memory on streams of its
 * own and the legacy stream, which a non-blocking caller stream does not order against, so a
 * put starts here.  Not collective. */
lsl_status lsl_i_cuda_after_caller(void *stream);
/* Copy `bytes` of device memory (the current device's) to host memory.  Not collective. */
lsl_status lsl_i_cuda_download(void *host, const void *dev, uint64_t bytes);
/* Copy `bytes` of device memory to host memory on `stream` (a cudaStream_t, NULL: the default
 * stream), after the work queued there, and wait.  what: the failure's context.  Not
 * collective. */
lsl_status lsl_i_cuda_download_on(void *host, const void *dev, uint64_t bytes, void *stream,
                                  const char *what);
/* Copy n host buffers (host[i] NULL: none, dev[i] NULL) of bytes[i] each into one device buffer
 * owned by c, valid until the next call: a batch's whole A's that came through host memory, all
 * live while the batch's chunks are merged in turn.  Not collective. */
lsl_status lsl_i_cuda_upload_many(lsl_i_cuda *c, uint64_t n, const void *const *host,
                                  const uint64_t *bytes, const void **dev);
/* Copy `bytes` of host memory to a device buffer owned by c (valid until the next call). */
lsl_status lsl_i_cuda_upload_b(lsl_i_cuda *c, const void *host, uint64_t bytes, const void **dev);

/* Asynchronous on stream: fill ring slot `slot` with `bytes` of output: a D2H copy of src (l ==
 * NULL), or the merge of m rows x n columns of W0 at src with B rows b_dev and gathered A a_dev. */
lsl_status lsl_i_cuda_launch(lsl_i_cuda *c, int slot, void *stream, lsl_dtype wt, const void *src,
                             uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                             const void *b_dev, uint64_t m, uint64_t n);
/* As lsl_i_cuda_launch for whole rows of which the caller holds only some elements (an
 * element-range part's first or last chunk): the own_bytes at device pointer own are placed at
 * byte pos of a zeroed chunk of `bytes` (at most a slot) in c's own device buffer, which is
 * merged.  The GPU does not checksum it (lsl_i_cuda_wait says *crc_done = 0): the caller
 * checksums the bytes it writes. */
lsl_status lsl_i_cuda_launch_rows_of(lsl_i_cuda *c, int slot, void *stream, lsl_dtype wt,
                                     const void *own, uint64_t pos, uint64_t own_bytes,
                                     uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                                     const void *b_dev, uint64_t m, uint64_t n);
/* As lsl_i_cuda_launch, but W0 comes from a file: a helper thread preads `bytes` at off of fd
 * into the slot's pinned buffer, copies it up and launches the merge (l != NULL) on c's own
 * stream, so the read overlaps whatever the caller does until lsl_i_cuda_wait.  A read error is
 * returned by the wait, naming path. */
lsl_status lsl_i_cuda_stage(lsl_i_cuda *c, int slot, int fd, uint64_t off, const char *path,
                            lsl_dtype wt, uint64_t bytes, const lsl_i_lora *l, const void *a_dev,
                            const void *b_dev, uint64_t m, uint64_t n);
/* Wait for slot; *host points into pinned memory.  LSL_ERR_NONFINITE with *bad = the first bad
 * element index of that chunk when the merge produced NaN/Inf.  When the GPU checksummed the
 * chunk (everything but a file's plain copy), *crc is extended by its bytes and *crc_done = 1;
 * else *crc_done = 0 and the caller checksums the host copy. */
lsl_status lsl_i_cuda_wait(lsl_i_cuda *c, int slot, const void **host, uint64_t *bad, uint32_t *crc,
                           int *crc_done);

/* Let slot's chunk land (after a failure), leaving the error message alone. */
void lsl_i_cuda_drain(lsl_i_cuda *c, int slot);

#endif
