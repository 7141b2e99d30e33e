/* libFuzzer target: the safetensors header reader on a whole file held in memory (header and
 * data), as `loraslab merge` reads every base and adapter file. */
#include "lsl_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lsl_st_file f;
    if (lsl_st_parse("fuzz.safetensors", data, size, size, &f) == LSL_OK)
        lsl_st_free(&f);
    return 0;
}
