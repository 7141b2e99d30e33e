"""The C API as ctypes sees it (include/loraslab.h): its structs, constants and every function
the package calls, each declared once here.  Config structs are built by keyword; their leading
`size` field is set by the constructor, as the C INIT macros set it."""
from __future__ import annotations

import ctypes as c
from typing import Any

MAX_NDIM = 8
MEM_HOST, MEM_DEVICE = 0, 1
LORA_RSLORA, LORA_DELTA_IN_WEIGHT_DTYPE, LORA_TRANSPOSED = 1, 2, 4
OP_MAX, OP_MIN, OP_SUM = 0, 1, 2
# lsl_dtype values (the safetensors order)
DTYPES = {"BOOL": 0, "U8": 4, "I8": 5, "F8_E5M2": 6, "F8_E4M3": 7, "I16": 11, "U16": 12,
          "F16": 13, "BF16": 14, "I32": 15, "U32": 16, "F32": 17, "F64": 19, "I64": 20, "U64": 21}
I64, F64 = DTYPES["I64"], DTYPES["F64"]
ERR_INVALID_ARG, ERR_UNSUPPORTED, ERR_COMM = 1, 5, 45
STRIPE_ALL = (1 << 64) - 1  # LSL_STRIPE_ALL: every OST
OUTPUT_AUTO, OUTPUT_HDF5, OUTPUT_SAFETENSORS = 0, 1, 2


class _Config(c.Structure):
    """A config struct: keyword fields only, `size` filled in (zero is every default)."""

    def __init__(self, **fields: Any) -> None:
        super().__init__()
        self.size = c.sizeof(self)
        known = {f for f, _ in self._fields_} - {"size"}
        for name, value in fields.items():
            if name not in known:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            setattr(self, name, value)


class WriterConfig(_Config):
    """lsl_writer_config."""

    _fields_ = [("size", c.c_size_t), ("staging_bytes", c.c_uint64), ("alignment", c.c_uint64),
                ("overwrite", c.c_int), ("quiet", c.c_int), ("progress_label", c.c_char_p),
                ("stripe_count", c.c_uint64), ("stripe_size", c.c_uint64),
                ("print_plan", c.c_int), ("format", c.c_int), ("max_shard_bytes", c.c_uint64)]


class ConvertConfig(_Config):
    """lsl_convert_config."""

    _fields_ = [("size", c.c_size_t), ("input", c.c_char_p), ("outdir", c.c_char_p),
                ("max_shard_bytes", c.c_uint64), ("staging_bytes", c.c_uint64),
                ("no_verify", c.c_int), ("overwrite", c.c_int), ("quiet", c.c_int),
                ("stripe_count", c.c_uint64), ("stripe_size", c.c_uint64), ("plan", c.c_int)]


class JobStats(c.Structure):
    """lsl_job_stats."""

    _fields_ = [("seconds", c.c_double), ("tensors", c.c_uint64),
                ("merged_tensors", c.c_uint64), ("bytes", c.c_uint64),
                ("rss_baseline_max", c.c_uint64), ("rss_peak_max", c.c_uint64),
                ("rss_growth_min", c.c_uint64), ("rss_growth_max", c.c_uint64)]


class TensorInfo(c.Structure):
    _fields_ = [("name", c.c_char_p), ("dtype", c.c_int), ("ndim", c.c_int),
                ("shape", c.c_uint64 * MAX_NDIM)]


class Factor(c.Structure):
    _fields_ = [("data", c.c_void_p), ("dtype", c.c_int), ("e0", c.c_uint64), ("n", c.c_uint64),
                ("transposed", c.c_int)]


class LoraPart(c.Structure):
    _fields_ = [("rank", c.c_uint64), ("alpha", c.c_double), ("scaling", c.c_double),
                ("a", Factor), ("b", Factor), ("magnitude", Factor), ("flags", c.c_uint)]


class Part(c.Structure):
    _fields_ = [("row0", c.c_uint64), ("nrows", c.c_uint64), ("data", c.c_void_p),
                ("mem", c.c_int), ("stream", c.c_void_p), ("lora", c.POINTER(LoraPart)),
                ("col0", c.c_uint64), ("ncols", c.c_uint64)]


