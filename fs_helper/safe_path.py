"""Race-free path resolution for sandboxed file operations.

A policy judges a resolved path (no symlinks, no ``..``).  Between that check
and the operation, a directory on the path could be swapped for a symlink
that points out of the writable roots.  So nothing here uses a path after the
check: the checked path is opened component by component without following
any symlink -- with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where
the kernel has it (Linux 5.6+), else one ``openat(O_NOFOLLOW | O_DIRECTORY)``
per component -- and the operation acts on the final directory descriptor
(``unlinkat``, ``mkdirat``, ``renameat``, ``openat(O_NOFOLLOW)``).  A symlink
that appeared on the checked path makes the walk fail with ELOOP; it is never
followed.

Where the platform lacks descriptor-relative calls the operation is refused
with -32603 ``sandbox unavailable: ...`` (:func:`require`).
"""

import ctypes
import errno
import os
import sys
from typing import Any, Callable, List, Optional, Tuple

from .opening import open_file, refuse_unrenamable
from .replacing import TEMPORARY_NAME_CHARACTERS, plan, track

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: A directory opened only to be walked through or acted in (no read permission needed).
O_SEARCH = getattr(os, "O_PATH", os.O_RDONLY)
DIR_FLAGS = O_SEARCH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
LIST_FLAGS = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC

#: Longest path (bytes) a confined operation accepts, as the path-based calls would (PATH_MAX).
PATH_MAX = 4096
_RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x04, 0x08
_SYS_OPENAT2 = 437  # the same number on every Linux architecture (asm-generic and x86)
_openat2_state: List[Any] = []  # [callable or None], filled on first use


def unsupported_reason() -> Optional[str]:
    """Why descriptor-relative resolution is impossible here, or None when it works."""
    if sys.platform.startswith("win"):
        return "this platform has no descriptor-relative file calls"
    if not (O_NOFOLLOW and O_DIRECTORY):
        return "this platform has no O_NOFOLLOW / O_DIRECTORY"
    needed = (os.open, os.stat, os.mkdir, os.unlink, os.rmdir, os.rename, os.readlink, os.symlink)
    if not all(call in os.supports_dir_fd for call in needed) or os.scandir not in os.supports_fd:
        return "this platform has no descriptor-relative file calls"
    return None


def require() -> None:
    """Refuse the operation when it cannot be confined.

    Raises:
        SandboxUnavailable: carrying ``sandbox unavailable: ...``; the caller turns it
            into -32603 and the operation does not run.
    """
    reason = unsupported_reason()
    if reason is not None:
        raise SandboxUnavailable("sandbox unavailable: " + reason)


class SandboxUnavailable(Exception):
    """The host cannot confine a sandboxed operation (PROTOCOL.md 9)."""


def _load_openat2() -> Optional[Callable[[int, str, int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    def openat2(dir_fd: int, relative: str, flags: int) -> int:
        how = OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
        fd = syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(relative)),
                     ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))
        return fd

    return openat2


def _openat2() -> Optional[Callable[[int, str, int], int]]:
    if not _openat2_state:
        _openat2_state.append(_load_openat2())
    return _openat2_state[0]


def open_beneath(dir_fd: int, relative: str, flags: int = DIR_FLAGS) -> int:
    """Open ``relative`` beneath ``dir_fd`` without following any symlink on the way.

    ``relative`` must not contain ``..``.  Returns a new descriptor.

    Raises:
        OSError: ELOOP (or ENOTDIR) when a component is a symlink, ENOENT...
    """
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    if not parts:
        return os.open(".", flags, dir_fd=dir_fd)
    openat2 = _openat2()
    if openat2 is not None:
        try:
            return openat2(dir_fd, "/".join(parts), flags)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL):
                raise
            _openat2_state[0] = None  # not usable here (old kernel, seccomp): walk instead
    current = os.open(".", DIR_FLAGS, dir_fd=dir_fd)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            following = os.open(part, flags if last else DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = following
        return current
    except BaseException:
        os.close(current)
        raise


def open_path(path: str, flags: int = DIR_FLAGS) -> int:
    """Open the absolute, resolved ``path`` walking from ``/`` without following symlinks."""
    if not os.path.isabs(path):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    check_length(path)
    root = os.open("/", DIR_FLAGS)
    try:
        return open_beneath(root, path, flags)
    finally:
        os.close(root)


def check_length(path: str) -> None:
    """ENAMETOOLONG for a path the path-based calls would refuse (the walk itself has no limit)."""
    if len(os.fsencode(path)) >= PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))


