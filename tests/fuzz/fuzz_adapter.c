/* libFuzzer target: adapter_config.json, then the rank and alpha lookups that run its
 * rank_pattern / alpha_pattern keys against module names, as the merge plan does. */
#include "lsl_adapter.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const modules[] = {"model.layers.0.self_attn.q_proj",
                                      "model.layers.11.mlp.down_proj", "model.embed_tokens",
                                      "transformer.h.3.attn.c_attn", "lm_head"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    lsl_adapter_cfg c;
    if (lsl_adapter_cfg_parse("fuzz/adapter_config.json", text, &c) == LSL_OK) {
        for (size_t i = 0; i < sizeof modules / sizeof *modules; i++) {
            uint64_t r = lsl_adapter_rank_for(&c, modules[i]);
            double a = lsl_adapter_alpha_for(&c, modules[i]);
            (void)lsl_adapter_scaling(&c, r ? r : 1, a);
        }
    }
    lsl_adapter_cfg_free(&c);
    free(text);
    return 0;
}
