"""Writes that replace a file whole: a temporary file beside the target, renamed over it when complete.

Used by ``fs/writeFile`` and ``fs/copy`` (:mod:`fs_helper.operations`), the
server's atomic ``fs/open`` handles and ``exec-server cp`` downloads.  A
failure removes the temporary file and leaves the target as it was.  The
sandboxed variant, relative to a directory descriptor, is
:func:`fs_helper.safe_path.atomic_write_at`.
"""

import errno
import os
import stat
import tempfile
from typing import Any, Callable, Optional, Tuple


def umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it; another thread may be creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def temporary_beside(target: str) -> Tuple[int, str]:
    """A new empty file (mode 0600) in ``target``'s directory, for a rename over it: ``(fd, path)``.  OSError."""
    directory, name = os.path.split(target)
    return tempfile.mkstemp(prefix=".%s." % name, suffix=".tmp", dir=directory or ".")


def replace_target(path: str, follow: bool = True,
                   check_write: Callable[[str], None] = lambda path: None) -> Tuple[str, int]:
    """Where a replace of ``path`` goes, and the mode the new file gets: ``(target, mode)``.

    A symlink at ``path`` is followed (with ``follow``; ELOOP without) and the
    directory resolved once, so ``check_write(target)`` and the rename use the
    same path.  The mode is the existing file's, else ``0o666`` less the umask.

    Raises:
        OSError: ELOOP (a symlink and not ``follow``), EISDIR; and what
            ``check_write`` raises.
    """
    target = path
    if os.path.islink(path):
        if not follow:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        target = os.path.realpath(path)
    target = os.path.join(os.path.realpath(os.path.dirname(target) or "."), os.path.basename(target))
    check_write(target)
    if os.path.isdir(target):
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    try:
        return target, stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return target, 0o666 & ~umask()


def atomic_write(target: str, chunks: Callable[[Any], None], mode: Optional[int] = None) -> None:
    """Write ``target`` through a temporary file in its directory, then rename.

    ``chunks(file)`` writes the content.  On any error the temporary file is
    removed and ``target`` is untouched.  Paths are used as given: the
    sandboxed variant is :func:`fs_helper.safe_path.atomic_write_at`.
    """
    fd, temporary = temporary_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            chunks(handle)
        os.chmod(temporary, mode if mode is not None else 0o666 & ~umask())
        os.replace(temporary, target)
    except BaseException:
        discard(temporary)
        raise


def discard(temporary: str) -> None:
    """Remove a temporary file that will not be put in place (no error if it is gone)."""
    try:
        os.unlink(temporary)
    except OSError:
        pass
