"""The WebSocket server: bind, serve, and shut down in order.

:func:`make_server` binds (port 0 picks a free port and the real one is
recorded), builds the session registry and dispatcher, and returns an
:class:`ExecServer`.  ``serve_forever`` runs werkzeug's threaded server (a
thread per connection); ``shutdown`` stops accepting, closes every WebSocket
with 1001, kills every process tree and joins the process threads.
"""

import ipaddress
import logging
import socket
import threading
from typing import Optional, Tuple
from urllib.parse import urlsplit

from werkzeug.serving import ThreadedWSGIServer

from exec_server.server.config import ServerConfig
from exec_server.server.connection import Dispatcher
from exec_server.server.process import contain
from exec_server.server.sessions import SessionRegistry
from exec_server.server.threads import ReusableThreads
from exec_server.server.websocket import CLOSE_GOING_AWAY, RequestHandler, WebSocketApp

log = logging.getLogger(__name__)

#: How often werkzeug's accept loop checks for shutdown, seconds.
POLL_INTERVAL = 0.1
#: Pending connections the kernel queues before accept (werkzeug's own default).
LISTEN_BACKLOG = 128


def parse_listen_url(url: str) -> Tuple[str, int]:
    """``ws://IP:PORT`` -> (host, port).

    Raises:
        ValueError: not a ``ws://`` URL with an IP literal (or ``localhost``)
            and a port.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname or parts.port is None:
        raise ValueError("listen URL must look like ws://127.0.0.1:PORT, got %r" % url)
    host = parts.hostname
    if host != "localhost":
        ipaddress.ip_address(host)
    if parts.path not in ("", "/"):
        raise ValueError("listen URL must not have a path: %r" % url)
    return host, parts.port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ConnectionThreadsServer(ThreadedWSGIServer):
    """werkzeug's threaded server whose connection threads are reused.

    Each connection still has a thread of its own while it lasts; a thread
    whose connection ended takes the next one instead of a new thread being
    started (:mod:`exec_server.server.threads`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connection_threads = ReusableThreads("exec-server-connection")

    def process_request(self, request, client_address) -> None:
        self._connection_threads.run(self.process_request_thread, request, client_address)


class ExecServer:
    """A listening exec-server.  ``url`` is the bound ``ws://host:port``."""

    def __init__(self, host: str, port: int, config: Optional[ServerConfig] = None, auth=None):
        self.config = config or ServerConfig()
        contain.decide(self.config.pid_namespace)  # the one-time probe, logged once, before any spawn
        self.registry = SessionRegistry(self.config)
        self.dispatcher = Dispatcher(self.registry, self.config)
        self.app = WebSocketApp(self.dispatcher, self.config, auth.check if auth is not None else None)
        # Bound here rather than by werkzeug, which prints its own text and
        # exits when the address is taken: an OSError is the caller's to report.
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                        backlog=LISTEN_BACKLOG)
        try:
            self._wsgi = _ConnectionThreadsServer(host, port, self.app, RequestHandler, fd=listener.fileno())
        finally:
            listener.close()  # werkzeug serves on its own duplicate of the descriptor
        self.host = host
        self.port = self._wsgi.port
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "ws://%s:%d" % (host, self.port)

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`; then clean up (blocking)."""
        try:
            self._wsgi.serve_forever(poll_interval=POLL_INTERVAL)
        finally:
            self._cleanup()

    def start(self) -> "ExecServer":
        """Serve on a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="exec-server-accept", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop accepting, close WebSockets (1001), kill every process tree.

        Safe to call from any thread but the one running ``serve_forever``
        (e.g. a signal handler thread), and more than once.
        """
        self._wsgi.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._stopped.wait(timeout)

    def _cleanup(self) -> None:
        if self._stopped.is_set():
            return
        for connection in self.app.connections():
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        self.registry.close_all()
        self.dispatcher.fs_helpers.stop()
        self._stopped.set()

    def __enter__(self) -> "ExecServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.shutdown()


def make_server(url: str = "ws://127.0.0.1:0", config: Optional[ServerConfig] = None, auth=None) -> ExecServer:
    """Bind a server on ``url`` (``ws://IP:PORT``; port 0 picks a free one).

    Args:
        auth: a :class:`~exec_server.server.auth.CapabilityToken` checked on every
            upgrade, or None (then only loopback addresses are allowed).
    Raises:
        ValueError: a malformed listen URL, or a non-loopback one without auth
            (the reference's "websocket auth is required for non-localhost listeners").
        OSError: the address cannot be bound.
    """
    host, port = parse_listen_url(url)
    if auth is None and not is_loopback(host):
        raise ValueError("websocket auth is required for non-localhost listeners")
    return ExecServer(host, port, config, auth)
