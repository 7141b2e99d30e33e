/* The merge plan: every output tensor, where its bytes are, and the LoRA factors that apply to
 * it.  Rank 0 builds it from the headers and configs; every other rank receives it. */
#ifndef LSL_PLAN_H
#define LSL_PLAN_H

#include "lsl_internal.h"

/* How a tensor receives a LoRA delta. */
enum {
    LSL_PLAN_NONE = 0,
    LSL_PLAN_LINEAR,     /* W[out, in] += s * B @ A */
    LSL_PLAN_TRANSPOSED, /* W[in, out] or an embedding += s * (B @ A)^T */
    LSL_PLAN_BIAS        /* b[out] += s * lora_B.bias */
};

typedef struct lsl_plan_tensor {
    lsl_tensor_info info; /* name owned by the plan */
    uint32_t file;
    uint64_t off; /* absolute file offset of the tensor's data */
    int has_lora; /* an LSL_LORA_* kind */
    uint32_t a_file, b_file;
    uint64_t a_off, b_off; /* A [r, x] and B [y, r]; for BIAS, b is the lora_B.bias vector */
    lsl_dtype a_dtype, b_dtype;
    uint64_t a_cols; /* A's second dimension (the weight's rows when TRANSPOSED) */
    uint64_t r;
    double alpha, scaling;
    unsigned flags; /* LSL_LORA_RSLORA */
    int has_dora;
    uint64_t m_off; /* DoRA magnitude [out], in the adapter file (a_file) */
    lsl_dtype m_dtype;
    int replaced; /* bytes come from the adapter (modules_to_save, trained bias) */
} lsl_plan_tensor;

typedef struct lsl_plan {
    uint32_t nfiles;
    char **files;
    uint64_t n, nmerged;
    lsl_plan_tensor *t;
    uint64_t nattrs;
    char **keys, **vals;
} lsl_plan;

/* Rank 0: read and validate every input, refuse what cannot be merged.  Not collective. */
lsl_status lsl_plan_build(const lsl_job_config *cfg, lsl_plan *out);
/* Collective: rank 0's plan (built with status st) reaches every rank; returns the agreed
 * status. */
lsl_status lsl_plan_bcast(lsl_i_comm *comm, lsl_plan *p, lsl_status st);
void lsl_plan_free(lsl_plan *p);

#endif
