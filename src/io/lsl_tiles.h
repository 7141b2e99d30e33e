/* The tiler every put uses: one rank's part of a tensor in chunks cut at the I/O plan's pieces
 * (lsl_ioplan.h's `piece`), so no two ranks write one stripe.  Pure arithmetic. */
#ifndef LSL_TILES_H
#define LSL_TILES_H

#include <stdint.h>

/* A rank's part of one tensor cut into chunks of whole units (rows, or bytes): unit 0 lies at
 * byte `origin` of the file.  Chunks hold at most `full` units, the first about `head` (so a
 * pipeline can start on a small one).  With a piece size from the plan, every boundary falls on
 * a multiple of the piece in the file when such boundaries exist at most `full` units apart
 * (the first chunk then ends at the aligned boundary nearest below `head`, or the first one). */
typedef struct lsl_i_tiles {
    uint64_t units, head, full, n;
    int aligned; /* boundaries fall on piece multiples */
} lsl_i_tiles;
void lsl_i_tiles_make(uint64_t units, uint64_t unit_bytes, uint64_t origin, uint64_t piece,
                      uint64_t head, uint64_t full, lsl_i_tiles *t);
/* Chunk c's first unit and its count (c < t->n). */
uint64_t lsl_i_tile_first(const lsl_i_tiles *t, uint64_t c);
uint64_t lsl_i_tile_count(const lsl_i_tiles *t, uint64_t c);

#endif
