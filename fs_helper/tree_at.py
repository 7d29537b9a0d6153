"""Trees through directory descriptors: remove one, copy one, copy a file into one, following no link.

Each directory is opened with ``O_NOFOLLOW`` relative to its parent's
descriptor (:mod:`fs_helper.safe_path`), so a directory swapped for a
symlink meanwhile fails (ELOOP) instead of leading elsewhere.  Used by the
confined helper (:mod:`fs_helper.confined`) and, where the platform has the
calls, by the unsandboxed operations (:mod:`fs_helper.operations`,
:mod:`fs_helper.copying`); no recursion, so no depth limit but the
descriptors (one per level).
"""

import errno
import os
import stat
from typing import Optional

from .opening import SpecialFile, copy_blocks, open_file, refuse_same_file
from .safe_path import LIST_FLAGS, O_NOFOLLOW, lstat_at, write_whole_at


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove the directory ``name`` in ``dir_fd`` and everything below it, following no link.

    Every directory is opened with ``O_NOFOLLOW`` relative to its parent's
    descriptor, so a directory swapped for a symlink fails (ELOOP) instead of
    leading elsewhere; symlinks are unlinked, never followed.  Depth first,
    one open descriptor per level (a directory's subdirectories one after
    another: all at once, 400 of them ran out of descriptors), no recursion.
    """
    stack = [(dir_fd, name, os.open(name, LIST_FLAGS, dir_fd=dir_fd), None)]  # + its children still to go
    try:
        while stack:
            parent_fd, entry_name, fd, children = stack[-1]
            if children is None:
                with os.scandir(fd) as listing:
                    children = iter([(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing])
                stack[-1] = (parent_fd, entry_name, fd, children)
            for child, is_dir in children:
                if is_dir:  # down into it; this level goes on when it is gone
                    stack.append((fd, child, os.open(child, LIST_FLAGS, dir_fd=fd), None))
                    break
                os.unlink(child, dir_fd=fd)
            else:
                stack.pop()
                os.close(fd)
                os.rmdir(entry_name, dir_fd=parent_fd)
    finally:
        for _parent, _name, fd, _children in stack:
            os.close(fd)


def copy_directory(source: str, destination: str, mode: int, flags: int = LIST_FLAGS,
                   source_dir_fd: Optional[int] = None, destination_dir_fd: Optional[int] = None) -> None:
    """Directory ``source`` into ``destination``, made with ``mode`` (and 0o700) where missing, else merged
    into: both opened with ``flags`` (relative to their ``*_dir_fd``), then :func:`copy_tree_at`."""
    try:
        os.mkdir(destination, stat.S_IMODE(mode) | 0o700, dir_fd=destination_dir_fd)
    except FileExistsError:
        pass
    source_fd = os.open(source, flags, dir_fd=source_dir_fd)
    try:
        destination_fd = os.open(destination, flags, dir_fd=destination_dir_fd)
        try:
            copy_tree_at(source_fd, destination_fd)
        finally:
            os.close(destination_fd)
    finally:
        os.close(source_fd)


def copy_tree_at(source_fd: int, destination_fd: int) -> None:
    """Copy the directory ``source_fd`` into ``destination_fd`` (merging), following no link.

    Files are copied with their permission bits, directories created where
    missing, symlinks recreated as symlinks (their targets are not read).

    Raises:
        OSError: EISDIR/ENOTDIR when the destination has an entry of another type.
    """
    stack = [(os.dup(source_fd), os.dup(destination_fd), "")]
    try:
        while stack:
            src, dst, prefix = stack.pop()
            try:
                with os.scandir(src) as listing:
                    entries = list(listing)
                for entry in entries:
                    relative = prefix + entry.name
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        try:
                            os.mkdir(entry.name, stat.S_IMODE(info.st_mode) | 0o700, dir_fd=dst)
                        except FileExistsError:
                            pass
                        child_src = os.open(entry.name, LIST_FLAGS, dir_fd=src)
                        try:
                            child_dst = os.open(entry.name, LIST_FLAGS, dir_fd=dst)
                        except BaseException:
                            os.close(child_src)
                            raise
                        stack.append((child_src, child_dst, relative + "/"))
                    elif stat.S_ISLNK(info.st_mode):
                        target = os.readlink(entry.name, dir_fd=src)
                        existing = lstat_at(dst, entry.name)
                        if existing is not None and stat.S_ISDIR(existing.st_mode):
                            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
                        if existing is not None:
                            os.unlink(entry.name, dir_fd=dst)
                        os.symlink(target, entry.name, dir_fd=dst)
                    elif stat.S_ISREG(info.st_mode):
                        try:
                            copy_file_at(src, entry.name, dst, entry.name)
                        except SpecialFile:  # it became a FIFO, device or socket: skipped, as the others
                            pass
            finally:
                os.close(src)
                os.close(dst)
    finally:
        for src, dst, _prefix in stack:
            os.close(src)
            os.close(dst)


def copy_file_at(source_dir_fd: int, source_name: str, destination_dir_fd: int, destination_name: str,
                 path: str = "", destination_path: str = "") -> None:
    """Copy one regular file (opened with ``O_NOFOLLOW``) over ``destination_name``, atomically.

    Raises:
        SpecialFile: the source is a FIFO, device or socket (``path`` names it), or the destination is
            (``destination_path`` names it; else its name in its directory).
    """
    existing = lstat_at(destination_dir_fd, destination_name)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    fd = open_file(source_name, os.O_RDONLY | O_NOFOLLOW, dir_fd=source_dir_fd, path=path)  # never waits
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        refuse_same_file(info, existing)  # a link there is replaced, not written through: same inode only
        write_whole_at(destination_dir_fd, destination_name, lambda handle: copy_blocks(fd, handle),
                       stat.S_IMODE(info.st_mode), destination_path)
    finally:
        os.close(fd)
