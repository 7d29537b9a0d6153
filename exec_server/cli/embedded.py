"""The server ``exec-server run`` embeds: a dispatcher in this process, reached without a socket.

``run`` without ``--url`` or ``--via`` needs a server only for the one
command it runs.  Binding a listener, an HTTP upgrade and WebSocket framing
would cost it werkzeug's and wsproto's import (~50 ms) and a connection, and
buy nothing: the client and the server are in one process.  So the client
talks to the server's per-connection dispatcher through two queues, JSON text
in both directions, exactly the messages a socket would carry.

:class:`EmbeddedServer` owns the session registry and dispatcher;
``EmbeddedServer.connector`` is the ``connector(timeout)`` that
:meth:`exec_server.client.api.Client.open` takes.
"""

import argparse
import queue
import threading
from typing import List, Optional, Sequence, Union

from exec_server.protocol.errors import ExecServerDisconnected, ProtocolViolation
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.sessions import SessionRegistry

_END = None
#: How long :meth:`EmbeddedServer.close` waits for the server's reader thread, seconds.
CLOSE_WAIT = 2.0
#: Characters of the server's messages that wait for the client to receive them before the server's sends
#: wait for room, as on a socket whose buffers are full (a process's output then waits in its pipe); a
#: message of any size goes when fewer wait.
MAX_QUEUED_CHARS = 8 << 20
#: While a send waits for room, how often it looks whether the connection ended, seconds (it ends the wait).
ROOM_CHECK_INTERVAL = 1.0
#: Server options of a listener (its address, authentication, TLS, connections): an embedded server has none.
LISTENER_OPTIONS = frozenset([
    "--listen", "--ws-auth", "--ws-token-file", "--ws-token-sha256", "--ws-shared-secret-file", "--ws-issuer",
    "--ws-audience", "--ws-max-clock-skew-seconds", "--tls-certfile", "--tls-keyfile", "--tls-client-ca",
    "--tls-handshake-timeout", "--max-connections", "--max-pending-upgrades", "--max-pending-upgrades-per-address",
    "--ping-interval", "--keepalive-timeout", "--takeover-probe-timeout", "--send-timeout", "--upgrade-timeout",
    "--initialize-timeout", "--evict-idle-after", "--shutdown-timeout"])
#: Server options of a WebSocket listener alone: ``--listen stdio`` has none of them either (the reference
#: refuses WebSocket auth there too: "WebSocket auth requires a WebSocket listener, not stdio").
WEBSOCKET_OPTIONS = LISTENER_OPTIONS - {"--listen", "--takeover-probe-timeout", "--send-timeout"}
_NOT_TYPED = object()


