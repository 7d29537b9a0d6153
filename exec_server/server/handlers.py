"""One handler per method: ``handler(context, params) -> result``.

Params arrive already checked against ``schemas/<method>.params.json``; a
handler raises :class:`~exec_server.protocol.errors.RpcError` subclasses for the
protocol's errors.  Behaviour and texts follow PROTOCOL.md sections 4 and 5.
Handlers know no socket: they see a :class:`RequestContext`.
"""

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from fs_helper import operations as fs_operations

from exec_server.protocol import b64
from exec_server.server.fs import sandbox, special
from exec_server.common import telemetry
from exec_server.server.fs.handles import rpc_error
from exec_server.server.fs.helper import FsHelpers, bubblewrap_command, find_bubblewrap
from exec_server.server.config import ServerConfig
from exec_server.server.process.env import child_environment
from exec_server.server.environment_info import environment_info
from exec_server.protocol.errors import InternalError, InvalidParams, InvalidRequest
from exec_server.protocol.handshake import TAKEN_OVER
from exec_server.protocol.wire import RawJson, read_result_json
from exec_server.server.process import spawn
from exec_server.server.process.managed import ManagedProcess
from exec_server.server.process.output import ReadAborted
from exec_server.server.sessions import Session, SessionRegistry
from exec_server.protocol.uris import UriError, platform_os, uri_to_path


log = logging.getLogger(__name__)


class RequestContext:
    """What a handler may use: the registry, the server's fs helpers, the connection's session, hooks.

    ``after_response(fn)`` runs ``fn`` once the response has been written
    (``process/start`` starts its output threads there, so no notification
    can precede the response).
    """

    def __init__(self, connection: Any, registry: SessionRegistry, config: ServerConfig, fs_helpers: FsHelpers):
        self.connection = connection
        self.registry = registry
        self.config = config
        self.fs_helpers = fs_helpers
        self.after_response_callbacks: List[Callable[[], None]] = []

    @property
    def session(self) -> Session:
        return self.connection.session

    def after_response(self, callback: Callable[[], None]) -> None:
        self.after_response_callbacks.append(callback)

    def aborted(self) -> Optional[Exception]:
        """An error to end a long poll with, or None to go on waiting."""
        if self.connection.closed:
            return ReadAborted("connection closed")
        if not self.session.is_owned_by(self.connection):
            return InvalidRequest(TAKEN_OVER)
        return None


# --------------------------------------------------------------- handshake
#: Our protocol extensions, advertised as the ``extensions`` member of the
#: ``initialize`` result (a member the reference's clients ignore; README.rst,
#: "Protocol extensions"): ``closeStdin`` on ``process/write``; ``ptySize`` on
#: ``process/start`` and the ``process/resize`` method (PTYs: not on Windows);
#: ``atomicReplace``: ``atomic`` on ``fs/open``, ``commit`` on ``fs/close``.
EXTENSIONS = {"closeStdin": True, "ptySize": not spawn.IS_WINDOWS, "atomicReplace": True}


def initialize(ctx: RequestContext, params: Dict[str, Any]) -> Tuple[Session, Dict[str, Any]]:
    """Create a session, or resume one with ``resumeSessionId`` (PROTOCOL.md 4.1, 7).

    Returns:
        the session, attached to the connection, and the result; the
        connection records the session and advances its own handshake.
    Raises:
        InvalidRequest, SessionAlreadyAttached: the resume failed.
    """
    resume_id = params.get("resumeSessionId")
    if resume_id is None:
        session = ctx.registry.create()
        session.attach(ctx.connection, ctx.connection.send)
    else:
        session = ctx.registry.resume(resume_id, ctx.connection, ctx.connection.send, ctx.config.takeover_probe_timeout)
    return session, {"sessionId": session.session_id, "environmentInfo": environment_info(),
                     "extensions": dict(EXTENSIONS)}


def environment_info_method(ctx: RequestContext, params: Any) -> Dict[str, Any]:
    return environment_info()


def environment_status(ctx: RequestContext, params: Any) -> Dict[str, Any]:
    return {"status": "ready"}


# ---------------------------------------------------------------- processes
def _cwd_path(uri: str) -> str:
    try:
        return uri_to_path(uri)
    except UriError as exc:
        if exc.kind == "host":
            raise InvalidParams("cwd URI `%s` is not valid on this exec-server host: %s"
                                % (uri, exc.message)) from None
        raise InvalidParams(exc.message) from None


