"""Protected paths that do not exist yet, in a sandboxed process's writable folders.

A ``none`` or ``read`` entry for a path that does not exist, inside a folder
the process may write, would let the process create that path (bubblewrap
can only bind what exists).  :meth:`MountPoints.first_missing` finds the
first component of such a path that does not exist;
:func:`~exec_server.server.fs.helper.bubblewrap_command` binds ``/dev/null``
read-only on it, as ``codex-linux-sandbox`` does, so nothing can be created
there or below (``Not a directory``, ``Read-only file system``).  To mount
it, bubblewrap creates an empty file at that path on the host.

:data:`MOUNT_POINTS` counts the sandboxes using each such file, and counts
that file as missing for the next sandbox too (so that one binds it as well
and is counted: removing a file mounted in another namespace takes the
mount away there).  The file is removed when the last sandbox using it has
closed, if it is still an empty regular file.  A server killed meanwhile
(SIGKILL) leaves those empty files behind.  Build a command and
:meth:`~MountPoints.acquire` its mount points under :attr:`MountPoints.lock`.
"""

import os
import stat
import threading
from typing import Callable, Dict, Iterable, Optional


class MountPoints:
    """How many running sandboxes use each mount point file; thread-safe (under :attr:`lock`)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._users: Dict[str, int] = {}

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists for a new sandbox: one of our mount point files does not."""
        with self.lock:
            return path not in self._users and os.path.lexists(path)

    def first_missing(self, path: str, writable: Callable[[str], bool]) -> Optional[str]:
        """The first component of ``path`` (absolute, free of ``..``) that does not exist, if the folder above
        it exists and ``writable(folder)`` (where the process could create it); else None."""
        with self.lock:
            if self.exists(path):
                return None
            missing, parent = path, os.path.dirname(path)
            while parent != missing and not self.exists(parent):
                missing, parent = parent, os.path.dirname(parent)
            if not os.path.isdir(parent) or not writable(parent):  # under a file, or read-only there
                return None
            return missing

    def acquire(self, paths: Iterable[str]) -> None:
        """Count one more sandbox using each of ``paths`` (before it starts)."""
        with self.lock:
            for path in paths:
                self._users[path] = self._users.get(path, 0) + 1

    def release(self, paths: Iterable[str]) -> None:
        """One sandbox using ``paths`` has ended: remove each that no other uses and that is an empty file."""
        with self.lock:
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
