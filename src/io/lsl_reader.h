/* A helper thread that reads the next chunk of a file while the caller writes the current one:
 * the offline jobs' reads and collective writes then overlap instead of taking turns. */
#ifndef LSL_READER_H
#define LSL_READER_H

#include "lsl_internal.h"

typedef struct lsl_i_reader lsl_i_reader;

/* Not collective.  LSL_ERR_NOMEM when the thread cannot be started. */
lsl_status lsl_i_reader_start(lsl_i_reader **out);
/* Joins a read still in flight, then stops the thread.  NULL-safe. */
void lsl_i_reader_stop(lsl_i_reader **r);
/* Start reading n bytes at off of fd into dst (at most one read is in flight: join it first).
 * path names the file in a failure message. */
void lsl_i_reader_post(lsl_i_reader *r, int fd, uint64_t off, uint64_t n, void *dst,
                       const char *path);
/* Wait for the posted read: LSL_OK, or its error, with the message set in the calling thread
 * when `report` (0: the caller has failed already and keeps its own message).  LSL_OK when
 * nothing is posted. */
lsl_status lsl_i_reader_join(lsl_i_reader *r, int report);

#endif
