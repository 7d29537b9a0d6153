"""Writes that replace a file whole: a temporary file beside the target, renamed over it when complete.

Used by ``fs/writeFile`` and ``fs/copy`` (:mod:`fs_helper.operations`), the
server's atomic ``fs/open`` handles and ``exec-server cp`` downloads.  A
failure removes the temporary file and leaves the target as it was.  The
sandboxed variant, relative to a directory descriptor, is
:func:`fs_helper.safe_path.write_whole_at`.

A rename must leave the file what it was but for its content
(:func:`keeps_identity`); where it cannot, :func:`write_whole` writes in
place, as the Codex reference always does: a FIFO, device or socket is
refused there (:func:`~fs_helper.opening.open_file`) instead of being
replaced by a regular file, a file with other hard links changes under
every name, a file of another owner keeps its owner.
"""

import errno
import os
import stat
from typing import Any, Callable, NamedTuple, Optional, Set, Tuple

from .opening import open_file, refuse_unrenamable

#: Characters of the target's name kept in its temporary file's name (a 255-byte name must still fit).
TEMPORARY_NAME_CHARACTERS = 40

#: Temporary files made by :func:`temporary_beside` and not yet renamed or discarded (paths).
_unfinished: Set[str] = set()
_TEMPORARY_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                    | getattr(os, "O_BINARY", 0))


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
    """A new empty file (mode 0600) in ``target``'s directory, for a rename over it: ``(fd, path)``.

    Its name is ``.<name>.<random>.tmp``, the target's name cut to
    :data:`TEMPORARY_NAME_CHARACTERS` (a name of 255 bytes is valid, and so
    must its temporary's be).  OSError (EPERM in an append-only or
    immutable directory, where such a file could be neither renamed nor
    removed: :func:`~fs_helper.opening.refuse_unrenamable`).
    """
    directory, name = os.path.split(target)
    refuse_unrenamable(directory or ".")  # chattr +a: such a file could be neither renamed nor removed
    for _attempt in range(100):
        temporary = os.path.abspath(os.path.join(directory or ".", ".%s.%s.tmp" % (
            name[:TEMPORARY_NAME_CHARACTERS], os.urandom(6).hex())))
        _unfinished.add(temporary)  # before it exists: an interrupt just after its making still finds it
        try:
            fd = os.open(temporary, _TEMPORARY_FLAGS, 0o600)
        except FileExistsError:
            _unfinished.discard(temporary)
            continue
        except BaseException:
            discard(temporary)  # made or not: an interrupt can come just after the making
            raise
        return fd, temporary
    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))


def track(temporary: str, writing: bool) -> None:
    """Count ``temporary`` (a path) among the files :func:`discard_unfinished` removes, or no longer."""
    if writing:
        _unfinished.add(temporary)
    else:
        _unfinished.discard(temporary)


def discard_unfinished() -> int:
    """Remove every temporary file still being written (the process is ending); returns how many.

    Called by the ``exec-server`` command as it exits (a copy or an upload
    cut short by SIGTERM left a hidden ``.NAME.XXXXXXXX.tmp``, however big,
    beside its target).  A write still running then fails at its rename.
    """
    leftovers = list(_unfinished)
    for temporary in leftovers:
        discard(temporary)
    return len(leftovers)


def _can_give_owner(info: os.stat_result) -> bool:
    """Whether this process can give a new file the owner and group of ``info`` (root gives any; Windows
    has no owners to keep)."""
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        return True
    return info.st_uid == os.geteuid() and (info.st_gid == os.getegid() or info.st_gid in os.getgroups())


