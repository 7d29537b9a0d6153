"""Refusal of files whose reads or opens can block forever: FIFOs, character devices, sockets.

Opening a FIFO waits for a writer and reading one (or a terminal) waits for
data that may never come; such a request would hold one of its connection's
request threads, and at shutdown the process, for good.  ``fs/readFile``,
``fs/copy`` and ``fs/open`` check the path first and answer -32600 instead.
(The sandboxed variants run in the fs helper, whose run is bounded by
``FS_HELPER_TIMEOUT`` and which is killed at shutdown.)
"""

import os
import stat

from fs_helper.operations import INVALID_REQUEST

from exec_server.protocol.errors import RpcError

#: File types refused, by ``stat.S_IFMT`` value.
BLOCKING_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFSOCK: "a socket"}
#: Entries of a directory tree checked before a recursive ``fs/copy``.
MAX_TREE_ENTRIES = 1_000_000


def refuse_blocking(path: str, follow_symlinks: bool = True) -> None:
    """-32600 if ``path`` is a FIFO, character device or socket; nothing otherwise.

    A path that cannot be stat'ed is left to the operation, which reports
    the error in its own words.

    Raises:
        RpcError: -32600 ``path `<path>` is a FIFO, not a regular file``.
    """
    try:
        info = os.stat(path, follow_symlinks=follow_symlinks)
    except (OSError, ValueError):
        return
    kind = BLOCKING_KINDS.get(stat.S_IFMT(info.st_mode))
    if kind is not None:
        raise RpcError("path `%s` is %s, not a regular file" % (path, kind), code=INVALID_REQUEST)


def refuse_blocking_tree(root: str) -> None:
    """:func:`refuse_blocking` for ``root`` and, if it is a directory, every entry below it.

    Symlinks are followed for the check (a copy reads their targets); at
    most :data:`MAX_TREE_ENTRIES` entries are looked at.
    """
    refuse_blocking(root)
    if not os.path.isdir(root):
        return
    seen = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            refuse_blocking(os.path.join(directory, name))
            seen += 1
            if seen >= MAX_TREE_ENTRIES:
                return
