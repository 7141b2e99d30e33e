/* One flat byte encoding of what rank 0 decided (a plan), and its broadcast: every rank decodes
 * the same bytes, so the ranks cannot disagree on what they do, in one collective step instead of
 * one broadcast per field. */
#ifndef LSL_BLOB_H
#define LSL_BLOB_H

#include "lsl_internal.h"

#include <stdbool.h>

typedef struct lsl_i_blob {
    unsigned char *p;
    uint64_t len, cap, pos;
    bool bad; /* an allocation failed (encoding) or the bytes ran out (decoding) */
} lsl_i_blob;

/* Encoding (rank 0).  A failed allocation sets bad; later calls do nothing. */
void lsl_i_blob_put(lsl_i_blob *b, const void *v, uint64_t n);
void lsl_i_blob_put_u64(lsl_i_blob *b, uint64_t v);
void lsl_i_blob_put_str(lsl_i_blob *b, const char *s); /* NULL is encoded as "" */

/* Decoding, from pos.  Past the end: zeros (NULL strings) and bad set. */
void lsl_i_blob_get(lsl_i_blob *b, void *v, uint64_t n);
uint64_t lsl_i_blob_get_u64(lsl_i_blob *b);
char *lsl_i_blob_get_str(lsl_i_blob *b); /* the caller frees; NULL with bad on failure */
/* n bytes in place (no copy), NULL with bad when fewer remain. */
const void *lsl_i_blob_take(lsl_i_blob *b, uint64_t n);

/* Collective.  Rank 0's blob (encoded, bad when its encoding failed) reaches every rank's, ready
 * to decode from 0.  A rank's local failure st, rank 0's failed encoding or an allocation is
 * agreed first; on failure every rank returns the agreed status. */
lsl_status lsl_i_blob_bcast(lsl_i_comm *comm, lsl_i_blob *b, lsl_status st);

void lsl_i_blob_free(lsl_i_blob *b);

#endif
