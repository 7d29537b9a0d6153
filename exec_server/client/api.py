"""Blocking client for an exec-server (ours or the Codex reference).

No asyncio: one reader thread per connection routes responses to waiting
calls and notifications to :class:`RemoteProcess` handles.  Every public
method is thread-safe.

    with Client.connect("ws://127.0.0.1:8765") as client:
        done = client.run(["uname", "-a"], timeout=10)    # like subprocess.run
        proc = client.start(["cat"], stdin=True)          # like subprocess.Popen
        proc.write(b"hi\\n"); proc.terminate(); proc.wait(timeout=5)

One logical client outlives its connections (``codex-rs/exec-server/src/
client_recovery.rs``): when a connection drops, the client is *recovering*:
it reconnects, resumes its session with ``initialize {resumeSessionId}``
(retrying -32010 while the server finishes detaching), catches every process
up with ``process/read`` from its last published seq, re-sends the reads that
were in flight, and is *connected* again.  Calls made meanwhile wait.
Mutations that were in flight fail with :class:`RequestOutcomeUnknown` and are
never replayed.  If recovery does not succeed within the policy's deadline,
or the server no longer knows the session, the client is *failed*: every
waiting and later call raises :class:`ExecServerDisconnected`, and every
process handle reports it.

Timeouts are float seconds (None blocks, 0 polls); on the wire they are the
protocol's milliseconds.
"""

import itertools
import logging
import os
import subprocess
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from exec_server.client.transport import WebSocketTransport
from exec_server.protocol.errors import (ExecServerDisconnected, ExecServerError, InvalidRequest, RpcError,
                     ServerOverloaded, SessionAlreadyAttached, error_from_dict)
from exec_server.common import telemetry
from exec_server.protocol.jsonrpc import (EnvelopeError, ErrorResponse, Notification, Request, Response, TraceContext, encode,
                      parse_message)
from exec_server.client.process import (ClosedEvent, ExitedEvent, OutputEvent, ProcessOutputGap, RemoteProcess,  # noqa: F401
                             StdinClosedError, _deadline, _remaining)
from exec_server.protocol.uris import path_to_uri

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Methods that are safe to send again after a dropped connection (reads).
IDEMPOTENT_METHODS = frozenset({
    "process/read", "environment/info", "environment/status", "fs/readFile", "fs/getMetadata",
    "fs/readDirectory", "fs/canonicalize", "fs/walk",
})

#: Pauses, in seconds, before each resend of a request the server refused
#: as overloaded (-32001); after the last, the error is raised.
OVERLOAD_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)

CONNECTED, RECOVERING, FAILED, CLOSED = "connected", "recovering", "failed", "closed"


class RequestOutcomeUnknown(ExecServerError):
    """A mutating request was sent but its connection dropped before the answer.

    The server may or may not have applied it; the client never re-sends it.
    Check the state (e.g. ``process/read``) before deciding to retry.
    """


@dataclass(frozen=True)
class ReconnectPolicy:
    """How the client recovers a dropped connection (one immutable value).

    Attributes:
        deadline: seconds from the drop until recovery gives up (keep it
            below the server's detached-session TTL, 80 s by default).
        initial_backoff: seconds before the second connect attempt.
        max_backoff: cap of the doubling backoff between attempts, seconds.
        attached_retry_interval: seconds between resumes answered -32010
            (the server has not finished detaching the old connection).
        connect_timeout: seconds for one connect + handshake attempt.
    """

    deadline: float = 25.0
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    attached_retry_interval: float = 0.1
    connect_timeout: float = 5.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.initial_backoff * (2 ** attempt))


Transport = Any
Connector = Callable[[Optional[float]], Transport]


class _Pending:
    __slots__ = ("event", "result", "error", "method", "text", "generation")

    def __init__(self, method: str, text: str, generation: int) -> None:
        self.event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.method = method
        self.text = text
        self.generation = generation


