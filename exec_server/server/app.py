"""The WebSocket server: bind, serve, and shut down in order.

:func:`make_server` binds (port 0 picks a free port and the real one is
recorded), builds the session registry and dispatcher, and returns an
:class:`ExecServer`.  A ``wss://`` listener takes an :class:`ssl.SSLContext`;
each connection's TLS handshake runs on that connection's own thread within
``ServerConfig.tls_handshake_timeout``, never on the accept loop.  ``serve_forever`` runs werkzeug's threaded server (a
thread per connection); ``shutdown`` stops accepting, closes every WebSocket
with 1001 (or shuts its socket down if the frame cannot go out at once),
kills every fs helper and process tree and joins the process threads, all
within ``shutdown_timeout`` seconds whatever the clients do.
"""

import errno
import ipaddress
import logging
import socket
import ssl
import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

from werkzeug.serving import ThreadedWSGIServer

from exec_server.server.burst_warning import BurstWarning
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.process import contain
from exec_server.server.sessions import SessionRegistry
from exec_server.server.threads import ReusableThreads
from exec_server.server.http_request import RequestHandler
from exec_server.server.upgrade import WebSocketApp

log = logging.getLogger(__name__)

#: How often werkzeug's accept loop checks for shutdown, seconds.
POLL_INTERVAL = 0.1
#: Pending connections the kernel queues before accept (werkzeug's own default).
LISTEN_BACKLOG = 128
#: At shutdown, the longest wait for one connection's send lock before its
#: socket is shut down without a Close frame, seconds.
CLOSE_LOCK_WAIT = 0.05
#: At shutdown, the time all Close frames together may take (at most a
#: quarter of ``shutdown_timeout``), seconds.
CLOSE_FRAMES_BUDGET = 1.0
#: Least seconds between two warnings about connections closed at ``max_pending_upgrades``
#: (and between two about an accept that failed for want of descriptors or memory).
REFUSAL_WARNING_INTERVAL = 10.0
#: Seconds the accept loop waits after an accept failed for want of file descriptors or memory
#: (EMFILE, ENFILE, ENOBUFS, ENOMEM): the connection stays queued, and the loop does not spin.
ACCEPT_RETRY_WAIT = 0.1
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: At shutdown, the longest wait for the killed processes' ``exited`` and
#: ``closed`` to reach their clients before the Close frames (at most half
#: of ``shutdown_timeout``), seconds.
EXIT_REPORT_BUDGET = 2.0


def _tell_closed_unread(count: int, why: str) -> None:
    log.warning("%d connection(s) closed unread: %s (told at most every %g s)", count, why, REFUSAL_WARNING_INTERVAL)


