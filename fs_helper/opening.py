"""Opening and reading a file to read, copy or replace without ever waiting.

Opening a FIFO waits for a writer, and reading one (or a terminal) waits for
data that may never come: a request would hold its thread for good.  Every
such open goes through :func:`open_file`: the path's type is checked first
(opening a device or a FIFO can act on it: a watchdog starts, a waiting
writer is released), then the open itself never waits and the type is
checked again on the descriptor (a rename in between cannot race it).  The
descriptor stays non-blocking, so it is read with :func:`read_to_end` or
:func:`copy_blocks`, which raise EAGAIN where a buffered read would return
None.
"""

import errno
import os
import stat
import struct
import sys
from typing import Any, Optional

from .errors import FsError, INVALID_REQUEST


class SpecialFile(FsError):
    """-32600: the file is one of :data:`BLOCKING_KINDS` (raised by :func:`open_file`)."""


#: File types refused (an open or a read may wait for good, or read a whole disk), by ``S_IFMT``.
BLOCKING_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                  stat.S_IFSOCK: "a socket"}
#: Added to each open of a file to read, copy or replace: the open never waits (a FIFO's for a writer).
OPEN_FLAGS = sum(getattr(os, name, 0) for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"))
#: Bytes asked of one ``read`` while copying.
COPY_BLOCK_BYTES = 1 << 20


def open_file(name: str, flags: int, mode: int = 0o666, dir_fd: Optional[int] = None, path: str = "") -> int:
    """``os.open(name, flags | OPEN_FLAGS, mode, dir_fd=dir_fd)``; a descriptor of anything but
    :data:`BLOCKING_KINDS` (a regular file, a directory), non-blocking.

    Args:
        path: the path an error names (default ``name``: give it when ``name`` is relative to ``dir_fd``).
    Raises:
        OSError: from the open.
        SpecialFile: -32600 ``path `<path>` is a FIFO, not a regular file`` (or a device, a socket).
    """
    try:
        follow = not flags & getattr(os, "O_NOFOLLOW", 0)
        _refuse(os.stat(name, dir_fd=dir_fd, follow_symlinks=follow).st_mode, path or name)
    except OSError:
        pass  # missing, a link with O_NOFOLLOW...: the open reports it in its own words
    fd = os.open(name, flags | OPEN_FLAGS, mode, dir_fd=dir_fd)
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


def read_to_end(fd: int, limit: int, size_hint: int = 0) -> bytes:
    """The bytes of ``fd`` from its offset to its end, at most ``limit``; ``size_hint`` (the file's size,
    bytes) lets a regular file come in one read.

    Raises:
        OSError: BlockingIOError (EAGAIN) where the read would wait (``/proc/kmsg``), as the reference.
    """
    chunks, total, step = [], 0, max(size_hint + 1, 64 * 1024)
    while total < limit:
        block = os.read(fd, min(step, limit - total))
        if not block:
            break
        chunks.append(block)
        total += len(block)
    return b"".join(chunks)


def copy_blocks(fd: int, sink: Any) -> None:
    """Write the rest of ``fd`` to ``sink`` (a binary file), :data:`COPY_BLOCK_BYTES` at a time.

    A regular file read from its start that takes fewer disk blocks than
    its size keeps its holes where the platform finds them
    (``SEEK_DATA``/``SEEK_HOLE``, as ``cp --sparse=auto``): only its data is
    read and written, each run at its own offset in ``sink`` (which must be
    seekable and empty), and ``sink`` then ends at the size the file had
    when the copy began, so a hole takes no disk space in the copy either.
    A file that ends sooner (it shrank meanwhile; a ``/sys`` file says 4096
    and holds less) ends the copy where its bytes end; bytes appended
    meanwhile are not copied, as by ``cp``.

    Raises:
        OSError: as :func:`read_to_end`, and from the write.
    """
    info = os.fstat(fd)
    if not (_SEEK_DATA is not None and stat.S_ISREG(info.st_mode) and _looks_sparse(info)
            and os.lseek(fd, 0, os.SEEK_CUR) == 0):
        _copy_run(fd, sink, None)  # a pipe, a /proc file (size 0), a file with no hole: every byte
        return
    size, position = info.st_size, 0
    while position < size:
        try:
            data = os.lseek(fd, position, _SEEK_DATA)
            hole = min(os.lseek(fd, data, _SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from ``position`` on (or the file shrank)
                break
            if position:
                raise
            os.lseek(fd, 0, os.SEEK_SET)  # a file system without the two (EINVAL): every byte
            _copy_run(fd, sink, None)
            return
        if data >= hole:
            break
        os.lseek(fd, data, os.SEEK_SET)
        sink.seek(data)
        copied = _copy_run(fd, sink, hole - data)
        if copied < hole - data:  # its bytes end here
            sink.truncate(data + copied)
            return
        position = hole
    sink.truncate(min(size, os.lseek(fd, 0, os.SEEK_END)))  # a hole at the end; a file shrunk meanwhile


def refuse_same_file(source: os.stat_result, destination: Optional[os.stat_result]) -> None:
    """Refuse a copy of a file onto itself, by any name (a hard link, ``a`` to ``a``), as ``cp`` does: the
    write would truncate the source before reading it (the reference's copy empties it).

    Args:
        source: the source's ``fstat``; destination: the target's ``stat``, None where there is none.
    Raises:
        FsError: -32600 ``fs/copy source and destination are the same file``.
    """
    if destination is not None and os.path.samestat(source, destination):
        raise FsError(INVALID_REQUEST, "fs/copy source and destination are the same file")


#: ``os.SEEK_DATA`` and ``os.SEEK_HOLE`` where the platform has them (not Windows), else None.
_SEEK_DATA, _SEEK_HOLE = getattr(os, "SEEK_DATA", None), getattr(os, "SEEK_HOLE", None)


def _looks_sparse(info: os.stat_result) -> bool:
    """Whether the file takes fewer 512-byte blocks than its size needs: it may have holes (cp's test)."""
    blocks = getattr(info, "st_blocks", None)
    return blocks is not None and blocks * 512 < info.st_size


def _copy_run(fd: int, sink: Any, length: Optional[int]) -> int:
    """``length`` bytes of ``fd`` from its offset to ``sink`` (None: to the end; fewer where it ends first).

    Returns the bytes copied.
    """
    copied = 0
    while length is None or copied < length:
        block = os.read(fd, COPY_BLOCK_BYTES if length is None else min(COPY_BLOCK_BYTES, length - copied))
        if not block:
            break
        sink.write(block)
        copied += len(block)
    return copied


#: ``FS_IOC_GETFLAGS`` (``linux/fs.h``: ``_IOR('f', 1, long)``) and the inode flags that forbid a rename or
#: removal in a directory: append-only (``chattr +a``) and immutable (``chattr +i``).
_FS_IOC_GETFLAGS = 0x80086601 if struct.calcsize("l") == 8 else 0x80046601
_NO_RENAME_FLAGS = 0x20 | 0x10  # FS_APPEND_FL | FS_IMMUTABLE_FL


def refuse_unrenamable(directory: str, dir_fd: Optional[int] = None) -> None:
    """Raise EPERM if ``directory`` (relative to ``dir_fd``) is append-only or immutable (Linux inode flags).

    A temporary file made in an append-only directory could be neither
    renamed over its target nor removed: the caller writes in place instead
    (as Python's ``open(path, "w")`` does).  Elsewhere, or on a file system
    without these flags, nothing is refused.
    """
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    try:  # opened for reading: an O_PATH descriptor (a sandbox's walk) takes no ioctl
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return  # the caller's own open reports it
    try:  # the kernel reads and writes an int there, whatever the request's size says
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])[0]
    except OSError:  # ENOTTY, EOPNOTSUPP: no such flags here
        return
    finally:
        os.close(fd)
    if flags & _NO_RENAME_FLAGS:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
