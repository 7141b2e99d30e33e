/* A helper thread that checksums a chunk while the calling thread writes the same buffer, so the
 * CRC costs no time on the write path.  One job at a time: post, then wait. */
#ifndef LSL_CRC_WORKER_H
#define LSL_CRC_WORKER_H

#include "lsl_worker.h"

#include <stdint.h>

typedef struct lsl_i_crcw {
    lsl_i_worker w;
    int running; /* the thread runs: otherwise callers checksum inline */
    const void *buf;
    uint64_t n;
    uint32_t crc;
} lsl_i_crcw;

/* Starts the thread; c->running is 0 when it could not (callers then checksum inline). */
void lsl_i_crcw_start(lsl_i_crcw *c);
/* Stops and joins it; a worker that never started is a no-op. */
void lsl_i_crcw_stop(lsl_i_crcw *c);
/* Extends crc over n bytes at buf on the thread; buf must stay valid until lsl_i_crcw_wait. */
void lsl_i_crcw_post(lsl_i_crcw *c, uint32_t crc, const void *buf, uint64_t n);
/* The posted job's result. */
uint32_t lsl_i_crcw_wait(lsl_i_crcw *c);

#endif