def parse_listen_url(url: str) -> Tuple[str, int]:
    """``ws://IP:PORT`` or ``wss://IP:PORT`` -> (host, port).

    Raises:
        ValueError: not a ``ws://`` or ``wss://`` URL with an IP literal (or
            ``localhost``) and a port.
    """
    parts = urlsplit(url)
    shape = ("listen URL must look like ws://HOST:PORT or wss://HOST:PORT (HOST an IP address or "
             "localhost, e.g. ws://127.0.0.1:8765), got %r" % url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or parts.port is None:
        raise ValueError(shape)
    host = parts.hostname
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(shape) from None
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


def peer_source(host: str) -> str:
    """What a peer's pending upgrades are counted by (``--max-pending-upgrades-per-address``): its IPv4
    address, or the /64 of its IPv6 address (one host is usually given a whole /64, and may use any address
    in it); an IPv4 address mapped into IPv6 is that IPv4 address."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class _ConnectionThreadsServer(ThreadedWSGIServer):
    """werkzeug's threaded server whose connection threads are reused, optionally over TLS.

    Each connection still has a thread of its own while it lasts; a thread
    whose connection ended takes the next one instead of a new thread being
    started (:mod:`exec_server.server.threads`).  With ``tls``, accepted
    sockets are wrapped without a handshake; the handshake runs on the
    connection's thread (``finish_request``) with ``handshake_timeout``, so a
    client that never completes it cannot hold up the accept loop.
    """

    def __init__(self, host: str, port: int, app, handler, fd: Optional[int] = None,
                 tls: Optional[ssl.SSLContext] = None, handshake_timeout: float = 10.0, max_pending: int = 256,
                 max_pending_per_address: int = 64):
        super().__init__(host, port, app, handler, fd=fd)
        self._connection_threads = ReusableThreads("exec-server-connection")
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._max_pending = max_pending
        self._max_pending_per_address = max_pending_per_address
        self._pending: Dict[Any, str] = {}  # accepted sockets not yet upgraded -> their peer's address
        self._pending_from: Dict[str, int] = {}  # peer address -> how many of those it has
        self._pending_lock = threading.Lock()
        self._refused = BurstWarning(REFUSAL_WARNING_INTERVAL, _tell_closed_unread)
        self._accept_warned = -REFUSAL_WARNING_INTERVAL  # when an accept that failed was last told

    def get_request(self):
        try:
            sock, address = super().get_request()
        except OSError as exc:  # socketserver drops the error and selects again: the queued connection at once
            if exc.errno in _OUT_OF_RESOURCES:
                self._accept_failed(exc)
            raise
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                sock.close()
                raise
        return sock, address

    def process_request(self, request, client_address) -> None:
        address = peer_source(client_address[0] if isinstance(client_address, tuple) else str(client_address))
        with self._pending_lock:
            full = len(self._pending) >= self._max_pending
            crowded = self._pending_from.get(address, 0) >= self._max_pending_per_address
            if not (full or crowded):
                self._pending[request] = address
                self._pending_from[address] = self._pending_from.get(address, 0) + 1
        if full:
            self._refuse(request, "%d are already waiting for their upgrade (--max-pending-upgrades)"
                         % self._max_pending)
            return
        if crowded:
            self._refuse(request, "%d from %s are already waiting for their upgrade "
                         "(--max-pending-upgrades-per-address)" % (self._max_pending_per_address, address))
            return
        try:
            self._connection_threads.run(self._serve, request, client_address)
        except RuntimeError as exc:  # no thread can start (a task limit, no memory for a stack)
            self.upgraded(request)
            self._refuse(request, "no thread for them (%s)" % exc)
        except BaseException:  # the slot must not stay taken
            self.upgraded(request)
            self.shutdown_request(request)
            raise

    def _refuse(self, request, why: str) -> None:
        """Close ``request`` unread; a warning (how many, why) at most every REFUSAL_WARNING_INTERVAL s.

        Those closed after a warning are told by the next one, at most the
        interval later, or by :meth:`report_refused` at shutdown.
        """
        self._refused.add(why)
        self.shutdown_request(request)

    def _accept_failed(self, exc: OSError) -> None:
        """Warn (at most every REFUSAL_WARNING_INTERVAL s), then wait ACCEPT_RETRY_WAIT s before the next accept."""
        now = time.monotonic()
        if now - self._accept_warned >= REFUSAL_WARNING_INTERVAL:
            self._accept_warned = now
            log.warning("cannot accept connections: %s; they wait in the queue (retried every %g s)",
                        exc.strerror or exc, ACCEPT_RETRY_WAIT)
        time.sleep(ACCEPT_RETRY_WAIT)

    def report_refused(self) -> None:
        """Warn of the connections closed unread since the last warning, if any (at shutdown)."""
        self._refused.flush()

    def _serve(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.upgraded(request)

    def upgraded(self, request) -> None:
        """``request`` became a WebSocket (or ended): it no longer counts against ``max_pending``."""
        with self._pending_lock:
            address = self._pending.pop(request, None)
            if address is not None:
                left = self._pending_from.pop(address) - 1
                if left:
                    self._pending_from[address] = left

    def finish_request(self, request, client_address) -> None:
        if self._tls is not None:
            try:
                request.settimeout(self._handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except OSError as exc:  # ssl.SSLError and socket.timeout included
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a peer that went away or broke TLS mid-request
            log.debug("connection %s: %s", client_address, error)
            return
        super().handle_error(request, client_address)


class ExecServer:
    """A listening exec-server.  ``url`` is the bound ``ws://host:port`` (``wss://`` with TLS)."""

    def __init__(self, host: str, port: int, config: Optional[ServerConfig] = None, auth=None,
                 ssl_context: Optional[ssl.SSLContext] = None):
        self.config = config or ServerConfig()
        # The one-time containment probe, logged once, runs beside start-up; a spawn waits for it.
        threading.Thread(target=contain.decide, args=(self.config.pid_namespace,), name="exec-server-probe",
                         daemon=True).start()
        self.registry = SessionRegistry(self.config)
        self.dispatcher = Dispatcher(self.registry, self.config)
        self.app = WebSocketApp(self.dispatcher, self.config, auth.check if auth is not None else None)
        # Bound here rather than by werkzeug, which prints its own text and
        # exits when the address is taken: an OSError is the caller's to report.
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                        backlog=LISTEN_BACKLOG)
        try:
            self._wsgi = _ConnectionThreadsServer(host, port, self.app, RequestHandler, listener.fileno(),
                                                  ssl_context, self.config.tls_handshake_timeout,
                                                  self.config.max_pending_upgrades,
                                                  self.config.max_pending_upgrades_per_address)
        finally:
            listener.close()  # werkzeug serves on its own duplicate of the descriptor
        # read by RequestHandler.setup: the time limit until the upgrade, and its timer
        self._wsgi.upgrade_timeout = self.config.upgrade_timeout
        self._wsgi.scheduler = self.registry.scheduler
        self.scheme = "ws" if ssl_context is None else "wss"
        self.host = host
        self.port = self._wsgi.port
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()
        self._serving = False  # serve_forever was called
        self._stopping = False  # shutdown was called
        self._state = threading.Lock()  # orders the two: a shutdown before serve_forever means no serving

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % (self.scheme, host, self.port)

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`; then clean up (blocking).  Returns at once after a shutdown
        (a SIGTERM just after the URL was printed, before this began)."""
        with self._state:
            if self._stopping:
                return
            self._serving = True
        try:
            self._wsgi.serve_forever(poll_interval=POLL_INTERVAL)
        finally:
            self._cleanup()

    def start(self) -> "ExecServer":
        """Serve on a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="exec-server-accept", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, close WebSockets (1001), kill every process tree and fs helper.

        Returns once that is done, or after ``timeout`` seconds (default: the
        config's ``shutdown_timeout`` and one accept-loop poll).  Safe to call
        from any thread but the one running ``serve_forever`` (e.g. a signal
        handler thread), and more than once.
        """
        if timeout is None:
            timeout = self.config.shutdown_timeout + POLL_INTERVAL
        with self._state:
            self._stopping = True
            serving = self._serving
        if not serving:  # no accept loop to stop (werkzeug's shutdown would wait for one for good)
            self._wsgi.server_close()
            self._cleanup()
            return
        stopper = threading.Thread(target=self._wsgi.shutdown, name="exec-server-stop-accepting", daemon=True)
        try:
            stopper.start()  # werkzeug's shutdown waits for the accept loop without a bound
        except RuntimeError as exc:  # no thread can start (a task limit): wait here (a poll interval)
            log.warning("stopping the accept loop on this thread: %s", exc)
            self._wsgi.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._stopped.wait(timeout)

    def _cleanup(self) -> None:
        """Kill every tree, close every WebSocket, stop helpers, join threads: within ``shutdown_timeout`` s.

        The trees are killed first, and their ``exited`` and ``closed`` sent to
        attached clients (for up to :data:`EXIT_REPORT_BUDGET` s), so a client
        learns how its processes ended before the Close frame (1001).  A Close
        frame goes out only where it can without waiting
        (:meth:`WebSocketConnection.close`): the send lock is waited for
        :data:`CLOSE_LOCK_WAIT` s at most, and no longer once
        :data:`CLOSE_FRAMES_BUDGET` s have passed; other sockets are shut down.
        """
        if self._stopped.is_set():
            return
        start = time.monotonic()
        deadline = start + self.config.shutdown_timeout
        self.registry.kill_all(min(EXIT_REPORT_BUDGET, self.config.shutdown_timeout / 2))
        budget_end = time.monotonic() + min(CLOSE_FRAMES_BUDGET, self.config.shutdown_timeout / 4)
        connections = self.app.connections()
        if connections:  # then the connection loop is loaded (it is not until the first upgrade)
            from exec_server.server.websocket import CLOSE_GOING_AWAY
        for connection in connections:
            wait = min(CLOSE_LOCK_WAIT, max(0.0, budget_end - time.monotonic()))
            connection.close(CLOSE_GOING_AWAY, "server shutting down", lock_timeout=wait)
        self.dispatcher.stop_fs_helpers()
        self.registry.close_all(join_timeout=max(0.0, deadline - time.monotonic()))
        self._wsgi.report_refused()
        self.app.refused.flush()
        self._stopped.set()

    def __enter__(self) -> "ExecServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.shutdown()


def make_server(url: str = "ws://127.0.0.1:0", config: Optional[ServerConfig] = None, auth=None,
                ssl_context: Optional[ssl.SSLContext] = None) -> ExecServer:
    """Bind a server on ``url`` (``ws://IP:PORT`` or ``wss://IP:PORT``; port 0 picks a free one).

    Args:
        auth: a :class:`~exec_server.server.auth.CapabilityToken` or
            :class:`~exec_server.server.auth.SignedBearerToken` checked on
            every upgrade, or None.
        ssl_context: a server-side context (:func:`exec_server.server.tls.server_context`);
            required by ``wss://`` and refused with ``ws://``.
    Raises:
        ValueError: a malformed listen URL, ``wss://`` without a context (or
            a context with ``ws://``), or a non-loopback address with neither
            auth nor required client certificates.
        OSError: the address cannot be bound.
    """
    host, port = parse_listen_url(url)
    secure = urlsplit(url).scheme == "wss"
    if secure and ssl_context is None:
        raise ValueError("a wss:// listener needs a TLS certificate and key (--tls-certfile, --tls-keyfile)")
    if not secure and ssl_context is not None:
        raise ValueError("TLS settings need a wss:// listen URL, got %r" % url)
    client_certificates = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
    if auth is None and not client_certificates and not is_loopback(host):
        raise ValueError("websocket auth is required for non-localhost listeners")
    return ExecServer(host, port, config, auth, ssl_context)
