/* The small files of a safetensors checkpoint directory (lsl_hfdir.h). */
#include "lsl_hfdir.h"

#include "lsl_crc32c.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

lsl_status lsl_i_write_small(const char *dir, const char *name, const void *data, uint64_t len,
                             uint32_t *crc)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return lsl_i_fail_errno(LSL_ERR_IO, errno, "%s", path);
    lsl_status st = lsl_i_pwrite_full(fd, data, len, 0, path);
    if (st == LSL_OK && lsl_i_fsync(fd) != 0)
        st = lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: fsync", path);
    close(fd);
    if (st == LSL_OK && crc)
        *crc = lsl_crc32c_extend(0, data, len);
    return st;
}

void lsl_i_crc_base64(uint32_t crc, char out[9])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char be[4] = {(unsigned char)(crc >> 24), (unsigned char)(crc >> 16),
                           (unsigned char)(crc >> 8), (unsigned char)crc};
    uint32_t v = ((uint32_t)be[0] << 16) | ((uint32_t)be[1] << 8) | be[2];
    out[0] = b64[(v >> 18) & 63];
    out[1] = b64[(v >> 12) & 63];
    out[2] = b64[(v >> 6) & 63];
    out[3] = b64[v & 63];
    v = (uint32_t)be[3] << 16;
    out[4] = b64[(v >> 18) & 63];
    out[5] = b64[(v >> 12) & 63];
    out[6] = '=';
    out[7] = '=';
    out[8] = '\0';
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

bool lsl_i_hf_file_name_ok(const char *name)
{
    static const char *const own[] = {"config.json", "model.safetensors.index.json",
                                      "loraslab.json", "checksums.json"};
    if (!name || !lsl_i_plain_name(name) || name[0] == '.' ||
        !lsl_i_utf8_valid(name, strlen(name), NULL) || strlen(name) > 255)
        return false;
    for (size_t i = 0; i < sizeof own / sizeof *own; i++)
        if (strcmp(name, own[i]) == 0)
            return false;
    return !ends_with(name, ".safetensors");
}

/* A weight file of any format, or its index: never carried (the merge writes the weights). */
static bool weight_file(const char *name)
{
    static const char *const ext[] = {".safetensors", ".bin",  ".pt",        ".pth",
                                      ".ckpt",        ".h5",   ".hdf5",      ".msgpack",
                                      ".gguf",        ".onnx", ".index.json"};
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (ends_with(name, ext[i]))
            return true;
    return strncmp(name, "adapter_", 8) == 0; /* a PEFT adapter saved beside the base */
}

void lsl_i_hf_files_free(lsl_i_hfdir_file *files, uint64_t n)
{
    for (uint64_t i = 0; files && i < n; i++) {
        free(files[i].name);
        free(files[i].data);
    }
    free(files);
}

static int cmp_strs(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Rank 0: the names in dir a server file may have, sorted (so what the caps skip is the same
 * every run), into *out (caller frees each and the array). */
static lsl_status candidates(const char *dir, char ***out, uint64_t *n)
{
    lsl_status rc = LSL_OK;
    char **names = NULL;
    uint64_t k = 0, cap = 0;
    DIR *d = opendir(dir);
    if (!d)
        return lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: listing the serving files", dir);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!lsl_i_hf_file_name_ok(e->d_name) || weight_file(e->d_name))
            continue;
        if (k == cap) {
            char **m = lsl_i_realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *m);
            if (!m)
                LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
            names = m;
        }
        if (!(names[k] = lsl_i_strdup(e->d_name)))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        k++;
    }
    if (k)
        qsort(names, k, sizeof *names, cmp_strs);
fail:
    closedir(d);
    if (rc != LSL_OK) {
        for (uint64_t i = 0; i < k; i++)
            free(names[i]);
        free(names);
        names = NULL, k = 0;
    }
    *out = names;
    *n = k;
    return rc;
}