class Place:
    """The entry ``name`` in a directory held open as ``dir_fd`` (a context manager).

    ``path`` is the checked absolute path the entry stands for; it is only
    used for messages.  The root directory is ``Place(fd of "/", ".")``.
    """

    def __init__(self, path: str):
        check_length(path)
        parent, name = os.path.split(path)
        if not name:  # "/"
            parent, name = "/", "."
        self.path = path
        self.name = name
        self.dir_fd = open_path(parent)

    def __enter__(self) -> "Place":
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.dir_fd)

    def lstat(self) -> Optional[os.stat_result]:
        """The entry itself (a symlink is not followed), or None when it is missing."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None


def split_resolved(path: str) -> str:
    """``path`` with its directory resolved (symlinks, ``..``) and its last name kept."""
    parent, name = os.path.split(os.path.abspath(path))
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(parent), name)


def create_temporary(dir_fd: int, name: str) -> Tuple[int, str]:
    """Create a new private file next to ``name`` in ``dir_fd``; returns (fd, its name).

    Counted among the files the ``exec-server`` command removes as it exits
    (:func:`fs_helper.replacing.discard_unfinished`) until :func:`forget_temporary`.
    """
    refuse_unrenamable(".", dir_fd)  # chattr +a: such a file could be neither renamed nor removed
    for _attempt in range(100):
        temporary = ".%s.%s.tmp" % (name[:TEMPORARY_NAME_CHARACTERS], os.urandom(6).hex())
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
        except FileExistsError:
            continue
        _track_temporary(dir_fd, temporary, True)
        return fd, temporary
    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))


def _track_temporary(dir_fd: int, temporary: str, writing: bool) -> None:
    try:  # its path, where /proc tells the directory's (Linux)
        track(os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), temporary), writing)
    except OSError:
        pass


def forget_temporary(dir_fd: int, temporary: str) -> None:
    """``temporary`` (made by :func:`create_temporary`) was renamed into place or removed."""
    _track_temporary(dir_fd, temporary, False)


def write_whole_at(dir_fd: int, name: str, chunks: Callable[[Any], None], mode: int, path: str = "") -> None:
    """:func:`fs_helper.replacing.write_whole` relative to ``dir_fd``, for a sandbox's writes and a tree
    copy's files: a symlink or a file with other hard links at ``name`` is always replaced
    (:func:`~fs_helper.replacing.plan` with ``split_links``).  ``mode`` is a new file's permission bits;
    ``path`` is what an error names.

    Raises:
        OSError: from the writes (the rename's when no temporary file can be made where it is required).
        SpecialFile: -32600, a FIFO, device or socket at ``name``.
    """
    info = lstat_at(dir_fd, name)
    how = plan(info, os.access(name, os.W_OK, dir_fd=dir_fd, follow_symlinks=False), split_links=True)
    if how.rename:
        try:
            atomic_write_at(dir_fd, name, chunks, mode, how.owner)
            return
        except _NoTemporary as no_temporary:
            if how.required:
                raise no_temporary.__cause__ from None  # type: ignore[misc]
    fd = open_file(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW, mode, dir_fd=dir_fd, path=path)
    with os.fdopen(fd, "wb") as handle:
        chunks(handle)


class _NoTemporary(Exception):
    """No temporary file could be made beside the target."""


def atomic_write_at(dir_fd: int, name: str, chunks: Callable[[Any], None], mode: int,
                    owner: Optional[Tuple[int, int]] = None) -> None:
    """Write ``name`` in ``dir_fd`` through a temporary file there, then rename it into place.

    ``chunks(file)`` writes the content.  On any error the temporary file is
    removed and ``name`` is untouched; a symlink at ``name`` is replaced, never
    written through.  ``owner`` is the ``(uid, gid)`` the new file is given.

    Raises:
        _NoTemporary: no temporary file could be made (nothing was written).
        OSError: from the writes and the rename.
    """
    try:
        fd, temporary = create_temporary(dir_fd, name)
    except OSError as exc:
        raise _NoTemporary() from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            chunks(handle)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(handle.fileno(), *owner)  # before the chmod: a chown clears set-id bits
            os.fchmod(handle.fileno(), mode)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        forget_temporary(dir_fd, temporary)


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
