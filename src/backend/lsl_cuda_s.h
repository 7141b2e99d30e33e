/* The CUDA context's state, shared by lsl_cuda.c (staging ring, kernels, checksums) and
 * lsl_cuda_gather.c (the A gather: host memory or NCCL).  Private to src/backend. */
#ifndef LSL_CUDA_S_H
#define LSL_CUDA_S_H

#include "lsl_cuda.h"
#include "lsl_gather_nccl.h"

#include <cuda_runtime_api.h>
#include "lsl_worker.h"

/* One staging job: read a W0 chunk into a pinned slot, copy it up, merge, copy it back. */
typedef struct stage_job {
    int slot, fd, has_l;
    uint64_t off, bytes, m, n;
    lsl_dtype wt;
    lsl_i_lora l;
    const void *a_dev, *b_dev;
    const char *path;
    /* results: the thread cannot set this thread's error message (it is thread-local) */
    int err; /* of the read, as lsl_i_pread_raw returns it */
    uint64_t at;
    cudaError_t cerr; /* of the copy up or the launch */
    const char *what;
} stage_job;

struct lsl_i_cuda {
    int device;
    /* 0: MPI path only; 1: NCCL once the A traffic pays for a communicator (NCCL_AFTER_BYTES
     * through host memory first); 2: NCCL from the first gather (LSL_GATHER=nccl). */
    int want_nccl;
    uint64_t host_gathered; /* bytes of A gathered through host memory, the same on every rank */
    const char *why_mpi;
    lsl_i_nccl *nccl;
    uint64_t n_nccl, n_mpi; /* gathers per path, for the closing report */
    uint64_t slot_bytes;
    int nslots; /* ring slots in use: 2, or more for a directory's overlapping writes */
    void *pinned[LSL_I_RING_MAX], *dslot[LSL_I_RING_MAX];
    cudaEvent_t done[LSL_I_RING_MAX];
    unsigned long long *dbad[LSL_I_RING_MAX];
    unsigned long long *hbad; /* pinned: the flag's copy must not block the launch */
    int merging[LSL_I_RING_MAX];
    void *a_dev;
    uint64_t a_cap;
    void *batch_dev; /* the A's of a batch gathered over NCCL */
    void *stash;     /* a batch's whole A's uploaded from host memory (upload_many) */
    uint64_t stash_cap;
    uint64_t batch_cap;
    void *host_a, *host_full;
    uint64_t host_cap;
    void *b_dev;
    uint64_t b_cap;
    /* Checksums on the GPU: per-slot block CRCs (device, and their pinned copy) over how many
     * bytes, the tree operators, and the host's operator for one block. */
    uint32_t *dcrc[LSL_I_RING_MAX], *hcrc[LSL_I_RING_MAX], *dshift, op_block[32];
    uint64_t crc_bytes[LSL_I_RING_MAX];
    int crc_gpu[LSL_I_RING_MAX];
    /* File-sourced chunks: W0 lands in din[slot] before the merge writes dslot[slot]. */
    void *din[LSL_I_RING_MAX];
    cudaStream_t stream;
    lsl_i_worker stager;        /* reads a file chunk into a pinned slot and copies it up */
    int staged[LSL_I_RING_MAX]; /* slot has a job to join */
    stage_job job;
};

/* A communicator costs about a second to start and ~350 MiB of host memory per rank (2 x H100,
 * NCCL 2.28), while the host path moved A at ~1.3 GB/s there: below ~1 GiB of A per job (a
 * typical LoRA has tens to hundreds of MB) the host path is both faster and lighter. */
#define NCCL_AFTER_BYTES (1ull << 30)

/* LSL_ERR_CUDA with the CUDA error's text. */
lsl_status lsl_i_cuda_fail(cudaError_t e, const char *what);
/* cudaMemcpy from pageable host memory, then a wait (see lsl_cuda_gather.c). */
cudaError_t lsl_i_cuda_upload_sync(void *dev, const void *host, uint64_t bytes);
/* A device buffer of at least `need` bytes in *p (grown, never shrunk; *cap its size). */
lsl_status lsl_i_cuda_ensure(void **p, uint64_t *cap, uint64_t need, const char *what);

#endif