class Client:
    """A session on an exec-server, over one connection at a time.

    Create with :meth:`connect`; close with :meth:`close` or a ``with`` block.
    ``state`` is ``connected``, ``recovering``, ``failed`` or ``closed``.
    """

    def __init__(self, connector: Connector, client_name: str = "exec-server-python",
                 reconnect: Optional[ReconnectPolicy] = ReconnectPolicy()):
        self._connector = connector
        self._client_name = client_name
        self._policy = reconnect
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._state_changed = threading.Condition(self._lock)
        self._pending: Dict[Any, _Pending] = {}
        self._processes: Dict[str, RemoteProcess] = {}
        self._state = CONNECTED
        self._failure: Optional[ExecServerDisconnected] = None
        self._transport: Optional[Transport] = None
        self._generation = 0
        self._readers: List[threading.Thread] = []
        self._lost_generations: set = set()
        self.session_id: Optional[str] = None
        self.environment_info: Dict[str, Any] = {}

    @classmethod
    def connect(cls, url: str, timeout: Optional[float] = 10.0, client_name: str = "exec-server-python",
                headers: Optional[Mapping[str, str]] = None,
                reconnect: Optional[ReconnectPolicy] = ReconnectPolicy(), token: Optional[str] = None) -> "Client":
        """Connect over WebSocket, then ``initialize`` and ``initialized``.

        Args:
            url: ``ws://host:port``.
            timeout: seconds for the TCP connect, the WebSocket handshake and
                ``initialize`` each.
            client_name: sent as ``clientName``.
            headers: extra HTTP headers for the upgrade (e.g. Authorization).
            reconnect: recovery policy after a drop; None fails at once.
            token: a capability token, sent as ``Authorization: Bearer``.
        Raises:
            ExecServerDisconnected: the server cannot be reached or refused
                the upgrade.
            RpcError: ``initialize`` failed.
        """
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = "Bearer " + token

        def connector(connect_timeout: Optional[float]) -> WebSocketTransport:
            return WebSocketTransport(url, connect_timeout, headers)

        client = cls(connector, client_name, reconnect)
        client._start(timeout)
        return client

    @classmethod
    def spawn(cls, argv: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[PathLike] = None,
              timeout: Optional[float] = 30.0, client_name: str = "exec-server-python") -> "Client":
        """Start an exec-server as a child and speak JSON-RPC over its stdin/stdout.

        Examples: ``Client.spawn(["exec-server", "--listen", "stdio"])``, or
        through ssh: ``Client.spawn(["ssh", "host", "exec-server", "--listen", "stdio"])``.

        The child's lifetime is tied to the client: :meth:`close`, garbage
        collection or interpreter exit end it (and so every process it
        started).  A dropped stdio connection cannot be resumed (a new child
        would not own the old processes), so the client fails at once.

        Args:
            argv: the command that starts the server.
            env: its environment (default: this process's).
            cwd: its working directory.
            timeout: seconds for ``initialize``.
        Raises:
            ExecServerDisconnected: the command cannot start, or exits or
                sends a malformed message before ``initialize`` completes.
        """
        from exec_server.client.transport import StdioTransport

        transport = StdioTransport(argv, dict(env) if env is not None else None,
                                   os.fspath(cwd) if cwd is not None else None)

        def connector(_timeout: Optional[float]) -> StdioTransport:
            return transport

        client = cls(connector, client_name, reconnect=None)
        client._start(timeout)
        return client

    def _start(self, timeout: Optional[float]) -> None:
        transport = self._connector(timeout)
        generation = self._attach_transport(transport)
        try:
            result = self._call_on(generation, "initialize", {"clientName": self._client_name}, timeout)
            self.session_id = result["sessionId"]
            self.environment_info = result.get("environmentInfo") or {}
            self._notify_on(generation, "initialized", {})
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------- transports
    def _attach_transport(self, transport: Transport) -> int:
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._transport = transport
        # The reader holds the client weakly, so an unreferenced client can be
        # garbage collected (and its stdio child ended by the finalizer).
        reader = threading.Thread(target=_reader_main, args=(weakref.ref(self), transport, generation),
                                  name="exec-server-client-reader-%d" % generation, daemon=True)
        self._readers.append(reader)
        weakref.finalize(self, transport.close)
        reader.start()
        return generation


    def _route(self, text: Union[str, bytes], generation: int) -> None:
        if generation != self._generation:
            return  # a late event of an older connection
        message = parse_message(text)  # EnvelopeError: the peer is broken, see _read_loop
        if isinstance(message, (Response, ErrorResponse)):
            with self._lock:
                pending = self._pending.get(message.id)
                if pending is None or pending.generation != generation:
                    pending = None
                else:
                    del self._pending[message.id]
            if pending is None:
                return
            if isinstance(message, ErrorResponse):
                pending.error = error_from_dict(message.error)
            else:
                pending.result = message.result
            pending.event.set()
        elif isinstance(message, Notification):
            params = message.params if isinstance(message.params, dict) else {}
            process_id = params.get("processId")
            if isinstance(process_id, str):
                with self._lock:
                    process = self._processes.get(process_id)
                if process is not None:
                    process._receive(message.method, params)

    def _connection_lost(self, generation: int, reason: str = "connection to the exec-server closed") -> None:
        with self._lock:
            self._lost_generations.add(generation)
            if generation != self._generation or self._state in (CLOSED, FAILED, RECOVERING):
                return  # an old connection, or one the recovery thread is already handling
            recover = self._policy is not None and self.session_id is not None
            if recover:
                self._state = RECOVERING
                self._state_changed.notify_all()
            lost = [p for p in self._pending.values() if p.generation == generation]
        if not recover:
            self._fail(ExecServerDisconnected(reason))
            return
        for pending in lost:
            if pending.method not in IDEMPOTENT_METHODS:
                with self._lock:
                    self._pending.pop(self._pending_key(pending), None)
                pending.error = RequestOutcomeUnknown(
                    "%s: the connection dropped before the answer; it may or may not have been applied"
                    % pending.method)
                pending.event.set()
        log.info("exec-server connection lost; recovering session %s", self.session_id)
        threading.Thread(target=self._recover, name="exec-server-client-recovery", daemon=True).start()

    def _pending_key(self, pending: _Pending) -> Any:
        for key, value in self._pending.items():
            if value is pending:
                return key
        return None

    def _recover(self) -> None:
        policy = self._policy
        deadline = time.monotonic() + policy.deadline
        attempt = 0
        last_error: Optional[BaseException] = None
        while True:
            with self._lock:
                if self._state != RECOVERING:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(ExecServerDisconnected(
                    "exec-server connection lost and not recovered within %.1f s: %s" % (policy.deadline, last_error)))
                return
            try:
                transport = self._connector(min(policy.connect_timeout, remaining))
            except ExecServerDisconnected as exc:
                last_error = exc
                time.sleep(min(policy.backoff(attempt), max(0.0, deadline - time.monotonic())))
                attempt += 1
                continue
            generation = self._attach_transport(transport)
            try:
                self._call_on(generation, "initialize",
                              {"clientName": self._client_name, "resumeSessionId": self.session_id},
                              min(policy.connect_timeout, max(0.01, deadline - time.monotonic())))
                self._notify_on(generation, "initialized", {})
            except SessionAlreadyAttached as exc:
                last_error = exc
                transport.close()
                time.sleep(policy.attached_retry_interval)
                continue
            except InvalidRequest as exc:
                transport.close()
                self._fail(ExecServerDisconnected("exec-server session cannot be resumed: %s" % exc.message))
                return
            except (ExecServerDisconnected, TimeoutError, RpcError) as exc:
                last_error = exc
                transport.close()
                time.sleep(min(policy.backoff(attempt), max(0.0, deadline - time.monotonic())))
                attempt += 1
                continue
            if not self._catch_up(generation) or not self._resend_reads(generation):
                transport.close()
                continue  # the new connection dropped too: another round
            with self._lock:
                if generation in self._lost_generations:
                    continue
                if self._state == RECOVERING and generation == self._generation:
                    self._state = CONNECTED
                    self._state_changed.notify_all()
            log.info("exec-server session %s recovered", self.session_id)
            return

    def _catch_up(self, generation: int) -> bool:
        """Read every open process from its last published seq; False if the connection dropped."""
        with self._lock:
            processes = [p for p in self._processes.values() if not p.done]
        for process in processes:
            params = {"processId": process.process_id, "afterSeq": process.last_seq, "maxBytes": None, "waitMs": 0}
            try:
                result = self._call_on(generation, "process/read", params, self._policy.connect_timeout)
            except ExecServerDisconnected:
                return False
            except TimeoutError:
                return False
            except RpcError as exc:
                process._fail(ExecServerDisconnected("process %s is gone after reconnecting: %s"
                                                     % (process.process_id, exc.message)))
                continue
            missing = process._catch_up(result)
            if missing:
                process._fail(ProcessOutputGap(process.process_id, missing))
                try:
                    self._call_on(generation, "process/terminate", {"processId": process.process_id},
                                  self._policy.connect_timeout)
                except (ExecServerDisconnected, TimeoutError, RpcError):
                    pass
        return True

    def _resend_reads(self, generation: int) -> bool:
        """Send the reads that were in flight again; False if the connection dropped."""
        with self._lock:
            retry = [p for p in self._pending.values() if p.generation != generation]
            for pending in retry:
                pending.generation = generation
            transport = self._transport
        for pending in retry:
            try:
                transport.send(pending.text)
            except ExecServerDisconnected:
                return False
        return True

    def _fail(self, error: ExecServerDisconnected) -> None:
        self._end(FAILED, error)

    def _end(self, state: str, error: ExecServerDisconnected) -> bool:
        """Enter FAILED or CLOSED: fail every waiter and handle, close the transport.

        Returns False if the client had already ended.
        """
        with self._lock:
            if self._state in (FAILED, CLOSED) and not (state == CLOSED and self._state == FAILED):
                return False
            self._state = state
            if state == FAILED:
                self._failure = error
            pending = list(self._pending.values())
            self._pending.clear()
            processes = list(self._processes.values())
            transport = self._transport
            self._state_changed.notify_all()
        for item in pending:
            item.error = error
            item.event.set()
        for process in processes:
            process._fail(error)
        if transport is not None:
            transport.close()
        return True

    # ---------------------------------------------------------------- calls
    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    def _wait_usable(self, deadline: Optional[float], method: str) -> int:
        """Wait out a recovery; returns the current generation."""
        with self._lock:
            while self._state == RECOVERING:
                remaining = _remaining(deadline)
                if remaining == 0.0:
                    raise TimeoutError("%s: still reconnecting" % method)
                self._state_changed.wait(remaining)
            if self._state == FAILED:
                raise self._failure  # type: ignore[misc]
            if self._state == CLOSED:
                raise ExecServerDisconnected("client is closed")
            return self._generation

    def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request and wait for its result.

        Args:
            method: e.g. ``process/read``.
            params: a JSON value (usually a dict) or None.
            timeout: seconds to wait, a reconnect included; None waits forever.
        Returns:
            the ``result`` member.
        Raises:
            RpcError: the server answered with an error object (subclass by code).
                :class:`ServerOverloaded` (-32001) is retried after each of
                :data:`OVERLOAD_RETRY_DELAYS` first, as it means the request
                was not run.
            RequestOutcomeUnknown: a mutation's connection dropped before its answer.
            ExecServerDisconnected: the client is failed or closed.
            TimeoutError: no answer within ``timeout``.
        """
        deadline = _deadline(timeout)
        result = telemetry.ERROR
        try:
            with telemetry.client_span(method):
                carrier = telemetry.inject()
                trace = TraceContext(carrier.get("traceparent"), carrier.get("tracestate")) if carrier else None
                overload_delays = iter(OVERLOAD_RETRY_DELAYS)
                while True:
                    generation = self._wait_usable(deadline, method)
                    try:
                        value = self._call_on(generation, method, params, _remaining(deadline),
                                              recoverable=True, trace=trace)
                        result = telemetry.SUCCESS
                        return value
                    except _SendFailed:
                        continue  # not sent: wait for the recovery and try again
                    except ServerOverloaded:
                        delay = next(overload_delays, None)
                        remaining = _remaining(deadline)
                        if delay is None or (remaining is not None and remaining <= delay):
                            raise
                        time.sleep(delay)  # refused before it ran: sending it again is safe
        finally:
            if telemetry.metrics_enabled():
                telemetry.client_requests_total.add(1, {"method": method, "result": result})

    def _call_on(self, generation: int, method: str, params: Any, timeout: Optional[float],
                 recoverable: bool = False, trace: Optional[TraceContext] = None) -> Any:
        request_id = next(self._ids)
        text = encode(Request(request_id, method, params, trace))
        pending = _Pending(method, text, generation)
        with self._lock:
            if generation != self._generation or self._transport is None:
                if recoverable:
                    raise _SendFailed()
                raise ExecServerDisconnected("connection replaced")
            self._pending[request_id] = pending
            transport = self._transport
        try:
            transport.send(text)
        except ExecServerDisconnected:
            with self._lock:
                self._pending.pop(request_id, None)
            if recoverable and self._policy is not None and self.session_id is not None:
                # sendall failed, so the server cannot hold the whole message: safe to send again
                with self._lock:
                    if self._state == CONNECTED and generation == self._generation:
                        self._state_changed.wait(0.05)
                raise _SendFailed() from None
            raise
        if not pending.event.wait(timeout):
            with self._lock:
                self._pending.pop(request_id, None)
            raise TimeoutError("%s: no response within %.3f s" % (method, timeout))
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _notify_on(self, generation: int, method: str, params: Any) -> None:
        with self._lock:
            transport = self._transport if generation == self._generation else None
        if transport is None:
            raise ExecServerDisconnected("connection replaced")
        transport.send(encode(Notification(method, params)))

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no response).

        Raises:
            ExecServerDisconnected: the client is failed or closed.
        """
        self._notify_on(self._wait_usable(None, method), method, params)

    def close(self) -> None:
        """Close the connection; no recovery follows.

        The server keeps the session's processes for its detached-session TTL
        (80 s by default) and then kills them; terminate them first to end
        them now.
        """
        if not self._end(CLOSED, ExecServerDisconnected("client is closed")):
            return
        for reader in self._readers:
            if reader is not threading.current_thread():
                reader.join(5.0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------ processes
    @property
    def fs(self):
        """The file system API (:class:`~exec_server.client.fs.FileSystem`)."""
        from exec_server.client.fs import FileSystem

        return FileSystem(self)

    @property
    def server_platform(self) -> str:
        return self.environment_info.get("platformOs", "linux")

    def to_uri(self, path: PathLike) -> str:
        """A ``file://`` URI on the server's host for ``path`` (str, Path or URI)."""
        text = os.fspath(path)
        if text.startswith("file:"):
            return text
        return path_to_uri(text, windows=self.server_platform == "windows")

    def start(self, argv: Sequence[str], *, cwd: Optional[PathLike] = None,
              env: Optional[Mapping[str, str]] = None, inherit_env: bool = True,
              env_policy: Optional[Mapping[str, Any]] = None, tty: bool = False, stdin: bool = False,
              arg0: Optional[str] = None, process_id: Optional[str] = None,
              sandbox: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = 30.0) -> RemoteProcess:
        """Start a process, like ``subprocess.Popen`` (``process/start``).

        Args:
            argv: program and arguments (``argv[0]`` is looked up in PATH).
            cwd: working directory on the server (str, Path or file URI);
                default: the server's working directory.
            env: variables laid over the inherited environment.
            inherit_env: start from the server's environment minus names
                matching ``*KEY*``, ``*SECRET*``, ``*TOKEN*`` (the Codex
                default envPolicy); False gives the child exactly ``env``.
            env_policy: a raw ``envPolicy`` object, overriding ``inherit_env``.
            tty: run under a PTY (stream ``pty``).
            stdin: keep stdin writable (``pipeStdin``).
            arg0: ``argv[0]`` as the child sees it.
            process_id: the id to use; default a fresh unique one.
            sandbox: a FileSystemSandboxContext (PROTOCOL.md 9) confining the
                process; ``sandbox_type`` of the handle tells what applied.
            timeout: seconds to wait for the start response.
        Raises:
            RpcError: e.g. InternalError ``No such file or directory (os error 2)``.
            RequestOutcomeUnknown, ExecServerDisconnected, TimeoutError: as for :meth:`call`.
        """
        if not argv:
            raise ValueError("argv must not be empty")
        process_id = process_id if process_id is not None else "proc-" + uuid.uuid4().hex
        if env_policy is None and inherit_env:
            env_policy = {"inherit": "all", "ignoreDefaultExcludes": False, "exclude": [],
                          "set": {}, "includeOnly": []}
        params: Dict[str, Any] = {
            "processId": process_id,
            "argv": [os.fspath(a) for a in argv],
            "cwd": self.to_uri(cwd) if cwd is not None else self.environment_info.get("cwd", "file:///"),
            "env": dict(env or {}),
            "tty": tty,
            "pipeStdin": stdin,
            "arg0": arg0,
        }
        if env_policy is not None:
            params["envPolicy"] = dict(env_policy)
        if sandbox is not None:
            params["sandbox"] = dict(sandbox)
        process = RemoteProcess(self, process_id, list(argv))
        with self._lock:
            if process_id in self._processes:
                raise ValueError("process id %r is already used by this client" % process_id)
            self._processes[process_id] = process  # before the request: events follow the response
        try:
            result = self.call("process/start", params, timeout=timeout)
        except BaseException:
            with self._lock:
                self._processes.pop(process_id, None)
            raise
        process.sandbox_type = result.get("sandboxType", "none")
        return process

    def forget(self, process: RemoteProcess) -> None:
        """Stop tracking a finished process (its events are no longer kept)."""
        with self._lock:
            self._processes.pop(process.process_id, None)

    def run(self, argv: Sequence[str], *, input: Optional[bytes] = None, timeout: Optional[float] = None,
            check: bool = False, **start_options: Any) -> "subprocess.CompletedProcess[bytes]":
        """Run a process to completion, like ``subprocess.run(capture_output=True)``.

        Args:
            argv: program and arguments.
            input: bytes for the child's stdin, followed by end of file.  The
                protocol cannot close a child's stdin, so the child reads
                them through ``/bin/sh -c 'head -c N | "$@"'`` (POSIX servers
                only).
            timeout: seconds for the whole run; when it passes the remote
                tree is killed and ``subprocess.TimeoutExpired`` is raised.
            check: raise ``subprocess.CalledProcessError`` on a non-zero exit.
            start_options: as for :meth:`start`.
        Returns:
            ``subprocess.CompletedProcess`` with ``stdout`` and ``stderr``
            bytes (a PTY's output is in ``stdout``).
        """
        deadline = _deadline(timeout)
        command = list(argv)
        if input is not None:
            if self.server_platform == "windows":
                raise NotImplementedError("input= needs a POSIX server")
            command = ["/bin/sh", "-c", 'head -c "$0" | "$@"', str(len(input))] + command
            start_options["stdin"] = True
        process = self.start(command, timeout=_remaining(deadline) if deadline else 30.0, **start_options)
        try:
            if input:
                process.write(input)
            stdout, stderr = process.communicate(timeout=_remaining(deadline))
        except subprocess.TimeoutExpired:
            try:
                process.kill()
            except (RpcError, ExecServerError, TimeoutError):
                pass
            raise subprocess.TimeoutExpired(list(argv), timeout) from None
        finally:
            self.forget(process)
        done = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
        if check:
            done.check_returncode()
        return done


def _reader_main(client_ref: "weakref.ReferenceType[Client]", transport: Transport, generation: int) -> None:
    """Read one connection until it ends; route each message to the client, if it still exists."""
    reason = "connection to the exec-server closed"
    try:
        while True:
            try:
                text = transport.receive()
            except ExecServerDisconnected as exc:
                reason = str(exc)
                break
            client = client_ref()
            if client is None:
                return
            try:
                client._route(text, generation)
            except EnvelopeError as exc:
                reason = "exec-server sent a malformed message: %s" % exc.description
                log.warning("%s", reason)
                if hasattr(transport, "kill"):
                    transport.kill()
                else:
                    transport.close()
                break
            finally:
                del client
    except Exception:
        log.exception("client reader failed")
    client = client_ref()
    if client is not None:
        client._connection_lost(generation, reason)


class _SendFailed(Exception):
    """Internal: a request could not be sent on the current connection."""


__all__ = ["Client", "RemoteProcess", "ReconnectPolicy", "RequestOutcomeUnknown", "OutputEvent", "ExitedEvent",
           "ClosedEvent", "ProcessOutputGap", "StdinClosedError", "ExecServerDisconnected", "ExecServerError",
           "RpcError"]
