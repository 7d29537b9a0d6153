"""Opening a file to read, copy or replace without ever waiting.

Opening a FIFO waits for a writer, and reading one (or a terminal) waits for
data that may never come: a request would hold its thread for good.  Every
such open goes through :func:`open_file`, which opens without waiting and
checks the file's type on the descriptor it got (a check of the path before
the open could be raced by a rename).
"""

import errno
import os
import stat
from typing import Optional

from .errors import FsError, INVALID_REQUEST


class SpecialFile(FsError):
    """-32600: the file is one of :data:`BLOCKING_KINDS` (raised by :func:`open_file`)."""


#: File types an open or a read may wait on for good (a FIFO without a writer, a terminal), by ``S_IFMT``.
BLOCKING_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFSOCK: "a socket"}
#: Added to each open of a file to read, copy or replace: the open never waits (a FIFO's for a writer).
OPEN_FLAGS = sum(getattr(os, name, 0) for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"))


def open_file(name: str, flags: int, mode: int = 0o666, dir_fd: Optional[int] = None, path: str = "") -> int:
    """``os.open(name, flags | OPEN_FLAGS, mode, dir_fd=dir_fd)``; a descriptor of anything but
    :data:`BLOCKING_KINDS` (a regular file, a directory).

    ``O_NONBLOCK`` stays set: a regular file ignores it, and one whose read
    would block (``/proc/kmsg``) answers EAGAIN, as the reference's read does.

    Args:
        path: the path an error names (default ``name``: give it when ``name`` is relative to ``dir_fd``).
    Raises:
        OSError: from the open.
        SpecialFile: -32600 ``path `<path>` is a FIFO, not a regular file`` (or a character device, a socket).
    """
    try:
        fd = os.open(name, flags | OPEN_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO opened to write without a reader: named as such
            _refuse(os.stat(name, dir_fd=dir_fd).st_mode, path or name)
        raise
    try:
        _refuse(os.fstat(fd).st_mode, path or name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse(mode: int, path: str) -> None:
    kind = BLOCKING_KINDS.get(stat.S_IFMT(mode))
    if kind is not None:
        raise SpecialFile(INVALID_REQUEST, "path `%s` is %s, not a regular file" % (path, kind))
