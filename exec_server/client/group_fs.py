"""``group.fs``: the common file operations on every host of a :class:`~exec_server.client.group.Group`.

Each method runs on every connected host at once (at most the group's
``max_workers``) and returns a :class:`~exec_server.client.group.GroupResult`:
host -> the value, or the exception that host raised.

    group.fs.put("./app.conf", "/etc/app.conf")      # host -> bytes written
    group.fs.get("/var/log/app.log", "./logs")       # host -> ./logs/<host dir>/app.log
    group.fs.read_file("/etc/hostname")              # host -> bytes
"""

import hashlib
import os
import re
import tempfile
from collections import Counter
from typing import Any, Callable, Dict, Sequence, Union
from urllib.parse import urlsplit

from exec_server.client.fs import BLOCK_BYTES, FileSystem
from exec_server.client.interfaces import PathLike

#: What the methods return: the group's ``GroupResult`` (host -> value or exception).
GroupResult = Dict[str, Any]


def host_dirname(host: str) -> str:
    """A file-system-safe directory name for a host: ``ws://10.0.0.5:8765`` -> ``10.0.0.5_8765``.

    The URL's ``host:port`` (or the name itself when it is not a URL), with
    every character other than letters, digits, ``.``, ``_`` and ``-``
    replaced by ``_`` (so ``[::1]:8765`` -> ``___1__8765``).
    """
    name = urlsplit(host).netloc.rpartition("@")[2] if "://" in host else host  # never a password
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name or host)
    return "_" + safe if safe in (".", "..") else safe


def host_dirnames(hosts: Sequence[str]) -> Dict[str, str]:
    """host -> a directory name of its own: :func:`host_dirname`, unless two hosts share it.

    Hosts whose names would be one directory (``web 1`` and ``web_1``,
    URLs differing only in their path, names differing only in case, which
    a case-insensitive file system folds) each get ``_`` and the first 8
    hex digits of the SHA-256 of the whole host name appended, so every
    host's files land apart, in a directory that stays the same run after
    run.

    Raises:
        ValueError: two hosts would still share a directory (not seen in practice).
    """
    names = {host: host_dirname(host) for host in hosts}
    shared = Counter(name.casefold() for name in names.values())
    for host, name in names.items():
        if shared[name.casefold()] > 1:
            names[host] = "%s_%s" % (name, hashlib.sha256(host.encode("utf-8", "surrogateescape")).hexdigest()[:8])
    if len({name.casefold() for name in names.values()}) != len(names):
        raise ValueError("hosts whose local directory names coincide: %s" % ", ".join(sorted(names)))
    return names


class GroupFileSystem:
    """The ``fs/*`` operations of every host of a group.  Thread-safe."""

    def __init__(self, group: Any):
        """``group``: the :class:`~exec_server.client.group.Group` whose hosts are worked on."""
        self._group = group

    def _each(self, operation: Callable[[str, FileSystem], Any]) -> GroupResult:
        return self._group.map(lambda host, client: operation(host, client.fs))

    def put(self, local: Union[PathLike, bytes], remote: PathLike) -> GroupResult:
        """Write a local file (a path) or ``bytes`` to ``remote`` on every host; host -> bytes written.

        Streams in 1 MiB blocks through ``fs/open`` (any size); ``remote``
        is the file path (create or replace; atomic where the server has
        ``atomicReplace``, so a failed put leaves a host's old file).
        """
        def put_one(_host: str, fs: FileSystem) -> int:
            written = 0
            with fs.open(remote, "replace") as target:
                if isinstance(local, (bytes, bytearray, memoryview)):
                    return target.write(bytes(local))
                with open(local, "rb") as source:
                    while True:
                        block = source.read(BLOCK_BYTES)
                        if not block:
                            return written
                        written += target.write(block)

        return self._each(put_one)

    def get(self, remote: PathLike, local_dir: PathLike) -> GroupResult:
        """Download ``remote`` from every host to ``local_dir/<host dir>/<its name>``; host -> local path.

        ``<host dir>`` is :func:`host_dirname` of the host (with a suffix
        where two hosts share one: :func:`host_dirnames`); directories are
        created as needed and each file is written to a temporary file and
        renamed into place when complete.
        """
        name = os.path.basename(os.fspath(remote).rstrip("/")) or "file"
        folders = host_dirnames(self._group.hosts)

        def get_one(host: str, fs: FileSystem) -> str:
            folder = os.path.join(os.fspath(local_dir), folders[host])
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, name)
            handle, temporary = tempfile.mkstemp(prefix="." + name + ".", dir=folder)
            try:
                with os.fdopen(handle, "wb") as sink, fs.open(remote, "read") as source:
                    for block in source.iter_blocks():
                        sink.write(block)
                os.replace(temporary, target)
            except BaseException:
                os.unlink(temporary)
                raise
            return target

        return self._each(get_one)

    def read_file(self, path: PathLike) -> GroupResult:
        """host -> the whole file's bytes (up to 64 MiB; :meth:`get` for more)."""
        return self._each(lambda host, fs: fs.read_file(path))

    def write_file(self, path: PathLike, data: bytes) -> GroupResult:
        """Create or replace ``path`` atomically on every host; host -> None."""
        return self._each(lambda host, fs: fs.write_file(path, data))

    def create_directory(self, path: PathLike, recursive: bool = True) -> GroupResult:
        return self._each(lambda host, fs: fs.create_directory(path, recursive))

    def get_metadata(self, path: PathLike) -> GroupResult:
        """host -> ``{isDirectory, isFile, isSymlink, size, createdAtMs, modifiedAtMs}``."""
        return self._each(lambda host, fs: fs.get_metadata(path))

    def remove(self, path: PathLike, recursive: bool = True, force: bool = True) -> GroupResult:
        return self._each(lambda host, fs: fs.remove(path, recursive, force))

    def copy(self, source: PathLike, destination: PathLike, recursive: bool = False) -> GroupResult:
        """Copy on each host (``fs/copy``), from and to that host's own file system."""
        return self._each(lambda host, fs: fs.copy(source, destination, recursive))
