"""Blocking client for an exec-server (ours or the Codex reference): the :class:`Client` facade.

No asyncio: one reader thread per connection routes responses to waiting
calls and notifications to :class:`RemoteProcess` handles.  Every public
method is thread-safe.

    with Client.connect("ws://127.0.0.1:8765") as client:
        done = client.run(["uname", "-a"], timeout=10)    # like subprocess.run
        proc = client.start(["cat"], stdin=True)          # like subprocess.Popen
        proc.write(b"hi\\n"); proc.terminate(); proc.wait(timeout=5)

Behind it: ``websocket`` and ``stdio`` carry messages (``transport`` is their interface); ``endpoint`` matches
responses to calls and routes notifications; ``recovery`` resumes the session after a drop; ``process`` (with
``buffer`` and ``control``) and ``fs`` are the handles.  When the connection is lost for good, every waiting and
later call raises :class:`ExecServerDisconnected`.  Timeouts are float seconds (None blocks, 0 polls).
"""

import os
import subprocess
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Union

from exec_server.client import oneshot
from exec_server.client.buffer import MAX_BUFFERED_OUTPUT
from exec_server.client.control import terminate_open, terminate_unknown_start
from exec_server.client.endpoint import CONNECTED, RECOVERING, Endpoint
from exec_server.client.interfaces import (CallTimeout, ExtensionNotSupported, PathLike, command_argv,  # noqa: F401
                                           command_env, seconds as _seconds, stdin_flag)
from exec_server.client.process import (ClosedEvent, ExitedEvent, OutputEvent, ProcessOutputGap,  # noqa: F401
                                        RemoteProcess, StdinClosedError)
from exec_server.client.recovery import (FreshId, ReconnectPolicy, Recovery, RequestOutcomeUnknown,  # noqa: F401
                                         start_once)
from exec_server.client.start_errors import start_failure as _start_failure
from exec_server.client.transport import Connector, Transport
from exec_server.protocol.errors import ExecServerDisconnected, ExecServerError, InternalError, RpcError
from exec_server.common import telemetry
from exec_server.protocol.handshake import parse_initialize_result
from exec_server.protocol.jsonrpc import TraceContext
from exec_server.protocol.uris import path_to_uri

if TYPE_CHECKING:  # ssl and wsproto are imported by connect() alone (start-up of run and spawn)
    import ssl


