"""loraslab: merged LoRA checkpoints in one parallel-HDF5 file, from Python.

Importing this package loads nothing heavy and starts nothing: no torch, no MPI.  The
collective functions (convert, verify) start MPI on first use and are collective over the MPI
world: under mpiexec every process calls them; alone, the process is a world of one.  Every
failure raises :class:`Error`, with the same status and message on every rank.  Progress lines
and warnings go to stderr, or to a `logging.Logger` given to :func:`log_to`.
"""
from ._errors import Error
from ._log import log_to
from ._tools import convert, finalize, inspect, remove_temporaries, verify, version

__all__ = ["Error", "convert", "finalize", "inspect", "remove_temporaries", "verify", "log_to",
           "version"]
__version__ = "0.3.0"
