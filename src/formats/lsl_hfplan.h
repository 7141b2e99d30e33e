/* The layout of a Hugging Face safetensors directory, planned before any byte is written: which
 * shard holds each tensor (huggingface_hub's split), each shard's header, and where each tensor's
 * bytes start in its file.  The writer and convert both lay out their output with it, so a
 * directory written in one pass and one converted from an HDF5 file are the same bytes. */
#ifndef LSL_HFPLAN_H
#define LSL_HFPLAN_H

#include "lsl_safetensors.h"

/* Longest shard file name: "model-00001-of-00002.safetensors" and its NUL. */
#define LSL_HF_NAME_MAX 64

typedef struct lsl_i_hfplan {
    uint32_t nshards;
    char (*names)[LSL_HF_NAME_MAX]; /* model.safetensors, or model-0000i-of-0000K.safetensors */
    uint32_t *shard_of;             /* per tensor */
    uint64_t *offset;               /* per tensor: its first byte in its shard file */
    uint64_t *head_len;             /* per shard: 8 + N, a multiple of the alignment */
    uint64_t *file_bytes;           /* per shard: header and data */
    uint64_t *first;                /* nshards + 1: shard s's tensors are in_file[first[s]..) */
    uint64_t *in_file;              /* per tensor: the tensors shard by shard, each shard's in
                                       file (= data offset) order, once its header is built */
    unsigned char **heads;          /* per shard: the header bytes (NULL after lsl_i_hfplan_drop) */
} lsl_i_hfplan;

/* Split n tensors (in definition order) into shards of at most max_shard data bytes (0: 5 GB),
 * as huggingface_hub's split_state_dict_into_shards_factory does: greedy in order, a tensor
 * larger than the limit in a shard of its own placed before the one still open.  Fills nshards,
 * names, shard_of and each shard's data bytes (file_bytes, until lsl_i_hfplan_shard).  Not
 * collective.  On failure p is freed. */
lsl_status lsl_i_hfplan_split(uint64_t n, const lsl_st_entry *e, uint64_t max_shard,
                              lsl_i_hfplan *p);
/* Shard s's header, padded so its data section starts on a multiple of align (see
 * lsl_st_build_header): heads[s], head_len[s], file_bytes[s] and the offsets of its tensors.
 * e: the same n entries as the split. */
lsl_status lsl_i_hfplan_shard(lsl_i_hfplan *p, uint32_t s, uint64_t n, const lsl_st_entry *e,
                              uint64_t align);
/* Allocate a plan's arrays for nshards shards and n tensors (a rank receiving one). */
lsl_status lsl_i_hfplan_alloc(lsl_i_hfplan *p, uint32_t nshards, uint64_t n);
/* Release the headers only (once written). */
void lsl_i_hfplan_drop_heads(lsl_i_hfplan *p);
void lsl_i_hfplan_free(lsl_i_hfplan *p);

#endif
