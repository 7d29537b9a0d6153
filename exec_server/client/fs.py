"""Client-side file system API: ``client.fs`` (PROTOCOL.md section 8).

    with Client.connect(url) as c:
        c.fs.write_file("/srv/app/config.json", b"...")
        data = c.fs.read_file("/srv/app/config.json")
        for entry in c.fs.read_directory("/srv/app"): ...
        with c.fs.open("/var/log/big.log") as f:          # streamed, any size
            for block in f.iter_blocks(1 << 20): ...
        c.fs.copy(src, dst, recursive=True); c.fs.remove(path)

Paths are str, ``pathlib.Path`` or ``file://`` URIs on the server's host.
Errors are :class:`~exec_server.protocol.errors.RpcError` subclasses: ``NotFound``
(-32004) for a missing path, ``InvalidRequest`` (-32600) for permission and
misuse errors, ``InternalError`` (-32603) for other OS errors.  An OS error is
also the ``OSError`` subclass Python raises for it (``FileNotFoundError``,
``PermissionError``, ``IsADirectoryError``, ...), with ``errno``, ``strerror``
and the path given as ``filename`` (:mod:`~exec_server.client.fs_errors`).
"""

import os
import threading
from typing import Any, Dict, Iterator, List, Optional

from exec_server.client.fs_errors import as_os_error
from exec_server.client.interfaces import (CallTimeout, Caller, ExtensionNotSupported, PathLike, as_bytes,
                                           result_member)
from exec_server.protocol import b64
from exec_server.protocol.errors import InternalError, NotFound, RpcError

#: Bytes per ``fs/readBlock`` / ``fs/writeBlock`` by default (the protocol's maximum block).
BLOCK_BYTES = 1 << 20
#: Seconds a ``with`` block of :meth:`FileSystem.open` that ended in an exception waits for the close.
EXIT_CLOSE_TIMEOUT = 5.0


class RemoteFile:
    """A file handle on the server (``fs/open``); a context manager.

    Read mode: :meth:`read_block`, :meth:`iter_blocks`, :meth:`read`.
    Replace mode: :meth:`write` (appends at the current offset),
    :meth:`write_block` (positional).  An ``atomic`` one puts the file in
    place on :meth:`close` (a ``with`` block that ends in an exception
    :meth:`discard` s it instead).
    """

    def __init__(self, fs: "FileSystem", handle_id: str, mode: str, atomic: bool = False,
                 connection: Optional[int] = None, path: Any = None):
        self._fs = fs
        self.path = path  # as given to FileSystem.open: the filename of its OS errors
        self._connection = connection  # the client's connection_number once it was opened; None: unknown
        self.handle_id = handle_id
        self.mode = mode
        self.atomic = atomic
        self.offset = 0
        self.closed = False
        self._close_error: Optional[BaseException] = None  # what the close raised: raised again by a retry

    def read_block(self, offset: int, length: int = BLOCK_BYTES):
        """``(data, eof)`` for up to ``length`` bytes (1..1048576) at ``offset``."""
        result = self._call("fs/readBlock", {"handleId": self.handle_id, "offset": offset, "len": length})
        return _bytes_member(result, "chunk", "fs/readBlock"), result_member(result, "eof", bool, "fs/readBlock")

    def _call(self, method: str, params: Dict[str, Any]) -> Any:
        """A call on the handle: NotFound says so when the handle ended with an earlier connection; an OS
        error is an ``OSError`` too, its ``filename`` the path opened (fs_errors)."""
        try:
            return self._fs._call(method, params)
        except RpcError as exc:
            if (not isinstance(exc, NotFound) or self._connection is None
                    or self._fs._client.connection_number == self._connection
                    or "unknown file handle" not in exc.message):
                raise as_os_error(exc, self.path, missing_is_enoent=False) from None
            raise NotFound("file handle `%s` ended with the connection it was opened on (the client has "
                           "reconnected since): open the file again" % self.handle_id, exc.data) from exc

    def iter_blocks(self, size: int = BLOCK_BYTES) -> Iterator[bytes]:
        """Every block from the current offset to the end of the file.

        Raises:
            InternalError: the server answered an empty block without ``eof``.
            RpcError: as ``fs/readBlock``.
        """
        while True:
            data, eof = self.read_block(self.offset, size)
            self.offset += len(data)
            if eof:
                if data:
                    yield data
                return
            if not data:  # would ask for the same block forever
                raise InternalError("exec-server returned an empty block before the end of the file")
            yield data

    def read(self) -> bytes:
        return b"".join(self.iter_blocks())

    def write_block(self, offset: int, data: bytes) -> None:
        self._call("fs/writeBlock", {"handleId": self.handle_id, "offset": offset, "chunk": b64.encode(data)})

    def write(self, data: bytes) -> int:
        """Write ``data`` at the current offset in blocks; returns its length."""
        view = memoryview(data)
        for start in range(0, len(view), BLOCK_BYTES):
            block = bytes(view[start:start + BLOCK_BYTES])
            self.write_block(self.offset, block)
            self.offset += len(block)
        return len(data)

    def close(self) -> None:
        """Close the handle; an atomic one's file replaces the target now.

        Raises:
            NotFound: (atomic) the server no longer has the handle (its
                connection dropped): nothing was replaced.
            RequestOutcomeUnknown: the connection dropped before the answer
                (the handles of a connection end with it: the file was replaced
                only if the close got through).
            RpcError: as ``fs/close``.  A later close raises the same error
                again, never a silent success.
        """
        self._close(True)

    def discard(self) -> None:
        """Close an atomic handle without replacing the target (the written file is removed); else :meth:`close`."""
        self._close(False)

    def _close(self, commit: bool) -> None:
        if self.closed:
            if self._close_error is not None:
                raise self._close_error
            return
        self.closed = True
        try:
            self._call("fs/close", self._close_params(commit))
        except Exception as exc:
            self._close_error = exc
            raise

    def _close_params(self, commit: bool) -> Dict[str, Any]:
        """The ``fs/close`` params: ``commit`` for an atomic handle only (without it, the reference's close)."""
        return {"handleId": self.handle_id, "commit": commit} if self.atomic else {"handleId": self.handle_id}

    def __enter__(self) -> "RemoteFile":
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if self.closed:
            return  # closed in the block (an error it raised was the caller's to see)
        if exc_type is None:
            self.close()
            return
        # The error that ended the block (a Ctrl-C too) is the one to see, and soon: the close (an atomic
        # handle's discard) is waited for EXIT_CLOSE_TIMEOUT (a send already under way is bounded by the
        # keepalive), then goes on in the background; its own error is dropped, and none is sent for a handle
        # that ended with its connection (the server closed it then).  Was: a close on a lost connection
        # waited out the recovery (25 s) and its ExecServerDisconnected replaced a KeyboardInterrupt.
        self.closed = True
        client = self._fs._client
        if (getattr(client, "state", "connected") != "connected"
                or self._connection not in (None, getattr(client, "connection_number", None))):
            return
        params = self._close_params(False)
        try:
            client.call("fs/close", params, timeout=EXIT_CLOSE_TIMEOUT)
        except CallTimeout:  # not sent yet (another thread's send holds the connection): sent later, not leaked
            threading.Thread(target=_close_quietly, args=(client, params, self._fs.timeout), daemon=True,
                             name="exec-server-fs-close").start()
        except Exception:
            pass


