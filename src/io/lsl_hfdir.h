/* The small files of a Hugging Face checkpoint directory besides its shards, written by rank 0
 * into the directory's temporary once every shard's bytes are on disk: the index, config.json,
 * the serving files (tokenizer, generation config, chat template, ...), loraslab.json
 * (provenance and per-tensor CRC-32C) and checksums.json (each file's CRC-32C), which
 * `loraslab verify DIR` checks.  The writer (in-job and offline merges) and convert share it. */
#ifndef LSL_HFDIR_H
#define LSL_HFDIR_H

#include "lsl_hfplan.h"
#include "lsl_internal.h"
#include "lsl_ioplan.h"

/* Most serving files one output carries, and the largest (a tokenizer.json is ~10 MiB). */
#define LSL_HF_MAX_FILES     256
#define LSL_HF_MAX_FILE_SIZE ((uint64_t)256 << 20)
/* All of them together: rank 0 holds them in memory until the output is complete. */
#define LSL_HF_MAX_FILES_TOTAL ((uint64_t)1 << 30)

typedef struct lsl_i_hfdir_tensor {
    const char *name;
    uint32_t shard;
    uint32_t crc32c;
    int has_crc, has_lora;
    uint64_t lora_rank;
    double lora_alpha, lora_scaling;
} lsl_i_hfdir_tensor;

/* Files carried through: a name (lsl_i_hf_file_name_ok) and bytes. */
typedef struct lsl_i_hfdir_file {
    char *name;
    unsigned char *data;
    uint64_t len;
} lsl_i_hfdir_file;

typedef struct lsl_i_hfdir_desc {
    const char *dir;   /* the temporary directory written into */
    const char *final; /* its final path, for messages */
    uint32_t nshards;
    const char (*shard_names)[64];
    const uint32_t *shard_crc; /* each shard file's CRC-32C */
    uint64_t n;
    const lsl_i_hfdir_tensor *t;
    uint64_t total_bytes;
    /* provenance (NULL when unknown) */
    const char *written_by, *source, *base_path, *adapter_path, *base_config, *adapter_config;
    uint64_t nfiles;
    const lsl_i_hfdir_file *files;
    int quiet;
} lsl_i_hfdir_desc;

/* Rank 0.  Creates the shard files of p (split already) in tmpdir: each gets its I/O plan for
 * the filesystem fs (its Lustre layout set before any byte is written; in: the plan's inputs
 * but for the file's size, which is the shard's), its header padded to the plan's alignment
 * (at most LSL_ST_MAX_ALIGN), and its final size.  plans[s] and head_crc[s] receive each
 * shard's plan and its header's CRC-32C; with print, each shard's plan is logged. */
lsl_status lsl_i_hfdir_layout(const lsl_i_fsinfo *fs, const char *tmpdir, lsl_i_hfplan *p,
                              uint64_t n, const lsl_st_entry *e, lsl_i_ioplan_in in, int print,
                              lsl_i_ioplan *plans, uint32_t *head_crc);

/* Rank 0.  Writes the small files into d->dir and fsyncs each: model.safetensors.index.json
 * (several shards), config.json (base_config; a warning when there is none), the serving files,
 * loraslab.json, checksums.json last. */
lsl_status lsl_i_hfdir_finish(const lsl_i_hfdir_desc *d);

/* Whether a serving file's name may be carried: a plain file name (no '/', not hidden, UTF-8)
 * that none of the checkpoint's own files use (config.json, the shards and index, loraslab.json,
 * checksums.json). */
bool lsl_i_hf_file_name_ok(const char *name);

/* The base directory's serving files (rank 0, the offline merge): every regular file at its top
 * level that is not a weight file (*.safetensors, *.bin, *.pt, *.pth, *.ckpt, *.h5, *.msgpack,
 * *.gguf, *.onnx, their indexes), nor config.json, nor hidden, nor larger than
 * LSL_HF_MAX_FILE_SIZE, nor past LSL_HF_MAX_FILES_TOTAL or LSL_HF_MAX_FILES in all (skipped
 * with a warning, in name order: the same files every run); sorted by name.  *files (n entries) is
 * freed with lsl_i_hf_files_free.  A dir that is a file (one .safetensors) has none. */
lsl_status lsl_i_hf_files_scan(const char *dir, int quiet, lsl_i_hfdir_file **files, uint64_t *n);
void lsl_i_hf_files_free(lsl_i_hfdir_file *files, uint64_t n);

/* Create dir/name (must not exist) with len bytes, fsync it; *crc gets its CRC-32C when not
 * NULL. */
lsl_status lsl_i_write_small(const char *dir, const char *name, const void *data, uint64_t len,
                             uint32_t *crc);
/* Base64 of the big-endian CRC (8 characters + NUL), as GCS and S3 report CRC-32C. */
void lsl_i_crc_base64(uint32_t crc, char out[9]);

#endif
