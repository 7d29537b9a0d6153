"""Blocking client for an exec-server (ours or the Codex reference).

No asyncio: one background thread reads the connection and routes responses
to waiting calls and notifications to :class:`RemoteProcess` handles.  Every
public method is thread-safe.

    with Client.connect("ws://127.0.0.1:8765") as client:
        done = client.run(["uname", "-a"], timeout=10)    # like subprocess.run
        proc = client.start(["cat"], stdin=True)          # like subprocess.Popen
        proc.write(b"hi\\n"); proc.terminate(); proc.wait(timeout=5)

Timeouts are float seconds (None blocks, 0 polls); on the wire they are the
protocol's milliseconds.  Errors: :class:`~exec_server.errors.RpcError`
subclasses carry the JSON-RPC code; :class:`~exec_server.errors.
ExecServerDisconnected` means the connection is gone.
"""

import collections
import itertools
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

import simple_websocket
from simple_websocket.ws import Base as _WebSocketBase
from wsproto import ConnectionType
from wsproto.events import TextMessage

from . import b64
from .errors import ExecServerDisconnected, ExecServerError, RpcError, error_from_dict
from .jsonrpc import EnvelopeError, ErrorResponse, Notification, Request, Response, encode, parse_message
from .uris import path_to_uri

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Largest message the client accepts, bytes.
CLIENT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Bytes asked of the socket per ``recv``.
CLIENT_RECV_BYTES = 256 * 1024


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("timeout must not be negative")
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


# --------------------------------------------------------------------- events
@dataclass(frozen=True)
class OutputEvent:
    """``process/output``: ``data`` bytes from ``stream`` (stdout, stderr or pty)."""

    seq: int
    stream: str
    data: bytes


@dataclass(frozen=True)
class ExitedEvent:
    """``process/exited``: the exit code (128 + N for a pipe child killed by signal N)."""

    seq: int
    exit_code: int
    sandbox_denied: bool = False


@dataclass(frozen=True)
class ClosedEvent:
    """``process/closed``: exited and all output delivered; nothing follows."""

    seq: int


ProcessEvent = Union[OutputEvent, ExitedEvent, ClosedEvent]


class StdinClosedError(BrokenPipeError):
    """``process/write`` answered ``stdinClosed``: start with ``stdin=True`` or ``tty=True``."""


# ------------------------------------------------------------------ transport
class _LockedSocket:
    """A socket whose ``send`` writes whole buffers under one lock.

    simple-websocket writes pongs and closes from its own thread with
    ``socket.send``; routing every write through ``sendall`` under this lock
    keeps frames whole.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self.lock:
            self._sock.sendall(data)
        return len(data)

    sendall = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _WebSocket(simple_websocket.Client):
    """simple-websocket's client with a connect timeout, TCP_NODELAY and locked writes."""

    def __init__(self, url: str, timeout: Optional[float], headers: Optional[Mapping[str, str]] = None):
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError("only ws:// URLs are supported, got %r" % url)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.subprotocols = []
        self.extra_headeers = list((headers or {}).items())  # simple-websocket's attribute name
        self._timeout = timeout
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _WebSocketBase.__init__(self, _LockedSocket(raw), connection_type=ConnectionType.CLIENT,
                                receive_bytes=CLIENT_RECV_BYTES, max_message_size=CLIENT_MAX_MESSAGE_BYTES)

    def handshake(self) -> None:
        super().handshake()
        self.sock.settimeout(None)

    def send(self, data: str) -> None:
        if not self.connected:
            raise ExecServerDisconnected("connection closed")
        with self.sock.lock:
            frame = self.ws.send(TextMessage(data=data))
            self.sock._sock.sendall(frame)


