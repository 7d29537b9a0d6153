"""The process methods: ``process/start``, ``read``, ``write``, ``signal``, ``terminate``, ``resize``.

Loaded on a server's first ``process/*`` request (:mod:`exec_server.server.handlers`).
Params arrive already checked against ``schemas/<method>.params.json``;
behaviour and texts follow PROTOCOL.md section 5.
"""

import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from exec_server.common import telemetry
from exec_server.protocol import b64
from exec_server.protocol.errors import InternalError, InvalidParams
from exec_server.protocol.uris import UriError, platform_os, uri_to_path
from exec_server.protocol.wire import RawJson, read_result_json
from exec_server.server.fs import sandbox
from exec_server.server.fs.helper import bubblewrap_command, find_bubblewrap
from exec_server.server.fs.mount_points import MOUNT_POINTS
from exec_server.server.handlers.context import RequestContext
from exec_server.server.process import contain, spawn
from exec_server.server.process.env import child_environment
from exec_server.server.process.managed import ManagedProcess

log = logging.getLogger(__name__)


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
    mount_points: List[str] = []  # files made on the host for the sandbox: removed once the process has closed
    held: List[str] = []
    try:
        with MOUNT_POINTS.lock:  # which mount point files exist, and who uses them, for this command
            wrapper = _sandbox_wrapper(policy, params, mount_points) if policy is not None else None
            MOUNT_POINTS.acquire(mount_points)
            held = mount_points
        on_closed = session.process_closed if not held else _releasing(held, session.process_closed)
        env = child_environment(params["env"], params.get("envPolicy"), os.environ)
        with telemetry.child_span("process.spawn"):
            process = ManagedProcess.spawn(
                process_id, argv, cwd, env, bool(params["tty"]), bool(params.get("pipeStdin")),
                params.get("arg0"), ctx.config, session.listener(process_id), on_closed,
                wrapper=wrapper, spool=ctx.registry.spool_for(process_id), pty_size=_pty_size(params.get("ptySize")))
        process.span_context = telemetry.current_span_context()  # its close's log record names the same span
        if log.isEnabledFor(logging.INFO):  # skips building the fields on the spawn path
            log.info("process started", extra=telemetry.log_fields(
                process.span_context, pid=process.pid, tty=bool(params["tty"]), sandboxed=wrapper is not None))
    except BaseException:
        MOUNT_POINTS.release(held)
        session.unreserve(process_id)
        raise
    session.add(process)
    ctx.after_response(process.start_monitoring)
    return {"processId": process_id, "sandboxType": "none" if wrapper is None else "linuxSeccomp"}


def _pty_size(size: Optional[Dict[str, int]]) -> Optional[Tuple[int, int]]:
    """``ptySize`` (our extension; checked by the schema) as ``(rows, cols)``, or None."""
    return (size["rows"], size["cols"]) if size else None


def _releasing(mount_points: List[str], on_closed: Callable[[Any], None]) -> Callable[[Any], None]:
    def closed(process: Any) -> None:
        MOUNT_POINTS.release(mount_points)
        on_closed(process)

    return closed


def _sandbox_wrapper(policy: sandbox.SandboxPolicy, params: Dict[str, Any], mount_points: List[str]) -> List[str]:
    """The bubblewrap prefix confining a process (its mount point files added to ``mount_points``), or -32603
    ``sandbox unavailable: ...``."""
    bwrap = find_bubblewrap()
    if bwrap is None:
        raise sandbox.unavailable(policy, "bubblewrap (bwrap) is not installed on this Linux host"
                                  if platform_os() == "linux" else "no sandbox backend on %s" % platform_os())
    if params.get("arg0") is not None:
        raise sandbox.unavailable(policy, "arg0 cannot be set inside the bubblewrap sandbox")
    MOUNT_POINTS.sweep()  # a killed server's mount point files first: they would count as existing paths
    return bubblewrap_command(policy, [], bwrap, python=False, new_session=not params["tty"],
                              die_with_parent=True, mount_points=mount_points, drop_capabilities=True,
                              terminal_init=contain.sandbox_init_command() if params["tty"] else None)


def process_read(ctx: RequestContext, params: Dict[str, Any]) -> RawJson:
    """Retained output after ``afterSeq``, long-polling up to ``waitMs`` (PROTOCOL.md 5.4) from the request's
    arrival (a poll that waited for a request thread waits that much less)."""
    process = ctx.session.require(params["processId"])
    wait_ms = params.get("waitMs") or 0  # any u64: a deadline far away is waited in slices
    result = process.read(
        after_seq=params.get("afterSeq") or 0,
        max_bytes=params.get("maxBytes"),
        wait=max(0.0, wait_ms / 1000.0 - (time.monotonic() - ctx.received)),
        aborted=ctx.aborted,
        reserve=ctx.reserve_result,
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


#: method -> handler, read by :data:`exec_server.server.handlers.METHODS` on first use.
HANDLERS = {
    "process/start": process_start,
    "process/read": process_read,
    "process/write": process_write,
    "process/signal": process_signal,
    "process/terminate": process_terminate,
    "process/resize": process_resize,
}
