/* The merge plan: every output tensor, where its bytes are, and the LoRA factors that apply to
 * it.  Rank 0 builds it from the headers and configs; every other rank receives it. */
#ifndef LSL_PLAN_H
#define LSL_PLAN_H

#include "lsl_internal.h"

typedef struct lsl_plan_tensor {
    lsl_tensor_info info; /* name owned by the plan */
    uint32_t file;
    uint64_t off; /* absolute file offset of the tensor's data */
    int has_lora;
    uint32_t a_file, b_file;
    uint64_t a_off, b_off;
    lsl_dtype a_dtype, b_dtype;
    uint64_t r;
    double alpha, scaling;
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
lsl_status lsl_plan_bcast(MPI_Comm comm, lsl_plan *p, lsl_status st);
void lsl_plan_free(lsl_plan *p);

#endif
