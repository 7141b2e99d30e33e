/* The LoRA factors as the model holds them (lsl_lora_part: each factor an element range of the
 * whole, or whole on every rank) turned into what the merge of this rank's rows needs
 * (lsl_i_lora), with one collective step for all the parts of a call. */
#ifndef LSL_FACTORS_H
#define LSL_FACTORS_H

#include "lsl_writer_s.h"

/* One part's resolved factors; own[] the host buffers made for them (freed by
 * lsl_i_factors_free). */
#define LSL_I_FACTORS_OWN 8
typedef struct lsl_i_factors {
    lsl_i_lora l;
    void *own[LSL_I_FACTORS_OWN];
    /* each factor whole (where some rank needs it so): as held, and in its own layout */
    const void *held[3], *whole[3];
} lsl_i_factors;

/* Collective.  For parts[0..n) of tensors indices[], whose LoRA as the caller passed it is pub[i]
 * (NULL: none; which parts have one is logically collective): one all-gather of every rank's
 * factor ranges checks them (the same dtypes, r and flags everywhere; each factor's ranges tile
 * it in rank order or every rank holds it whole) and plans what each rank needs; one
 * all-gatherv then brings every factor that must be whole, device shards copied down on the
 * part's stream first.  out[i].l then describes part i's factors as the put paths take them:
 *  - A whole (LSL_I_LORA_A_FULL) in host memory, or in place when every rank passed it whole, or
 *    still as FSDP row shards for a device part whose merge runs on the GPU (the device gather,
 *    over NCCL where it serves, takes it from there);
 *  - b the part's rows of B, in place where the rank holds exactly those, else cut from B
 *    gathered whole; the magnitude likewise (every column's for a transposed delta);
 *  - a transposed delta rewritten (b = A's columns of the part's rows, transposed; a = B^T).
 * A device part whose factors had to be gathered or rewritten gets them all in host memory
 * (LSL_I_LORA_ON_HOST).  st: this rank's status so far (it joins with nothing).  route
 * (NULL: not wanted) receives, agreed in the call's first reduction, whether no rank has a
 * LoRA, no rank device memory, no rank a formula without a kernel or a block of columns (1
 * each, else 0): the put's
 * path (lsl_i_put_one).  With no LoRA anywhere that reduction is the only communication.  Agreed
 * status; release out[] with lsl_i_factors_free, whatever it returned. */
lsl_status lsl_i_factors_resolve(lsl_writer *w, uint64_t n, const uint64_t *indices,
                                 const lsl_i_part *parts, const lsl_lora_part *const *pub,
                                 lsl_i_factors *out, int64_t route[3], lsl_status st);
void lsl_i_factors_free(lsl_i_factors *f, uint64_t n);

#endif
