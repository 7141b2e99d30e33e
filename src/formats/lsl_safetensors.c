/* safetensors header reader.  Checks follow the Rust reader's order (tensor.rs read_metadata,
 * then validate) and are stricter where a C reader must be: duplicate keys at every level, NUL in
 * names, deep nesting in unknown fields. */
#include "lsl_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Depth allowed inside an unknown field of a tensor entry (the Rust reader allows 128 overall). */
#define UNKNOWN_FIELD_MAX_DEPTH 32

static int json_depth(const json_t *v)
{
    int best = 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *c;
        json_object_foreach ((json_t *)v, k, c) {
            int d = json_depth(c);
            if (d > best)
                best = d;
        }
        return best + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *c;
        json_array_foreach (v, i, c) {
            int d = json_depth(c);
            if (d > best)
                best = d;
        }
        return best + 1;
    }
    return 0;
}

static lsl_status get_u64(const char *label, const char *tname, const char *field, json_t *v,
                          uint64_t *out)
{
    if (!json_is_integer(v))
        return lsl_i_fail(
            LSL_ERR_FORMAT, "%s: tensor `%s`: %s must hold non-negative integers (got %s)", label,
            tname, field, json_is_real(v) ? "a fractional or exponent number" : "a non-number");
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: tensor `%s`: %s holds a negative number (%lld)",
                          label, tname, field, (long long)x);
    *out = (uint64_t)x;
    return LSL_OK;
}

static lsl_status parse_tensor(const char *label, const char *name, json_t *v, lsl_st_tensor *t)
{
    if (!json_is_object(v))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: entry `%s` is not an object", label, name);
    json_t *dtype = NULL, *shape = NULL, *offs = NULL;
    const char *k;
    json_t *c;
    json_object_foreach (v, k, c) {
        if (strcmp(k, "dtype") == 0)
            dtype = c;
        else if (strcmp(k, "shape") == 0)
            shape = c;
        else if (strcmp(k, "data_offsets") == 0)
            offs = c;
        else if (json_depth(c) > UNKNOWN_FIELD_MAX_DEPTH)
            return lsl_i_fail(LSL_ERR_FORMAT,
                              "%s: tensor `%s`: unknown field `%s` nests deeper than %d levels",
                              label, name, k, UNKNOWN_FIELD_MAX_DEPTH);
    }
    if (!dtype || !shape || !offs)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: tensor `%s`: missing field `%s`", label, name,
                          !dtype   ? "dtype"
                          : !shape ? "shape"
                                   : "data_offsets");
    if (!json_is_string(dtype))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: tensor `%s`: dtype is not a string", label, name);
    if (lsl_dtype_from_name(json_string_value(dtype), &t->dtype) != LSL_OK)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: tensor `%s`: unknown dtype \"%s\"", label, name,
                          json_string_value(dtype));
    if (!json_is_array(shape))
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: tensor `%s`: shape is not an array", label, name);
    if (json_array_size(shape) > LSL_MAX_NDIM)
        return lsl_i_fail(LSL_ERR_FORMAT, "%s: tensor `%s`: %zu dimensions, at most %d supported",
                          label, name, json_array_size(shape), LSL_MAX_NDIM);
    t->ndim = (int)json_array_size(shape);
    for (int i = 0; i < t->ndim; i++) {
        lsl_status st =
            get_u64(label, name, "shape", json_array_get(shape, (size_t)i), &t->shape[i]);
        if (st)
            return st;
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return lsl_i_fail(LSL_ERR_FORMAT,
                          "%s: tensor `%s`: data_offsets must be an array of 2 integers", label,
                          name);
    lsl_status st = get_u64(label, name, "data_offsets", json_array_get(offs, 0), &t->begin);
    if (!st)
        st = get_u64(label, name, "data_offsets", json_array_get(offs, 1), &t->end);
    return st;
}

