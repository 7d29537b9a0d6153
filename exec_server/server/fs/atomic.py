"""The writes of an atomic ``replace`` handle (our ``atomicReplace`` extension).

A temporary file beside the target takes the writes; ``fs/close`` gives it
the target's owner, group and permission bits, flushes it to disk and
renames it over the target, so readers see the old file or the new one,
never a part.  An atomic replace must leave the file what it was but for
its content, so where a rename cannot, the handle writes in place instead
(as the reference's ``replace``, but cut at the close, not emptied at the
open: ``handles.py``) and the ``fs/open`` result says
``"atomic": false``:

- the target is not a regular file, has more than one name (a rename would
  split the hard link), is not writable by this server, or belongs to an
  owner or group this server cannot give a file (it is not root);
- no temporary file can be made beside it (a directory the server cannot
  write, ``/proc``).

At ``fs/close``, if the target cannot be replaced by a rename after all (a
bind-mounted file: EBUSY; a file system without ``chown``/``chmod``), the
new content is copied into it in place.  ACLs and extended attributes of
the old file are not carried over.
"""

import errno
import os
import shutil
import stat
from typing import Optional, Tuple

from fs_helper.opening import open_file
from fs_helper.replacing import discard, keeps_identity, replace_target, temporary_beside


class Replacement:
    """Where an atomic handle's temporary file goes at commit, and what it must be given."""

    __slots__ = ("temporary", "target", "mode", "uid", "gid")

    def __init__(self, temporary: str, target: str, mode: int, uid: Optional[int], gid: Optional[int]):
        self.temporary, self.target, self.mode, self.uid, self.gid = temporary, target, mode, uid, gid


def prepare(path: str) -> Optional[Tuple[int, Replacement]]:
    """``(fd, replacement)`` for an atomic replace of ``path``; None where it must be written in place."""
    try:
        target, mode = replace_target(path)
        info: Optional[os.stat_result] = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError:
        return None  # a symlink loop, a directory...: the plain open reports it
    if info is None and os.path.lexists(target):
        return None  # a dangling link
    if info is not None and not keeps_identity(info, os.access(target, os.W_OK)):
        return None
    try:
        fd, temporary = temporary_beside(target)
    except OSError:
        return None
    if info is None:
        return fd, Replacement(temporary, target, mode, None, None)
    return fd, Replacement(temporary, target, mode, info.st_uid, info.st_gid)


def commit(fd: int, replacement: Replacement) -> None:
    """Put the written file in place (see the module docstring); ``fd`` is closed, the temporary file gone.

    Raises:
        OSError: the file could not be flushed, renamed or copied in place.
    """
    temporary, target = replacement.temporary, replacement.target
    mode, uid, gid = replacement.mode, replacement.uid, replacement.gid
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            info: Optional[os.stat_result] = os.lstat(target)
        except OSError:
            info = None  # gone since the open (or never there): what the open saw
        if info is not None and not stat.S_ISREG(info.st_mode):
            info = None  # a link (never followed now), a directory...: the name is replaced, or the rename fails
        if info is not None:  # what the target is now: a chmod, chown or link made since the open is kept
            mode, uid, gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
        if info is None or keeps_identity(info, os.access(target, os.W_OK)):
            try:
                if uid is not None and hasattr(os, "chown"):
                    os.chown(temporary, uid, gid)  # before chmod: it clears set-id bits
                os.chmod(temporary, mode)
                os.replace(temporary, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES, errno.ENOTSUP,
                                     errno.EINVAL):
                    raise
        _copy_in_place(temporary, target, mode)
    finally:
        discard(temporary)


def _copy_in_place(temporary: str, target: str, mode: int) -> None:
    with open(temporary, "rb") as source:
        fd = open_file(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
            sink.flush()
            os.fsync(sink.fileno())