class Client:
    """A session on an exec-server, over one connection at a time.

    Create with :meth:`connect` (WebSocket), :meth:`spawn` (stdio child) or
    :meth:`open` (any :data:`~exec_server.client.transport.Connector`); close
    with :meth:`close` or a ``with`` block.  ``state`` is ``connected``,
    ``recovering``, ``failed`` or ``closed``.
    """

    def __init__(self, connector: Connector, client_name: str = "exec-server-python",
                 reconnect: Optional[ReconnectPolicy] = ReconnectPolicy()):
        self._connector = connector
        self._client_name = client_name
        self._policy = reconnect
        self._endpoint = Endpoint()
        self._closing = False  # close() has begun: start() refuses (both under _start_lock)
        self._start_lock = threading.Lock()
        self.session_id: Optional[str] = None
        self.environment_info: Dict[str, Any] = {}
        #: ``extensions`` of the ``initialize`` result (none from the Codex reference); see :meth:`supports`.
        self.extensions: Dict[str, Any] = {}

    @classmethod
    def open(cls, connector: Connector, timeout: Optional[float] = 10.0, client_name: str = "exec-server-python",
             reconnect: Optional[ReconnectPolicy] = ReconnectPolicy()) -> "Client":
        """Open a transport with ``connector(timeout)``, then ``initialize`` and ``initialized``.

        Args:
            connector: opens a :class:`~exec_server.client.transport.Transport`;
                called again (with the policy's connect timeout) to reconnect.
            timeout: seconds for the connector and ``initialize`` each.
            client_name: sent as ``clientName``.
            reconnect: recovery policy after a drop; None fails at once.
        Raises:
            ExecServerDisconnected: the connector failed, or the connection
                ended before ``initialize`` completed.
            RpcError: ``initialize`` failed.
            CallTimeout: no ``initialize`` answer within ``timeout``.
        """
        client = cls(connector, client_name, reconnect)
        client._start(_seconds(timeout))
        return client

    @classmethod
    def connect(cls, url: str, timeout: Optional[float] = 10.0, client_name: str = "exec-server-python",
                headers: Optional[Mapping[str, str]] = None, reconnect: Optional[ReconnectPolicy] = ReconnectPolicy(),
                token: Union[str, Callable[[], str], None] = None, ssl_context: Optional["ssl.SSLContext"] = None
                ) -> "Client":
        """Connect over WebSocket, then ``initialize`` and ``initialized``.

        Args:
            url: ``ws://host:port``, or ``wss://host:port`` for TLS.
            timeout: seconds for the TCP connect with the TLS and WebSocket
                handshakes, and for ``initialize``.
            client_name: sent as ``clientName``.
            headers: extra HTTP headers for the upgrade (e.g. Authorization).
            reconnect: recovery policy after a drop, and the keepalive
                settings (``ping_interval``, ``keepalive_timeout``,
                ``probe_timeout``); None fails at once after a drop (with the
                default keepalive).
            token: sent as ``Authorization: Bearer <token>``: a capability token or signed JWT, or a
                callable returning one, called before every connect and reconnect (signed tokens expire,
                so each connection gets a fresh one), on the client's recovery thread during a reconnect.
            ssl_context: for ``wss://``: trusted CAs, client certificate;
                None uses the system trust store (``ssl.create_default_context()``).
        Raises:
            ExecServerTLSError: the TLS handshake failed (e.g. the server's
                certificate is not trusted); fix the trust settings.
            ExecServerDisconnected: the server cannot be reached or refused
                the upgrade (the message names the HTTP status), or the
                token callable raised (the cause is chained).
            RpcError: ``initialize`` failed.
        """
        from exec_server.client.websocket import connector_for

        keepalive = reconnect if reconnect is not None else ReconnectPolicy()
        connector = connector_for(url, headers, token, ssl_context, keepalive.ping_interval,
                                  keepalive.keepalive_timeout, keepalive.probe_timeout)
        return cls.open(connector, timeout, client_name, reconnect)

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
        from exec_server.client.stdio import StdioTransport

        transport = StdioTransport(argv, dict(env) if env is not None else None,
                                   os.fspath(cwd) if cwd is not None else None)
        return cls.open(lambda _timeout: transport, timeout, client_name, reconnect=None)

    def _start(self, timeout: Optional[float]) -> None:
        """Attach the first transport, ``initialize``, ``initialized``; ExecServerDisconnected if not an exec-server."""
        endpoint = self._endpoint
        generation = endpoint.attach(self._connector(timeout))
        try:
            with telemetry.client_call("initialize") as carrier:  # as every call: the server's span its child
                result = endpoint.call_on(generation, "initialize", {"clientName": self._client_name}, timeout,
                                          trace=TraceContext.of(carrier))
            self.session_id, self.environment_info, self.extensions = parse_initialize_result(result)
            limit = self.extensions.get("maxMessageBytes")  # our extension: larger requests are refused unsent
            endpoint.max_request_bytes = limit if type(limit) is int and limit > 0 else None
            if self._policy is not None:
                endpoint.on_lost = Recovery(endpoint, self._policy, self._connector, self._client_name,
                                            self.session_id).connection_lost
            endpoint.notify_on(generation, "initialized", {})
        except BaseException as exc:
            endpoint.close(abort=isinstance(exc, TimeoutError))  # a silent server gets no closing handshake
            raise

    @property
    def _transport(self) -> Optional[Transport]:
        """The current transport (the tests read a stdio child's ``pid`` from it)."""
        return self._endpoint.transport

    @property
    def state(self) -> str:
        """``connected``, ``recovering``, ``failed`` or ``closed``."""
        return self._endpoint.state

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    @property
    def connection_number(self) -> int:
        """1 on the first connection, more after each reconnect (file handles end with their connection)."""
        return self._endpoint.generation

    def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request and wait for its result.

        Args:
            method: e.g. ``process/read``.
            params: a JSON value (usually a dict) or None.
            timeout: seconds to wait, a reconnect included; None waits forever.
        Returns:
            the ``result`` member.
        Raises:
            RpcError: the server answered with an error object (subclass by code).  :class:`ServerOverloaded`
                (-32001) is retried after each of ``endpoint.OVERLOAD_RETRY_DELAYS`` first (it was not run).
            RequestOutcomeUnknown: a mutation's connection dropped before its answer (not for reads, and
                not for ``process/write``, whose ``writeId`` makes it safe to send again).
            RequestTooLarge: the request is over the server's message limit (not sent when the server
                advertises ``maxMessageBytes``; else the server closed the connection with 1009 on it).
            ExecServerDisconnected: the client is failed or closed.
            CallTimeout: no answer within ``timeout`` (a ``subprocess.TimeoutExpired`` and a ``TimeoutError``).
        """
        return self._endpoint.call(method, params, timeout)

    def check_connection(self) -> None:
        """A wait timed out: probe a quiet connection now (non-blocking); a dead one is recovered."""
        self._endpoint.suspect()

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (no response).  Raises ExecServerDisconnected: the client is failed or closed."""
        self._endpoint.notify(method, params)

    def close(self) -> None:
        """Terminate the processes this client started that have not closed, then close the connection.

        As the end of an ``ssh`` session takes its commands: a closed client
        is never resumed, so the server's detached-session TTL (80 s by
        default) would only keep them running.  One ``process/terminate``
        each, :data:`CLOSE_TERMINATE_WAIT` s for all of them together (a
        recovery in progress waited out within them; failed, or recovered
        too late: the TTL ends them).  A ``start`` in flight in another
        thread is waited for and its process terminated too; one begun after
        ``close`` raises ``ExecServerDisconnected``.  No recovery follows.
        """
        with self._start_lock:
            self._closing = True
        try:
            if self.state in (CONNECTED, RECOVERING):
                terminate_open(self.call, self._endpoint.open_processes, CLOSE_TERMINATE_WAIT)
        finally:
            self._endpoint.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def fs(self):
        """The file system API (:class:`~exec_server.client.fs.FileSystem`)."""
        from exec_server.client.fs import FileSystem

        return FileSystem(self)

    @property
    def server_platform(self) -> str:
        return self.environment_info.get("platformOs", "linux")

    @property
    def max_request_bytes(self) -> Optional[int]:
        """Bytes of UTF-8 the server reads in one message (our ``maxMessageBytes`` extension); None if not
        advertised.  A larger request raises ``RequestTooLarge`` unsent."""
        return self._endpoint.max_request_bytes

    def supports(self, extension: str) -> bool:
        """True if ``initialize`` advertised the extension (``closeStdin``, ``ptySize``; README.rst)."""
        return self.extensions.get(extension) is True

    def to_uri(self, path: PathLike) -> str:
        """A ``file://`` URI on the server's host for ``path`` (str, bytes, Path or URI)."""
        text = os.fsdecode(path)  # bytes that are not UTF-8 go as %XX
        if text.startswith("file:"):
            return text
        return path_to_uri(text, windows=self.server_platform == "windows")

    def start(self, argv: Sequence[str], *, cwd: Optional[PathLike] = None,
              env: Optional[Mapping[str, str]] = None, inherit_env: bool = True,
              env_policy: Optional[Mapping[str, Any]] = None, tty: bool = False, stdin: bool = False,
              arg0: Optional[str] = None, process_id: Optional[str] = None, pty_size: Optional[Sequence[int]] = None,
              sandbox: Optional[Mapping[str, Any]] = None, timeout: Optional[float] = 30.0,
              max_buffered_output: Optional[int] = MAX_BUFFERED_OUTPUT) -> RemoteProcess:
        """Start a process, like ``subprocess.Popen`` (``process/start``).

        Args:
            argv: program and arguments, looked up in PATH (a lone str is the program; ``command_argv``).
            cwd: working directory on the server (str, Path or file URI);
                default: the server's working directory.
            env: variables laid over the inherited environment.
            inherit_env: start from the server's environment minus names
                matching ``*KEY*``, ``*SECRET*``, ``*TOKEN*`` (the Codex
                default envPolicy); False gives the child exactly ``env``.
            env_policy: a raw ``envPolicy`` object, overriding ``inherit_env``.
            tty: run under a PTY (stream ``pty``).
            stdin: keep stdin writable (``pipeStdin``): True or ``subprocess.PIPE`` (else the null device).
            arg0: ``argv[0]`` as the child sees it.
            pty_size: ``(rows, cols)`` of the PTY (``ptySize`` extension; else 24x80).
            process_id: the id to use; default a fresh unique one.
            sandbox: a FileSystemSandboxContext (PROTOCOL.md 9) confining the
                process; ``sandbox_type`` of the handle tells what applied.
            timeout: seconds to wait for the start response (then up to 5 s more to terminate it: below).
            max_buffered_output: bytes of output the handle keeps until
                consumed (None: no limit); past it, its consumer reads the
                rest from the server (README.rst "the client's limits").
        Raises:
            RpcError: e.g. ProgramNotFound, WorkingDirectoryNotFound (InternalError subclasses: what is missing).
            ExecServerDisconnected, CallTimeout: as for :meth:`call` (a start whose connection dropped is sent
                again: :func:`~exec_server.client.recovery.start_once`; one of the client's own id that timed
                out or was interrupted is terminated: :func:`~exec_server.client.control.terminate_unknown_start`).
            RequestOutcomeUnknown: only for the caller's ``process_id``, when the server has it after a drop.
            ValueError: ``argv`` is empty, ``cwd`` is not absolute (``path is not absolute: 'x'``), ``process_id``
                is in use, ``pty_size`` is given without ``tty``, ``max_buffered_output`` is not a positive
                integer or None, or ``timeout`` is negative or NaN (TypeError: an item is not text, ``stdin`` a file).
        """
        timeout = _seconds(timeout)  # checked before anything is sent (the start's own deadline would be past)
        argv = command_argv(argv)
        process_id = process_id if process_id is not None else FreshId("proc-" + os.urandom(16).hex())
        if env_policy is None and inherit_env:
            env_policy = {"inherit": "all", "ignoreDefaultExcludes": False, "exclude": [],
                          "set": {}, "includeOnly": []}
        params: Dict[str, Any] = {
            "processId": process_id,
            "argv": argv,
            "cwd": self.to_uri(cwd) if cwd is not None else self.environment_info.get("cwd", "file:///"),
            "env": command_env(env),
            "tty": tty, "pipeStdin": stdin_flag(stdin), "arg0": arg0,
        }
        if env_policy is not None:
            params["envPolicy"] = dict(env_policy)
        if pty_size is not None and not tty:
            raise ValueError("pty_size needs tty=True (a process without a PTY has no window size)")
        if pty_size is not None and self.supports("ptySize"):
            params["ptySize"] = {"rows": int(pty_size[0]), "cols": int(pty_size[1])}
        if sandbox is not None:
            params["sandbox"] = dict(sandbox)
        process = RemoteProcess(self, process_id, argv, max_buffered_output, bool(tty or params["pipeStdin"]))
        with self._start_lock:  # close() sees every start begun before it, and refuses the later ones
            if self._closing:
                raise ExecServerDisconnected("client is closed")
            self._endpoint.add_process(process)  # before the request: events follow the response
        try:
            result = start_once(self.call, params, timeout)  # sent again after a drop, never started twice
        except BaseException as error:
            self._endpoint.remove_process(process_id)
            terminate_unknown_start(self.call, process_id, error)  # of the client's own id only
            if isinstance(error, InternalError):  # name the missing program or working directory
                raise _start_failure(self, error, argv[0], cwd) from None
            raise
        sandbox_type = (result.get("sandboxType", "none" if sandbox is None else "unknown")  # {}: start_once
                        if isinstance(result, dict) else None)
        process.sandbox_type = sandbox_type if isinstance(sandbox_type, str) else "none"
        process.started = True
        return process

    def forget(self, process: Union[RemoteProcess, str]) -> None:
        """Stop routing events to ``process``: a handle (closed, or given up: what it kept stays in it) or its
        ``process_id`` (whichever handle has it).  Raises TypeError: anything else."""
        handle = process if isinstance(process, RemoteProcess) else None
        if handle is None and not isinstance(process, str):
            raise TypeError("forget() takes a RemoteProcess or its process id, not %s" % type(process).__name__)
        self._endpoint.remove_process(process if handle is None else handle.process_id, handle)

    def run(self, argv: Sequence[str], *, input: Union[bytes, str, None] = None, timeout: Optional[float] = None,
            check: bool = False, capture_output: bool = True, text: Optional[bool] = None,
            encoding: Optional[str] = None, errors: Optional[str] = None, universal_newlines: Optional[bool] = None,
            **start_options: Any) -> "subprocess.CompletedProcess":
        """Run a process to completion, like ``subprocess.run(capture_output=True)``.

        Args:
            argv: program and arguments.
            input: bytes (str in text mode) for the child's stdin, then end of file (``closeStdin``
                extension; without it, as on the Codex reference, the child reads
                them through ``/bin/sh -c 'head -c N | "$@"'``, POSIX only).
            timeout: seconds for start, input and wait; past them the remote tree is killed (at
                most :data:`~exec_server.client.oneshot.KILL_GRACE` s more, for the start's answer,
                the kill and the exit together) and :class:`CallTimeout` raised, its ``stdout`` and
                ``stderr`` the bytes received so far.  Any other error kills it too.  None: no limit
                on the command; its start still waits at most :data:`~exec_server.client.oneshot.
                START_TIMEOUT` (30 s) for the server's answer, as :meth:`start` does, and then raises
                that call's :class:`CallTimeout` (``process/start: no response within 30.000 s``).
            check: raise ``subprocess.CalledProcessError`` on a non-zero exit.
            capture_output: False passes each chunk on to this process's ``sys.stdout`` or
                ``sys.stderr`` as it arrives (bytes, undecoded), and ``stdout``/``stderr`` are None.
            text, universal_newlines, encoding, errors: any of them set: text mode, as
                ``subprocess``'s (``input`` is str, output decoded, ``\\r\\n`` and ``\\r`` become
                ``\\n``); ``encoding`` is UTF-8 unless given.
            start_options: as for :meth:`start`; ``max_buffered_output`` defaults to None (all output is kept anyway).
        Returns:
            ``subprocess.CompletedProcess``, ``stdout``/``stderr`` bytes, str in text mode (a PTY's in ``stdout``).
        Raises:
            TypeError, ValueError: ``input`` not of the mode's type (bytes; str in text mode), or with ``stdin=``.
            UnicodeDecodeError: text mode, output that is not ``encoding`` (with ``errors`` strict).
            InternalError: the server reported the process closed without its exit code.
        """
        return oneshot.run(self, argv, input, timeout, check, capture_output, text, encoding, errors,
                           universal_newlines, start_options)


CLOSE_TERMINATE_WAIT = 5.0  #: seconds :meth:`Client.close` gives the terminates of its open processes, together

__all__ = ["Client", "CallTimeout", "ExtensionNotSupported", "RemoteProcess", "ReconnectPolicy",
           "RequestOutcomeUnknown", "OutputEvent", "ExitedEvent", "ClosedEvent", "ProcessOutputGap", "StdinClosedError",
           "ExecServerDisconnected", "ExecServerError", "RpcError"]
