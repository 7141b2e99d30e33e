"""ctypes declarations of the in-job writer and the callback communicator (include/loraslab.h)."""
from __future__ import annotations

import ctypes as c

MAX_NDIM = 8
MEM_HOST, MEM_DEVICE = 0, 1
SHARD_ROWS, SHARD_COLS = 0, 1
LORA_RSLORA, LORA_DELTA_IN_WEIGHT_DTYPE, LORA_DORA_COLUMNS = 1, 2, 4
OP_MAX, OP_MIN, OP_SUM = 0, 1, 2
# lsl_dtype values (the safetensors order)
DTYPES = {"BOOL": 0, "U8": 4, "I8": 5, "F8_E5M2": 6, "F8_E4M3": 7, "I16": 11, "U16": 12,
          "F16": 13, "BF16": 14, "I32": 15, "U32": 16, "F32": 17, "F64": 19, "I64": 20, "U64": 21}
I64, F64 = DTYPES["I64"], DTYPES["F64"]
ERR_INVALID_ARG, ERR_UNSUPPORTED, ERR_COMM = 1, 5, 45


STRIPE_ALL = (1 << 64) - 1  # LSL_STRIPE_ALL: every OST
OUTPUT_AUTO, OUTPUT_HDF5, OUTPUT_SAFETENSORS = 0, 1, 2


class WriterConfig(c.Structure):
    _fields_ = [("staging_bytes", c.c_uint64), ("alignment", c.c_uint64),
                ("overwrite", c.c_int), ("quiet", c.c_int), ("progress_label", c.c_char_p),
                ("stripe_count", c.c_uint64), ("stripe_size", c.c_uint64),
                ("print_plan", c.c_int), ("format", c.c_int), ("max_shard_bytes", c.c_uint64)]


class TensorInfo(c.Structure):
    _fields_ = [("name", c.c_char_p), ("dtype", c.c_int), ("ndim", c.c_int),
                ("shape", c.c_uint64 * MAX_NDIM)]


class LoraPart(c.Structure):
    _fields_ = [("rank", c.c_uint64), ("alpha", c.c_double), ("scaling", c.c_double),
                ("a_dtype", c.c_int), ("b_dtype", c.c_int), ("a_shard", c.c_int),
                ("a_off", c.c_uint64), ("a_count", c.c_uint64), ("a", c.c_void_p),
                ("b", c.c_void_p), ("magnitude", c.c_void_p), ("magnitude_dtype", c.c_int),
                ("flags", c.c_uint)]


class Part(c.Structure):
    _fields_ = [("row0", c.c_uint64), ("nrows", c.c_uint64), ("data", c.c_void_p),
                ("mem", c.c_int), ("stream", c.c_void_p), ("lora", c.POINTER(LoraPart))]


class ElemPart(c.Structure):
    _fields_ = [("e0", c.c_uint64), ("nelems", c.c_uint64), ("data", c.c_void_p),
                ("mem", c.c_int), ("stream", c.c_void_p), ("lora", c.POINTER(LoraPart))]


ALLREDUCE = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_uint64, c.c_int, c.c_int)
BCAST = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_uint64, c.c_int)
ALLGATHER = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_void_p, c.c_uint64)
ALLGATHERV = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_uint64, c.c_void_p,
                         c.POINTER(c.c_uint64))
BARRIER = c.CFUNCTYPE(c.c_int, c.c_void_p)


class CommOps(c.Structure):
    _fields_ = [("allreduce", ALLREDUCE), ("bcast", BCAST), ("allgather", ALLGATHER),
                ("allgatherv", ALLGATHERV), ("barrier", BARRIER)]


class CommCb(c.Structure):
    _fields_ = [("ops", c.POINTER(CommOps)), ("ctx", c.c_void_p), ("rank", c.c_int),
                ("size", c.c_int)]


def declare(lib: c.CDLL) -> None:
    """Prototypes of the writer entry points on the loaded library."""
    W = c.c_void_p
    protos = {
        "lsl_writer_create_world": (c.c_int, [c.c_char_p, c.POINTER(WriterConfig),
                                              c.POINTER(W)]),
        "lsl_writer_create_cb_all": (c.c_int, [c.POINTER(CommCb), c.c_char_p,
                                               c.POINTER(WriterConfig), c.POINTER(W)]),
        "lsl_writer_set_attr_all": (c.c_int, [W, c.c_char_p, c.c_char_p]),
        "lsl_writer_add_files_all": (c.c_int, [W, c.c_uint64, c.POINTER(c.c_char_p),
                                               c.POINTER(c.c_void_p), c.POINTER(c.c_uint64)]),
        "lsl_writer_put_order": (c.c_int, [W, c.POINTER(c.c_uint64)]),
        "lsl_writer_define_all": (c.c_int, [W, c.c_uint64, c.POINTER(TensorInfo)]),
        "lsl_writer_put_all": (c.c_int, [W, c.c_uint64, c.POINTER(Part)]),
        "lsl_writer_put_elems_all": (c.c_int, [W, c.c_uint64, c.POINTER(ElemPart)]),
        "lsl_writer_put_batch_all": (c.c_int, [W, c.c_uint64, c.POINTER(c.c_uint64),
                                               c.POINTER(Part)]),
        "lsl_writer_close_all": (c.c_int, [c.POINTER(W)]),
        "lsl_writer_abort_all": (None, [c.POINTER(W)]),
        "lsl_signals_install": (c.c_int, []),
        "lsl_signals_restore": (None, []),
        "lsl_partition_rows": (None, [c.c_uint64, c.c_int, c.c_int, c.POINTER(c.c_uint64),
                                      c.POINTER(c.c_uint64)]),
    }
    for name, (res, args) in protos.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
