/* libFuzzer target: the HDF5 layout reader (what inspect, verify and convert trust), structure-
 * aware.  The input is a small program that builds a loraslab-like file in memory through the
 * HDF5 API: root attributes and tensors whose attributes may have any class, rank and element
 * count, whose names may be any bytes, whose shapes may overflow, whose types and layouts may not
 * match their dtype attribute.  So every input is a well-formed HDF5 file with hostile content,
 * which is what loraslab's reader is responsible for; byte-level corruption of the HDF5 format
 * itself is HDF5's to survive (a byte-mutating run crashed inside HDF5 1.10.8: NOTES.md). */
#include "lsl_h5.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct prog {
    const uint8_t *p;
    size_t n;
} prog;

static unsigned u8(prog *g)
{
    if (!g->n)
        return 0;
    g->n--;
    return *g->p++;
}

static uint64_t u64(prog *g)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u8(g);
    return v;
}

/* A dimension: mostly small, sometimes anything (overflowing products). */
static hsize_t dim(prog *g)
{
    unsigned k = u8(g);
    return k < 200 ? k % 9 : k < 240 ? (hsize_t)1 << (k % 63) : (hsize_t)u64(g) >> (k % 8);
}

static const char *const dtypes[] = {"BF16",    "F16", "F32", "F64",  "U8",  "I8",   "I16",
                                     "U16",     "I32", "U32", "I64",  "U64", "BOOL", "F8_E4M3",
                                     "F8_E5M2", "C64", "F4",  "bf16", ""};

/* Attribute `name` on obj: a string or a number of some class, scalar, null or of k elements. */
static void attr(prog *g, hid_t obj, const char *name, const char *text, uint64_t num)
{
    unsigned shape = u8(g), kind = u8(g) % 6;
    hsize_t k = shape < 180 ? 1 : shape < 240 ? shape % 9 : (hsize_t)(u8(g) << 8 | u8(g));
    int null = shape >= 120 && shape < 125;
    size_t count = shape < 125 ? 1 : (size_t)k;
    hid_t sp = shape < 120 ? H5Screate(H5S_SCALAR)
               : null      ? H5Screate(H5S_NULL)
                           : H5Screate_simple(1, &k, NULL);
    hid_t ft, mt;
    void *buf;
    if (kind <= 1) { /* a variable-length string, or a fixed one of some width */
        size_t w = kind == 0 ? sizeof(char *) : (u8(g) % 16) + 1;
        ft = H5Tcopy(H5T_C_S1);
        H5Tset_size(ft, kind == 0 ? H5T_VARIABLE : w);
        mt = H5Tcopy(ft);
        buf = calloc(count ? count : 1, w);
        for (size_t i = 0; buf && i < count; i++) {
            if (kind == 0)
                ((const char **)buf)[i] = text;
            else
                strncpy((char *)buf + i * w, text, w);
        }
    } else {
        ft = H5Tcopy(kind == 2   ? H5T_STD_U32LE
                     : kind == 3 ? H5T_STD_I64LE
                     : kind == 4 ? H5T_IEEE_F64LE
                                 : H5T_STD_U8LE);
        mt = H5Tcopy(kind == 4 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_UINT64);
        buf = calloc(count ? count : 1, 8);
        for (size_t i = 0; buf && i < count; i++) {
            if (kind == 4)
                ((double *)buf)[i] = (double)(num + i);
            else
                ((uint64_t *)buf)[i] = num + i;
        }
    }
    hid_t a =
        buf && sp >= 0 ? H5Acreate2(obj, name, ft, sp, H5P_DEFAULT, H5P_DEFAULT) : H5I_INVALID_HID;
    if (a >= 0) {
        if (!null)
            H5Awrite(a, mt, buf);
        H5Aclose(a);
    }
    free(buf);
    H5Tclose(mt);
    H5Tclose(ft);
    if (sp >= 0)
        H5Sclose(sp);
}