def server_options_given(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> List[str]:
    """The server options (those before a subcommand) typed in ``argv``, whatever their values (an option
    typed with its default value counts), named as typed (``--spool-dir``); ``--otel`` and ``--log-level``
    are the command's own.  ``parser`` is the ``exec-server`` parser that parsed ``argv`` without error
    (None: ``sys.argv[1:]``): it parses it again onto a namespace where every server option holds a marker,
    which only a typed option replaces (argparse sets a default only where the namespace has no value)."""
    names = [name for name in vars(parser.parse_args([])) if name not in ("otel", "log_level", "command")]
    typed = argparse.Namespace(**{name: _NOT_TYPED for name in names})
    parser.parse_known_args(argv, namespace=typed)
    return ["--" + name.replace("_", "-") for name in names if getattr(typed, name) is not _NOT_TYPED]


def misplaced_server_options(args: argparse.Namespace, parser: argparse.ArgumentParser,
                             argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """Why the server options typed cannot apply to ``run``, ``cp`` or ``--listen stdio`` (None: they can,
    or none was typed); ``args`` is what ``parser`` made of ``argv``.

    They configure ``run``'s embedded server (``run`` without ``--url`` or
    ``--via``), except a listener's (:data:`LISTENER_OPTIONS`); ``cp`` and
    ``run --url``/``--via`` use a server that has its own; a stdio server
    has no WebSocket (:data:`WEBSOCKET_OPTIONS`).  They would be ignored.
    """
    given = server_options_given(parser, argv)
    if not given:
        return None
    if args.command is None:  # a server: only a stdio one is asked about
        websocket = [option for option in given if option in WEBSOCKET_OPTIONS]
        return "%s: a WebSocket listener's (--listen ws:// or wss://), not --listen stdio's" % (
            ", ".join(websocket)) if websocket else None
    if args.command == "run" and args.url is None and args.via is None and not getattr(args, "hosts_file", None):
        listener = [option for option in given if option in LISTENER_OPTIONS]
        if not listener:
            return None
        return "%s: run's embedded server has no listener (the server options before 'run' configure it)" % (
            ", ".join(listener))
    return "%s: a server option, for the server that --url, --via or --hosts names (give it there)" % (
        ", ".join(given))


class EmbeddedTransport:
    """One in-process connection; the client's :class:`~exec_server.client.transport.Transport`.

    ``send`` queues a message for the server's reader thread (one reader, as
    on a socket, which feeds ``RpcConnection.receive``); what the server sends
    is queued for ``receive``, at most :data:`MAX_QUEUED_CHARS` (and one
    message): past it the server's send waits until the client receives or
    the connection ends, however long the client takes (a stopped ``run``,
    Ctrl-Z, is waited for, as a stdio client is).  Thread-safe as the
    Transport protocol asks.
    """

    def __init__(self, dispatcher: Dispatcher):
        self._to_server: "queue.SimpleQueue[Optional[str]]" = queue.SimpleQueue()
        self._to_client: "queue.SimpleQueue[Optional[Union[str, bytes]]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._queued = 0  # characters in _to_client
        self._ended = False
        self._connection = dispatcher.open_connection(self._from_server, "failed to parse JSON-RPC message: ",
                                                      transport="embedded")
        self._reader = threading.Thread(target=self._serve, name="exec-server-embedded", daemon=True)
        self._reader.start()

    @property
    def queued(self) -> int:
        """Characters of the server's messages not yet received by the client."""
        with self._lock:
            return self._queued

    def _from_server(self, *texts: str) -> None:
        texts = tuple(str(text) for text in texts)  # a large response in pieces (RawJson) joined
        with self._room:
            while self._queued >= MAX_QUEUED_CHARS and not self._ended:
                self._room.wait(ROOM_CHECK_INTERVAL)
            if self._ended:
                raise ConnectionResetError("the embedded connection is closed")
            for text in texts:
                self._queued += len(text)
                self._to_client.put(text)

    def _serve(self) -> None:
        while True:
            text = self._to_server.get()
            if text is _END:
                break
            try:
                self._connection.receive(text)
            except ProtocolViolation:
                break
        self.close()
        self._connection.close()

    def send(self, text: str) -> None:
        with self._lock:
            if self._ended:
                raise ExecServerDisconnected("the embedded connection is closed")
            self._to_server.put(text)

    def receive(self) -> Union[str, bytes]:
        item = self._to_client.get()
        if item is _END:
            self._to_client.put(_END)  # every later receive ends too
            raise ExecServerDisconnected("the embedded connection is closed")
        with self._room:
            self._queued -= len(item)
            self._room.notify_all()
        return item

    def ping(self) -> None:
        """Nothing to keep alive in one process."""

    def suspect(self) -> None:
        """A queue cannot go silent: nothing to check."""

    def close(self) -> None:
        with self._room:
            if self._ended:
                return
            self._ended = True
            self._room.notify_all()  # a send waiting for room ends
        self._to_client.put(_END)
        self._to_server.put(_END)

    def join(self, timeout: float) -> None:
        self._reader.join(timeout)


class EmbeddedServer:
    """A server without a listener: sessions, processes and files, for clients in this process.

    Use as a context manager; :meth:`close` kills every process tree it started.
    """

    def __init__(self, config: Optional[ServerConfig] = None):
        """``config``: None for the defaults (``exec-server run`` passes the server options before ``run``)."""
        self.config = config or ServerConfig()
        self.registry = SessionRegistry(self.config)
        self.dispatcher = Dispatcher(self.registry, self.config)
        self._transports = []

    def connector(self, timeout: Optional[float] = None) -> EmbeddedTransport:
        transport = EmbeddedTransport(self.dispatcher)
        self._transports.append(transport)
        return transport

    def close(self) -> None:
        """End every connection, kill every process tree and fs helper (bounded by CLOSE_WAIT)."""
        for transport in self._transports:
            transport.close()
        for transport in self._transports:
            transport.join(CLOSE_WAIT)
        self.registry.close_all()
        self.dispatcher.stop_fs_helpers()

    def __enter__(self) -> "EmbeddedServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
