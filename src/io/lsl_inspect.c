/* Describe a loraslab HDF5 file: a human table, or JSON valid against
 * schemas/loraslab-file.schema.json. */
#include "lsl_h5.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct walk {
    json_t *tensors;
    lsl_status st;
} walk;

static json_t *num_attr(hid_t obj, const char *name, bool integer)
{
    if (H5Aexists(obj, name) <= 0)
        return NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    json_t *v = NULL;
    if (integer) {
        uint64_t x = 0;
        if (H5Aread(a, H5T_NATIVE_UINT64, &x) >= 0)
            v = json_integer((json_int_t)x);
    } else {
        double x = 0;
        if (H5Aread(a, H5T_NATIVE_DOUBLE, &x) >= 0)
            v = json_real(x);
    }
    H5Aclose(a);
    return v;
}

static herr_t visit(hid_t grp, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    walk *wk = data;
    hid_t ds = H5Dopen2(grp, name, H5P_DEFAULT);
    if (ds < 0) {
        wk->st = lsl_i_h5_fail(LSL_ERR_FORMAT, "/%s/%s is not a dataset", LSL_H5_GROUP, name);
        return -1;
    }
    json_t *t = json_object();
    json_object_set_new(t, "name", json_string(name));
    char *dt = NULL;
    if (lsl_i_h5_get_str(ds, "dtype", &dt) != LSL_OK || !dt) {
        wk->st = lsl_i_fail(LSL_ERR_FORMAT, "tensor `%s` has no dtype attribute", name);
        H5Dclose(ds);
        json_decref(t);
        return -1;
    }
    json_object_set_new(t, "dtype", json_string(dt));
    free(dt);
    hid_t sp = H5Dget_space(ds);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[LSL_MAX_NDIM] = {0};
    json_t *shape = json_array();
    if (nd > 0 && nd <= LSL_MAX_NDIM) {
        H5Sget_simple_extent_dims(sp, dims, NULL);
        for (int d = 0; d < nd; d++)
            json_array_append_new(shape, json_integer((json_int_t)dims[d]));
    }
    H5Sclose(sp);
    json_object_set_new(t, "shape", shape);
    haddr_t off = H5Dget_offset(ds);
    json_object_set_new(t, "offset",
                        off == HADDR_UNDEF ? json_null() : json_integer((json_int_t)off));
    json_object_set_new(t, "nbytes", json_integer((json_int_t)H5Dget_storage_size(ds)));
    json_t *crc = num_attr(ds, "crc32c", true);
    json_object_set_new(t, "crc32c", crc ? crc : json_null());
    json_t *lr = num_attr(ds, "lora_rank", true);
    if (lr) {
        json_t *lora = json_object();
        json_object_set_new(lora, "rank", lr);
        json_t *al = num_attr(ds, "lora_alpha", false), *sc = num_attr(ds, "lora_scaling", false);
        json_object_set_new(lora, "alpha", al ? al : json_null());
        json_object_set_new(lora, "scaling", sc ? sc : json_null());
        json_object_set_new(t, "lora", lora);
    }
    H5Dclose(ds);
    json_array_append_new(wk->tensors, t);
    return 0;
}

lsl_status lsl_inspect(const char *path, int as_json, FILE *out)
{
    lsl_status rc = LSL_OK;
    json_t *doc = NULL;
    hid_t fapl = lsl_i_h5_fapl(0), file = H5I_INVALID_HID, grp = H5I_INVALID_HID;
    char *s = NULL;
    lsl_i_clear_error();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!path || !out)
        LSL_FAIL(LSL_ERR_INVALID_ARG, "lsl_inspect: path or out is NULL");
    file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: not an HDF5 file (or unreadable)", path));
    if (H5Aexists(file, "loraslab_format_version") <= 0)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: not a loraslab file (no loraslab_format_version)", path);
    doc = json_object();
    json_object_set_new(doc, "path", json_string(path));
    json_object_set_new(doc, "format_version", num_attr(file, "loraslab_format_version", true));
    static const char *const root_attrs[] = {"loraslab_version", "base_path", "adapter_path",
                                             "base_config_json", "adapter_config_json"};
    for (size_t i = 0; i < sizeof root_attrs / sizeof *root_attrs; i++) {
        LSL_TRY(lsl_i_h5_get_str(file, root_attrs[i], &s));
        if (s)
            json_object_set_new(doc, root_attrs[i], json_string(s));
        free(s);
        s = NULL;
    }
    grp = H5Gopen2(file, LSL_H5_GROUP, H5P_DEFAULT);
    if (grp < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: no /%s group", path, LSL_H5_GROUP));
    walk wk = {json_array(), LSL_OK};
    json_object_set_new(doc, "tensors", wk.tensors);
    if (H5Literate(grp, H5_INDEX_CRT_ORDER, H5_ITER_INC, NULL, visit, &wk) < 0)
        LSL_GOTO(wk.st ? wk.st : lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: listing tensors", path));
    uint64_t total = 0, merged = 0;
    size_t i;
    json_t *t;
    json_array_foreach (wk.tensors, i, t) {
        total += (uint64_t)json_integer_value(json_object_get(t, "nbytes"));
        merged += json_object_get(t, "lora") != NULL;
    }
    json_object_set_new(doc, "tensor_count", json_integer((json_int_t)json_array_size(wk.tensors)));
    json_object_set_new(doc, "total_bytes", json_integer((json_int_t)total));
    json_object_set_new(doc, "merged_count", json_integer((json_int_t)merged));
    if (as_json) {
        json_dumpf(doc, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', out);
    } else {
        char b[32];
        fprintf(out, "%s: loraslab format %lld (written by loraslab %s)\n", path,
                (long long)json_integer_value(json_object_get(doc, "format_version")),
                json_string_value(json_object_get(doc, "loraslab_version")));
        fprintf(out, "%zu tensors, %s, %llu with a LoRA delta merged\n",
                json_array_size(wk.tensors), lsl_i_fmt_bytes(total, b, sizeof b),
                (unsigned long long)merged);
        fprintf(out, "%-60s %-5s %-20s %10s  %-8s %s\n", "tensor", "dtype", "shape", "offset",
                "crc32c", "lora (r, alpha, scaling)");
        json_array_foreach (wk.tensors, i, t) {
            char shape[64] = "[", tmp[24];
            size_t k;
            json_t *d;
            json_array_foreach (json_object_get(t, "shape"), k, d) {
                snprintf(tmp, sizeof tmp, "%s%lld", k ? "," : "", (long long)json_integer_value(d));
                strncat(shape, tmp, sizeof shape - strlen(shape) - 2);
            }
            strcat(shape, "]");
            json_t *lora = json_object_get(t, "lora");
            char lbuf[80] = "";
            if (lora)
                snprintf(lbuf, sizeof lbuf, "%lld, %g, %g",
                         (long long)json_integer_value(json_object_get(lora, "rank")),
                         json_real_value(json_object_get(lora, "alpha")),
                         json_real_value(json_object_get(lora, "scaling")));
            fprintf(out, "%-60s %-5s %-20s %10lld  %08llx %s\n",
                    json_string_value(json_object_get(t, "name")),
                    json_string_value(json_object_get(t, "dtype")), shape,
                    (long long)json_integer_value(json_object_get(t, "offset")),
                    (unsigned long long)json_integer_value(json_object_get(t, "crc32c")), lbuf);
        }
    }
fail:
    json_decref(doc);
    if (grp >= 0)
        H5Gclose(grp);
    if (file >= 0)
        H5Fclose(file);
    H5Pclose(fapl);
    return rc;
}