def keeps_identity(info: os.stat_result, writable: bool) -> bool:
    """Whether a new file renamed over an existing one (``info``) can be what it was: a regular file with
    one name, that this process may write (``writable``), whose owner and group it can give."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and writable and _can_give_owner(info)


class Plan(NamedTuple):
    """How a whole-file write goes (:func:`plan`)."""

    rename: bool  # a new file renamed over the name; else written in place
    required: bool  # renamed or not written at all (no temporary file: the error is raised)
    owner: Optional[Tuple[int, int]]  # (uid, gid) the new file is given, if any


def plan(info: Optional[os.stat_result], writable: bool, split_links: bool = False) -> Plan:
    """How to write ``info``'s file whole (None: nothing there yet).

    Renamed over where :func:`keeps_identity` holds, else in place, as the
    reference writes every file.  With ``split_links`` (a sandbox's write) a
    symlink (seen with ``lstat``) or a writable file with other hard links is
    always renamed over, its owner kept where it can be: written through,
    either could change a file outside what the sandbox may write.
    """
    if info is None:
        return Plan(True, False, None)
    if split_links and (stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and writable
                                                       and info.st_nlink > 1)):
        keep = stat.S_ISREG(info.st_mode) and _can_give_owner(info)
        return Plan(True, True, (info.st_uid, info.st_gid) if keep else None)
    if keeps_identity(info, writable):
        return Plan(True, False, (info.st_uid, info.st_gid))
    return Plan(False, False, None)


def write_whole(target: str, chunks: Callable[[Any], None], mode: Optional[int] = None,
                special_files: bool = False, split_links: bool = False, truncate_last: bool = False) -> None:
    """Give ``target`` the content ``chunks(file)`` writes: renamed into place, or in place (:func:`plan`).

    A temporary file beside it is renamed over it, given the old file's
    owner and group, where the plan says so and a temporary file can be
    made (else in place, unless the rename is required); otherwise written
    in place, truncated first.  ``mode`` is a new file's permission bits
    (default ``0o666`` less the umask).  ``target`` is used as given (a
    symlink is written through: resolve it first with :func:`replace_target`).

    Args:
        special_files: write a FIFO, device or socket in place, waiting as an
            ``open`` does (``exec-server cp`` to ``/dev/null``); else refuse it.
        split_links: a sandbox's write (:func:`plan`).
        truncate_last: written in place, a regular file is written over and cut at the end of what was
            written last (also when ``chunks`` raises), not emptied first: ``chunks`` may read the same file
            (``exec-server cp`` of a file onto itself through a local server), which then reads what it
            writes back, unchanged.
    Raises:
        OSError: from the writes; EACCES for a file this process may not write.
        SpecialFile: -32600, a FIFO, device or socket (without ``special_files``).
    """
    try:
        info: Optional[os.stat_result] = os.stat(target)
    except FileNotFoundError:
        info = None
    how = plan(info, os.access(target, os.W_OK), split_links)
    if how.rename:
        try:
            fd, temporary = temporary_beside(target)
        except OSError:
            if how.required:
                raise
            fd = -1  # no temporary file (a directory it may not write): in place
        if fd >= 0:
            _write_and_rename(fd, temporary, target, chunks, mode, how.owner)
            return
    flags, new_mode = os.O_WRONLY | os.O_CREAT | (0 if truncate_last else os.O_TRUNC), 0o666 if mode is None else mode
    fd = os.open(target, flags, new_mode) if special_files else open_file(target, flags, new_mode)
    with os.fdopen(fd, "wb") as handle:
        try:
            chunks(handle)
        finally:  # at the end of what was written, complete or not (a FIFO or device is not cut)
            if truncate_last and stat.S_ISREG(os.fstat(fd).st_mode):
                handle.truncate()


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


def _write_and_rename(fd: int, temporary: str, target: str, chunks: Callable[[Any], None], mode: Optional[int],
                      owner: Optional[Tuple[int, int]]) -> None:
    try:
        with os.fdopen(fd, "wb") as handle:
            chunks(handle)
            if owner is not None and hasattr(os, "fchown") and owner != (os.geteuid(), os.getegid()):
                os.fchown(handle.fileno(), *owner)  # before the chmod: a chown clears set-id bits
        os.chmod(temporary, mode if mode is not None else 0o666 & ~umask())
        os.replace(temporary, target)
        _unfinished.discard(temporary)
    except BaseException:
        discard(temporary)
        raise


def discard(temporary: str) -> None:
    """Remove a temporary file that will not be put in place (no error if it is gone, or was renamed)."""
    _unfinished.discard(temporary)
    try:
        os.unlink(temporary)
    except OSError:
        pass
