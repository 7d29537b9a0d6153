"""Sandbox policy of the helper: which paths may be read or written.

A policy is a list of ``(path, access)`` entries (access ``read``, ``write``
or ``none``; the path ``:minimal`` stands for the platform's minimal read
set).  The most specific entry covering a path wins; between equally
specific entries ``none`` beats ``write`` beats ``read`` (PROTOCOL.md 9).
Anything not covered is denied.

Every path is resolved before the check (symlinks and ``..``), so a link
pointing out of a writable root is judged by its target.  For a write the
parent directory is resolved and the final name kept, so the check covers
what would be created or replaced.
"""

import errno
import os
from typing import Iterable, List, Sequence, Tuple

from .errors import errno_error
from .operations import Guard

#: What ``:minimal`` grants for reading on Linux: system binaries, libraries, devices.
MINIMAL_READ_ROOTS = ("/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/etc", "/dev", "/proc", "/sys")

_RANK = {"none": 3, "write": 2, "read": 1}


def _covers(root: str, path: str) -> bool:
    if root == "/":
        return True
    return path == root or path.startswith(root.rstrip("/") + "/")


class Policy(Guard):
    """A sandbox policy; ``check_*_resolved`` judge a path exactly as given (see :mod:`fs_helper.confined`)."""

    def __init__(self, entries: Iterable[Sequence[str]]):
        expanded: List[Tuple[str, str]] = []
        for path, access in entries:
            access = "none" if access == "deny" else access
            if path == ":minimal":
                expanded.extend((root, "read") for root in MINIMAL_READ_ROOTS)
            else:
                expanded.append((os.path.realpath(path), access))
        self.entries = expanded

    def access_of(self, resolved: str) -> str:
        best = None
        for root, access in self.entries:
            if _covers(root, resolved):
                key = (len(root), _RANK[access])
                if best is None or key > best[0]:
                    best = (key, access)
        return best[1] if best else "none"

    @staticmethod
    def resolve_for_write(path: str) -> str:
        parent, name = os.path.split(os.path.abspath(path))
        resolved_parent = os.path.realpath(parent)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        return os.path.join(resolved_parent, name)

    def check_read(self, path: str) -> None:
        if self.access_of(os.path.realpath(path)) == "none":
            raise errno_error(errno.EACCES)

    def check_write(self, path: str) -> None:
        target = self.resolve_for_write(path)
        access = self.access_of(target)
        if access == "write" and os.path.islink(target):
            # the final component is a link: judge (and later use) its target too
            access = self.access_of(os.path.realpath(target))
        if access == "read":
            raise errno_error(errno.EROFS)
        if access != "write":
            raise errno_error(errno.EACCES)

    def check_read_resolved(self, resolved: str) -> None:
        """Judge exactly ``resolved`` (already free of symlinks and ``..``) for reading.

        Raises:
            FsError: -32600 EACCES when a ``none`` entry covers it.
        """
        if self.access_of(resolved) == "none":
            raise errno_error(errno.EACCES)

    def check_write_resolved(self, resolved: str) -> None:
        """Judge exactly ``resolved`` for writing (the entry itself, a symlink is not followed).

        Raises:
            FsError: -32603 EROFS under a ``read`` entry, -32600 EACCES elsewhere.
        """
        access = self.access_of(resolved)
        if access == "read":
            raise errno_error(errno.EROFS)
        if access != "write":
            raise errno_error(errno.EACCES)

    def _stricter_below(self, resolved: str, allowed: Tuple[str, ...]) -> List[Tuple[str, str]]:
        return [(root, access) for root, access in self.entries
                if access not in allowed and root != resolved and _covers(resolved, root)]

    def check_tree_writable(self, resolved: str) -> None:
        """Refuse a recursive write (remove, copy into) when a stricter entry lies inside ``resolved``.

        Without such an entry everything below ``resolved`` has its access.
        """
        stricter = self._stricter_below(resolved, ("write",))
        if stricter:
            raise errno_error(errno.EACCES if any(access == "none" for _root, access in stricter) else errno.EROFS)

    def check_tree_readable(self, resolved: str) -> None:
        """Refuse a recursive read (copy from) when a ``none`` entry lies inside ``resolved``."""
        if self._stricter_below(resolved, ("write", "read")):
            raise errno_error(errno.EACCES)

    def writable_roots(self) -> List[str]:
        return [root for root, access in self.entries if access == "write"]
