#include "lsl_h5.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static herr_t walk_first(unsigned n, const H5E_error2_t *e, void *data)
{
    char *buf = data;
    if (n == 0)
        snprintf(buf, 256, "%s (in %s)", e->desc ? e->desc : "?",
                 e->func_name ? e->func_name : "?");
    return 0;
}

lsl_status lsl_i_h5_fail(lsl_status st, const char *fmt, ...)
{
    char what[LSL_MSG_MAX], why[256] = "no HDF5 error detail";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_first, why);
    H5Eclear2(H5E_DEFAULT);
    return lsl_i_fail(st, "%s: %s", what, why);
}

hid_t lsl_i_h5_type(lsl_dtype dt)
{
    hid_t t = H5I_INVALID_HID;
    switch (dt) {
    case LSL_BF16:
        /* Order matters: HDF5 refuses a precision or size that the current fields do not fit,
         * so the fields first, then precision, then size. */
        t = H5Tcopy(H5T_IEEE_F32LE);
        H5Tset_fields(t, 15, 7, 8, 0, 7);
        H5Tset_precision(t, 16);
        H5Tset_size(t, 2);
        H5Tset_ebias(t, 127);
        return t;
    case LSL_F16:
        t = H5Tcopy(H5T_IEEE_F32LE);
        H5Tset_fields(t, 15, 10, 5, 0, 10);
        H5Tset_precision(t, 16);
        H5Tset_size(t, 2);
        H5Tset_ebias(t, 15);
        return t;
    case LSL_F32: return H5Tcopy(H5T_IEEE_F32LE);
    case LSL_F64: return H5Tcopy(H5T_IEEE_F64LE);
    case LSL_BOOL:
    case LSL_U8: return H5Tcopy(H5T_STD_U8LE);
    case LSL_I8: return H5Tcopy(H5T_STD_I8LE);
    case LSL_I16: return H5Tcopy(H5T_STD_I16LE);
    case LSL_U16: return H5Tcopy(H5T_STD_U16LE);
    case LSL_I32: return H5Tcopy(H5T_STD_I32LE);
    case LSL_U32: return H5Tcopy(H5T_STD_U32LE);
    case LSL_I64: return H5Tcopy(H5T_STD_I64LE);
    case LSL_U64: return H5Tcopy(H5T_STD_U64LE);
    case LSL_C64:
        /* h5py reads a compound of fields r, i as complex64. */
        t = H5Tcreate(H5T_COMPOUND, 8);
        H5Tinsert(t, "r", 0, H5T_IEEE_F32LE);
        H5Tinsert(t, "i", 4, H5T_IEEE_F32LE);
        return t;
    default:
        /* fp8 variants: opaque bytes; the `dtype` attribute says what they are. */
        if (lsl_dtype_bits(dt) == 8) {
            t = H5Tcreate(H5T_OPAQUE, 1);
            H5Tset_tag(t, lsl_dtype_name(dt));
            return t;
        }
        return H5I_INVALID_HID;
    }
}

hid_t lsl_i_h5_fapl(uint64_t alignment)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_sec2(fapl);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    H5Pset_file_locking(fapl, 0, 1);
    if (alignment > 1) {
        /* Small tensors (norms, biases) pack densely; large ones start on stripe boundaries. */
        H5Pset_alignment(fapl, alignment < (64u << 10) ? alignment : (64u << 10), alignment);
        H5Pset_meta_block_size(fapl, 1 << 20);
    }
    return fapl;
}

lsl_status lsl_i_h5_put_str(hid_t obj, const char *name, const char *value)
{
    lsl_status rc = LSL_OK;
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR), attr = H5I_INVALID_HID;
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, &value) < 0)
        rc = lsl_i_h5_fail(LSL_ERR_HDF5, "writing attribute %s", name);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    return rc;
}

lsl_status lsl_i_h5_put_u64(hid_t obj, const char *name, hid_t type, uint64_t value)
{
    lsl_status rc = LSL_OK;
    hid_t space = H5Screate(H5S_SCALAR);
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_UINT64, &value) < 0)
        rc = lsl_i_h5_fail(LSL_ERR_HDF5, "writing attribute %s", name);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    return rc;
}

