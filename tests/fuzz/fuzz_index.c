/* libFuzzer target: model.safetensors.index.json in a directory that holds two small shards,
 * opened the way `loraslab merge --base DIR` opens a sharded checkpoint (every rule between the
 * index and the shard headers). */
#include "lsl_checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256];

/* A shard holding the named F32 tensors of shape [2, 2]. */
static void shard(const char *name, int n, const char *const *tensors)
{
    lsl_st_entry e[4];
    uint64_t shape[2] = {2, 2}, order[4], off[4], len;
    unsigned char *head;
    for (int i = 0; i < n; i++)
        e[i] = (lsl_st_entry){tensors[i], LSL_F32, 2, shape, 16};
    if (lsl_st_build_header((uint64_t)n, e, 8, order, off, &head, &len) != LSL_OK)
        abort();
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    unsigned char zeros[64] = {0};
    fwrite(head, 1, len, f);
    fwrite(zeros, 1, 16 * (size_t)n, f);
    fclose(f);
    free(head);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "%s/lsl-fuzz-index-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    mkdir(dir, 0700);
    const char *a[] = {"model.embed_tokens.weight", "model.norm.weight"};
    const char *b[] = {"lm_head.weight"};
    shard("model-00001-of-00002.safetensors", 2, a);
    shard("model-00002-of-00002.safetensors", 1, b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0])
        setup();
    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(p, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    lsl_ckpt c;
    if (lsl_ckpt_open(dir, 0, &c) == LSL_OK)
        lsl_ckpt_free(&c);
    return 0;
}
