#include "lsl_checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INDEX_NAME    "model.safetensors.index.json"
#define SINGLE_NAME   "model.safetensors"
#define MAX_JSON_TEXT (64u << 20)

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A weight_map value must be a plain file name in the directory: transformers joins it to the
 * directory as it is, so an absolute path or a '..' would read outside it. */
static bool safe_shard_name(const char *s)
{
    size_t n = strlen(s);
    return n > 12 && lsl_i_plain_name(s) && strcmp(s + n - 12, ".safetensors") == 0;
}

void lsl_ckpt_free(lsl_ckpt *c)
{
    if (!c)
        return;
    for (uint32_t i = 0; i < c->nfiles; i++)
        lsl_st_free(&c->files[i]);
    free(c->files);
    free(c->order);
    free(c->config_json);
    memset(c, 0, sizeof *c);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static lsl_status fill_order(lsl_ckpt *c)
{
    uint64_t total = 0;
    for (uint32_t f = 0; f < c->nfiles; f++)
        total += c->files[f].ntensors;
    c->order = lsl_i_calloc(total ? total : 1, sizeof *c->order);
    if (!c->order)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t f = 0; f < c->nfiles; f++)
        for (uint64_t t = 0; t < c->files[f].ntensors; t++)
            c->order[c->ntensors++] = (lsl_ckpt_ref){f, t};
    return LSL_OK;
}

static lsl_status open_index(const char *dir, const char *index_path, int warn, lsl_ckpt *c)
{
    lsl_status rc = LSL_OK;
    char *text = NULL, **shards = NULL, *p = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    size_t nshards = 0;
    LSL_TRY(lsl_i_read_text(index_path, MAX_JSON_TEXT, &text, NULL));
    root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: %s (line %d)", index_path,
                 root ? "root is not a JSON object" : jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: \"weight_map\" is missing or not an object", index_path);
    json_t *meta = json_object_get(root, "metadata");
    if (!json_is_object(meta) && warn)
        lsl_i_log(LSL_LOG_WARN, "loraslab: warning: %s has no \"metadata\" object\n", index_path);
    const char *k;
    json_t *v;
    shards = lsl_i_calloc(json_object_size(wm) + 1, sizeof *shards);
    if (!shards)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    json_object_foreach (wm, k, v) {
        if (!json_is_string(v))
            LSL_FAIL(LSL_ERR_FORMAT, "%s: weight_map value for `%s` is not a string", index_path,
                     k);
        const char *s = json_string_value(v);
        if (!safe_shard_name(s))
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: weight_map names shard \"%s\" for `%s`: shard names must be plain "
                     "*.safetensors file names in the checkpoint directory",
                     index_path, s, k);
        shards[nshards++] = (char *)s;
    }
    qsort(shards, nshards, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < nshards; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0)
            shards[u++] = shards[i];
    c->files = lsl_i_calloc(u ? u : 1, sizeof *c->files);
    if (!c->files)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < u; i++) {
        free(p);
        if (!(p = lsl_i_join(dir, shards[i])))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        if (!exists(p))
            LSL_FAIL(LSL_ERR_NOT_FOUND, "%s: shard %s listed in %s does not exist", p, shards[i],
                     INDEX_NAME);
        LSL_TRY(lsl_st_open(p, &c->files[i]));
        c->nfiles = (uint32_t)(i + 1);
    }
    /* Index and headers must agree exactly (I7, I8, I9). */
    uint64_t sum = 0;
    json_object_foreach (wm, k, v) {
        const char *s = json_string_value(v);
        size_t f = 0;
        while (f < u && strcmp(shards[f], s) != 0)
            f++;
        if (lsl_st_find(&c->files[f], k) < 0)
            LSL_FAIL(LSL_ERR_FORMAT, "%s: tensor `%s` is listed for %s but that shard lacks it",
                     index_path, k, s);
    }
    for (uint32_t f = 0; f < c->nfiles; f++) {
        for (uint64_t t = 0; t < c->files[f].ntensors; t++) {
            const char *name = c->files[f].tensors[t].name;
            json_t *mv = json_object_get(wm, name);
            if (!mv)
                LSL_FAIL(LSL_ERR_FORMAT, "%s: holds tensor `%s` which %s does not list",
                         c->files[f].path, name, INDEX_NAME);
            if (strcmp(json_string_value(mv), shards[f]) != 0)
                LSL_FAIL(LSL_ERR_FORMAT, "%s: tensor `%s` also appears in %s (listed for %s)",
                         index_path, name, shards[f], json_string_value(mv));
            sum += c->files[f].tensors[t].end - c->files[f].tensors[t].begin;
        }
    }
    json_t *ts = json_is_object(meta) ? json_object_get(meta, "total_size") : NULL;
    if (warn && json_is_integer(ts) && (uint64_t)json_integer_value(ts) != sum)
        lsl_i_log(LSL_LOG_WARN,
                  "loraslab: warning: %s: metadata.total_size is %lld but the shards hold %llu "
                  "bytes of tensors\n",
                  index_path, (long long)json_integer_value(ts), (unsigned long long)sum);
    LSL_TRY(fill_order(c));
