"""The filesystem methods: the path methods of PROTOCOL.md 8.3 and the file handles of 8.4.

Loaded on a server's first ``fs/*`` request (:mod:`exec_server.server.handlers`),
with the fs helper's operations (:mod:`fs_helper.operations`), which run
in-process, or in the sandboxed fs helper when the request's ``sandbox``
restricts the file system.
"""

import os
from typing import Any, Dict

from fs_helper import operations as fs_operations
from fs_helper.errors import FsError

from exec_server.common import telemetry
from exec_server.protocol import b64
from exec_server.protocol.errors import InvalidParams
from exec_server.protocol.wire import RawJson
from exec_server.server.fs import sandbox
from exec_server.server.fs.handles import rpc_error
from exec_server.server.handlers.context import RequestContext


def _fs_method(operation: str):
    """A handler running ``operation`` in-process, or in the fs helper under a sandbox."""
    run = fs_operations.OPERATIONS[operation]

    def handler(ctx: RequestContext, params: Dict[str, Any]) -> Any:
        policy = sandbox.parse_sandbox(params.get("sandbox"))
        wire = {name: value for name, value in params.items() if name != "sandbox"}
        reserved = _size_to_read(wire) if operation == "fs/readFile" else 0
        if reserved:
            ctx.reserve_result(reserved)
        if policy is not None and policy.restrict_file_system:
            with telemetry.child_span("fs.helper"):
                result = ctx.fs_helpers.run(operation, wire, policy)
        else:
            try:  # a FIFO, device or socket is refused as it is opened (fs_helper.opening)
                result = run(wire)
            except FsError as exc:
                raise rpc_error(exc) from None
        if operation == "fs/readFile":  # base64 needs no escaping: one copy of it into the response, not two
            data = result.pop("dataBase64")
            decoded = len(data) // 4 * 3 - data.count("=", max(0, len(data) - 2))
            if decoded > reserved:  # a file that grew since its stat: the rest too
                ctx.reserve_result(decoded - reserved)
            return RawJson(['{"dataBase64":"', data, '"}'])
        if operation in LISTINGS:  # bounded by their own limits; held until sent like any large result
            ctx.reserve_result(_listing_bytes(result))
        return result

    handler.__name__ = operation.replace("/", "_")
    handler.__doc__ = "%s (PROTOCOL.md 8.3)." % operation
    return handler


#: The methods whose results are lists of names, bounded by ``READ_DIRECTORY_MAX_ENTRIES`` and ``WALK_RESULT_BYTES``.
LISTINGS = ("fs/readDirectory", "fs/walk")


def _listing_bytes(result: Dict[str, Any]) -> int:
    """About the bytes a listing's result takes as JSON: its names, paths and messages, and 64 for each item."""
    items = [*result.get("entries", ()), *result.get("errors", ())]
    return sum(fs_operations.WALK_ITEM_OVERHEAD + sum(len(value) for value in item.values() if isinstance(value, str))
               for item in items)


def _size_to_read(wire: Dict[str, Any]) -> int:
    """Bytes an ``fs/readFile`` may return: the file's size, at most the read limit (0 if it cannot be seen)."""
    try:
        path = fs_operations.native_path(wire)
        size = (os.stat if wire.get("followSymlinks", True) is not False else os.lstat)(path).st_size
    except (FsError, OSError, ValueError):
        return 0  # the operation itself reports what is wrong
    return min(size, fs_operations.READ_FILE_LIMIT + 1)


def fs_open(ctx: RequestContext, params: Dict[str, Any], handle: Any = None) -> Dict[str, Any]:
    """Open a connection-owned file handle (PROTOCOL.md 8.4); ``handle``: what the connection registered
    for this open as it arrived (:meth:`~exec_server.server.fs.handles.FileHandles.begin_open`)."""
    policy = sandbox.parse_sandbox(params.get("sandbox"))
    if policy is not None and policy.restrict_file_system:
        raise InvalidParams("sandboxed file handles are not supported")
    try:
        path = fs_operations.native_path(params)
    except FsError as exc:
        raise rpc_error(exc) from None
    mode, atomic = params.get("mode") or "read", bool(params.get("atomic"))
    if atomic and mode != "replace":
        raise InvalidParams("atomic applies to mode `replace` only")
    applied = ctx.connection.file_handles.open(params["handleId"], path, mode, atomic, handle)
    if atomic:  # only to a client that asked: the reference's result has handleId alone
        return {"handleId": params["handleId"], "atomic": applied}
    return {"handleId": params["handleId"]}


def fs_read_block(ctx: RequestContext, params: Dict[str, Any], handle: Any = None) -> Dict[str, Any]:
    """``handle``: the open handle the connection bound this request to as it arrived (or None)."""
    result = ctx.connection.file_handles.read_block(params["handleId"], params["offset"], params["len"], handle)
    return {"chunk": b64.encode(result["chunk"]), "eof": result["eof"]}


def fs_write_block(ctx: RequestContext, params: Dict[str, Any], handle: Any = None) -> Dict[str, Any]:
    """``handle``: as for :func:`fs_read_block`."""
    try:
        data = b64.decode(params["chunk"])
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None
    ctx.connection.file_handles.write_block(params["handleId"], params["offset"], data, handle)
    return {}


def fs_close(ctx: RequestContext, params: Dict[str, Any], taken: Any = None) -> Dict[str, Any]:
    """Close a handle (PROTOCOL.md 8.4); ``taken``: the handle the connection took as the close arrived."""
    ctx.connection.file_handles.close(params["handleId"], params.get("commit"), taken)
    return {}


#: method -> handler, read by :data:`exec_server.server.handlers.METHODS` on first use.
HANDLERS = {
    "fs/open": fs_open,
    "fs/readBlock": fs_read_block,
    "fs/writeBlock": fs_write_block,
    "fs/close": fs_close,
}
HANDLERS.update({operation: _fs_method(operation) for operation in fs_operations.OPERATIONS})
