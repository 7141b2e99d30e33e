"""Make a hostile loraslab file from a good one: hostile_h5.py GOOD.h5 OUT.h5 CASE.

Each case is one of the ways a file from an archive or a colleague can lie to a reader (issue
14): attributes holding many values where loraslab writes one, shapes whose element count
overflows 64 bits, names that are not UTF-8, a dtype attribute that does not describe the data.
Run with Debian's /usr/bin/python3 (h5py, numpy).
"""
import shutil
import sys

import h5py
import numpy as np

CASES = {}


def case(fn):
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


def names(g):
    out = []
    g.id.links.iterate(lambda n: out.append(n.decode()) or None, idx_type=h5py.h5.INDEX_CRT_ORDER)
    return out


def bf16_name(g):
    return next(n for n in names(g) if g[n].attrs["dtype"] == "BF16")


@case
def dtype_two_strings(f, g):
    d = g[names(g)[0]]
    del d.attrs["dtype"]
    d.attrs.create("dtype", np.array([b"BF16", b"BF16"]))


@case
def dtype_64_fixed(f, g):
    d = g[names(g)[0]]
    del d.attrs["dtype"]
    d.attrs.create("dtype", np.array([b"F32"] * 64, dtype="S4"))


@case
def dtype_vlen_two(f, g):
    d = g[names(g)[0]]
    del d.attrs["dtype"]
    d.attrs.create("dtype", ["BF16", "BF16"], dtype=h5py.string_dtype())


@case
def dtype_not_string(f, g):
    d = g[names(g)[-1]]
    del d.attrs["dtype"]
    d.attrs.create("dtype", np.int32(7))


@case
def crc_100000(f, g):
    d = g[names(g)[2]]
    del d.attrs["crc32c"]
    d.attrs.create("crc32c", np.arange(100000, dtype=np.uint32))


@case
def crc_1000_first(f, g):
    d = g[names(g)[0]]
    del d.attrs["crc32c"]
    d.attrs.create("crc32c", np.arange(1000, dtype=np.uint32))


@case
def crc_float(f, g):
    d = g[names(g)[0]]
    c = d.attrs["crc32c"]
    del d.attrs["crc32c"]
    d.attrs.create("crc32c", np.float64(c))


@case
def version_1000(f, g):
    del f.attrs["loraslab_format_version"]
    f.attrs.create("loraslab_format_version", np.ones(1000, dtype=np.int32))


@case
def config_two(f, g):
    f.attrs["base_config_json"] = np.array([b"{}", b"{}"])


@case
def huge_u8(f, g):
    """[2^32, 2^32] bytes: 2^64 elements, 0 after a 64-bit wrap."""
    sp = h5py.h5s.create_simple((2**32, 2**32))
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_LATE)
    ds = h5py.h5d.create(g.id, b"huge.weight", h5py.h5t.STD_U8LE, sp, dcpl=dcpl)
    d = h5py.Dataset(ds)
    d.attrs["dtype"] = "U8"
    d.attrs["crc32c"] = np.uint32(0)


@case
def huge_bf16(f, g):
    """[2^62, 4] BF16: 2^64 elements."""
    t = g[bf16_name(g)].id.get_type()
    sp = h5py.h5s.create_simple((2**62, 4))
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_LATE)
    ds = h5py.h5d.create(g.id, b"huge.weight", t, sp, dcpl=dcpl)
    d = h5py.Dataset(ds)
    d.attrs["dtype"] = "BF16"
    d.attrs["crc32c"] = np.uint32(0)


@case
def name_not_utf8(f, g):
    d = g.create_dataset(b"lm_head\xff.weight", data=np.zeros(4, np.uint8))
    d.attrs["dtype"] = "U8"
    d.attrs["crc32c"] = np.uint32(0)


@case
def dtype_f16_on_bf16(f, g):
    g[bf16_name(g)].attrs["dtype"] = "F16"


@case
def dtype_i16_on_bf16(f, g):
    g[bf16_name(g)].attrs["dtype"] = "I16"


@case
def no_crc(f, g):
    del g[names(g)[1]].attrs["crc32c"]


def main():
    good, out, name = sys.argv[1:4]
    shutil.copy(good, out)
    with h5py.File(out, "r+") as f:
        CASES[name](f, f["tensors"])


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--list":
        print("\n".join(CASES))
    else:
        main()