class ElemPart(c.Structure):
    _fields_ = [("e0", c.c_uint64), ("nelems", c.c_uint64), ("data", c.c_void_p),
                ("mem", c.c_int), ("stream", c.c_void_p), ("lora", c.POINTER(LoraPart))]


ALLREDUCE = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_uint64, c.c_int, c.c_int)
BCAST = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_uint64, c.c_int)
ALLGATHER = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_void_p, c.c_uint64)
ALLGATHERV = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_uint64, c.c_void_p,
                         c.POINTER(c.c_uint64))
BARRIER = c.CFUNCTYPE(c.c_int, c.c_void_p)
LOG_FN = c.CFUNCTYPE(None, c.c_int, c.c_char_p, c.c_void_p)  # lsl_log_fn


class CommOps(c.Structure):
    _fields_ = [("allreduce", ALLREDUCE), ("bcast", BCAST), ("allgather", ALLGATHER),
                ("allgatherv", ALLGATHERV), ("barrier", BARRIER)]


_H = c.c_void_p  # an opaque handle: lsl_comm *, lsl_writer *
_STATS = c.POINTER(JobStats)
PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "lsl_status_name": (c.c_char_p, [c.c_int]),
    "lsl_strerror": (c.c_char_p, [c.c_int]),
    "lsl_last_error": (c.c_char_p, []),
    "lsl_version_string": (c.c_char_p, []),
    "lsl_parse_size": (c.c_int, [c.c_char_p, c.POINTER(c.c_uint64)]),
    "lsl_inspect_json": (c.c_int, [c.c_char_p, c.POINTER(c.c_void_p)]),
    "lsl_free": (None, [c.c_void_p]),
    "lsl_partition_rows": (None, [c.c_uint64, c.c_int, c.c_int, c.POINTER(c.c_uint64),
                                  c.POINTER(c.c_uint64)]),
    "lsl_set_log": (None, [LOG_FN, c.c_void_p]),
    "lsl_remove_temporaries": (None, []),
    "lsl_signals_install": (c.c_int, []),
    "lsl_signals_restore": (None, []),
    "lsl_comm_world": (c.c_int, [c.POINTER(_H)]),
    "lsl_comm_from_ops": (c.c_int, [c.POINTER(CommOps), c.c_void_p, c.c_int, c.c_int,
                                    c.POINTER(_H)]),
    "lsl_comm_rank": (c.c_int, [_H]),
    "lsl_comm_size": (c.c_int, [_H]),
    "lsl_comm_free": (None, [c.POINTER(_H)]),
    "lsl_world_finalize": (None, []),
    "lsl_convert_all": (c.c_int, [_H, c.POINTER(ConvertConfig), _STATS]),
    "lsl_verify_all": (c.c_int, [_H, c.c_char_p, c.c_uint64, c.c_int, _STATS]),
    "lsl_writer_create_all": (c.c_int, [_H, c.c_char_p, c.POINTER(WriterConfig), c.POINTER(_H)]),
    "lsl_writer_set_attr_all": (c.c_int, [_H, c.c_char_p, c.c_char_p]),
    "lsl_writer_add_files_all": (c.c_int, [_H, c.c_uint64, c.POINTER(c.c_char_p),
                                           c.POINTER(c.c_void_p), c.POINTER(c.c_uint64)]),
    "lsl_writer_put_order": (c.c_int, [_H, c.POINTER(c.c_uint64)]),
    "lsl_writer_define_all": (c.c_int, [_H, c.c_uint64, c.POINTER(TensorInfo)]),
    "lsl_writer_put_all": (c.c_int, [_H, c.c_uint64, c.POINTER(Part)]),
    "lsl_writer_put_elems_all": (c.c_int, [_H, c.c_uint64, c.POINTER(ElemPart)]),
    "lsl_writer_put_batch_all": (c.c_int, [_H, c.c_uint64, c.POINTER(c.c_uint64),
                                           c.POINTER(Part)]),
    "lsl_writer_close_all": (c.c_int, [c.POINTER(_H)]),
    "lsl_writer_abort_all": (None, [c.POINTER(_H)]),
}


def declare(lib: c.CDLL) -> None:
    """Set the prototypes of PROTOS on the loaded library."""
    for name, (res, args) in PROTOS.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
