/* PEFT adapter_config.json: the LoraConfig fields that change the merge (PEFT's
 * tuners/lora/config.py), and the adapters loraslab refuses rather than merge silently. */
#ifndef LSL_ADAPTER_H
#define LSL_ADAPTER_H

#include "lsl_internal.h"

#include <regex.h>

typedef struct lsl_pattern {
    char *key;
    double value;
    regex_t re;
} lsl_pattern;

/* A PEFT option that is a list of names (matched exactly or as a dotted suffix) or one regex
 * (matched whole). */
typedef struct lsl_names {
    int set;      /* the option is present, not null, not empty */
    int is_regex; /* a string: re below; a list: names */
    regex_t re;
    char **names;
    uint64_t n;
} lsl_names;

typedef struct lsl_adapter_cfg {
    uint64_t r;
    double alpha;
    int rslora, use_dora, fan_in_fan_out, lora_bias;
    uint64_t nrank_pat, nalpha_pat;
    lsl_pattern *rank_pat, *alpha_pat;
    char *base_model; /* base_model_name_or_path, NULL when absent */
    /* Which modules the adapter applies to, as PEFT's check_target_module_exists reads
     * target_modules, exclude_modules, layers_to_transform and layers_pattern: a module the
     * config does not select is not given a LoRA layer, so its factors in the file are never
     * loaded (lsl_adapter_targets). */
    lsl_names targets, excludes; /* a list (any: absent or "all-linear"), or one regex */
    int64_t *layers;             /* layers_to_transform (nlayers of them; 0: every layer) */
    uint64_t nlayers;
    regex_t *layer_re; /* where a layer index is read: one per layers_pattern name, or one
                          for any name; compiled once at parse */
    uint64_t nlayer_re;
} lsl_adapter_cfg;

/* Parse and vet the config text; label names the file in messages.  Options loraslab cannot
 * merge exactly are refused with LSL_ERR_UNSUPPORTED naming the option. */
lsl_status lsl_adapter_cfg_parse(const char *label, const char *text, lsl_adapter_cfg *out);
void lsl_adapter_cfg_free(lsl_adapter_cfg *c);

/* Whether PEFT gives `module` (a name inside the base model, "model.layers.0.self_attn.q_proj")
 * a LoRA layer under this config. */
bool lsl_adapter_targets(const lsl_adapter_cfg *c, const char *module);

/* r and alpha for a module name, as PEFT's get_pattern_key picks them: the first pattern key k
 * (in JSON order) with re.match(rf"(.*\.)?({k})$", module), else the global value. */
uint64_t lsl_adapter_rank_for(const lsl_adapter_cfg *c, const char *module);
double lsl_adapter_alpha_for(const lsl_adapter_cfg *c, const char *module);
/* alpha / r, or alpha / sqrt(r) with use_rslora. */
double lsl_adapter_scaling(const lsl_adapter_cfg *c, uint64_t r, double alpha);

#endif