class _Pending:
    __slots__ = ("event", "result", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None


# --------------------------------------------------------------------- client
class Client:
    """A connection to an exec-server, with one session.

    Create with :meth:`connect`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, transport: _WebSocket, client_name: str):
        self._ws = transport
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: Dict[Any, _Pending] = {}
        self._processes: Dict[str, "RemoteProcess"] = {}
        self._closed = False
        self._disconnect_error: Optional[ExecServerDisconnected] = None
        self.session_id: Optional[str] = None
        self.environment_info: Dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read_loop, name="exec-server-client-reader", daemon=True)
        self._reader.start()
        self._client_name = client_name

    @classmethod
    def connect(cls, url: str, timeout: Optional[float] = 10.0, client_name: str = "exec-server-python",
                headers: Optional[Mapping[str, str]] = None) -> "Client":
        """Connect, then ``initialize`` and ``initialized``.

        Args:
            url: ``ws://host:port``.
            timeout: seconds for the TCP connect, the WebSocket handshake and
                ``initialize`` each.
            client_name: sent as ``clientName``.
            headers: extra HTTP headers for the upgrade (e.g. Authorization).
        Raises:
            ExecServerDisconnected: the server cannot be reached or refused
                the upgrade.
            RpcError: ``initialize`` failed.
        """
        try:
            transport = _WebSocket(url, timeout, headers)
        except (OSError, simple_websocket.ConnectionError, simple_websocket.ConnectionClosed) as exc:
            raise ExecServerDisconnected("cannot connect to %s: %s" % (url, exc)) from exc
        client = cls(transport, client_name)
        try:
            result = client.call("initialize", {"clientName": client_name}, timeout=timeout)
            client.session_id = result["sessionId"]
            client.environment_info = result.get("environmentInfo") or {}
            client.notify("initialized", {})
        except BaseException:
            client.close()
            raise
        return client

    # ---------------------------------------------------------------- I/O
    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    text = self._ws.receive()
                except simple_websocket.ConnectionClosed:
                    break
                if text is None:
                    if not self._ws.connected:
                        break
                    continue
                self._route(text)
        except Exception:
            log.exception("client reader failed")
        finally:
            self._connection_lost()

    def _route(self, text: Union[str, bytes]) -> None:
        try:
            message = parse_message(text)
        except EnvelopeError as exc:
            log.warning("ignoring malformed message from server: %s", exc.description)
            return
        if isinstance(message, (Response, ErrorResponse)):
            with self._lock:
                pending = self._pending.pop(message.id, None)
            if pending is None:
                if isinstance(message, ErrorResponse):
                    log.warning("server error without a matching request: %s", message.error)
                return
            if isinstance(message, ErrorResponse):
                pending.error = error_from_dict(message.error)
            else:
                pending.result = message.result
            pending.event.set()
        elif isinstance(message, Notification):
            params = message.params if isinstance(message.params, dict) else {}
            process = None
            process_id = params.get("processId")
            if isinstance(process_id, str):
                with self._lock:
                    process = self._processes.get(process_id)
            if process is not None:
                process._receive(message.method, params)

    def _connection_lost(self) -> None:
        error = ExecServerDisconnected("connection to the exec-server closed")
        with self._lock:
            self._disconnect_error = error
            pending = list(self._pending.values())
            self._pending.clear()
            processes = list(self._processes.values())
        for item in pending:
            item.error = error
            item.event.set()
        for process in processes:
            process._fail(error)

    @property
    def connected(self) -> bool:
        return self._disconnect_error is None and not self._closed

    def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request and wait for its result.

        Args:
            method: e.g. ``process/read``.
            params: a JSON value (usually a dict) or None.
            timeout: seconds to wait for the response; None waits forever.
        Returns:
            the ``result`` member.
        Raises:
            RpcError: the server answered with an error object (subclass by code).
            ExecServerDisconnected: the connection closed before the answer.
            TimeoutError: no answer within ``timeout``.
        """
        deadline = _deadline(timeout)
        request_id = next(self._ids)
        pending = _Pending()
        with self._lock:
            if self._disconnect_error is not None:
                raise self._disconnect_error
            self._pending[request_id] = pending
        try:
            self._ws.send(encode(Request(request_id, method, params)))
        except (OSError, simple_websocket.ConnectionClosed, ExecServerDisconnected) as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            raise ExecServerDisconnected("cannot send %s: %s" % (method, exc)) from exc
        if not pending.event.wait(_remaining(deadline)):
            with self._lock:
                self._pending.pop(request_id, None)
            raise TimeoutError("%s: no response within %.3f s" % (method, timeout))
        if pending.error is not None:
            raise pending.error
        return pending.result

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no response).

        Raises:
            ExecServerDisconnected: the connection is closed.
        """
        try:
            self._ws.send(encode(Notification(method, params)))
        except (OSError, simple_websocket.ConnectionClosed) as exc:
            raise ExecServerDisconnected(str(exc)) from exc

    def close(self) -> None:
        """Close the connection (the server then ends this session's processes)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ws.close()
        except Exception:
            pass
        self._reader.join(5.0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------ processes
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
              timeout: Optional[float] = 30.0) -> "RemoteProcess":
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
            timeout: seconds to wait for the start response.
        Raises:
            RpcError: e.g. InternalError ``No such file or directory (os error 2)``.
            ExecServerDisconnected, TimeoutError: as for :meth:`call`.
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
        process = RemoteProcess(self, process_id, list(argv))
        with self._lock:
            if self._disconnect_error is not None:
                raise self._disconnect_error
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

    def _forget(self, process_id: str) -> None:
        with self._lock:
            self._processes.pop(process_id, None)

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
            except (RpcError, ExecServerDisconnected, TimeoutError):
                pass
            raise subprocess.TimeoutExpired(list(argv), timeout) from None
        finally:
            self._forget(process.process_id)
        done = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
        if check:
            done.check_returncode()
        return done


class RemoteProcess:
    """A process started through :meth:`Client.start`, like ``subprocess.Popen``.

    Events (:class:`OutputEvent`, :class:`ExitedEvent`, :class:`ClosedEvent`)
    are buffered in seq order until consumed by iteration or
    :meth:`communicate`.  Thread-safe.
    """

    def __init__(self, client: Client, process_id: str, args: List[str]):
        self.client = client
        self.process_id = process_id
        self.args = args
        self.sandbox_type = "none"
        self._changed = threading.Condition()
        self._events: Deque[ProcessEvent] = collections.deque()
        self._last_seq = 0
        self._exit_code: Optional[int] = None
        self._closed = False
        self._failure: Optional[BaseException] = None

    # ------------------------------------------------------------- events
    def _receive(self, method: str, params: Dict[str, Any]) -> None:
        seq = params.get("seq")
        if not isinstance(seq, int):
            return
        if method == "process/output":
            event: ProcessEvent = OutputEvent(seq, params.get("stream", "stdout"), b64.decode(params.get("chunk", "")))
        elif method == "process/exited":
            event = ExitedEvent(seq, params.get("exitCode", -1), bool(params.get("sandboxDenied")))
        elif method == "process/closed":
            event = ClosedEvent(seq)
        else:
            return
        with self._changed:
            if seq <= self._last_seq:
                return  # already seen
            self._last_seq = seq
            self._events.append(event)
            if isinstance(event, ExitedEvent):
                self._exit_code = event.exit_code
            elif isinstance(event, ClosedEvent):
                self._closed = True
            self._changed.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._changed:
            if not self._closed:
                self._failure = error
            self._changed.notify_all()

    @property
    def returncode(self) -> Optional[int]:
        """The exit code once ``process/exited`` arrived, else None."""
        with self._changed:
            return self._exit_code

    @property
    def last_seq(self) -> int:
        """Highest seq received for this process."""
        with self._changed:
            return self._last_seq

    def next_event(self, timeout: Optional[float] = None) -> Optional[ProcessEvent]:
        """The next event, or None after ``closed`` was consumed.

        Raises:
            subprocess.TimeoutExpired: nothing arrived within ``timeout``.
            ExecServerDisconnected: the connection closed before ``closed``.
        """
        deadline = _deadline(timeout)
        with self._changed:
            while not self._events:
                if self._closed:
                    return None
                if self._failure is not None:
                    raise self._failure
                remaining = _remaining(deadline)
                if remaining == 0.0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                self._changed.wait(remaining)
            return self._events.popleft()

    def __iter__(self) -> Iterator[ProcessEvent]:
        """Every event until (and including) ``closed``, blocking."""
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event
            if isinstance(event, ClosedEvent):
                return

    def communicate(self, timeout: Optional[float] = None):
        """Collect output until ``closed``; returns ``(stdout, stderr)`` bytes.

        Raises:
            subprocess.TimeoutExpired: not closed within ``timeout`` (the
                output so far stays buffered).
            ExecServerDisconnected: the connection closed first.
        """
        deadline = _deadline(timeout)
        out: List[bytes] = []
        err: List[bytes] = []
        consumed: List[ProcessEvent] = []
        try:
            while True:
                event = self.next_event(_remaining(deadline))
                if event is None:
                    break
                consumed.append(event)
                if isinstance(event, OutputEvent):
                    (err if event.stream == "stderr" else out).append(event.data)
                elif isinstance(event, ClosedEvent):
                    break
        except subprocess.TimeoutExpired:
            with self._changed:
                self._events.extendleft(reversed(consumed))
            raise
        return b"".join(out), b"".join(err)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the exit; returns the exit code.

        Raises:
            subprocess.TimeoutExpired: no exit within ``timeout``.
            ExecServerDisconnected: the connection closed first.
        """
        deadline = _deadline(timeout)
        with self._changed:
            while self._exit_code is None:
                if self._failure is not None:
                    raise self._failure
                remaining = _remaining(deadline)
                if remaining == 0.0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                self._changed.wait(remaining)
            return self._exit_code

    def poll(self) -> Optional[int]:
        return self.returncode

    # ------------------------------------------------------------ control
    def write(self, data: bytes, timeout: Optional[float] = 30.0) -> None:
        """Write bytes to the child's stdin or PTY (``process/write``).

        Raises:
            StdinClosedError: the process has no writable stdin.
            ProcessLookupError: the server does not know the process.
            InternalError: the process has exited (``failed to write to process stdin``).
        """
        status = self.client.call("process/write", {
            "processId": self.process_id, "chunk": b64.encode(bytes(data)), "writeId": uuid.uuid4().hex,
        }, timeout=timeout)["status"]
        if status == "stdinClosed":
            raise StdinClosedError("process %s has no writable stdin" % self.process_id)
        if status == "unknownProcess":
            raise ProcessLookupError("unknown process id %s" % self.process_id)

    def send_interrupt(self, timeout: Optional[float] = 30.0) -> None:
        """SIGINT to the remote process group (``process/signal interrupt``)."""
        self.signal("interrupt", timeout=timeout)

    def signal(self, name: str = "interrupt", timeout: Optional[float] = 30.0) -> None:
        """Send a protocol signal (``interrupt`` is the only one; PROTOCOL.md 5.6)."""
        self.client.call("process/signal", {"processId": self.process_id, "signal": name}, timeout=timeout)

    def terminate(self, timeout: Optional[float] = 30.0) -> bool:
        """Kill the remote process tree at once (``process/terminate``; SIGKILL).

        Returns:
            True if the process was running and a kill was issued.
        """
        return bool(self.client.call("process/terminate", {"processId": self.process_id},
                                     timeout=timeout)["running"])

    kill = terminate

    def read(self, after_seq: int = 0, max_bytes: Optional[int] = None, wait_ms: int = 0,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """The raw ``process/read`` result (retained output after ``after_seq``)."""
        params = {"processId": self.process_id, "afterSeq": after_seq, "maxBytes": max_bytes, "waitMs": wait_ms}
        if timeout is None:
            timeout = wait_ms / 1000.0 + 30.0
        return self.client.call("process/read", params, timeout=timeout)

    def __repr__(self) -> str:
        return "<RemoteProcess %s returncode=%r>" % (self.process_id, self.returncode)


__all__ = ["Client", "RemoteProcess", "OutputEvent", "ExitedEvent", "ClosedEvent",
           "StdinClosedError", "ExecServerDisconnected", "ExecServerError", "RpcError"]
