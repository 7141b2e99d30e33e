/* The HDF5 side of the file: created by rank 0 alone (metadata only), data written through
 * MPI-IO at the datasets' offsets, attributes finished by rank 0 after the data is on disk. */
#ifndef LSL_H5_H
#define LSL_H5_H

#include "lsl_hfdir.h"
#include "lsl_internal.h"

#include <hdf5.h>

#define LSL_H5_GROUP "tensors"
/* Serving files (tokenizer, generation config, ...): one 1-D uint8 dataset each, named as the
 * file (format version 2). */
#define LSL_H5_FILES "files"

/* What rank 0 knows about a tensor once every rank has written it. */
typedef struct lsl_i_h5_final {
    uint32_t crc32c;
    int has_lora, rslora, dora;
    uint64_t lora_rank;
    double lora_alpha, lora_scaling;
} lsl_i_h5_final;

/* The HDF5 file type for a dtype (bf16 with HDF5 2.0's BFLOAT16 fields); caller H5Tclose()s. */
hid_t lsl_i_h5_type(lsl_dtype dt);

/* A file access property list for serial opens: sec2, no file locking (fails on many parallel
 * filesystems, and we rename atomically anyway). */
hid_t lsl_i_h5_fapl(uint64_t alignment);

/* Format the innermost HDF5 error into the loraslab message. */
lsl_status lsl_i_h5_fail(lsl_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Create path (replacing the empty placeholder the writer reserved) with every dataset contiguous,
 * allocated early, never filled, aligned; offsets[i] receives each dataset's file offset (0 for
 * empty tensors).  The nfiles serving files are stored whole under /files.  Not collective. */
lsl_status lsl_i_h5_create(const char *path, uint64_t alignment, uint64_t nattrs, char *const *keys,
                           char *const *vals, uint64_t n, const lsl_tensor_info *t, uint64_t nfiles,
                           const lsl_i_hfdir_file *files, uint64_t *offsets);

/* Write the per-tensor attributes (checksum, what was merged).  Not collective. */
lsl_status lsl_i_h5_finish(const char *path, uint64_t n, const lsl_tensor_info *t,
                           const lsl_i_h5_final *f);

/* Attribute helpers (used by the writer and by inspect). */
lsl_status lsl_i_h5_put_str(hid_t obj, const char *name, const char *value);
lsl_status lsl_i_h5_put_u64(hid_t obj, const char *name, hid_t type, uint64_t value);
lsl_status lsl_i_h5_put_f64(hid_t obj, const char *name, double value);
/* The longest string attribute read back (a base config.json is a few KiB). */
#define LSL_H5_STR_MAX (16 << 20)
/* Read a string attribute (fixed or variable length, one value, valid UTF-8, at most
 * LSL_H5_STR_MAX bytes); *out NULL with no error when absent.  `where` names the file and object
 * in messages.  Anything else is LSL_ERR_FORMAT. */
lsl_status lsl_i_h5_get_str(hid_t obj, const char *name, const char *where, char **out);
/* Read a numeric attribute holding one value of an integer class (integer != 0) or an integer
 * or float class into *out as mtype; *present 0 with no error when absent. */
lsl_status lsl_i_h5_get_num(hid_t obj, const char *name, const char *where, int integer,
                            hid_t mtype, void *out, int *present);

/* ---- reading a loraslab file back (inspect, convert, verify) ---- */

typedef struct lsl_i_h5_tensor {
    char *name;
    lsl_dtype dtype;
    int ndim;
    uint64_t shape[LSL_MAX_NDIM];
    uint64_t offset, nbytes; /* offset 0 with nbytes 0 for empty tensors */
    uint32_t crc32c;
    int has_crc, has_lora;
    uint64_t lora_rank;
    double lora_alpha, lora_scaling;
} lsl_i_h5_tensor;

typedef struct lsl_i_h5_file {
    uint64_t file_size;
    int format_version;
    char *attrs[5]; /* loraslab_version, base_path, adapter_path, base_config_json,
                       adapter_config_json (NULL when absent) */
    uint64_t n;
    lsl_i_h5_tensor *t; /* definition order */
    uint64_t nfiles;
    lsl_i_hfdir_file *files; /* the serving files (version 2), by name */
} lsl_i_h5_file;

extern const char *const lsl_i_h5_root_attrs[5];

/* Open and validate a loraslab file's layout: every dataset contiguous, its dtype attribute known
 * and consistent with the HDF5 size, its bytes inside the file.  Not collective. */
lsl_status lsl_i_h5_list(const char *path, lsl_i_h5_file *out);
/* The same for a file already open (file_size: its size in bytes; path names it in messages). */
lsl_status lsl_i_h5_list_open(hid_t file, uint64_t file_size, const char *path, lsl_i_h5_file *out);
void lsl_i_h5_list_free(lsl_i_h5_file *f);

#endif
