/* A Hugging Face checkpoint directory: model.safetensors, or model.safetensors.index.json and
 * its shards, with the index rules a loader relies on checked: valid JSON, every weight_map
 * value a plain .safetensors name in the directory, every tensor once, and never both forms in
 * one directory (which one is the checkpoint would be ambiguous). */
#ifndef LSL_CHECKPOINT_H
#define LSL_CHECKPOINT_H

#include "lsl_safetensors.h"

typedef struct lsl_ckpt_ref {
    uint32_t file;   /* index into files */
    uint64_t tensor; /* index into files[file].tensors */
} lsl_ckpt_ref;

typedef struct lsl_ckpt {
    uint32_t nfiles;
    lsl_st_file *files;
    uint64_t ntensors;
    lsl_ckpt_ref *order; /* every tensor, shard by shard, in data-offset order */
    char *config_json;   /* config.json text, NULL when absent */
} lsl_ckpt;

/* Load and validate every header; warnings (missing index metadata, total_size mismatch) go to
 * the log (lsl_i_log) when `warn` is set.  Not collective (rank 0 calls it). */
lsl_status lsl_ckpt_open(const char *dir, int warn, lsl_ckpt *out);
void lsl_ckpt_free(lsl_ckpt *c);
/* Find a tensor by name: its reference, or false. */
bool lsl_ckpt_find(const lsl_ckpt *c, const char *name, lsl_ckpt_ref *ref);
static inline const lsl_st_tensor *lsl_ckpt_tensor(const lsl_ckpt *c, lsl_ckpt_ref r)
{
    return &c->files[r.file].tensors[r.tensor];
}

#endif
