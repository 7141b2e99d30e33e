/* safetensors header reader: the rules of safetensors' own reader (tensor.rs read_metadata and
 * validate), and stricter where a C reader must be (see lsl_safetensors.c). */
#ifndef LSL_SAFETENSORS_H
#define LSL_SAFETENSORS_H

#include "lsl_internal.h"

#define LSL_ST_MAX_HEADER 100000000ull /* safetensors MAX_HEADER_SIZE (inclusive) */

typedef struct lsl_st_tensor {
    char *name;
    lsl_dtype dtype;
    int ndim;
    uint64_t shape[LSL_MAX_NDIM];
    uint64_t begin, end; /* relative to the data buffer */
} lsl_st_tensor;

typedef struct lsl_st_file {
    char *path;
    uint64_t file_size;
    uint64_t data_start; /* 8 + N */
    uint64_t ntensors;
    lsl_st_tensor *tensors; /* sorted by data offset */
    char *format;           /* __metadata__.format, NULL when absent */
} lsl_st_file;

/* Parse and validate a header from memory: `bytes` holds the first `len` bytes of a file whose
 * total size is file_size (tests pass the whole file).  `label` names the file in messages. */
lsl_status lsl_st_parse(const char *label, const unsigned char *bytes, uint64_t len,
                        uint64_t file_size, lsl_st_file *out);
/* Open path, read only the header, validate it. */
lsl_status lsl_st_open(const char *path, lsl_st_file *out);
void lsl_st_free(lsl_st_file *f);
/* Index of the tensor called name, or -1. */
int64_t lsl_st_find(const lsl_st_file *f, const char *name);

/* ---- writing: headers byte-compatible with safetensors' serialize (tensor.rs prepare) ---- */

typedef struct lsl_st_entry {
    const char *name;
    lsl_dtype dtype;
    int ndim;
    const uint64_t *shape;
    uint64_t nbytes;
} lsl_st_entry;

/* Order the entries as safetensors does (dtype descending in its enum order, then name bytewise)
 * into order[], give each its data offset (relative to the data buffer) in data_off[], and build
 * the file's first bytes: u64le(N) + header JSON with {"format":"pt"} metadata, space-padded so
 * that 8 + N is a multiple of `align` (8 as safetensors pads; a multiple of 8 up to
 * LSL_ST_MAX_ALIGN so the data section starts on a stripe or block: JSON allows trailing
 * spaces, and safetensors' reader takes any N).  *head (caller frees) holds 8 + N bytes.
 * Rejects a tensor named __metadata__, duplicate names and other alignments. */
#define LSL_ST_MAX_ALIGN ((uint64_t)16 << 20)
lsl_status lsl_st_build_header(uint64_t n, const lsl_st_entry *e, uint64_t align, uint64_t *order,
                               uint64_t *data_off, unsigned char **head, uint64_t *head_len);

#endif
