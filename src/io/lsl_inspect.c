/* Describe a loraslab HDF5 file: a human table, or JSON valid against
 * schemas/loraslab-file.schema.json. */
#include "lsl_h5.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static json_t *to_json(const char *path, const lsl_i_h5_file *f, uint64_t *total, uint64_t *merged)
{
    json_t *doc = json_object(), *tensors = json_array();
    json_object_set_new(doc, "path", json_string(path));
    json_object_set_new(doc, "format_version", json_integer(f->format_version));
    for (int i = 0; i < 5; i++)
        if (f->attrs[i])
            json_object_set_new(doc, lsl_i_h5_root_attrs[i], json_string(f->attrs[i]));
    *total = *merged = 0;
    for (uint64_t i = 0; i < f->n; i++) {
        const lsl_i_h5_tensor *t = &f->t[i];
        json_t *o = json_object(), *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_object_set_new(o, "name", json_string(t->name));
        json_object_set_new(o, "dtype", json_string(lsl_dtype_name(t->dtype)));
        json_object_set_new(o, "shape", shape);
        json_object_set_new(o, "offset",
                            t->nbytes ? json_integer((json_int_t)t->offset) : json_null());
        json_object_set_new(o, "nbytes", json_integer((json_int_t)t->nbytes));
        json_object_set_new(o, "crc32c", t->has_crc ? json_integer(t->crc32c) : json_null());
        if (t->has_lora) {
            json_t *l = json_object();
            json_object_set_new(l, "rank", json_integer((json_int_t)t->lora_rank));
            json_object_set_new(l, "alpha", json_real(t->lora_alpha));
            json_object_set_new(l, "scaling", json_real(t->lora_scaling));
            json_object_set_new(o, "lora", l);
            (*merged)++;
        }
        *total += t->nbytes;
        json_array_append_new(tensors, o);
    }
    json_object_set_new(doc, "tensors", tensors);
    json_object_set_new(doc, "tensor_count", json_integer((json_int_t)f->n));
    json_object_set_new(doc, "total_bytes", json_integer((json_int_t)*total));
    json_object_set_new(doc, "merged_count", json_integer((json_int_t)*merged));
    return doc;
}

static void print_table(FILE *out, const char *path, const lsl_i_h5_file *f, uint64_t total,
                        uint64_t merged)
{
    char b[32];
    fprintf(out, "%s: loraslab format %d (written by loraslab %s)\n", path, f->format_version,
            f->attrs[0] ? f->attrs[0] : "?");
    fprintf(out, "%llu tensors, %s, %llu with a LoRA delta merged\n", (unsigned long long)f->n,
            lsl_i_fmt_bytes(total, b, sizeof b), (unsigned long long)merged);
    fprintf(out, "%-60s %-5s %-20s %12s  %-8s %s\n", "tensor", "dtype", "shape", "offset", "crc32c",
            "lora (r, alpha, scaling)");
    for (uint64_t i = 0; i < f->n; i++) {
        const lsl_i_h5_tensor *t = &f->t[i];
        char shape[96] = "[", tmp[24], lora[80] = "";
        for (int d = 0; d < t->ndim; d++) {
            snprintf(tmp, sizeof tmp, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
            strncat(shape, tmp, sizeof shape - strlen(shape) - 2);
        }
        strcat(shape, "]");
        if (t->has_lora)
            snprintf(lora, sizeof lora, "%llu, %g, %g", (unsigned long long)t->lora_rank,
                     t->lora_alpha, t->lora_scaling);
        fprintf(out, "%-60s %-5s %-20s %12llu  %08x %s\n", t->name, lsl_dtype_name(t->dtype), shape,
                (unsigned long long)t->offset, t->crc32c, lora);
    }
}

lsl_status lsl_inspect(const char *path, int as_json, FILE *out)
{
    lsl_i_h5_file f;
    lsl_i_clear_error();
    if (!path || !out)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_inspect: path or out is NULL");
    /* the JSON document carries the path: it must be UTF-8 like everything else in it */
    lsl_status st = as_json ? lsl_i_check_utf8(path, "the file path") : LSL_OK;
    if (st == LSL_OK)
        st = lsl_i_h5_list(path, &f);
    if (st != LSL_OK)
        return st;
    uint64_t total, merged;
    json_t *doc = to_json(path, &f, &total, &merged);
    if (as_json) {
        json_dumpf(doc, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', out);
    } else {
        print_table(out, path, &f, total, merged);
    }
    json_decref(doc);
    lsl_i_h5_list_free(&f);
    return LSL_OK;
}

lsl_status lsl_inspect_json(const char *path, char **out)
{
    char *buf = NULL;
    size_t len = 0;
    if (!out)
        return lsl_i_fail(LSL_ERR_INVALID_ARG, "lsl_inspect_json: out is NULL");
    *out = NULL;
    FILE *m = open_memstream(&buf, &len);
    if (!m)
        return lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    lsl_status st = lsl_inspect(path, 1, m);
    fclose(m);
    if (st == LSL_OK)
        *out = buf;
    else
        free(buf);
    return st;
}
