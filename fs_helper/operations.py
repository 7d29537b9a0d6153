"""The file system operations of PROTOCOL.md section 8.3, on wire params.

Each ``operation(params, guard)`` takes the method's wire params (paths as
file URIs) and returns its wire result, or raises :class:`FsError` with the
protocol's code and text.  ``guard`` (see :mod:`fs_helper.policy`) is asked
before anything is read or written; ``None`` allows everything.  Writes go to
a temporary file in the target's directory and are renamed into place
(:mod:`fs_helper.replacing`), so a failure never leaves a half-written file;
where a rename would change what the file is (a device, a hard link, an
owner), they are written in place, as the reference writes every file.

Used in-process by the server (no sandbox) and by the helper process.
"""

import os
import shutil
import stat
from typing import Any, Callable, Dict, Iterable, List

from . import b64
from .copying import copy_paths
from .errors import FsError, INTERNAL_ERROR, INVALID_REQUEST, os_error
from .opening import open_file, read_to_end
from .replacing import replace_target, write_whole
from .uris import UriError, path_to_uri, uri_to_path

#: Largest file ``fs/readFile`` returns, bytes; larger files are read with fs/open.
READ_FILE_LIMIT = 64 * 1024 * 1024
#: ``fs/walk`` maxima (PROTOCOL.md 8.3).
WALK_MAX_DEPTH, WALK_MAX_DIRECTORIES, WALK_MAX_ENTRIES = 64, 10_000, 50_000
#: Most a ``fs/walk`` result holds, bytes, counted as each entry's (and error's) URI and message in UTF-8
#: plus :data:`WALK_ITEM_OVERHEAD`: an item that would pass it sets ``truncated`` and ends the walk
#: (PROTOCOL.md 8.3's response-size cap; measured on the reference 0.169.0: the same 4 MiB and 64).
WALK_RESULT_BYTES = 4 * 1024 * 1024
WALK_ITEM_OVERHEAD = 64
#: Most entries ``fs/readDirectory`` returns; a directory with more is -32603 ``fs/readDirectory returned
#: N entries; limit is 50000`` (the reference 0.169.0's limit and text); past it names are counted, not kept.
READ_DIRECTORY_MAX_ENTRIES = 50_000


def native_path(params: Dict[str, Any], name: str = "path") -> str:
    try:
        return uri_to_path(params[name])
    except UriError as exc:
        raise FsError(exc.code, exc.message) from None


class Guard:
    """Allows everything; :mod:`fs_helper.policy` has the restricting one."""

    def check_read(self, path: str) -> None:
        pass

    def check_write(self, path: str) -> None:
        pass


ALLOW_ALL = Guard()


def read_limit_error(path: str) -> FsError:
    return FsError(INVALID_REQUEST, "file `%s` is larger than %d bytes; read it with fs/open" % (path, READ_FILE_LIMIT))


