"""loraslab.Error: a failed library call, as its status and message."""


class Error(Exception):
    """A loraslab call failed.

    ``status`` is the number of the ``lsl_status`` (stable across releases), ``name`` its
    symbol (``"LSL_ERR_CORRUPT"``), ``message`` the library's text naming the file, tensor or
    rank at fault.  Collective calls raise it on every rank with the same status and message.
    """

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{message} [{name}]")
        self.status = status
        self.name = name
        self.message = message