def _close_quietly(client: Caller, params: Dict[str, Any], timeout: Optional[float]) -> None:
    """``fs/close`` with ``params``, its outcome ignored (a ``with`` block's close that did not fit its wait)."""
    try:
        client.call("fs/close", params, timeout=timeout)
    except Exception:
        pass


class FileSystem:
    """The ``fs/*`` methods of one client.  ``sandbox`` is sent with every path call.

    Args:
        client: what the calls go through (the :class:`Client`).
        sandbox: a FileSystemSandboxContext sent with every path call, or None.
        timeout: seconds per call.
    """

    def __init__(self, client: Caller, sandbox: Optional[Dict[str, Any]] = None, timeout: Optional[float] = 300.0):
        self._client = client
        self.sandbox = sandbox
        self.timeout = timeout

    def _call(self, method: str, params: Dict[str, Any]) -> Any:
        return self._client.call(method, params, timeout=self.timeout)

    def _path_call(self, method: str, params: Dict[str, Any], path: Any, path2: Any = None) -> Any:
        """``method`` on ``path`` (and ``path2``): an OS error is raised as an ``OSError`` too (fs_errors)."""
        if self.sandbox is not None:
            params["sandbox"] = self.sandbox
        try:
            return self._call(method, params)
        except RpcError as exc:
            raise as_os_error(exc, path, path2) from None

    def with_sandbox(self, sandbox: Optional[Dict[str, Any]]) -> "FileSystem":
        """The same API, sending ``sandbox`` (a FileSystemSandboxContext) with each call."""
        return FileSystem(self._client, sandbox, self.timeout)

    def _uri(self, path: "PathLike") -> str:
        return self._client.to_uri(path)

    def read_file(self, path: "PathLike", follow_symlinks: bool = True) -> bytes:
        """The whole file (``fs/readFile``; up to 64 MiB, use :meth:`open` beyond)."""
        result = self._path_call("fs/readFile", {"path": self._uri(path), "followSymlinks": follow_symlinks},
                                 path)
        return _bytes_member(result, "dataBase64", "fs/readFile")

    def write_file(self, path: "PathLike", data: bytes, follow_symlinks: bool = True) -> None:
        """Create or replace the file atomically (``fs/writeFile``).

        The file goes in one message, as base64: past about 96 MiB it exceeds
        the server's default ``--max-message-bytes`` (128 MiB), and this
        raises ``RequestTooLarge``, nothing written (unsent when the server
        advertises its limit; else after the server closed the connection
        with 1009 and the client recovered it).  Write larger files with
        ``open(path, "replace")``.
        """
        self._path_call("fs/writeFile", {"path": self._uri(path), "dataBase64": b64.encode(as_bytes(data, "data")),
                                         "followSymlinks": follow_symlinks}, path)

    def create_directory(self, path: "PathLike", recursive: bool = True) -> None:
        self._path_call("fs/createDirectory", {"path": self._uri(path), "recursive": recursive}, path)

    def get_metadata(self, path: "PathLike", follow_symlinks: bool = True) -> Dict[str, Any]:
        """``{isDirectory, isFile, isSymlink, size (bytes), createdAtMs, modifiedAtMs}``."""
        return self._path_call("fs/getMetadata", {"path": self._uri(path), "followSymlinks": follow_symlinks},
                               path)

    def canonicalize(self, path: "PathLike") -> str:
        """The resolved path as a file URI."""
        return self._path_call("fs/canonicalize", {"path": self._uri(path)}, path)["path"]

    def read_directory(self, path: "PathLike") -> List[Dict[str, Any]]:
        """``[{fileName, isDirectory, isFile}]`` in directory order."""
        return self._path_call("fs/readDirectory", {"path": self._uri(path)}, path)["entries"]

    def walk(self, path: "PathLike", max_depth: int = 64, max_directories: int = 10_000, max_entries: int = 50_000,
             follow_directory_symlinks: bool = False) -> Dict[str, Any]:
        """``{entries: [{path, kind}], errors, truncated}``, breadth first."""
        return self._path_call("fs/walk", {"path": self._uri(path), "options": {
            "maxDepth": max_depth, "maxDirectories": max_directories, "maxEntries": max_entries,
            "followDirectorySymlinks": follow_directory_symlinks}}, path)

    def remove(self, path: "PathLike", recursive: bool = True, force: bool = True) -> None:
        self._path_call("fs/remove", {"path": self._uri(path), "recursive": recursive, "force": force}, path)

    def copy(self, source: "PathLike", destination: "PathLike", recursive: bool = False) -> None:
        self._path_call("fs/copy", {"sourcePath": self._uri(source), "destinationPath": self._uri(destination),
                                    "recursive": recursive}, source, destination)

    def open(self, path: "PathLike", mode: str = "read", atomic: Optional[bool] = None) -> RemoteFile:
        """A :class:`RemoteFile`; ``mode`` is ``read`` or ``replace`` (create or truncate).

        Args:
            atomic: for ``replace``: True asks for a temporary file beside
                ``path`` that :meth:`RemoteFile.close` renames over it, so
                readers never see a partial file and a write that does not
                complete (an exception in the ``with`` block, a lost
                connection, a killed client) leaves ``path`` as it was
                (``atomicReplace`` extension; where a rename would change the
                file's owner, links or kind the server writes in place, and
                ``RemoteFile.atomic`` is False); False truncates ``path`` at
                once and writes in place (the Codex reference's
                ``replace``); None: atomic when the server has the extension.
        Raises:
            ExtensionNotSupported: ``atomic=True`` and the server lacks ``atomicReplace``.
            ValueError: an unknown mode, or ``atomic`` with ``read``.
            InvalidParams: on a :meth:`with_sandbox` whose sandbox restricts the
                file system (handles are not confined; PROTOCOL.md 8.4).
            RpcError: as ``fs/open``.
        """
        if mode not in ("read", "replace"):
            raise ValueError("mode must be 'read' or 'replace'")
        if mode == "read" and atomic:
            raise ValueError("atomic applies to mode 'replace' only")
        supported = mode == "replace" and self._client.supports("atomicReplace")
        if atomic and not supported:
            raise ExtensionNotSupported("atomicReplace", "an atomic replace")
        atomic = supported and atomic is not False
        handle_id = "h-" + os.urandom(8).hex()  # ids are at most 32 bytes
        params = {"handleId": handle_id, "path": self._uri(path), "mode": mode}
        if atomic:
            params["atomic"] = True
        result = self._path_call("fs/open", params, path)  # with the sandbox: one that restricts files is refused
        # after: an open resent over a new connection lives there (a reconnect just after the answer
        # leaves the server's own words, never a wrong cause)
        connection = self._client.connection_number
        # the server writes in place where a rename could not keep the file what it was (README)
        atomic = atomic and isinstance(result, dict) and result.get("atomic") is True
        return RemoteFile(self, handle_id, mode, atomic, connection, path)


def _bytes_member(result: Any, name: str, method: str) -> bytes:
    """The bytes of the base64 member ``name`` of a result; InternalError if it is missing or not base64."""
    try:
        return b64.decode(result_member(result, name, str, method))
    except ValueError as exc:
        raise InternalError("malformed %s result: %s is not base64: %s" % (method, name, exc)) from None