lsl_status lsl_i_hf_files_scan(const char *dir, int quiet, lsl_i_hfdir_file **files, uint64_t *n)
{
    lsl_status rc = LSL_OK;
    lsl_i_hfdir_file *f = NULL;
    char **names = NULL, *path = NULL;
    uint64_t k = 0, total = 0, nn = 0;
    *files = NULL;
    *n = 0;
    struct stat ds;
    if (stat(dir, &ds) == 0 && !S_ISDIR(ds.st_mode))
        return LSL_OK; /* one .safetensors file: nothing beside it belongs to it */
    LSL_TRY(candidates(dir, &names, &nn));
    f = lsl_i_calloc(LSL_HF_MAX_FILES, sizeof *f);
    if (!f)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < nn; i++) {
        struct stat sb;
        free(path);
        if (!(path = lsl_i_join(dir, names[i])))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        const char *why = (uint64_t)sb.st_size > LSL_HF_MAX_FILE_SIZE ? "it is over 256 MiB"
                          : total + (uint64_t)sb.st_size > LSL_HF_MAX_FILES_TOTAL
                              ? "the serving files would pass 1 GiB in all"
                          : k == LSL_HF_MAX_FILES ? "there are more than 256 serving files"
                                                  : NULL;
        if (why) {
            if (quiet != LSL_PROGRESS_NONE)
                lsl_i_log(LSL_LOG_WARN,
                          "loraslab: warning: %s is not carried into the output: %s (copy it "
                          "by hand if the model needs it)\n",
                          path, why);
            continue;
        }
        char *text = NULL;
        LSL_TRY(lsl_i_read_text(path, LSL_HF_MAX_FILE_SIZE, &text, &f[k].len));
        f[k].data = (unsigned char *)text;
        f[k].name = names[i];
        names[i] = NULL;
        total += f[k++].len;
    }
    *files = f;
    *n = k;
    f = NULL;
fail:
    if (f)
        lsl_i_hf_files_free(f, k);
    for (uint64_t i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    free(path);
    return rc;
}

/* The data section's alignment for a shard: the plan's, as a multiple of 8 (safetensors' own
 * padding) no larger than a header may reasonably be padded. */
static uint64_t data_align(const lsl_i_ioplan *plan)
{
    uint64_t a = plan->alignment < 8 ? 8 : (plan->alignment + 7) / 8 * 8;
    return a > LSL_ST_MAX_ALIGN ? LSL_ST_MAX_ALIGN : a;
}

lsl_status lsl_i_hfdir_layout(const lsl_i_fsinfo *fs, const char *tmpdir, lsl_i_hfplan *p,
                              uint64_t n, const lsl_st_entry *e, lsl_i_ioplan_in in, int print,
                              lsl_i_ioplan *plans, uint32_t *head_crc)
{
    lsl_status rc = LSL_OK;
    int fd = -1;
    char path[4160];
    for (uint32_t s = 0; s < p->nshards; s++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, p->names[s]);
        /* on Lustre with no objects yet, so the plan can still choose the shard's layout */
        int lazy = strcmp(fs->name, "lustre") == 0 ? LSL_I_O_LOV_DELAY_CREATE : 0;
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | lazy, 0666);
        if (fd < 0)
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, errno, "%s", path));
        uint64_t count = 0;
        for (uint64_t i = 0; i < n; i++)
            count += p->shard_of[i] == s;
        in.total_bytes = p->file_bytes[s]; /* the data alone, until the header is built */
        in.ntensors = count;
        lsl_i_ioplan_for_file(fs, in, fd, path, &plans[s]);
        LSL_TRY(lsl_i_hfplan_shard(p, s, n, e, data_align(&plans[s])));
        if (print) {
            char text[1024], b[32];
            if (s == 0) {
                lsl_i_ioplan_describe(&plans[s], text, sizeof text);
                lsl_i_log(LSL_LOG_INFO, "%s", text);
            }
            lsl_i_log(LSL_LOG_INFO, "plan: %s: %s, %llu tensors, layout %s\n", p->names[s],
                      lsl_i_fmt_bytes(p->file_bytes[s], b, sizeof b), (unsigned long long)count,
                      plans[s].why);
        }
        LSL_TRY(lsl_i_pwrite_full(fd, p->heads[s], p->head_len[s], 0, path));
        if (ftruncate(fd, (off_t)p->file_bytes[s]) != 0)
            LSL_GOTO(lsl_i_fail_errno(LSL_ERR_IO, errno, "%s: sizing the shard", path));
        head_crc[s] = lsl_crc32c_extend(0, p->heads[s], p->head_len[s]);
        close(fd);
        fd = -1;
    }
fail:
    if (fd >= 0)
        close(fd);
    return rc;
}

