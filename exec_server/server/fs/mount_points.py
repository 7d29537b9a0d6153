"""Protected paths that do not exist yet, in a sandboxed process's writable folders.

A ``none`` or ``read`` entry for a path that does not exist, inside a folder
the process may write, would let the process create that path (bubblewrap
can only bind what exists).  :meth:`MountPoints.first_missing` finds the
first component of such a path that does not exist;
:func:`~exec_server.server.fs.helper.bubblewrap_command` binds ``/dev/null``
read-only on it, as ``codex-linux-sandbox`` does, so nothing can be created
there or below (``Not a directory``, ``Read-only file system``) and the
process cannot remove it (a mount point: ``Device or resource busy``).
Where the path lies under a file instead (a worktree's ``.git``), that file
is bound read-only onto itself, so it cannot be replaced by a folder.

:meth:`MountPoints.acquire` makes each mount point file itself (empty, mode
0444) before the sandbox starts and remembers its identity; the file counts
as missing for the next sandbox too (so that one binds it as well, and is
counted: removing a file mounted in another namespace takes the mount away
there).  :meth:`~MountPoints.release` removes the file when the last sandbox
using it has closed, if it is still the file made then and no other
server's sandbox mounts it.  The files of a
server killed with SIGKILL are removed by the next sandboxed start of a
server of the same user (:mod:`~exec_server.server.fs.mount_records`,
which :meth:`MountPoints.sweep` runs).  Left behind: a file whose folder a
sandboxed process renamed (a path bind holds a path, not a folder: a process that may
rename the folders above a protected path can move it away, as with
``codex-linux-sandbox``).  Build a command and acquire its mount points
under :attr:`MountPoints.lock`.
"""

import os
import threading
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from exec_server.server.fs.mount_records import MountRecords, mount_points_in_use, remove_if_made


class MountPoints:
    """The mount point files of running sandboxes, and how many use each; thread-safe (under :attr:`lock`)."""

    def __init__(self, records: Optional[MountRecords] = None) -> None:
        self.lock = threading.RLock()
        self._users: Dict[str, int] = {}
        self._made: Dict[str, Tuple[int, int, int]] = {}  # path -> identity of the file acquire made
        self._records = records if records is not None else MountRecords()

    def sweep(self) -> None:
        """Remove the mount point files of servers that are gone (killed before they could); see ``mount_records``."""
        with self.lock:
            self._records.sweep()

    def records_folders(self) -> List[str]:
        """The folders of the servers' records no sandbox may write (resolved); see ``MountRecords.guarded``."""
        with self.lock:
            return self._records.guarded()

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists for a new sandbox: one of our mount point files does not."""
        with self.lock:
            return path not in self._users and os.path.lexists(path)

    def first_missing(self, path: str, writable: Callable[[str], bool]) -> Optional[Tuple[str, bool]]:
        """What keeps ``path`` (absolute, free of ``..``) from being made, if the process could make it.

        Returns:
            ``(mount point, True)``: the first missing component, in a folder
            ``writable(folder)`` says the process may write; ``(file, False)``:
            a file above ``path`` in such a folder (bind it onto itself); None
            when ``path`` exists or nothing above it can be written.
        """
        with self.lock:
            if self.exists(path):
                return None
            missing, parent = path, os.path.dirname(path)
            while parent != missing and not self.exists(parent):
                missing, parent = parent, os.path.dirname(parent)
            if os.path.isdir(parent):
                return (missing, True) if writable(parent) else None
            # under a file (a folder above is not one): the file stays, else it could become a folder
            folder = os.path.dirname(parent)
            return (parent, False) if os.path.isfile(parent) and writable(folder) else None

    def acquire(self, paths: Iterable[str]) -> None:
        """Count one more sandbox using each of ``paths``, making the file of one no sandbox uses yet.

        A file that cannot be made (its folder is gone) is left to
        bubblewrap, whose failure the start then reports; one made by
        someone else meanwhile is bound but never removed.
        """
        with self.lock:
            made = len(self._made)
            for path in paths:
                if path not in self._users:
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                                     0o444)
                        try:
                            os.fchmod(fd, 0o444)  # whatever the umask: a sweep of the records checks it
                            info = os.fstat(fd)
                        finally:
                            os.close(fd)
                        self._made[path] = _identity(info)
                    except OSError:
                        pass
                self._users[path] = self._users.get(path, 0) + 1
            if len(self._made) != made:
                self._records.save(self._made)

    def release(self, paths: Iterable[str]) -> None:
        """One sandbox using ``paths`` has closed: remove each file no other uses, if it is still the one made.

        A file another server's live sandbox binds (it found the file there
        and bound it as an existing path) is a mount point in that sandbox's
        mount namespace: removing it would take the mount away there, and
        that sandbox could then make the protected path.  It stays, with its
        record, for the next acquire and release of it or for a sweep once
        this server is gone.  Which files are mounted is read from ``/proc``
        (~5 us a process here) outside the lock, once per release that has
        a file to remove; meanwhile the file stays counted (by no sandbox), so
        that one built then binds it as ours and counted, not as an existing
        path this release would remove under it.
        """
        with self.lock:
            candidates = []
            for path in paths:
                left = self._users.get(path, 0) - 1
                if left > 0:
                    self._users[path] = left
                elif path in self._made:  # counted at 0 until removed: a sandbox built meanwhile binds it counted
                    self._users[path] = 0
                    candidates.append(path)
                else:
                    self._users.pop(path, None)
        if not candidates:
            return
        mounted = mount_points_in_use()
        with self.lock:
            before = len(self._made)
            for path in candidates:
                if self._users.get(path, 0) > 0:  # a sandbox took it again meanwhile: its release decides
                    continue
                self._users.pop(path, None)
                made = self._made.get(path)
                if made is None:  # another release of it removed it meanwhile
                    continue
                # None: mounted elsewhere, kept; else removed, or gone already, or no longer the file made
                if remove_if_made(path, made, mounted.__contains__) is not None:
                    del self._made[path]
            if len(self._made) != before:
                self._records.save(self._made)


def _identity(info: os.stat_result) -> Tuple[int, int, int]:
    """A file's identity: device, inode, and the inode's change time (an inode number is soon reused)."""
    return info.st_dev, info.st_ino, info.st_ctime_ns


#: The server's mount point files (one per process: bubblewrap runs as its children).
MOUNT_POINTS = MountPoints()