def _reject_nul_bytes(params: Dict[str, Any]) -> None:
    """-32602 naming the field when argv, arg0, env or envPolicy.set holds a NUL byte (no exec can carry one).

    The reference answers -32603 ``nul byte found in provided data``; the
    project reports it as the invalid parameter it is.  A variable name
    holding ``=`` is refused the same way.
    """
    fields = [("argv[%d]" % index, value) for index, value in enumerate(params["argv"])]
    if params.get("arg0") is not None:
        fields.append(("arg0", params["arg0"]))
    maps = [("env", params.get("env") or {}), ("envPolicy.set", (params.get("envPolicy") or {}).get("set") or {})]
    for label, variables in maps:
        for name, value in variables.items():
            shown = name.replace("\x00", "\\0")
            fields += [("%s key `%s`" % (label, shown), name), ("%s[%s]" % (label, shown), value)]
    for field, value in fields:
        if "\x00" in value:
            raise InvalidParams("nul byte found in provided data: %s" % field, data={"path": _json_path(field)})
    for label, variables in maps:
        for name in variables:
            if "=" in name:  # the reference passes it on as NAME=VALUE; Python's exec refuses the name
                raise InvalidParams("%s key `%s` contains `=`, which no environment variable name can hold"
                                    % (label, name), data={"path": "$." + label})


def _json_path(field: str) -> str:
    if field.startswith("argv["):
        return "$." + field
    if field.startswith("envPolicy.set"):
        return "$.envPolicy.set"
    if field.startswith("env"):
        return "$.env"
    return "$." + field