def read_file(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    follow = params.get("followSymlinks", True) is not False
    guard.check_read(path)
    try:
        fd = open_file(path, os.O_RDONLY | (0 if follow else getattr(os, "O_NOFOLLOW", 0)))
    except OSError as exc:
        raise os_error(exc) from None
    try:  # a failing disk or a special file fails here (EIO, EINVAL): an OS error, not a defect
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FsError(INVALID_REQUEST, "path `%s` is not a file" % path)
        if info.st_size > READ_FILE_LIMIT:
            raise read_limit_error(path)
        data = read_to_end(fd, READ_FILE_LIMIT + 1, info.st_size)
    except OSError as exc:
        raise os_error(exc) from None
    finally:
        os.close(fd)
    if len(data) > READ_FILE_LIMIT:
        raise read_limit_error(path)
    return {"dataBase64": b64.encode(data)}


def write_file(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    try:
        data = b64.decode(params["dataBase64"])
    except ValueError as exc:
        raise FsError(INVALID_REQUEST, "fs/writeFile requires valid base64 dataBase64: %s" % exc) from None
    try:
        target, mode = replace_target(path, params.get("followSymlinks", True) is not False, guard.check_write)
        write_whole(target, lambda handle: handle.write(data), mode, split_links=guard is not ALLOW_ALL)
    except OSError as exc:
        raise os_error(exc) from None
    return {}


def create_directory(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    guard.check_write(path)
    try:
        if params.get("recursive", True) is not False:
            _make_directories(path)
        else:
            os.mkdir(path)
    except OSError as exc:
        raise os_error(exc) from None
    return {}


def _make_directories(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` without its recursion (a path of 1,500 missing names raised
    RecursionError): each missing directory from the top down; a concurrent creator is no error, a file is."""
    target, missing = path, []
    while not os.path.isdir(path):
        if path != target and os.path.lexists(path):
            break  # a file above: the mkdir below it fails ENOTDIR (EEXIST only for the target itself)
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def _millis(seconds_ns: int) -> int:
    return seconds_ns // 1_000_000


def get_metadata(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    guard.check_read(path)
    try:
        link = os.lstat(path)
        is_symlink = stat.S_ISLNK(link.st_mode)
        if is_symlink and params.get("followSymlinks", True) is False:
            raise FsError(INVALID_REQUEST, "path contains a symbolic link")
        info = os.stat(path) if is_symlink else link
    except OSError as exc:
        raise os_error(exc) from None
    return metadata_result(info, is_symlink)


def metadata_result(info: os.stat_result, is_symlink: bool) -> Dict[str, Any]:
    """The fs/getMetadata result for ``info`` (symlinks already followed or not)."""
    birth = getattr(info, "st_birthtime", None)
    return {
        "isDirectory": stat.S_ISDIR(info.st_mode),
        "isFile": stat.S_ISREG(info.st_mode),
        "isSymlink": is_symlink,
        "size": info.st_size,
        "createdAtMs": int(birth * 1000) if birth else 0,
        "modifiedAtMs": _millis(info.st_mtime_ns),
    }


def canonicalize(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    resolved = os.path.realpath(path)
    guard.check_read(resolved)
    try:
        os.stat(resolved)
    except OSError as exc:
        raise os_error(exc) from None
    return {"path": path_to_uri(resolved)}


def wire_name(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 become U+FFFD, as Rust's ``to_string_lossy`` in the reference."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:  # undecodable bytes, kept by os.fsdecode as lone surrogates
        return os.fsencode(name).decode("utf-8", "replace")


def read_directory(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    guard.check_read(path)
    try:
        with os.scandir(path) as listing:
            return directory_entries((entry.name for entry in listing), lambda name: os.stat(os.path.join(path, name)))
    except OSError as exc:
        raise os_error(exc) from None


def directory_entries(names: Iterable[str], stat_of: Callable[[str], os.stat_result]) -> Dict[str, Any]:
    """The ``fs/readDirectory`` result of ``names`` (each looked at with ``stat_of``; one it cannot stat, a
    dangling symlink, is left out).

    Raises:
        FsError: -32603 past :data:`READ_DIRECTORY_MAX_ENTRIES` (the rest counted, not kept).
    """
    entries = []
    count = 0
    for name in names:
        try:
            info = stat_of(name)
        except OSError:
            continue  # a dangling symlink is left out
        count += 1
        if count <= READ_DIRECTORY_MAX_ENTRIES:
            entries.append({"fileName": wire_name(name), "isDirectory": stat.S_ISDIR(info.st_mode),
                            "isFile": stat.S_ISREG(info.st_mode)})
        elif count == READ_DIRECTORY_MAX_ENTRIES + 1:
            entries = []  # only counted from here
    if count > READ_DIRECTORY_MAX_ENTRIES:
        raise FsError(INTERNAL_ERROR, "fs/readDirectory returned %d entries; limit is %d"
                      % (count, READ_DIRECTORY_MAX_ENTRIES))
    return {"entries": entries}


def walk(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    """Breadth-first listing (``codex-rs/file-system/src/lib.rs``, ``walk_via_directory_reads``).

    Under a sandbox policy (``guard``) each directory is judged before it is
    read: one the policy does not let be read (a ``none`` entry, or a
    followed link to a path it does not grant) is listed, not entered, and
    named in ``errors`` (``Permission denied``), as ``fs/readDirectory`` of
    it would be refused.
    """
    options = params["options"]
    max_depth, max_dirs, max_entries = options["maxDepth"], options["maxDirectories"], options["maxEntries"]
    follow = bool(options["followDirectorySymlinks"])
    if max_depth > WALK_MAX_DEPTH or max_dirs > WALK_MAX_DIRECTORIES or max_entries > WALK_MAX_ENTRIES:
        raise FsError(INVALID_REQUEST, "filesystem walk limits exceed maximums: depth=%d, directories=%d, entries=%d"
                      % (WALK_MAX_DEPTH, WALK_MAX_DIRECTORIES, WALK_MAX_ENTRIES))
    if max_dirs == 0 or max_entries == 0:
        raise FsError(INVALID_REQUEST, "filesystem walk limits must be greater than zero")
    root = native_path(params)
    guard.check_read(root)
    try:
        root_info = os.stat(root)
    except OSError as exc:
        raise os_error(exc) from None
    result: Dict[str, Any] = {"entries": [], "errors": [], "truncated": False}
    if not stat.S_ISDIR(root_info.st_mode):
        return result
    room = WALK_RESULT_BYTES  # bytes the result may still take

    def add(member: str, path: str, **item: str) -> bool:
        """Append an item to ``result[member]``; False (and ``truncated``) if it would pass the size cap."""
        nonlocal room
        uri = path_to_uri(path)  # percent-encoded: ASCII
        cost = WALK_ITEM_OVERHEAD + len(uri) + len(item.get("message", "").encode("utf-8", "surrogatepass"))
        if cost > room:
            result["truncated"] = True
            return False
        room -= cost
        result[member].append(dict(path=uri, **item))
        return True
    seen = {(root_info.st_dev, root_info.st_ino)}
    queue: List[Any] = [(root, 0)]
    directories = 1
    examined = 0
    while queue:
        directory, depth = queue.pop(0)
        try:
            names = sorted(os.listdir(directory), key=os.fsencode)
        except OSError as exc:
            if not add("errors", directory, message=os_error(exc).message):
                return result
            continue
        for name in names:
            if examined >= max_entries:
                result["truncated"] = True
                return result
            examined += 1
            child = os.path.join(directory, name)
            link = None
            try:
                link = os.lstat(child)
                if stat.S_ISLNK(link.st_mode):
                    if not follow:
                        continue
                    info = os.stat(child)
                    if not stat.S_ISDIR(info.st_mode):
                        continue
                else:
                    info = link
            except OSError as exc:
                # the entry itself is unreadable; a dangling link is just skipped
                if link is None and not add("errors", child, message=os_error(exc).message):
                    return result
                continue
            if stat.S_ISREG(info.st_mode):
                if not add("entries", child, kind="file"):
                    return result
            elif stat.S_ISDIR(info.st_mode):
                if not add("entries", child, kind="directory"):
                    return result
                identity = (info.st_dev, info.st_ino)
                if depth < max_depth and identity not in seen:
                    try:  # not into a sandbox's `none` entry, nor through a link to what it does not grant
                        guard.check_read(child)
                    except FsError as error:
                        if not add("errors", child, message=error.message):
                            return result
                        continue
                    if directories >= max_dirs:
                        result["truncated"] = True
                    else:
                        seen.add(identity)
                        directories += 1
                        queue.append((child, depth + 1))
    return result


def filesystem_root(path: str) -> str:
    """The root directory above ``path``: ``/``, or its drive's (``C:\\``) on Windows."""
    return os.path.splitdrive(os.path.abspath(path))[0] + os.sep


def refuse_root(path: str, info: os.stat_result) -> None:
    """Refuse to remove the file system's root recursively, as ``rm`` does (its ``--preserve-root``).

    ``info`` is the directory's stat; the root is known by identity, so
    ``file:///``, ``/tmp/..`` and a symlink to ``/`` with a trailing slash
    are all refused.  The Codex reference would remove whatever it may.

    Raises:
        FsError: -32600 ``refusing to remove the root directory `/```.
    """
    root = filesystem_root(path)
    if os.path.samestat(info, os.stat(root)):
        raise FsError(INVALID_REQUEST, "refusing to remove the root directory `%s`" % root)


def remove(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    path = native_path(params)
    guard.check_write(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        if params.get("force", True) is not False:
            return {}
        raise os_error(exc) from None
    except OSError as exc:
        raise os_error(exc) from None
    try:
        if stat.S_ISDIR(info.st_mode):
            if params.get("recursive", True) is not False:
                refuse_root(path, info)
                _remove_tree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise os_error(exc) from None
    return {}


def _remove_tree(path: str) -> None:
    """Directory ``path`` and everything below it, following no link: through descriptors, without
    recursion (``shutil.rmtree`` recursed, and raised RecursionError 1,000 levels down), where the
    platform has them (:func:`fs_helper.tree_at.remove_tree_at`); else ``shutil.rmtree``."""
    from . import safe_path, tree_at  # (ctypes: loaded by the first removal of a tree, not with the operations)

    if safe_path.unsupported_reason() is not None:
        shutil.rmtree(path)
        return
    with safe_path.Place(safe_path.split_resolved(path)) as place:
        tree_at.remove_tree_at(place.dir_fd, place.name)


def copy(params: Dict[str, Any], guard: Guard = ALLOW_ALL) -> Dict[str, Any]:
    source = native_path(params, "sourcePath")
    destination = native_path(params, "destinationPath")
    guard.check_read(source)
    guard.check_write(destination)
    copy_paths(source, destination, params["recursive"], split_links=guard is not ALLOW_ALL)
    return {}


#: wire method -> operation
OPERATIONS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "fs/readFile": read_file,
    "fs/writeFile": write_file,
    "fs/createDirectory": create_directory,
    "fs/getMetadata": get_metadata,
    "fs/canonicalize": canonicalize,
    "fs/readDirectory": read_directory,
    "fs/walk": walk,
    "fs/remove": remove,
    "fs/copy": copy,
}
