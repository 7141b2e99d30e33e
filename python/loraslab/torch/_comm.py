"""A callback communicator over torch.distributed (lsl_comm_ops), for jobs without an MPI world.

The library calls these from the thread that called it, in the same order on every rank.  The
collectives run on a gloo group of their own, whatever backend the training uses: the buffers
are small host-memory messages (statuses, row counts, checksums, LoRA A shards).  A Python
exception inside a callback is kept and turned into a non-zero return; the library then fails
with LSL_ERR_COMM, and the kept exception is chained to the raised loraslab.Error."""
from __future__ import annotations

import ctypes as c
from typing import Any, Optional

import torch
import torch.distributed as dist

from .. import _capi
from .._errors import Error
from .._lib import lib

_OPS = {_capi.OP_MAX: dist.ReduceOp.MAX, _capi.OP_MIN: dist.ReduceOp.MIN,
        _capi.OP_SUM: dist.ReduceOp.SUM}


def _view(addr: int, nbytes: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A tensor over nbytes of library memory at addr (no copy)."""
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer((c.c_char * nbytes).from_address(addr), dtype=dtype)


class TorchComm:
    """An lsl_comm over callbacks on a gloo group (ranks of the job that write, in group rank
    order); `handle` is what the C calls take, freed by close()."""

    def __init__(self, gloo: dist.ProcessGroup) -> None:
        self.group = gloo
        self.rank = dist.get_rank(self.group)
        self.size = dist.get_world_size(self.group)
        self.error: Optional[BaseException] = None
        self._ops = _capi.CommOps(_capi.ALLREDUCE(self._allreduce), _capi.BCAST(self._bcast),
                                  _capi.ALLGATHER(self._allgather),
                                  _capi.ALLGATHERV(self._allgatherv),
                                  _capi.BARRIER(self._barrier))
        self.handle = c.c_void_p()
        st = lib().lsl_comm_from_ops(c.byref(self._ops), None, self.rank, self.size,
                                     c.byref(self.handle))
        # Making the handle is this rank's allocation: every rank learns whether all have one
        # (the status and the rank that failed), so none waits in the library's first
        # collective for a rank that raised here, and all raise the same error.
        failed = torch.tensor([st, self.rank if st != 0 else -1], dtype=torch.int64)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.group)
        code, who = (int(x) for x in failed.tolist())
        if code != 0:
            raise Error(code, lib().lsl_status_name(code).decode(),
                        f"rank {who}: could not make its communicator handle "
                        f"({lib().lsl_strerror(code).decode()})")

    def close(self) -> None:
        """Free the handle (writers made over it keep their own communicator); again: nothing."""
        if self.handle:
            lib().lsl_comm_free(c.byref(self.handle))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the library may be gone
            pass

    def _guard(self, fn: Any, *args: Any) -> int:
        if self.error is not None:  # never call a collective after a failed one
            return 1
        try:
            fn(*args)
            return 0
        except BaseException as e:  # noqa: BLE001 - C cannot carry it; kept for the caller
            self.error = e
            return 1

    def _allreduce(self, ctx: int, buf: int, count: int, dtype: int, op: int) -> int:
        def run() -> None:
            t = _view(buf, 8 * count, torch.float64 if dtype == _capi.F64 else torch.int64)
            dist.all_reduce(t, op=_OPS[op], group=self.group)
        return self._guard(run)

    def _bcast(self, ctx: int, buf: int, nbytes: int, root: int) -> int:
        def run() -> None:
            t = _view(buf, nbytes)
            dist.broadcast(t, src=dist.get_global_rank(self.group, root), group=self.group)
        return self._guard(run)

    def _allgather(self, ctx: int, send: int, recv: int, nbytes: int) -> int:
        def run() -> None:
            out = _view(recv, nbytes * self.size)
            dist.all_gather(list(out.split(nbytes)) if nbytes else
                            [torch.empty(0, dtype=torch.uint8)] * self.size,
                            _view(send, nbytes).clone(), group=self.group)
        return self._guard(run)

    def _allgatherv(self, ctx: int, send: int, send_bytes: int, recv: int, counts: Any) -> int:
        def run() -> None:
            n = [int(counts[k]) for k in range(self.size)]
            most = max(n) if n else 0
            # gloo gathers equal sizes: pad to the largest, then pack in rank order
            mine = torch.zeros(most, dtype=torch.uint8)
            mine[:send_bytes] = _view(send, send_bytes)
            parts = [torch.empty(most, dtype=torch.uint8) for _ in range(self.size)]
            dist.all_gather(parts, mine, group=self.group)
            out = _view(recv, sum(n))
            pos = 0
            for k in range(self.size):
                out[pos:pos + n[k]] = parts[k][:n[k]]
                pos += n[k]
        return self._guard(run)

    def _barrier(self, ctx: int) -> int:
        return self._guard(lambda: dist.barrier(group=self.group))
