"""The file operations of PROTOCOL.md 8.3 under a sandbox policy, race-free.

Each operation resolves its path once, asks the policy about exactly that
resolved path, then acts through descriptors opened without following
symlinks (:mod:`fs_helper.safe_path`): a directory swapped for a symlink
after the check makes the operation fail (ELOOP), it never reaches outside
the checked path.  Recursive copy and remove follow no link, and are refused
(EACCES/EROFS) when the policy has a stricter entry inside the tree.

``fs/walk`` and ``fs/canonicalize`` only read names and are checked by path
(see README "Sandboxed file operations").
"""

import errno
import os
import stat
from typing import Any, Callable, Dict

from . import b64, safe_path, tree_at
from .copying import refuse_copy_into_itself
from .errors import FsError, INTERNAL_ERROR, INVALID_REQUEST, errno_error, os_error
from .opening import open_file, read_to_end
from .operations import (OPERATIONS, directory_entries, native_path, read_limit_error, READ_FILE_LIMIT,
                         metadata_result, refuse_root)
from .replacing import umask
from .policy import Policy


def _confined(run: Callable[[Dict[str, Any], Policy], Dict[str, Any]]) -> Callable[..., Dict[str, Any]]:
    """Refuse when descriptor-relative calls are missing; map OS errors to protocol errors."""

    def operation(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
        try:
            safe_path.require()
        except safe_path.SandboxUnavailable as exc:
            raise FsError(INTERNAL_ERROR, str(exc)) from None
        try:
            return run(params, policy)
        except OSError as exc:
            raise os_error(exc) from None

    operation.__name__ = run.__name__
    operation.__doc__ = run.__doc__
    return operation


@_confined
def read_file(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/readFile: the checked file is opened relative to its directory with ``O_NOFOLLOW``."""
    path = native_path(params)
    follow = params.get("followSymlinks", True) is not False
    target = os.path.realpath(path) if follow else safe_path.split_resolved(path)
    policy.check_read_resolved(target)
    with safe_path.Place(target) as place:
        fd = open_file(place.name, os.O_RDONLY | safe_path.O_NOFOLLOW, dir_fd=place.dir_fd, path=path)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FsError(INVALID_REQUEST, "path `%s` is not a file" % path)
        if info.st_size > READ_FILE_LIMIT:
            raise read_limit_error(path)
        data = read_to_end(fd, READ_FILE_LIMIT + 1, info.st_size)
    finally:
        os.close(fd)
    if len(data) > READ_FILE_LIMIT:
        raise read_limit_error(path)
    return {"dataBase64": b64.encode(data)}


@_confined
def write_file(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/writeFile: a temporary file in the checked directory, renamed over the name."""
    path = native_path(params)
    try:
        data = b64.decode(params["dataBase64"])
    except ValueError as exc:
        raise FsError(INVALID_REQUEST, "fs/writeFile requires valid base64 dataBase64: %s" % exc) from None
    follow = params.get("followSymlinks", True) is not False
    target = safe_path.split_resolved(path)
    with safe_path.Place(target) as place:
        info = place.lstat()
    if info is not None and stat.S_ISLNK(info.st_mode):
        if not follow:
            raise errno_error(errno.ELOOP)
        target = os.path.realpath(target)  # write what the link names, checked as such
    policy.check_write_resolved(target)
    with safe_path.Place(target) as place:
        info = place.lstat()
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise errno_error(errno.ELOOP)  # changed since it was resolved
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise errno_error(errno.EISDIR)
        mode = stat.S_IMODE(info.st_mode) if info is not None else 0o666 & ~umask()
        safe_path.write_whole_at(place.dir_fd, place.name, lambda handle: handle.write(data), mode, target)
    return {}


@_confined
def create_directory(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/createDirectory: each missing component is created relative to its checked parent."""
    target = safe_path.split_resolved(native_path(params))
    if params.get("recursive", True) is False:
        policy.check_write_resolved(target)
        with safe_path.Place(target) as place:
            os.mkdir(place.name, dir_fd=place.dir_fd)
        return {}
    safe_path.check_length(target)
    parts = [part for part in target.split("/") if part]
    current = os.open("/", safe_path.DIR_FLAGS)
    try:
        walked = ""
        for index, part in enumerate(parts):
            walked += "/" + part
            try:
                following = os.open(part, safe_path.DIR_FLAGS, dir_fd=current)
            except FileNotFoundError:
                policy.check_write_resolved(walked)
                try:
                    os.mkdir(part, dir_fd=current)
                except FileExistsError:
                    pass
                following = os.open(part, safe_path.DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                last = index == len(parts) - 1
                if last and exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    info = os.stat(part, dir_fd=current)  # a link to a directory: nothing to create
                    if stat.S_ISDIR(info.st_mode):
                        break
                    raise errno_error(errno.EEXIST) from None
                raise
            os.close(current)
            current = following
    finally:
        os.close(current)
    return {}


@_confined
def get_metadata(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/getMetadata: ``lstat`` relative to the checked directory."""
    path = native_path(params)
    policy.check_read_resolved(os.path.realpath(path))
    with safe_path.Place(safe_path.split_resolved(path)) as place:
        link = place.lstat()
    if link is None:
        raise errno_error(errno.ENOENT)
    is_symlink = stat.S_ISLNK(link.st_mode)
    info = link
    if is_symlink:
        if params.get("followSymlinks", True) is False:
            raise FsError(INVALID_REQUEST, "path contains a symbolic link")
        resolved = os.path.realpath(path)
        policy.check_read_resolved(resolved)
        with safe_path.Place(resolved) as place:
            info = place.lstat()
        if info is None or stat.S_ISLNK(info.st_mode):
            raise errno_error(errno.ENOENT)
    return metadata_result(info, is_symlink)


@_confined
def read_directory(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/readDirectory: the checked directory is listed through its descriptor."""
    path = native_path(params)
    resolved = os.path.realpath(path)
    policy.check_read_resolved(resolved)
    fd = safe_path.open_path(resolved, safe_path.LIST_FLAGS)
    try:
        with os.scandir(fd) as listing:
            return directory_entries((entry.name for entry in listing), lambda name: os.stat(name, dir_fd=fd))
    finally:
        os.close(fd)


@_confined
def remove(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/remove: ``unlinkat``/``rmdir`` on the checked entry; a tree is removed without following links."""
    target = safe_path.split_resolved(native_path(params))
    policy.check_write_resolved(target)
    with safe_path.Place(target) as place:
        info = place.lstat()
        if info is None:
            if params.get("force", True) is not False:
                return {}
            raise errno_error(errno.ENOENT)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(place.name, dir_fd=place.dir_fd)
        elif params.get("recursive", True) is not False:
            refuse_root(target, info)
            policy.check_tree_writable(target)
            tree_at.remove_tree_at(place.dir_fd, place.name)
        else:
            os.rmdir(place.name, dir_fd=place.dir_fd)
    return {}


@_confined
def copy(params: Dict[str, Any], policy: Policy) -> Dict[str, Any]:
    """fs/copy: the source is read and the destination written through checked descriptors; a symlink
    source is copied as a link (as :func:`fs_helper.copying.copy_paths`)."""
    link = safe_path.split_resolved(native_path(params, "sourcePath"))
    destination = safe_path.split_resolved(native_path(params, "destinationPath"))
    if os.path.islink(link):
        policy.check_read_resolved(link)
        policy.check_write_resolved(destination)
        with safe_path.Place(link) as source_place, safe_path.Place(destination) as destination_place:
            target = os.readlink(source_place.name, dir_fd=source_place.dir_fd)
            os.symlink(target, destination_place.name, dir_fd=destination_place.dir_fd)
        return {}
    source = os.path.realpath(native_path(params, "sourcePath"))
    if os.path.islink(destination) and not os.path.isdir(source):
        destination = os.path.realpath(destination)  # a file goes where the link names, checked as such
    policy.check_read_resolved(source)
    policy.check_write_resolved(destination)
    with safe_path.Place(source) as source_place, safe_path.Place(destination) as destination_place:
        info = source_place.lstat()
        if info is None or stat.S_ISLNK(info.st_mode):
            raise errno_error(errno.ENOENT if info is None else errno.ELOOP)
        if not stat.S_ISDIR(info.st_mode):
            tree_at.copy_file_at(source_place.dir_fd, source_place.name, destination_place.dir_fd,
                                 destination_place.name, path=native_path(params, "sourcePath"),
                                 destination_path=native_path(params, "destinationPath"))
            return {}
        if not params["recursive"]:
            raise FsError(INVALID_REQUEST, "fs/copy requires recursive: true when sourcePath is a directory")
        refuse_copy_into_itself(source, native_path(params, "destinationPath"))
        policy.check_tree_readable(source)
        policy.check_tree_writable(destination)
        tree_at.copy_directory(source_place.name, destination_place.name, info.st_mode,
                               source_dir_fd=source_place.dir_fd, destination_dir_fd=destination_place.dir_fd)
    return {}


#: wire method -> confined operation; the rest only read names and are checked by path.
CONFINED_OPERATIONS: Dict[str, Callable[..., Dict[str, Any]]] = dict(OPERATIONS)
CONFINED_OPERATIONS.update({
    "fs/readFile": read_file,
    "fs/writeFile": write_file,
    "fs/createDirectory": create_directory,
    "fs/getMetadata": get_metadata,
    "fs/readDirectory": read_directory,
    "fs/remove": remove,
    "fs/copy": copy,
})