static int cmp_offsets(const void *a, const void *b)
{
    const lsl_st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

void lsl_st_free(lsl_st_file *f)
{
    if (!f)
        return;
    for (uint64_t i = 0; i < f->ntensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    free(f->format);
    free(f->path);
    memset(f, 0, sizeof *f);
}

lsl_status lsl_st_parse(const char *label, const unsigned char *bytes, uint64_t len,
                        uint64_t file_size, lsl_st_file *out)
{
    lsl_status rc = LSL_OK;
    json_t *root = NULL;
    memset(out, 0, sizeof *out);
    out->file_size = file_size;
    out->path = lsl_i_strdup(label);
    if (!out->path)
        LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    if (file_size < 8 || len < 8)
        LSL_FAIL(LSL_ERR_FORMAT,
                 "%s: file shorter than the 8-byte header length (%llu bytes): not a safetensors "
                 "file, or truncated",
                 label, (unsigned long long)file_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | bytes[i];
    if (n > LSL_ST_MAX_HEADER)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: header length %llu exceeds the safetensors limit of %llu",
                 label, (unsigned long long)n, LSL_ST_MAX_HEADER);
    if (8 + n > file_size)
        LSL_FAIL(LSL_ERR_FORMAT,
                 "%s: header length %llu runs past the end of the file (%llu bytes)", label,
                 (unsigned long long)n, (unsigned long long)file_size);
    if (8 + n > len)
        LSL_FAIL(LSL_ERR_INVALID_ARG, "%s: header not fully read", label);
    const unsigned char *h = bytes + 8;
    uint64_t bad = 0;
    if (!lsl_i_utf8_valid(h, n, &bad))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %llu of the header)", label,
                 (unsigned long long)bad);
    if (n >= 3 && h[0] == 0xEF && h[1] == 0xBB && h[2] == 0xBF)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: header starts with a UTF-8 byte-order mark", label);
    if (n > 0 && h[n - 1] == '\0')
        LSL_FAIL(LSL_ERR_FORMAT,
                 "%s: header padded with NUL bytes; safetensors pads with spaces (0x20)", label);
    json_error_t jerr;
    root = json_loadb((const char *)h, (size_t)n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: invalid JSON in header (line %d, column %d): %s", label,
                 jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: header JSON is not an object", label);

    size_t count = json_object_size(root);
    out->tensors = lsl_i_calloc(count ? count : 1, sizeof *out->tensors);
    if (!out->tensors)
        LSL_FAIL(LSL_ERR_NOMEM, "%s: out of memory for %zu tensor entries", label, count);
    const char *key;
    json_t *val;
    json_object_foreach (root, key, val) {
        if (key[0] == '\0')
            LSL_FAIL(LSL_ERR_FORMAT, "%s: a tensor has an empty name", label);
        if (strcmp(key, "__metadata__") == 0) {
            if (json_is_null(val))
                continue;
            if (!json_is_object(val))
                LSL_FAIL(LSL_ERR_FORMAT, "%s: __metadata__ is not an object", label);
            const char *mk;
            json_t *mv;
            json_object_foreach (val, mk, mv) {
                if (!json_is_string(mv))
                    LSL_FAIL(LSL_ERR_FORMAT,
                             "%s: __metadata__ value for \"%s\" is not a string (all metadata "
                             "values must be strings)",
                             label, mk);
                if (strcmp(mk, "format") == 0 &&
                    !(out->format = lsl_i_strdup(json_string_value(mv))))
                    LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
            }
            continue;
        }
        lsl_st_tensor *t = &out->tensors[out->ntensors];
        LSL_TRY(parse_tensor(label, key, val, t));
        if (!(t->name = lsl_i_strdup(key)))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        out->ntensors++;
    }
    qsort(out->tensors, out->ntensors, sizeof *out->tensors, cmp_offsets);
    uint64_t start = 0;
    for (uint64_t i = 0; i < out->ntensors; i++) {
        lsl_st_tensor *t = &out->tensors[i];
        if (t->begin != start || t->end < t->begin)
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: invalid offset for tensor `%s`: data_offsets [%llu, %llu], expected to "
                     "begin at %llu (hole, overlap or reversed range)",
                     label, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                     (unsigned long long)start);
        start = t->end;
        uint64_t elems = 1, bits;
        for (int d = 0; d < t->ndim; d++)
            if (lsl_mul_overflow(elems, t->shape[d], &elems))
                LSL_FAIL(LSL_ERR_FORMAT, "%s: tensor `%s`: shape product overflows 64 bits", label,
                         t->name);
        if (lsl_mul_overflow(elems, lsl_dtype_bits(t->dtype), &bits))
            LSL_FAIL(LSL_ERR_FORMAT, "%s: tensor `%s`: byte size overflows 64 bits", label,
                     t->name);
        if (bits % 8 != 0)
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: tensor `%s`: %s with %llu elements is not a whole number of bytes", label,
                     t->name, lsl_dtype_name(t->dtype), (unsigned long long)elems);
        if (t->end - t->begin != bits / 8)
            LSL_FAIL(LSL_ERR_FORMAT,
                     "%s: tensor `%s`: invalid shape, dtype or offsets: %s shape needs %llu bytes, "
                     "data_offsets span %llu",
                     label, t->name, lsl_dtype_name(t->dtype), (unsigned long long)(bits / 8),
                     (unsigned long long)(t->end - t->begin));
    }
    out->data_start = 8 + n;
    if (start + out->data_start != file_size)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: file is %llu bytes but the header describes %llu (%s)", label,
                 (unsigned long long)file_size, (unsigned long long)(start + out->data_start),
                 start + out->data_start > file_size ? "file truncated"
                                                     : "trailing bytes after the last tensor");
    json_decref(root);
    return LSL_OK;
