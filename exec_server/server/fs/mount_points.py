"""Protected paths that do not exist yet, in a sandboxed process's writable folders.

A ``none`` or ``read`` entry for a path that does not exist, inside a folder
the policy lets the process write, would let the process create that path
(bubblewrap can only bind what exists).  :func:`first_missing` finds the
first component of such a path that does not exist;
:func:`~exec_server.server.fs.helper.bubblewrap_command` binds ``/dev/null``
read-only on it, as ``codex-linux-sandbox`` does, so nothing can be created
there or below (``Not a directory``, ``Read-only file system``).  To mount
it, bubblewrap creates an empty file at that path on the host;
:data:`MOUNT_POINTS` counts the sandboxes using each such file and removes
it when the last one has closed, if it is still an empty regular file.  A
server killed meanwhile (SIGKILL) leaves those empty files behind.
"""

import os
import stat
import threading
from typing import Dict, Iterable, Optional, Sequence


def first_missing(path: str, writable: Sequence[str]) -> Optional[str]:
    """The first component of ``path`` (absolute, free of ``..``) that does not exist, if one of the
    ``writable`` folders holds it (elsewhere nothing can be created); else None."""
    current = os.path.dirname(path)
    missing = path
    while current != missing and not os.path.lexists(current):
        missing, current = current, os.path.dirname(current)
    if os.path.lexists(missing):
        return None
    inside = any(missing.startswith(root.rstrip(os.sep) + os.sep) for root in writable)
    return missing if inside else None


class MountPoints:
    """How many running sandboxes use each mount point file; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: Dict[str, int] = {}

    def acquire(self, paths: Iterable[str]) -> None:
        """Count one more sandbox using each of ``paths`` (before it starts)."""
        with self._lock:
            for path in paths:
                self._users[path] = self._users.get(path, 0) + 1

    def release(self, paths: Iterable[str]) -> None:
        """One sandbox using ``paths`` has ended: remove each that no other uses and that is an empty file."""
        with self._lock:
            for path in paths:
                left = self._users.get(path, 0) - 1
                if left > 0:
                    self._users[path] = left
                    continue
                self._users.pop(path, None)
                try:
                    info = os.lstat(path)
                    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
                        os.unlink(path)
                except OSError:  # gone already, or its folder went: nothing to clean
                    pass


#: The server's mount point files (one per process: bubblewrap runs as its children).
MOUNT_POINTS = MountPoints()
