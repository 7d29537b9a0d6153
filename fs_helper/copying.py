"""``fs/copy``: one file, or a directory's tree, with the reference's rules (PROTOCOL.md 8.3).

A file's content and permission bits go over the destination as
:func:`fs_helper.replacing.write_whole` writes them (a symlink there is
written through); a tree is copied with its links as links, its FIFOs,
devices and sockets skipped, never into itself.  The sandboxed variant is
:func:`fs_helper.confined.copy`.
"""

import errno
import os
import re
import shutil
import stat
from typing import Optional

from .errors import FsError, INTERNAL_ERROR, INVALID_REQUEST, errno_error, os_error
from .opening import SpecialFile, copy_blocks, open_file, refuse_same_file
from .replacing import replace_target, write_whole


def copy_paths(source: str, destination: str, recursive: bool, split_links: bool = False) -> None:
    """Copy ``source`` (a file, or a directory with ``recursive``) to ``destination``; a symlink is copied as
    a link, whatever it points to, and ``recursive`` (as by the reference 0.169.0).

    Args:
        split_links: a sandbox's copy (:func:`~fs_helper.replacing.keeps_identity`).
    Raises:
        FsError: the protocol's error (-32600 for a directory without ``recursive``
            or a copy into itself; OS errors by kind).
    """
    try:
        if stat.S_ISLNK(os.lstat(source).st_mode):  # the link itself, as the reference copies it (anything at
            os.symlink(os.readlink(source), destination,  # the destination: File exists, os error 17)
                       target_is_directory=os.path.isdir(source))
            return
        info = os.stat(source)
        if stat.S_ISDIR(info.st_mode):
            if not recursive:
                raise FsError(INVALID_REQUEST, "fs/copy requires recursive: true when sourcePath is a directory")
            refuse_copy_into_itself(source, destination)
            _copy_tree(source, destination, info.st_mode)
        else:
            if os.path.isdir(destination):
                raise errno_error(errno.EISDIR)
            _copy_file(source, destination, split_links)
    except _CopyFailed as exc:  # what is copied so far stays, as with the reference's copy
        raise os_error(exc.error) from None
    except shutil.Error as exc:
        raise _copy_tree_error(exc) from None
    except OSError as exc:
        raise os_error(exc) from None


class _CopyFailed(Exception):
    """A file of a recursive copy failed: ends ``shutil.copytree`` at once (it collects OSErrors and goes on)."""

    def __init__(self, error: OSError):
        super().__init__(error)
        self.error = error


def _copy_file(source: str, destination: str, split_links: bool = False) -> None:
    """One file's content and permission bits over ``destination`` (a symlink there is written through;
    ``split_links``: a sandbox's copy, see :func:`~fs_helper.replacing.keeps_identity`)."""
    fd = open_file(source, os.O_RDONLY)
    try:
        target, _mode = replace_target(destination)
        info = os.fstat(fd)
        refuse_same_file(info, _stat_or_none(target))
        write_whole(target, lambda handle: copy_blocks(fd, handle), stat.S_IMODE(info.st_mode),
                    split_links=split_links)
    finally:
        os.close(fd)


def _copy_tree_file(source: str, destination: str) -> None:
    try:
        _copy_file(source, destination)
    except SpecialFile:  # a FIFO, device or socket in the tree is skipped, as by the reference
        pass
    except OSError as exc:
        raise _CopyFailed(exc) from None


def _copy_tree(source: str, destination: str, mode: int) -> None:
    """Directory ``source`` into ``destination``, merged into it if it exists: links copied as links (two
    links to "." followed filled the disk), FIFOs, devices and sockets skipped, as by the reference.

    Through descriptors where the platform has them, as the sandboxed copy
    (:func:`fs_helper.tree_at.copy_tree_at`); elsewhere (Windows) with
    ``shutil.copytree``.  The first failure ends the copy; what is copied stays.
    """
    from . import safe_path, tree_at  # (ctypes: loaded by the first copy of a tree, not with the operations)

    if safe_path.unsupported_reason() is not None:
        shutil.copytree(source, destination, symlinks=True, dirs_exist_ok=True, copy_function=_copy_tree_file)
        return
    # the two roots as given: a link to a directory is followed there, as shutil.copytree and the reference do
    tree_at.copy_directory(source, destination, mode, os.O_RDONLY | safe_path.O_DIRECTORY | safe_path.O_CLOEXEC)


def _copy_tree_error(exc: shutil.Error) -> FsError:
    """The first failure ``shutil.copytree`` collected (a directory it could not read or create), as an OS error.

    Its entries are ``(source, destination, str(OSError))``; the errno is read
    back from ``[Errno N]``, the text CPython gives every OSError with one.
    """
    entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    why = str(entries[0][2]) if entries and len(entries[0]) == 3 else str(exc)
    number = re.match(r"\[Errno (\d+)\]", why)
    return errno_error(int(number.group(1))) if number else FsError(INTERNAL_ERROR, why)


#: The reference's answer (-32600) to a recursive copy into the source's own tree.
COPY_INTO_ITSELF = "fs/copy cannot copy a directory to itself or one of its descendants"


def _stat_or_none(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None  # missing (or unreadable): the write says what is wrong


def refuse_copy_into_itself(source: str, destination: str) -> None:
    """Raise :data:`COPY_INTO_ITSELF` if ``destination`` is directory ``source`` or lies under it.

    Both are resolved (symlinks of the parts that exist), so a link cannot
    hide the loop, and ``destination`` and each directory above it are
    compared with ``source`` by identity (device and inode, as ``cp``
    does), so neither can a bind mount of the source inside it; a copy into
    itself would otherwise copy its own copies until the path is too long
    or the disk full.
    """
    source, destination = os.path.realpath(source), os.path.realpath(destination)
    if os.path.commonpath([source, destination]) == source:
        raise FsError(INVALID_REQUEST, COPY_INTO_ITSELF)
    origin = _stat_or_none(source)
    if origin is None or not origin.st_ino:
        return  # the copy itself says what is wrong; no inode numbers (some Windows file systems): by path only
    path = destination
    while True:
        info = _stat_or_none(path)
        if info is not None and (info.st_dev, info.st_ino) == (origin.st_dev, origin.st_ino):
            raise FsError(INVALID_REQUEST, COPY_INTO_ITSELF)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