lsl_status lsl_i_h5_put_f64(hid_t obj, const char *name, double value)
{
    lsl_status rc = LSL_OK;
    hid_t space = H5Screate(H5S_SCALAR);
    if (H5Aexists(obj, name) > 0)
        H5Adelete(obj, name);
    hid_t attr = H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_DOUBLE, &value) < 0)
        rc = lsl_i_h5_fail(LSL_ERR_HDF5, "writing attribute %s", name);
    if (attr >= 0)
        H5Aclose(attr);
    H5Sclose(space);
    return rc;
}

/* Open attribute `name` of obj when it holds exactly one value (a scalar, or one element of
 * rank 1): *a >= 0.  Absent: LSL_OK with *a < 0.  Anything else is refused before H5Aread, which
 * would write every element into a buffer sized for one. */
static lsl_status open_one(hid_t obj, const char *name, const char *where, hid_t *a)
{
    *a = H5I_INVALID_HID;
    htri_t ex = H5Aexists(obj, name);
    if (ex == 0)
        return LSL_OK;
    if (ex < 0 || (*a = H5Aopen(obj, name, H5P_DEFAULT)) < 0)
        return lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: attribute %s cannot be opened", where, name);
    hid_t sp = H5Aget_space(*a);
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    H5S_class_t cls = sp >= 0 ? H5Sget_simple_extent_type(sp) : H5S_NO_CLASS;
    if (sp >= 0)
        H5Sclose(sp);
    if (cls == H5S_NULL || np != 1 || nd < 0 || nd > 1) {
        H5Aclose(*a);
        *a = H5I_INVALID_HID;
        return lsl_i_fail(LSL_ERR_FORMAT,
                          "%s: attribute %s holds %lld values (rank %d); loraslab files hold one",
                          where, name, cls == H5S_NULL ? 0LL : (long long)np, nd);
    }
    return LSL_OK;
}

