"""A file system error from the server, raised as Python's own ``OSError`` too.

The server words an OS error as ``<strerror> (os error <errno>)`` (the Rust
``io::Error`` wording, PROTOCOL.md section 8.2) in a JSON-RPC error object.
The client raises it as the :class:`~exec_server.protocol.errors.RpcError`
subclass of its code (``NotFound``, ``InvalidRequest``, ``InternalError``:
``code`` and ``message`` stay the server's) that is also the ``OSError``
subclass Python gives that errno, with ``errno``, ``strerror``, ``filename``
(the path given to the call) and ``filename2`` (a copy's destination) set, so
code written for local files works unchanged::

    try:
        data = client.fs.read_file("/srv/app/config.json")
    except FileNotFoundError as exc:   # also an exec_server NotFound
        print(exc)                     # [Errno 2] No such file or directory: '/srv/app/config.json'

The errno is trusted only where this host's C library words it the same way
(``os.strerror``): a server on another system (Windows numbers its errors
otherwise) gives the plain ``RpcError``, except that a -32004 on a path call
whose errno is not trusted (or absent) is a ``FileNotFoundError`` with this
host's ``errno.ENOENT`` and the server's words as ``strerror``.
"""

import errno
import os
import re
import threading
from typing import Any, Dict, Optional, Tuple, Type

from exec_server.protocol.errors import InternalError, InvalidRequest, NotFound, RpcError

_OS_ERROR = re.compile(r"(?P<text>.*) \(os error (?P<number>\d+)\)\Z", re.S)
#: The classes raised again as OSError too: the server's file system errors (-32004, -32600, -32603) and
#: a plain RpcError of another code.  Others (ServerOverloaded, InvalidParams) are no OS error.
_MAPPED = (NotFound, InvalidRequest, InternalError, RpcError)
_classes: Dict[Tuple[type, type], type] = {}
_classes_lock = threading.Lock()


def _combined(rpc_class: Type[RpcError], os_class: Type[OSError]) -> type:
    """``Remote<OSErrorClass>``: a subclass of both, one per pair (made on first use, so pickled by
    :func:`_rebuild` with its two bases, not by name)."""
    with _classes_lock:
        found = _classes.get((rpc_class, os_class))
        if found is None:
            found = type("Remote" + os_class.__name__, (rpc_class, os_class),
                         {"__module__": __name__, "__reduce__": _reduce})
            _classes[(rpc_class, os_class)] = found
        return found


def _reduce(error: Any) -> Tuple[Any, ...]:
    """Pickle and ``copy`` support: the two bases and every field, ``__dict__`` included."""
    rpc_class, os_class = type(error).__bases__
    return (_rebuild, (rpc_class, os_class, error.message, error.data, error.code, error.errno, error.strerror,
                       error.filename, error.filename2), dict(error.__dict__))


def _rebuild(rpc_class: Type[RpcError], os_class: Type[OSError], message: str, data: Any, code: int, number: int,
             text: str, filename: Any, filename2: Any) -> RpcError:
    error = _combined(rpc_class, os_class)(message, data, code)
    error.errno, error.strerror, error.filename = number, text, filename
    if filename2 is not None:  # set to None it would show as `-> None`
        error.filename2 = filename2
    return error


def _errno_of(message: str) -> Tuple[Optional[int], str]:
    """``(errno, strerror)`` of a server's OS error text, errno None when this host words it otherwise."""
    match = _OS_ERROR.match(message)
    if match is None:
        return None, message
    number, text = int(match.group("number")), match.group("text")
    try:
        if os.strerror(number) == text:
            return number, text
    except (ValueError, OverflowError):
        pass
    return None, message


def as_os_error(exc: RpcError, path: Any, path2: Any = None, missing_is_enoent: bool = True) -> RpcError:
    """``exc`` raised again as an ``OSError`` subclass too, or ``exc`` itself where no errno applies.

    Args:
        exc: the error the server answered.
        path: the path the call was given (``filename``), as the caller gave it.
        path2: a second path (``filename2``: a copy's destination), or None.
        missing_is_enoent: a -32004 without an ``os error`` suffix means the path
            is missing (path calls; a file handle's -32004 means an unknown handle).
    """
    if type(exc) not in _MAPPED:
        return exc  # done already, or no OS error
    number, text = _errno_of(exc.message)
    if number is None:
        if not (missing_is_enoent and isinstance(exc, NotFound)):
            return exc
        number, text = errno.ENOENT, exc.message
    os_class = type(OSError(number, text))  # the class Python raises for it: FileNotFoundError for ENOENT
    return _rebuild(type(exc), os_class, exc.message, exc.data, exc.code, number, text, _shown(path),
                    None if path2 is None else _shown(path2))


def _shown(path: Any) -> Any:
    """A path as ``OSError.filename`` holds it: str or bytes as given, a ``PathLike`` as its ``fspath``."""
    try:
        return os.fspath(path)
    except TypeError:
        return path
