"""The protocol errors of the fs operations: their codes, :class:`FsError`, and OS errors mapped to them."""

import errno
import os
from typing import Any, Dict

NOT_FOUND = -32004
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class FsError(Exception):
    """A protocol error: ``code`` (-32004, -32600, -32602, -32603) and ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> Dict[str, Any]:
        return {"code": self.code, "message": self.message}


def os_error(exc: OSError) -> FsError:
    """Map an OS error by kind (``fs_helper.rs``, ``map_fs_error``)."""
    if exc.errno is None:
        return FsError(INTERNAL_ERROR, str(exc))
    message = "%s (os error %d)" % (os.strerror(exc.errno), exc.errno)
    if exc.errno == errno.ENOENT:
        return FsError(NOT_FOUND, message)
    if exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM):
        return FsError(INVALID_REQUEST, message)
    return FsError(INTERNAL_ERROR, message)


def errno_error(number: int) -> FsError:
    """The FsError for an errno the helper detects itself (EISDIR, ELOOP, EACCES...)."""
    return os_error(OSError(number, os.strerror(number)))
