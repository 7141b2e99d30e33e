"""The installed Python package, against a file the C consumer wrote: inspect, verify and
convert work, a failure raises loraslab.Error with the same status on every rank, and importing
the package pulls in neither torch nor MPI.
    [mpiexec -n N] python3 check_python.py FILE.h5 OUT_DIR"""
import os
import sys

import loraslab

assert "torch" not in sys.modules, "import loraslab imported torch"
lib_path = loraslab._lib.lib()._name  # noqa: SLF001 - which library was found
h5, out = sys.argv[1], sys.argv[2]
world = loraslab._tools.world()  # noqa: SLF001 - the handle over MPI's world
rank = loraslab._lib.lib().lsl_comm_rank(world)
size = loraslab._lib.lib().lsl_comm_size(world)
assert loraslab.version() == loraslab.__version__, (loraslab.version(), loraslab.__version__)
doc = loraslab.inspect(h5)
assert [t["name"] for t in doc["tensors"]] == ["model.w.weight"], doc
assert loraslab.verify(h5, quiet=True)["tensors"] == 1
s = loraslab.convert(h5, out, overwrite=True, quiet=True)
assert s["tensors"] == 1 and os.path.isfile(os.path.join(out, "model.safetensors")), s
loraslab.verify(out, quiet=True)
# the library's lines to a logger (rank 0 speaks), then back to stderr
import logging  # noqa: E402


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


log = logging.getLogger("loraslab.test")
log.propagate = False
keep = Keep()
log.addHandler(keep)
log.setLevel(logging.INFO)
loraslab.log_to(log)
loraslab.verify(h5)
loraslab.log_to(None)
loraslab.verify(h5, quiet=True)
got = [r.getMessage() for r in keep.records]
if rank == 0:
    assert any(m.startswith("loraslab: verified ") and h5 in m for m in got), got
    assert all(not m.endswith("\n") and r.levelno == logging.INFO
               for m, r in zip(got, keep.records)), got
else:
    assert got == [], got
try:
    loraslab.convert(h5 + ".missing", out + "-x", quiet=True)
    raise SystemExit("no Error for a missing input")
except loraslab.Error as e:
    assert e.name == "LSL_ERR_NOT_FOUND" and ".missing" in e.message, (e.name, e.message)
    assert not os.path.exists(out + "-x")
if rank == 0:
    print(f"ok - python package at {size} rank(s), library {lib_path}: inspect, verify, "
          f"convert, Error on every rank, lines to a logger")
