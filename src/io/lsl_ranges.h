/* Parallel copy or read of many byte ranges: the ranges of all tensors form one byte space that
 * is cut into equal contiguous shares, one per rank (each cut moved to the nearest multiple of
 * its destination file's write piece, so no two ranks write one stripe); each rank streams its
 * share through the
 * staging buffer, checksumming each tensor's part, and the parts' CRCs are combined in rank
 * (= byte) order: an all-gather of each rank's
 * (range, crc, length) triples. */
#ifndef LSL_RANGES_H
#define LSL_RANGES_H

#include "lsl_internal.h"

typedef struct lsl_i_range {
    uint32_t src; /* index into the source fds */
    uint64_t src_off;
    uint64_t len;
    int32_t dst; /* index into the destination fds; -1: read only (verify) */
    uint64_t dst_off;
} lsl_i_range;

typedef struct lsl_i_range_job {
    uint64_t n;
    const lsl_i_range *r;
    const int *src_fds;
    const char *const *src_paths;
    uint32_t ndst;
    const int *dst_fds;
    const char *const *dst_paths;
    void *staging;
    uint64_t staging_bytes;
    int checksum;      /* compute per-range CRC-32C (needs the bytes in user memory) */
    const char *label; /* progress verb; NULL for none */
    int quiet;         /* LSL_PROGRESS_TEXT, _NONE, _JSON */
    uint64_t tensors;  /* how many tensors the ranges hold (rank 0; JSON progress) */
    /* Per destination file: the shares are cut at multiples of this file offset where the
     * ranges run contiguously through the file (0, or NULL for all: anywhere).  The ranges of
     * one file must come in file order. */
    const uint64_t *dst_piece;
} lsl_i_range_job;

/* Collective.  Copies (or reads) every range; crcs[i] receives range i's CRC-32C on every rank
 * when checksum is set.  Destination files written by this rank are fsync'ed.  The status is
 * agreed across ranks. */
lsl_status lsl_i_ranges_run_all(lsl_i_comm *comm, const lsl_i_range_job *job, uint32_t *crcs);

#endif