fail:
    json_decref(root);
    lsl_st_free(out);
    return rc;
}

lsl_status lsl_st_open(const char *path, lsl_st_file *out)
{
    lsl_status rc = LSL_OK;
    unsigned char *buf = NULL;
    uint64_t size = 0;
    int fd;
    memset(out, 0, sizeof *out);
    rc = lsl_i_open_input(path, &fd, &size);
    if (rc != LSL_OK)
        return rc;
    unsigned char head[8] = {0};
    uint64_t n = 0;
    if (size >= 8) {
        LSL_TRY(lsl_i_pread_full(fd, head, 8, 0, path));
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | head[i];
    }
    /* Validate the length before allocating for it: 8 bytes of it, at most
     * LSL_ST_MAX_HEADER, inside the file. */
    if (size < 8 || n > LSL_ST_MAX_HEADER || 8 + n > size) {
        rc = lsl_st_parse(path, head, size < 8 ? size : 8, size, out);
        goto fail;
    }
    buf = lsl_i_malloc((size_t)(8 + n));
    if (!buf)
        LSL_FAIL(LSL_ERR_NOMEM, "%s: out of memory for a %llu-byte header", path,
                 (unsigned long long)n);
    memcpy(buf, head, 8);
    LSL_TRY(lsl_i_pread_full(fd, buf + 8, n, 8, path));
    LSL_TRY(lsl_st_parse(path, buf, 8 + n, size, out));
    free(buf);
    close(fd);
    return LSL_OK;
fail:
    free(buf);
    close(fd);
    return rc;
}