fail:
    free(p);
    free(shards);
    json_decref(root);
    free(text);
    return rc;
}

lsl_status lsl_ckpt_open(const char *dir, int warn, lsl_ckpt *c)
{
    lsl_status rc = LSL_OK;
    char *index = NULL, *single = NULL, *cfg = NULL;
    struct stat sb;
    memset(c, 0, sizeof *c);
    if (stat(dir, &sb) != 0)
        return lsl_i_fail_errno(errno == ENOENT ? LSL_ERR_NOT_FOUND : LSL_ERR_IO, errno, "%s", dir);
    if (S_ISREG(sb.st_mode)) {
        /* A single .safetensors file: a checkpoint of one shard, without config.json. */
        c->files = lsl_i_calloc(1, sizeof *c->files);
        if (!c->files)
            return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
        c->nfiles = 1;
        LSL_TRY(lsl_st_open(dir, &c->files[0]));
        LSL_TRY(fill_order(c));
        return LSL_OK;
    }
    if (!S_ISDIR(sb.st_mode))
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "%s: neither a checkpoint directory nor a .safetensors file", dir);
    index = lsl_i_join(dir, INDEX_NAME);
    single = lsl_i_join(dir, SINGLE_NAME);
    cfg = lsl_i_join(dir, "config.json");
    if (!index || !single || !cfg)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    bool has_index = exists(index), has_single = exists(single);
    if (has_index && has_single)
        LSL_FAIL(LSL_ERR_FORMAT,
                 "%s: holds both %s and %s; which one is the checkpoint is ambiguous", dir,
                 SINGLE_NAME, INDEX_NAME);
    if (!has_index && !has_single) {
        char *bin = lsl_i_join(dir, "pytorch_model.bin");
        bool pickle = bin && exists(bin);
        free(bin);
        LSL_FAIL(LSL_ERR_NOT_FOUND, "%s: no %s or %s%s", dir, SINGLE_NAME, INDEX_NAME,
                 pickle ? " (pytorch_model.bin is a pickle; convert it to safetensors first)" : "");
    }
    if (has_index) {
        LSL_TRY(open_index(dir, index, warn, c));
    } else {
        c->files = lsl_i_calloc(1, sizeof *c->files);
        if (!c->files)
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        LSL_TRY(lsl_st_open(single, &c->files[0]));
        c->nfiles = 1;
        LSL_TRY(fill_order(c));
    }
    if (exists(cfg))
        LSL_TRY(lsl_i_read_text(cfg, MAX_JSON_TEXT, &c->config_json, NULL));
    free(index);
    free(single);
    free(cfg);
    return LSL_OK;
fail:
    free(index);
    free(single);
    free(cfg);
    lsl_ckpt_free(c);
    return rc;
}

bool lsl_ckpt_find(const lsl_ckpt *c, const char *name, lsl_ckpt_ref *ref)
{
    for (uint32_t f = 0; f < c->nfiles; f++) {
        int64_t t = lsl_st_find(&c->files[f], name);
        if (t >= 0) {
            *ref = (lsl_ckpt_ref){f, (uint64_t)t};
            return true;
        }
    }
    return false;
}
