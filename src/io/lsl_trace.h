/* LSL_TRACE=FILE: every data write of every rank (rank, file, call, offset, length, start and
 * end time, and what was written) as one JSON line, for the filesystem model in tests/fs/.  Each
 * rank buffers its lines in memory and appends them to FILE with one write at the end of each
 * output file (a
 * "%r" in FILE becomes the rank: one trace per rank, for filesystems where concurrent appends
 * may interleave, such as NFS).  Off (one branch per write) when LSL_TRACE is unset. */
#ifndef LSL_TRACE_H
#define LSL_TRACE_H

#include <stdint.h>

/* Whether tracing is on (LSL_TRACE set; read once). */
int lsl_i_trace_on(void);
/* Record one write of len bytes at off of `file` (the user's name), this rank's call-th write
 * to it, of `what` (the tensor, for the model's runs; NULL: not said), between wall-clock times
 * t0 and t1 (lsl_i_wall).  Thread-safe.  Allocation failures
 * drop records (and say so once at flush), never the write. */
void lsl_i_trace_write(int rank, const char *file, uint64_t call, uint64_t off, uint64_t len,
                       const char *what, double t0, double t1);
/* Append what this rank recorded to the trace file and empty the buffer.  Not collective. */
void lsl_i_trace_flush(int rank);
/* Seconds since the epoch (CLOCK_REALTIME): comparable across the ranks of a node, and across
 * nodes as far as their clocks agree. */
double lsl_i_wall(void);

#endif