static char *dumps(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *t = lsl_i_realloc(s, n + 2);
    if (!t) {
        free(s);
        return NULL;
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    return t;
}

static json_t *provenance(const lsl_i_hfdir_desc *d)
{
    json_t *doc = json_object(), *tens = json_object();
    json_object_set_new(doc, "loraslab_version", json_string(lsl_version_string()));
    json_object_set_new(doc, "written_by", json_string(d->written_by ? d->written_by : "?"));
    if (d->source)
        json_object_set_new(doc, "source", json_string(d->source));
    if (d->base_path)
        json_object_set_new(doc, "base_path", json_string(d->base_path));
    if (d->adapter_path)
        json_object_set_new(doc, "adapter_path", json_string(d->adapter_path));
    if (d->adapter_config) {
        json_t *ac = json_loads(d->adapter_config, 0, NULL);
        json_object_set_new(doc, "adapter_config", ac ? ac : json_string(d->adapter_config));
    }
    for (uint64_t i = 0; i < d->n; i++) {
        json_t *t = json_object();
        if (d->t[i].has_crc)
            json_object_set_new(t, "crc32c", json_integer(d->t[i].crc32c));
        if (d->t[i].has_lora) {
            json_t *l = json_object();
            json_object_set_new(l, "rank", json_integer((json_int_t)d->t[i].lora_rank));
            json_object_set_new(l, "alpha", json_real(d->t[i].lora_alpha));
            json_object_set_new(l, "scaling", json_real(d->t[i].lora_scaling));
            json_object_set_new(t, "lora", l);
        }
        json_object_set_new(tens, d->t[i].name, t);
    }
    json_object_set_new(doc, "tensors", tens);
    return doc;
}

/* Write a small file and record its CRC-32C for checksums.json. */
static lsl_status side_file(const char *dir, const char *name, const void *data, uint64_t len,
                            json_t *files)
{
    uint32_t c;
    char b64[9];
    lsl_status st = lsl_i_write_small(dir, name, data, len, &c);
    if (st == LSL_OK) {
        lsl_i_crc_base64(c, b64);
        json_object_set_new(files, name, json_string(b64));
    }
    return st;
}

static lsl_status side_json(const char *dir, const char *name, json_t *doc, json_t *files)
{
    char *text = dumps(doc);
    json_decref(doc);
    if (!text)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    lsl_status st = files ? side_file(dir, name, text, strlen(text), files)
                          : lsl_i_write_small(dir, name, text, strlen(text), NULL);
    free(text);
    return st;
}

lsl_status lsl_i_hfdir_finish(const lsl_i_hfdir_desc *d)
{
    lsl_status rc = LSL_OK;
    json_t *files = json_object(), *sums = NULL;
    char b64[9];
    if (!files)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    for (uint32_t s = 0; s < d->nshards; s++) {
        lsl_i_crc_base64(d->shard_crc[s], b64);
        json_object_set_new(files, d->shard_names[s], json_string(b64));
    }
    if (d->nshards > 1) {
        json_t *idx = json_object(), *meta = json_object(), *wm = json_object();
        for (uint64_t i = 0; i < d->n; i++)
            json_object_set_new(wm, d->t[i].name, json_string(d->shard_names[d->t[i].shard]));
        json_object_set_new(meta, "total_size", json_integer((json_int_t)d->total_bytes));
        json_object_set_new(idx, "metadata", meta);
        json_object_set_new(idx, "weight_map", wm);
        LSL_TRY(side_json(d->dir, "model.safetensors.index.json", idx, files));
    }
    if (d->base_config)
        LSL_TRY(side_file(d->dir, "config.json", d->base_config, strlen(d->base_config), files));
    else if (d->quiet != LSL_PROGRESS_NONE) /* a warning: JSON mode keeps it */
        lsl_i_log(LSL_LOG_WARN,
                  "loraslab: warning: %s gets no config.json (none was given); transformers "
                  "needs one to load it\n",
                  d->final);
    for (uint64_t i = 0; i < d->nfiles; i++)
        LSL_TRY(side_file(d->dir, d->files[i].name, d->files[i].data, d->files[i].len, files));
    LSL_TRY(side_json(d->dir, "loraslab.json", provenance(d), files));
    sums = json_object();
    json_object_set_new(sums, "algorithm", json_string("crc32c"));
    json_object_set_new(sums, "encoding",
                        json_string("base64 of the big-endian 4-byte CRC-32C, as cloud object "
                                    "stores report it"));
    json_object_set(sums, "files", files);
    rc = side_json(d->dir, "checksums.json", sums, NULL);
fail:
    json_decref(files);
    return rc;
}