lsl_status lsl_i_h5_get_num(hid_t obj, const char *name, const char *where, int integer,
                            hid_t mtype, void *out, int *present)
{
    hid_t a;
    *present = 0;
    lsl_status rc = open_one(obj, name, where, &a);
    if (rc != LSL_OK || a < 0)
        return rc;
    hid_t ft = H5Aget_type(a);
    H5T_class_t cls = ft >= 0 ? H5Tget_class(ft) : H5T_NO_CLASS;
    if (cls != H5T_INTEGER && (integer || cls != H5T_FLOAT))
        rc = lsl_i_fail(LSL_ERR_FORMAT, "%s: attribute %s is not %s", where, name,
                        integer ? "an integer" : "a number");
    else if (H5Aread(a, mtype, out) < 0)
        rc = lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: reading attribute %s", where, name);
    else
        *present = 1;
    if (ft >= 0)
        H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

lsl_status lsl_i_h5_get_str(hid_t obj, const char *name, const char *where, char **out)
{
    hid_t a, mt = H5I_INVALID_HID;
    char *v = NULL, *vl = NULL, what[LSL_MSG_MAX];
    *out = NULL;
    lsl_status rc = open_one(obj, name, where, &a);
    if (rc != LSL_OK || a < 0)
        return rc;
    hid_t ft = H5Aget_type(a);
    if (ft < 0 || H5Tget_class(ft) != H5T_STRING)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: attribute %s is not a string", where, name);
    if (H5Tis_variable_str(ft) > 0) {
        mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(ft));
        if (H5Aread(a, mt, &vl) < 0)
            LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: reading attribute %s", where, name));
        if (vl && strlen(vl) > LSL_H5_STR_MAX)
            LSL_FAIL(LSL_ERR_FORMAT, "%s: attribute %s is over %d MiB", where, name,
                     LSL_H5_STR_MAX >> 20);
        if (!(v = lsl_i_strdup(vl ? vl : "")))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
    } else {
        size_t n = H5Tget_size(ft);
        if (n > LSL_H5_STR_MAX)
            LSL_FAIL(LSL_ERR_FORMAT, "%s: attribute %s is over %d MiB", where, name,
                     LSL_H5_STR_MAX >> 20);
        if (!(v = lsl_i_calloc(n + 1, 1)))
            LSL_FAIL(LSL_ERR_NOMEM, "out of memory");
        if (H5Aread(a, ft, v) < 0)
            LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: reading attribute %s", where, name));
    }
    snprintf(what, sizeof what, "%s: attribute %s", where, name);
    LSL_TRY(lsl_i_check_utf8(v, what));
    *out = v;
    v = NULL;
fail:
    free(v);
    if (vl)
        H5free_memory(vl);
    if (mt >= 0)
        H5Tclose(mt);
    if (ft >= 0)
        H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

/* HDF5 prints its error stack on stderr unless told not to; loraslab's own messages say what
 * failed, so printing is off for the time of a call, and whatever handler the process had
 * (h5py's, a training job's) is put back after: a save must not silence the job's later HDF5
 * errors. */
typedef struct h5_quiet {
    H5E_auto2_t fn;
    void *data;
} h5_quiet;

static h5_quiet quiet_on(void)
{
    h5_quiet q = {NULL, NULL};
    H5Eget_auto2(H5E_DEFAULT, &q.fn, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}

static void quiet_off(h5_quiet q)
{
    H5Eset_auto2(H5E_DEFAULT, q.fn, q.data);
}

/* The serving files, each a 1-D uint8 dataset under /files, in name order. */
static lsl_status put_files(hid_t file, const char *path, hid_t gcpl, hid_t dcpl, uint64_t n,
                            const lsl_i_hfdir_file *f)
{
    lsl_status rc = LSL_OK;
    hid_t grp = H5Gcreate2(file, LSL_H5_FILES, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    if (grp < 0)
        return lsl_i_h5_fail(LSL_ERR_HDF5, "%s: creating group /%s", path, LSL_H5_FILES);
    for (uint64_t i = 0; i < n; i++) {
        hsize_t dim = (hsize_t)f[i].len;
        hid_t space = H5Screate_simple(1, &dim, NULL);
        hid_t ds = H5Dcreate2(grp, f[i].name, H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        herr_t e = ds < 0 ? -1
                   : f[i].len
                       ? H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, f[i].data)
                       : 0;
        if (ds >= 0)
            H5Dclose(ds);
        H5Sclose(space);
        if (e < 0)
            LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: storing the file %s", path, f[i].name));
    }
fail:
    H5Gclose(grp);
    return rc;
}

lsl_status lsl_i_h5_create(const char *path, uint64_t alignment, uint64_t nattrs, char *const *keys,
                           char *const *vals, uint64_t n, const lsl_tensor_info *t, uint64_t nfiles,
                           const lsl_i_hfdir_file *files, uint64_t *offsets)
{
    lsl_status rc = LSL_OK;
    hid_t fapl = lsl_i_h5_fapl(alignment), fcpl = H5Pcreate(H5P_FILE_CREATE);
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t file = H5I_INVALID_HID, grp = H5I_INVALID_HID;
    h5_quiet q = quiet_on();
    /* Readers list tensors in the order they were defined (the checkpoint's order). */
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    /* No creation times in object headers: the same job writes the same bytes, whichever
     * launcher or transport ran it (outputs compare with cmp). */
    H5Pset_obj_track_times(fcpl, 0);
    H5Pset_obj_track_times(gcpl, 0);
    H5Pset_obj_track_times(dcpl, 0);
    file = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl);
    if (file < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: cannot create the HDF5 file", path));
    LSL_TRY(lsl_i_h5_put_u64(file, "loraslab_format_version", H5T_STD_I32LE, LSL_FORMAT_VERSION));
    LSL_TRY(lsl_i_h5_put_str(file, "loraslab_version", lsl_version_string()));
    for (uint64_t i = 0; i < nattrs; i++)
        LSL_TRY(lsl_i_h5_put_str(file, keys[i], vals[i]));
    grp = H5Gcreate2(file, LSL_H5_GROUP, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    if (grp < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: creating group", path));
    for (uint64_t i = 0; i < n; i++) {
        hsize_t dims[LSL_MAX_NDIM];
        for (int d = 0; d < t[i].ndim; d++)
            dims[d] = (hsize_t)t[i].shape[d];
        hid_t space =
            t[i].ndim == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(t[i].ndim, dims, NULL);
        hid_t type = lsl_i_h5_type(t[i].dtype);
        hid_t ds = H5Dcreate2(grp, t[i].name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        H5Sclose(space);
        H5Tclose(type);
        if (ds < 0)
            LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: creating dataset for tensor `%s`", path,
                                   t[i].name));
        haddr_t off = H5Dget_offset(ds);
        offsets[i] = off == HADDR_UNDEF ? 0 : (uint64_t)off;
        lsl_status st = lsl_i_h5_put_str(ds, "dtype", lsl_dtype_name(t[i].dtype));
        H5Dclose(ds);
        LSL_TRY(st);
    }
    if (nfiles)
        LSL_TRY(put_files(file, path, gcpl, dcpl, nfiles, files)); /* no times either */
    if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: flush", path));
fail:
    if (grp >= 0)
        H5Gclose(grp);
    if (file >= 0 && H5Fclose(file) < 0 && rc == LSL_OK)
        rc = lsl_i_h5_fail(LSL_ERR_HDF5, "%s: closing after create", path);
    H5Pclose(dcpl);
    H5Pclose(gcpl);
    H5Pclose(fcpl);
    H5Pclose(fapl);
    quiet_off(q);
    return rc;
}

lsl_status lsl_i_h5_finish(const char *path, uint64_t n, const lsl_tensor_info *t,
                           const lsl_i_h5_final *f)
{
    lsl_status rc = LSL_OK;
    hid_t fapl = lsl_i_h5_fapl(0), grp = H5I_INVALID_HID;
    h5_quiet q = quiet_on();
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, fapl);
    if (file < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: reopening to finish", path));
    grp = H5Gopen2(file, LSL_H5_GROUP, H5P_DEFAULT);
    for (uint64_t i = 0; i < n && grp >= 0; i++) {
        hid_t ds = H5Dopen2(grp, t[i].name, H5P_DEFAULT);
        if (ds < 0)
            LSL_GOTO(lsl_i_h5_fail(LSL_ERR_HDF5, "%s: reopening `%s`", path, t[i].name));
        lsl_status st = lsl_i_h5_put_u64(ds, "crc32c", H5T_STD_U32LE, f[i].crc32c);
        if (!st && f[i].has_lora) {
            st = lsl_i_h5_put_u64(ds, "lora_rank", H5T_STD_U64LE, f[i].lora_rank);
            if (!st)
                st = lsl_i_h5_put_f64(ds, "lora_alpha", f[i].lora_alpha);
            if (!st)
                st = lsl_i_h5_put_f64(ds, "lora_scaling", f[i].lora_scaling);
            if (!st)
                st = lsl_i_h5_put_u64(ds, "lora_rslora", H5T_STD_U8LE, (uint64_t)f[i].rslora);
            if (!st)
                st = lsl_i_h5_put_u64(ds, "lora_dora", H5T_STD_U8LE, (uint64_t)f[i].dora);
        }
        H5Dclose(ds);
        LSL_TRY(st);
    }
fail:
    if (grp >= 0)
        H5Gclose(grp);
    if (file >= 0 && H5Fclose(file) < 0 && rc == LSL_OK)
        rc = lsl_i_h5_fail(LSL_ERR_HDF5, "%s: closing after finish", path);
    H5Pclose(fapl);
    quiet_off(q);
    return rc;
}

const char *const lsl_i_h5_root_attrs[5] = {"loraslab_version", "base_path", "adapter_path",
                                            "base_config_json", "adapter_config_json"};

void lsl_i_h5_list_free(lsl_i_h5_file *f)
{
    if (!f)
        return;
    for (uint64_t i = 0; i < f->n; i++)
        free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < 5; i++)
        free(f->attrs[i]);
    lsl_i_hf_files_free(f->files, f->nfiles);
    memset(f, 0, sizeof *f);
}

typedef struct list_ctx {
    lsl_i_h5_file *f;
    uint64_t cap;
    const char *path;
    lsl_status st;
} list_ctx;

/* One dataset's geometry: contiguous, at most LSL_MAX_NDIM dimensions, an element count and a
 * byte size that fit 64 bits, an HDF5 type equal to the one loraslab writes for its dtype, and
 * bytes inside the file. */
static lsl_status list_geometry(hid_t ds, const char *where, uint64_t file_size, lsl_i_h5_tensor *t)
{
    lsl_status rc = LSL_OK;
    hid_t dcpl = H5Dget_create_plist(ds), sp = H5Dget_space(ds), type = H5Dget_type(ds);
    hid_t want = lsl_i_h5_type(t->dtype);
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[LSL_MAX_NDIM] = {0};
    if (dcpl < 0 || sp < 0 || type < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: cannot read its layout", where));
    if (H5Pget_layout(dcpl) != H5D_CONTIGUOUS)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: not stored contiguously", where);
    if (nd < 0 || nd > LSL_MAX_NDIM)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: has %d dimensions (at most %d)", where, nd, LSL_MAX_NDIM);
    if (want < 0 || H5Tequal(type, want) <= 0)
        LSL_FAIL(LSL_ERR_FORMAT,
                 "%s: its HDF5 type is not the one loraslab writes for dtype %s (the dtype "
                 "attribute does not describe the data)",
                 where, lsl_dtype_name(t->dtype));
    H5Sget_simple_extent_dims(sp, dims, NULL);
    t->ndim = nd;
    uint64_t e = 1, end;
    for (int d = 0; d < nd; d++) {
        t->shape[d] = dims[d];
        if (lsl_mul_overflow(e, dims[d], &e))
            LSL_FAIL(LSL_ERR_FORMAT, "%s: its shape's element count overflows 64 bits", where);
    }
    if (!lsl_i_dtype_bytes(t->dtype, e, &t->nbytes))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: its byte size overflows 64 bits", where);
    haddr_t off = H5Dget_offset(ds);
    if (t->nbytes &&
        (off == HADDR_UNDEF || lsl_add_overflow((uint64_t)off, t->nbytes, &end) || end > file_size))
        LSL_FAIL(LSL_ERR_FORMAT, "%s: data lies outside the file (truncated?)", where);
    t->offset = t->nbytes ? (uint64_t)off : 0;
fail:
    if (want >= 0)
        H5Tclose(want);
    if (type >= 0)
        H5Tclose(type);
    if (sp >= 0)
        H5Sclose(sp);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return rc;
}

static lsl_status list_attrs(hid_t ds, const char *where, lsl_i_h5_tensor *t)
{
    lsl_status rc = LSL_OK;
    int has;
    LSL_TRY(lsl_i_h5_get_num(ds, "crc32c", where, 1, H5T_NATIVE_UINT32, &t->crc32c, &t->has_crc));
    LSL_TRY(lsl_i_h5_get_num(ds, "lora_rank", where, 1, H5T_NATIVE_UINT64, &t->lora_rank,
                             &t->has_lora));
    LSL_TRY(lsl_i_h5_get_num(ds, "lora_alpha", where, 0, H5T_NATIVE_DOUBLE, &t->lora_alpha, &has));
    LSL_TRY(
        lsl_i_h5_get_num(ds, "lora_scaling", where, 0, H5T_NATIVE_DOUBLE, &t->lora_scaling, &has));
fail:
    return rc;
}

static herr_t list_one(hid_t grp, const char *name, const H5L_info_t *info, void *data)
{
    (void)info;
    list_ctx *c = data;
    lsl_i_h5_file *f = c->f;
    char where[LSL_MSG_MAX], *dt = NULL;
    if (f->n == c->cap) {
        uint64_t cap = c->cap ? 2 * c->cap : 64;
        lsl_i_h5_tensor *t = lsl_i_realloc(f->t, cap * sizeof *t);
        if (!t) {
            c->st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
            return -1;
        }
        f->t = t;
        c->cap = cap;
    }
    lsl_i_h5_tensor *t = &f->t[f->n];
    memset(t, 0, sizeof *t);
    snprintf(where, sizeof where, "%s: tensor name", c->path);
    if ((c->st = lsl_i_check_utf8(name, where)) != LSL_OK)
        return -1;
    snprintf(where, sizeof where, "%s: tensor `%s`", c->path, name);
    hid_t ds = H5Dopen2(grp, name, H5P_DEFAULT);
    if (ds < 0) {
        c->st = lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: /%s/%s is not a dataset", c->path, LSL_H5_GROUP,
                              name);
        return -1;
    }
    if (!(t->name = lsl_i_strdup(name)))
        c->st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    f->n++;
    if (c->st == LSL_OK)
        c->st = lsl_i_h5_get_str(ds, "dtype", where, &dt);
    if (c->st == LSL_OK && (!dt || lsl_dtype_from_name(dt, &t->dtype) != LSL_OK))
        c->st = lsl_i_fail(LSL_ERR_FORMAT, "%s: no valid dtype attribute (%s)", where,
                           dt ? dt : "missing");
    if (c->st == LSL_OK && lsl_dtype_bits(t->dtype) % 8 != 0)
        c->st = lsl_i_fail(LSL_ERR_FORMAT, "%s: dtype %s is not one loraslab stores", where, dt);
    free(dt);
    if (c->st == LSL_OK)
        c->st = list_geometry(ds, where, f->file_size, t);
    if (c->st == LSL_OK)
        c->st = list_attrs(ds, where, t);
    H5Dclose(ds);
    return c->st == LSL_OK ? 0 : -1;
}

typedef struct files_ctx {
    lsl_i_h5_file *f;
    const char *path;
    lsl_status st;
} files_ctx;

/* One serving file: a 1-D dataset of bytes whose name may be carried into a directory. */
static herr_t list_file(hid_t grp, const char *name, const H5L_info_t *info, void *op)
{
    (void)info;
    files_ctx *c = op;
    lsl_i_hfdir_file *e = &c->f->files[c->f->nfiles];
    hid_t ds = H5I_INVALID_HID, space = H5I_INVALID_HID, type = H5I_INVALID_HID;
    hsize_t dim = 0;
    if (c->f->nfiles == LSL_HF_MAX_FILES)
        c->st = lsl_i_fail(LSL_ERR_FORMAT, "%s: more than %d files under /%s", c->path,
                           LSL_HF_MAX_FILES, LSL_H5_FILES);
    else if (!lsl_i_hf_file_name_ok(name))
        c->st = lsl_i_fail(LSL_ERR_FORMAT,
                           "%s: /%s holds \"%.200s\", which cannot name a "
                           "serving file",
                           c->path, LSL_H5_FILES, name);
    else if ((ds = H5Dopen2(grp, name, H5P_DEFAULT)) < 0 || (space = H5Dget_space(ds)) < 0 ||
             (type = H5Dget_type(ds)) < 0 || H5Sget_simple_extent_ndims(space) != 1 ||
             H5Tget_class(type) != H5T_INTEGER || H5Tget_size(type) != 1 ||
             H5Sget_simple_extent_dims(space, &dim, NULL) < 0)
        c->st = lsl_i_fail(LSL_ERR_FORMAT, "%s: /%s/%s is not a 1-D dataset of bytes", c->path,
                           LSL_H5_FILES, name);
    else if ((uint64_t)dim > LSL_HF_MAX_FILE_SIZE)
        c->st =
            lsl_i_fail(LSL_ERR_FORMAT, "%s: /%s/%s is over 256 MiB", c->path, LSL_H5_FILES, name);
    else if (!(e->name = lsl_i_strdup(name)) || !(e->data = lsl_i_malloc((size_t)dim + 1)))
        c->st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else if (dim && H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, e->data) < 0)
        c->st = lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: reading /%s/%s", c->path, LSL_H5_FILES, name);
    if (e->name || e->data) {
        e->len = (uint64_t)dim;
        c->f->nfiles++; /* owned from here, freed with the listing */
    }
    if (type >= 0)
        H5Tclose(type);
    if (space >= 0)
        H5Sclose(space);
    if (ds >= 0)
        H5Dclose(ds);
    return c->st == LSL_OK ? 0 : -1;
}

static lsl_status list_files(hid_t file, const char *path, lsl_i_h5_file *f)
{
    hid_t grp = H5Gopen2(file, LSL_H5_FILES, H5P_DEFAULT);
    if (grp < 0)
        return lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: /%s is not a group", path, LSL_H5_FILES);
    files_ctx c = {f, path, LSL_OK};
    f->files = lsl_i_calloc(LSL_HF_MAX_FILES, sizeof *f->files);
    if (!f->files)
        c.st = lsl_i_fail(LSL_ERR_NOMEM, "out of memory");
    else if (H5Literate(grp, H5_INDEX_NAME, H5_ITER_INC, NULL, list_file, &c) < 0 && !c.st)
        c.st = lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: listing /%s", path, LSL_H5_FILES);
    H5Gclose(grp);
    return c.st;
}

lsl_status lsl_i_h5_list_open(hid_t file, uint64_t file_size, const char *path, lsl_i_h5_file *f)
{
    lsl_status rc = LSL_OK;
    hid_t grp = H5I_INVALID_HID;
    int has = 0;
    memset(f, 0, sizeof *f);
    f->file_size = file_size;
    LSL_TRY(lsl_i_h5_get_num(file, "loraslab_format_version", path, 1, H5T_NATIVE_INT,
                             &f->format_version, &has));
    if (!has)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: not a loraslab file (no loraslab_format_version)", path);
    if (f->format_version < 1 || f->format_version > LSL_FORMAT_VERSION)
        LSL_FAIL(LSL_ERR_FORMAT, "%s: layout version %d; this loraslab reads versions 1 to %d",
                 path, f->format_version, LSL_FORMAT_VERSION);
    for (int i = 0; i < 5; i++)
        LSL_TRY(lsl_i_h5_get_str(file, lsl_i_h5_root_attrs[i], path, &f->attrs[i]));
    grp = H5Gopen2(file, LSL_H5_GROUP, H5P_DEFAULT);
    if (grp < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: no /%s group", path, LSL_H5_GROUP));
    list_ctx c = {f, 0, path, LSL_OK};
    if (H5Literate(grp, H5_INDEX_CRT_ORDER, H5_ITER_INC, NULL, list_one, &c) < 0)
        LSL_GOTO(c.st ? c.st : lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: listing tensors", path));
    if (f->format_version >= 2 && H5Lexists(file, LSL_H5_FILES, H5P_DEFAULT) > 0)
        LSL_TRY(list_files(file, path, f));
fail:
    if (grp >= 0)
        H5Gclose(grp);
    if (rc != LSL_OK)
        lsl_i_h5_list_free(f);
    return rc;
}

lsl_status lsl_i_h5_list(const char *path, lsl_i_h5_file *f)
{
    lsl_status rc = LSL_OK;
    hid_t fapl = lsl_i_h5_fapl(0), file = H5I_INVALID_HID;
    int fd = -1;
    uint64_t size = 0;
    memset(f, 0, sizeof *f);
    h5_quiet q = quiet_on();
    LSL_TRY(lsl_i_open_input(path, &fd, &size));
    close(fd);
    file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0)
        LSL_GOTO(lsl_i_h5_fail(LSL_ERR_FORMAT, "%s: not an HDF5 file (or unreadable)", path));
    rc = lsl_i_h5_list_open(file, size, path, f);
fail:
    if (file >= 0)
        H5Fclose(file);
    H5Pclose(fapl);
    quiet_off(q);
    return rc;
}