static void tensor(prog *g, hid_t grp, int idx)
{
    char name[40];
    unsigned nk = u8(g);
    if (nk < 230) {
        snprintf(name, sizeof name, "model.layers.%d.w", idx);
    } else { /* any bytes, NUL-terminated, no '/' */
        size_t l = (nk % 12) + 1;
        for (size_t i = 0; i < l; i++) {
            unsigned c = u8(g);
            name[i] = (char)(c == '/' || c == 0 ? 'x' : c);
        }
        name[l] = '\0';
    }
    unsigned di = u8(g), ti = u8(g), nd = u8(g) % 10;
    const char *dt = dtypes[di % (sizeof dtypes / sizeof *dtypes)];
    lsl_dtype want = LSL_F32;
    lsl_dtype_from_name(dtypes[ti % (sizeof dtypes / sizeof *dtypes)], &want);
    hid_t type = lsl_i_h5_type(want);
    if (type < 0)
        type = H5Tcopy(H5T_STD_U8LE);
    hsize_t dims[9];
    for (unsigned d = 0; d < nd; d++)
        dims[d] = dim(g);
    hid_t sp = nd == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple((int)nd, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    unsigned lay = u8(g);
    if (lay < 20 && nd > 0) {
        hsize_t ch[9];
        for (unsigned d = 0; d < nd; d++)
            ch[d] = 1;
        H5Pset_chunk(dcpl, (int)nd, ch);
    } else {
        /* Storage is allocated only for small shapes: the reader never reads data, and an
         * in-memory file of gigabytes would only slow the run. */
        uint64_t e = 1;
        int small = 1;
        for (unsigned d = 0; d < nd; d++)
            small &= !__builtin_mul_overflow(e, dims[d], &e) && e <= 4096;
        H5Pset_layout(dcpl, lay < 30 && small ? H5D_COMPACT : H5D_CONTIGUOUS);
        H5Pset_alloc_time(dcpl, lay < 200 && small ? H5D_ALLOC_TIME_EARLY : H5D_ALLOC_TIME_LATE);
    }
    hid_t ds =
        sp >= 0 ? H5Dcreate2(grp, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT) : H5I_INVALID_HID;
    if (ds >= 0) {
        unsigned which = u8(g);
        if (which & 1)
            attr(g, ds, "dtype", dt, 0);
        if (which & 2)
            attr(g, ds, "crc32c", "0", u64(g));
        if (which & 4)
            attr(g, ds, "lora_rank", "8", u8(g));
        if (which & 8)
            attr(g, ds, "lora_alpha", "16", u8(g));
        if (which & 16)
            attr(g, ds, "lora_scaling", "2", u8(g));
        H5Dclose(ds);
    }
    H5Pclose(dcpl);
    if (sp >= 0)
        H5Sclose(sp);
    H5Tclose(type);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    prog g = {data, size};
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), gcpl = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_fapl_core(fapl, 1 << 16, 0); /* in memory, never written to disk */
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    hid_t f = H5Fcreate("fuzz-in-memory.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (f >= 0) {
        unsigned root = u8(&g);
        if (root & 1)
            attr(&g, f, "loraslab_format_version", "1", root & 2 ? 1 : u8(&g));
        if (root & 4)
            attr(&g, f, "base_config_json", "{\"model_type\": \"qwen2\"}", 0);
        if (root & 8)
            attr(&g, f, "loraslab_version", "\xff\xfe", 0);
        hid_t grp = root & 16 ? H5I_INVALID_HID
                              : H5Gcreate2(f, LSL_H5_GROUP, H5P_DEFAULT, gcpl, H5P_DEFAULT);
        for (int i = 0; grp >= 0 && i < (int)(u8(&g) % 5); i++)
            tensor(&g, grp, i);
        if (grp >= 0)
            H5Gclose(grp);
        hsize_t fsize = 0;
        H5Fget_filesize(f, &fsize);
        lsl_i_h5_file h;
        if (lsl_i_h5_list_open(f, u8(&g) < 16 ? fsize / 2 : fsize, "fuzz.h5", &h) == LSL_OK)
            lsl_i_h5_list_free(&h);
        H5Fclose(f);
    }
    H5Pclose(gcpl);
    H5Pclose(fapl);
    return 0;
}
