/* Positional writes into several files at once: a few threads, each file written by at most one
 * of them at a time.  One process writing one file is held to one stream (on tmpfs the inode's
 * write lock), while K threads into K files go K times as wide: on the H100 machine's /dev/shm
 * one file took 3.0-3.1 GB/s, 4 files 8.9-13.3 GB/s, 14 files 30.8 GB/s (NOTES.md, the ceiling
 * rows of the seventh session), so a directory of shards is written this way.  The caller owns
 * every buffer it posts and may reuse it only after a fence over it (or a drain) says no queued
 * write still reads it.  Nothing here knows about tensors. */
#ifndef LSL_IOPOOL_H
#define LSL_IOPOOL_H

#include "lsl_internal.h"

typedef struct lsl_i_iopool lsl_i_iopool;

/* Most writes queued at once; a post beyond it waits for one to finish. */
#define LSL_I_IOPOOL_DEPTH 256

/* Not collective.  Starts `threads` writer threads (1 to 64) over nfiles open descriptors
 * (borrowed: the caller closes them after lsl_i_iopool_stop); names[i] names file i in
 * messages; rank labels LSL_TRACE's records.  LSL_ERR_NOMEM or LSL_ERR_IO when a thread cannot
 * start. */
lsl_status lsl_i_iopool_start(int threads, uint32_t nfiles, const int *fds,
                              const char *const *names, int rank, lsl_i_iopool **out);

/* Not collective.  How many threads a pool of this process starts: LSL_IO_THREADS when it is a
 * positive number, else 8. */
int lsl_i_iopool_threads(void);

/* Queue count bytes at buf for offset off of file `file`; `what` (copied) names the data in a
 * failure's message.  Returns the first failure of any earlier write (the pool then writes
 * nothing more), else LSL_OK. */
lsl_status lsl_i_iopool_post(lsl_i_iopool *p, uint32_t file, uint64_t off, const void *buf,
                             uint64_t count, const char *what);

/* As lsl_i_iopool_post for a copy: the thread first preads count bytes at src_off of src_fd
 * (src_name names it in messages) into buf, stores their CRC-32C in *crc (when crc is not
 * NULL; the caller reads it after a fence over buf or a drain), then writes them.  So reads,
 * checksums and writes of several files proceed at once. */
lsl_status lsl_i_iopool_post_copy(lsl_i_iopool *p, uint32_t file, uint64_t off, void *buf,
                                  uint64_t count, int src_fd, uint64_t src_off,
                                  const char *src_name, uint32_t *crc, const char *what);

/* Waits until no queued or running write reads [buf, buf + len).  The pool's first failure, or
 * LSL_OK. */
lsl_status lsl_i_iopool_fence(lsl_i_iopool *p, const void *buf, uint64_t len);

/* Waits until one of the n buffers bufs[i] (len bytes each) is read by no queued or running
 * write, and says which in *which (the lowest such i).  The pool's first failure, or LSL_OK. */
lsl_status lsl_i_iopool_fence_any(lsl_i_iopool *p, const void *const *bufs, int n, uint64_t len,
                                  int *which);

/* Waits for every write.  The pool's first failure, or LSL_OK.  *wrote[i] (nfiles flags, may be
 * NULL) says which files received bytes. */
lsl_status lsl_i_iopool_drain(lsl_i_iopool *p, unsigned char *wrote);

/* Waits for every write, stops the threads, frees the pool; *p becomes NULL.  NULL is a no-op. */
void lsl_i_iopool_stop(lsl_i_iopool **p);

#endif