def process_start(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    """Spawn a process (PROTOCOL.md 5.1); checks run in the reference's order."""
    process_id = params["processId"]
    cwd = _cwd_path(params["cwd"])
    policy = sandbox.parse_sandbox(params.get("sandbox"), process=True)
    if params.get("enforceManagedNetwork"):
        raise InvalidParams("enforceManagedNetwork is not supported by this exec-server")
    argv = params["argv"]
    if not argv:
        raise InvalidParams("argv must not be empty")
    if not argv[0]:  # the reference's texts (an empty name would be looked up as the cwd itself)
        raise InternalError("missing program for %s spawn" % ("PTY" if params["tty"] else "pipe"))
    _reject_nul_bytes(params)
    if params["tty"] and spawn.IS_WINDOWS:
        # The PTY backend for Windows (pywinpty) is not written yet; name what it will need.
        raise InvalidParams("tty processes on Windows need the pywinpty package "
                            "(pip install 'exec-server[windows]')")
    session = ctx.session
    session.reserve(process_id)
    try:
        wrapper = _sandbox_wrapper(policy, params) if policy is not None else None
        env = child_environment(params["env"], params.get("envPolicy"), os.environ)
        with telemetry.child_span("process.spawn"):
            process = ManagedProcess.spawn(
                process_id, argv, cwd, env, bool(params["tty"]), bool(params.get("pipeStdin")),
                params.get("arg0"), ctx.config, session.listener(process_id), session.process_closed,
                wrapper=wrapper, spool=ctx.registry.spool_for(process_id), pty_size=_pty_size(params.get("ptySize")))
        if log.isEnabledFor(logging.INFO):  # skips building the fields on the spawn path
            log.info("process started", extra=telemetry.log_fields(pid=process.pid, tty=bool(params["tty"]),
                                                                   sandboxed=wrapper is not None))
    except BaseException:
        session.unreserve(process_id)
        raise
    session.add(process)
    ctx.after_response(process.start_monitoring)
    return {"processId": process_id, "sandboxType": "none" if wrapper is None else "linuxSeccomp"}


def _pty_size(size: Optional[Dict[str, int]]) -> Optional[Tuple[int, int]]:
    """``ptySize`` (our extension; checked by the schema) as ``(rows, cols)``, or None."""
    return (size["rows"], size["cols"]) if size else None


def _sandbox_wrapper(policy: sandbox.SandboxPolicy, params: Dict[str, Any]) -> List[str]:
    """The bubblewrap prefix confining a process, or -32603 ``sandbox unavailable: ...``."""
    bwrap = find_bubblewrap()
    if bwrap is None:
        raise sandbox.unavailable(policy, "bubblewrap (bwrap) is not installed on this Linux host"
                                  if platform_os() == "linux" else "no sandbox backend on %s" % platform_os())
    if params.get("arg0") is not None:
        raise sandbox.unavailable(policy, "arg0 cannot be set inside the bubblewrap sandbox")
    return bubblewrap_command(policy, [], bwrap, python=False, new_session=not params["tty"],
                              die_with_parent=True)


def process_read(ctx: RequestContext, params: Dict[str, Any]) -> RawJson:
    """Retained output after ``afterSeq``, long-polling up to ``waitMs`` (PROTOCOL.md 5.4)."""
    process = ctx.session.require(params["processId"])
    wait_ms = params.get("waitMs") or 0  # any u64: a deadline far away is waited in slices
    result = process.read(
        after_seq=params.get("afterSeq") or 0,
        max_bytes=params.get("maxBytes"),
        wait=wait_ms / 1000.0,
        aborted=ctx.aborted,
    )
    return read_result_json(result.chunks, result.next_seq, result.exited, result.exit_code, result.closed,
                            result.sandbox_denied)


def process_write(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    """Write to stdin or the PTY, idempotent per ``writeId`` (PROTOCOL.md 5.5)."""
    try:
        data = b64.decode(params["chunk"])
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None
    if params["writeId"] == "":
        raise InvalidParams("writeId must not be empty")
    process = ctx.session.get(params["processId"])
    if process is None:
        return {"status": "unknownProcess"}
    return {"status": process.write(data, params["writeId"], bool(params.get("closeStdin")))}


def process_resize(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    """Set a PTY's window size (our ``ptySize`` extension); -32600 for unknown ids like ``process/read``."""
    ctx.session.require(params["processId"]).resize(params["rows"], params["cols"])
    return {}


def process_signal(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    """Interrupt the process group; ``{}`` also for unknown ids (PROTOCOL.md 5.6)."""
    process = ctx.session.get(params["processId"])
    if process is not None:
        process.interrupt()
    return {}


def process_terminate(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    """SIGKILL the whole tree (PROTOCOL.md 5.7)."""
    process = ctx.session.get(params["processId"])
    return {"running": process.terminate() if process is not None else False}


# --------------------------------------------------------------- filesystem
def _fs_method(operation: str):
    """A handler running ``operation`` in-process, or in the fs helper under a sandbox."""
    run = fs_operations.OPERATIONS[operation]

    def handler(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
        policy = sandbox.parse_sandbox(params.get("sandbox"))
        wire = {name: value for name, value in params.items() if name != "sandbox"}
        if policy is not None and policy.restrict_file_system:
            with telemetry.child_span("fs.helper"):
                return ctx.fs_helpers.run(operation, wire, policy)
        try:
            if operation == "fs/readFile":
                special.refuse_blocking(fs_operations.native_path(wire), wire.get("followSymlinks", True) is not False)
            elif operation == "fs/copy":
                source = fs_operations.native_path(wire, "sourcePath")
                special.refuse_blocking_tree(source) if wire.get("recursive") else special.refuse_blocking(source)
            return run(wire)
        except fs_operations.FsError as exc:
            raise rpc_error(exc) from None

    handler.__name__ = operation.replace("/", "_")
    handler.__doc__ = "%s (PROTOCOL.md 8.3)." % operation
    return handler


def fs_open(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    """Open a connection-owned file handle (PROTOCOL.md 8.4)."""
    policy = sandbox.parse_sandbox(params.get("sandbox"))
    if policy is not None and policy.restrict_file_system:
        raise InvalidParams("sandboxed file handles are not supported")
    try:
        path = fs_operations.native_path(params)
    except fs_operations.FsError as exc:
        raise rpc_error(exc) from None
    special.refuse_blocking(path)
    mode, atomic = params.get("mode") or "read", bool(params.get("atomic"))
    if atomic and mode != "replace":
        raise InvalidParams("atomic applies to mode `replace` only")
    applied = ctx.connection.file_handles.open(params["handleId"], path, mode, atomic)
    if atomic:  # only to a client that asked: the reference's result has handleId alone
        return {"handleId": params["handleId"], "atomic": applied}
    return {"handleId": params["handleId"]}


def fs_read_block(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    result = ctx.connection.file_handles.read_block(params["handleId"], params["offset"], params["len"])
    return {"chunk": b64.encode(result["chunk"]), "eof": result["eof"]}


def fs_write_block(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    try:
        data = b64.decode(params["chunk"])
    except ValueError as exc:
        raise InvalidParams(str(exc)) from None
    ctx.connection.file_handles.write_block(params["handleId"], params["offset"], data)
    return {}


def fs_close(ctx: RequestContext, params: Dict[str, Any]) -> Dict[str, Any]:
    ctx.connection.file_handles.close(params["handleId"], params.get("commit"))
    return {}


#: method -> (handshake family for PROTOCOL.md 4.3 errors, handler)
METHODS: Dict[str, Any] = {
    "environment/info": ("environment info", environment_info_method),
    "environment/status": ("environment status", environment_status),
    "process/start": ("exec", process_start),
    "process/read": ("exec", process_read),
    "process/write": ("exec", process_write),
    "process/signal": ("exec", process_signal),
    "process/terminate": ("exec", process_terminate),
    "process/resize": ("exec", process_resize),
    "fs/open": ("filesystem", fs_open),
    "fs/readBlock": ("filesystem", fs_read_block),
    "fs/writeBlock": ("filesystem", fs_write_block),
    "fs/close": ("filesystem", fs_close),
}
METHODS.update({operation: ("filesystem", _fs_method(operation)) for operation in fs_operations.OPERATIONS})
