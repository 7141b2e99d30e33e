/* The writer's internal entry point: one put path for the in-job API (rows in memory) and the
 * offline jobs (rows read from a file chunk by chunk, so host memory stays at the staging
 * budget). */
#ifndef LSL_WRITER_I_H
#define LSL_WRITER_I_H

#include "lsl_gather.h"
#include "lsl_internal.h"

/* Where a rank's W0 rows come from: host memory (mem != NULL), a file (fd, off), or device
 * memory copied down chunk by chunk on stream (dev != NULL: a device part merged on the CPU). */
typedef struct lsl_i_src {
    const unsigned char *mem;
    int fd;
    uint64_t off;
    const char *path;
    const unsigned char *dev;
    void *stream;
} lsl_i_src;

/* Collective.  lsl_writer_create_all for a job that reads `inputs` (n paths, rank 0's count):
 * the output may not be any of them (LSL_ERR_INVALID_ARG). */
lsl_status lsl_i_writer_create(lsl_i_comm *comm, const char *path, const lsl_writer_config *cfg,
                               const char *const *inputs, uint64_t n, lsl_writer **out);

/* Not collective (rank 0 logs, the others return).  After define: the I/O plan's per-rank
 * extents and shared stripes for the offline jobs' even row split (lsl_i_ioplan_extents). */
void lsl_i_writer_log_extents(const lsl_writer *w);

/* The writer's own communicator (tests check its error handler). */
MPI_Comm lsl_i_writer_comm(const lsl_writer *w);

/* Collective.  As lsl_writer_put_all, with the rows taken from src.  local_st != LSL_OK means
 * this rank already failed preparing its part: it joins every collective with nothing and the
 * agreed error is returned. */
lsl_status lsl_i_writer_put(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                            const lsl_i_src *src, const lsl_i_lora *lora, lsl_status local_st);

/* Collective.  lsl_i_gather_a_batch on the writer's communicator, counted in its profile as A
 * gathers: the offline jobs batch the gathers of consecutive tensors through it. */
lsl_status lsl_i_writer_gather(lsl_writer *w, uint64_t n, const lsl_i_ashard *s,
                               lsl_status local_st);

#ifdef LSL_HAVE_CUDA
/* Collective.  As lsl_i_writer_put, merging on this rank's current GPU: a helper thread reads
 * each chunk of src into the pinned ring and copies it up while the previous chunk is written.
 * lora (host memory) must be a plain LoRA (no DoRA, no LSL_LORA_DELTA_IN_WEIGHT_DTYPE); NULL
 * copies the rows. */
lsl_status lsl_i_writer_put_device(lsl_writer *w, uint64_t index, uint64_t row0, uint64_t nrows,
                                   const lsl_i_src *src, const lsl_i_lora *lora,
                                   lsl_status local_st);
#endif

#endif