int64_t lsl_st_find(const lsl_st_file *f, const char *name)
{
    for (uint64_t i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return (int64_t)i;
    return -1;
}

/* ---- writer ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool bad;
} sbuf;

static void sput(sbuf *b, const char *s, size_t n)
{
    if (b->bad)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = lsl_i_realloc(b->p, cap);
        if (!p) {
            b->bad = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sputs(sbuf *b, const char *s)
{
    sput(b, s, strlen(s));
}

static void sputu(sbuf *b, uint64_t v)
{
    char t[24];
    snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    sputs(b, t);
}

/* serde_json's escaping: the short escapes, \u00xx (lowercase) for other control bytes,
 * everything else raw. */
static void sput_json_str(sbuf *b, const char *s)
{
    sputs(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char t[8];
        switch (*c) {
        case '"': sputs(b, "\\\""); break;
        case '\\': sputs(b, "\\\\"); break;
        case '\b': sputs(b, "\\b"); break;
        case '\f': sputs(b, "\\f"); break;
        case '\n': sputs(b, "\\n"); break;
        case '\r': sputs(b, "\\r"); break;
        case '\t': sputs(b, "\\t"); break;
        default:
            if (*c < 0x20) {
                snprintf(t, sizeof t, "\\u%04x", *c);
                sputs(b, t);
            } else {
                sput(b, (const char *)c, 1);
            }
        }
    }
    sputs(b, "\"");
}

static const lsl_st_entry *sort_base;

static int cmp_entries(const void *a, const void *b)
{
    const lsl_st_entry *x = &sort_base[*(const uint64_t *)a], *y = &sort_base[*(const uint64_t *)b];
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name); /* strcmp compares as unsigned char: bytewise */
}

lsl_status lsl_st_build_header(uint64_t n, const lsl_st_entry *e, uint64_t align, uint64_t *order,
                               uint64_t *data_off, unsigned char **head, uint64_t *head_len)
{
    sbuf b = {0};
    if (align < 8 || align % 8 != 0 || align > LSL_ST_MAX_ALIGN)
        return lsl_i_fail(LSL_ERR_INVALID_ARG,
                          "safetensors data alignment of %llu bytes: use a multiple of 8 up to "
                          "16 MiB",
                          (unsigned long long)align);
    for (uint64_t i = 0; i < n; i++) {
        order[i] = i;
        if (strcmp(e[i].name, "__metadata__") == 0)
            return lsl_i_fail(LSL_ERR_INVALID_ARG, "a tensor may not be named __metadata__");
    }
    sort_base = e;
    qsort(order, n, sizeof *order, cmp_entries);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(e[order[i - 1]].name, e[order[i]].name) == 0)
            return lsl_i_fail(LSL_ERR_INVALID_ARG, "tensor `%s` appears twice in one shard",
                              e[order[i]].name);
    sput(&b, "        ", 8); /* the length prefix, filled in below */
    sputs(&b, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (uint64_t k = 0; k < n; k++) {
        const lsl_st_entry *t = &e[order[k]];
        sputs(&b, ",");
        sput_json_str(&b, t->name);
        sputs(&b, ":{\"dtype\":\"");
        sputs(&b, lsl_dtype_name(t->dtype));
        sputs(&b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d)
                sputs(&b, ",");
            sputu(&b, t->shape[d]);
        }
        sputs(&b, "],\"data_offsets\":[");
        sputu(&b, off);
        sputs(&b, ",");
        sputu(&b, off + t->nbytes);
        sputs(&b, "]}");
        data_off[order[k]] = off;
        off += t->nbytes;
    }
    sputs(&b, "}");
    size_t pad = (size_t)((align - b.len % align) % align);
    char spaces[4096];
    memset(spaces, ' ', sizeof spaces);
    while (!b.bad && pad > 0) {
        size_t k = pad < sizeof spaces ? pad : sizeof spaces;
        sput(&b, spaces, k);
        pad -= k;
    }
    if (b.bad) {
        free(b.p);
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory building a safetensors header");
    }
    uint64_t hn = b.len - 8;
    if (hn > LSL_ST_MAX_HEADER) {
        free(b.p);
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "safetensors header of %llu bytes is too large",
                          (unsigned long long)hn);
    }
    for (int i = 0; i < 8; i++)
        b.p[i] = (char)(hn >> (8 * i));
    *head = (unsigned char *)b.p;
    *head_len = b.len;
    return LSL_OK;
}
