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


# The library's messages name command-line options; from Python the keyword is what to pass.
_SPELLING = (("pass --overwrite", "pass overwrite=True"), ("--no-verify", "no_verify=True"),
             ("--stripe-count", "stripe_count="), ("--stripe-size", "stripe_size="))


def python_message(message: str) -> str:
    """A library message with each command-line option spelled as this package's keyword."""
    for cli, kw in _SPELLING:
        message = message.replace(cli, kw)
    return message


def raise_status(lib: object, status: int, cause: "BaseException | None" = None) -> None:
    """Raise the library's last error as Error.  A KeyboardInterrupt (or another exception
    that is not an Exception) raised inside a communicator callback is re-raised as itself:
    Ctrl-C must not be caught by ``except loraslab.Error``."""
    if cause is not None and not isinstance(cause, Exception):
        raise cause
    err = Error(status, lib.lsl_status_name(status).decode(),  # type: ignore[attr-defined]
                python_message(lib.lsl_last_error().decode("utf-8", "replace")))  # type: ignore
    raise err from cause
