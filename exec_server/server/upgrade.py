"""The WSGI side of the WebSocket server: ``/readyz``, Origin, the upgrade and admission.

HTTP answers follow PROTOCOL.md 1.1: ``GET``/``HEAD /readyz`` is 200, an
``Origin`` header is 403 on every path, ``/`` without an upgrade is 400, other
paths 404.  The upgrade is negotiated with wsproto (no subprotocol, no
extensions) after the request is checked as the reference does (method,
handshake headers, then credentials); then the request thread runs a
:class:`~exec_server.server.websocket.WebSocketConnection`.  The request
handler bounds the time until the upgrade (``upgrade_timeout``) and
:class:`WebSocketApp` admits at most ``max_connections`` WebSockets,
evicting an idle one before refusing a new one.
"""

import logging
import ssl
import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple
from urllib.parse import urlsplit

from werkzeug.serving import WSGIRequestHandler

from exec_server.common.keepalive import abort_socket
from exec_server.common.tls import TLSStream
from exec_server.server.auth import ENVIRON_AUTHORIZATION
from exec_server.server.burst_warning import BurstWarning
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher

if TYPE_CHECKING:
    from exec_server.server.websocket import WebSocketConnection

log = logging.getLogger(__name__)

#: Most bytes of a request's header block (its lines after the request line, their line ends included): past it,
#: 431.  http.client alone allows 100 lines of 64 KiB, ~6 MiB held per connection before any credential is seen.
MAX_HEADER_BYTES = 64 * 1024

_ENVIRON_HANDLER = "exec_server.request_handler"
_ENVIRON_NO_VERSION = "exec_server.request_line_without_version"


class _HeaderBlock:
    """The request's input while http.server reads its header block: a line that would take the block past
    ``limit`` bytes is refused as too long (431, as a line over http.client's own limit), unread."""

    def __init__(self, raw, limit: int):
        self._raw, self._left, self._limit = raw, limit, limit

    def readline(self, size: int = -1) -> bytes:
        line = self._raw.readline(self._left + 1 if size < 0 else min(size, self._left + 1))
        if len(line) > self._left:
            import http.client

            raise http.client.LineTooLong("header block over %d bytes" % self._limit)
        self._left -= len(line)
        return line


class RequestHandler(WSGIRequestHandler):
    """werkzeug's handler, quiet, closing the TCP connection after an upgrade, and bounded in time.

    Until the WebSocket upgrade, each read waits at most ``upgrade_timeout``
    seconds (the handler's socket timeout) and the whole exchange is cut
    after ``upgrade_timeout`` seconds (a timer shuts the socket down), so a
    client that sends its headers a byte at a time (slowloris) or never
    holds its thread no longer than that.  The server sets
    ``upgrade_timeout`` and ``scheduler`` attributes on itself.
    """

    upgraded = False
    _watchdog = None
    #: http.server's version of a request until its request line is parsed: an answer to a malformed one
    #: (400, 505) gets a status line and headers, not HTTP/0.9's bare body (the reference answers 400).
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        """The ``Server`` header of every answer: the product alone, before any credential is checked (it told
        werkzeug's and Python's versions to anyone)."""
        return "exec-server"

    def setup(self) -> None:
        limit = getattr(self.server, "upgrade_timeout", None)
        scheduler = getattr(self.server, "scheduler", None)
        if limit is not None:
            self.timeout = limit
        super().setup()
        if limit is not None and scheduler is not None:
            self._watchdog = scheduler.call_later(limit, self._upgrade_expired)

    def _upgrade_expired(self) -> None:
        if not self.upgraded:
            log.debug("http: no upgrade within the time limit; closed")
            abort_socket(self.connection)

    def mark_upgraded(self) -> None:
        """The request became a WebSocket: the time limit and the pending-upgrade limit no longer apply."""
        self.upgraded = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        release = getattr(self.server, "upgraded", None)
        if release is not None:
            release(self.request)

    def finish(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        super().finish()

    def take_early_bytes(self) -> bytes:
        """What the peer sent after its upgrade request and the request's reads took in (its first
        frames, if it did not wait for the 101): a WebSocket's first input.  Never waits."""
        sock = self.connection
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return self.rfile.read1(65536) or b""  # what is buffered, or one read of what has arrived
        except (OSError, ValueError):  # nothing has (a TLS socket's "want read"), or the file is closed
            return b""
        finally:
            sock.settimeout(timeout)

    def parse_request(self) -> bool:
        if len(self.raw_requestline.split()) == 2:
            # HTTP/0.9 ("GET /path"): no header block follows, and http.server would wait for one until
            # the upgrade timeout; answered 400 at once, as by the reference
            self.command, self.request_version = "GET", "HTTP/1.0"  # a status line, as for the others
            self.requestline = self.raw_requestline.decode("iso-8859-1").rstrip("\r\n")
            return self._bad_request()
        rfile, self.rfile = self.rfile, _HeaderBlock(self.rfile, MAX_HEADER_BYTES)
        try:
            if not super().parse_request():
                return False
        finally:
            self.rfile = rfile
        target = self.requestline.split()[1:2]
        if target and target[0].startswith("//"):  # http.server made it "/..." (gh-87389): kept, for its 404
            self.path = target[0]  # (and made PATH_INFO again by make_environ)
        try:
            urlsplit(self.path)  # what werkzeug's make_environ does first, outside any error handling
        except ValueError:  # "http://[::1/": a 400 with a status line, not a traceback and no answer
            return self._bad_request()
        return True

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: werkzeug sends its own ``100 Continue``; http.server's would be a second."""
        return True

    def _bad_request(self) -> bool:
        """Answer 400 (no body) and close the connection; False, for :meth:`parse_request` to return."""
        self.close_connection = True
        self.send_response(400)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        return False

    def make_environ(self):
        environ = super().make_environ()
        environ[_ENVIRON_HANDLER] = self
        if self.path.startswith("//"):  # werkzeug read the target kept by parse_request as an authority
            environ["PATH_INFO"] = self.path.split("?", 1)[0]  # "//readyz" is not "/readyz": the reference's 404
        # every Authorization header in order (the environ joins repeated ones with commas)
        environ[ENVIRON_AUTHORIZATION] = self.headers.get_all("Authorization") or []
        if not self.request_version.startswith("HTTP/1."):
            environ[_ENVIRON_NO_VERSION] = True  # ``GET / HTTP/0.9``: answered 400 ...
            self.request_version = "HTTP/1.0"  # ... with a status line (http.server writes none for 0.9)
        return environ

    def log_request(self, code="-", size="-") -> None:
        log.debug("%s %s %s", self.command, getattr(self, "path", "?"), code)

    def log_error(self, format: str, *args) -> None:
        log.debug("http: " + format, *args)


def _plain(start_response, status: str, body: bytes = b"", headers=None):
    headers = list(headers or [])
    if body:
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


#: The request headers the WebSocket handshake reads (WSGI environ keys), all that wsproto is given.
#: Not the subprotocol and extension offers: the server accepts none (as the reference), and wsproto
#: would fail on a value that is not ASCII (a 500 before authentication) where the reference upgrades.
_HANDSHAKE_HEADERS = ("HTTP_HOST", "HTTP_CONNECTION", "HTTP_UPGRADE", "HTTP_SEC_WEBSOCKET_KEY",
                      "HTTP_SEC_WEBSOCKET_VERSION")


def _is_websocket_key(key: str) -> bool:
    """True for one nonce of 16 bytes in base64, as RFC 6455 4.2.1 asks of a client (two keys, joined with
    a comma, are not one)."""
    import base64
    import binascii

    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error):
        return False


def _request_headers(environ) -> List[Tuple[bytes, bytes]]:
    """The upgrade request's handshake headers from the WSGI environ, for wsproto.

    Only those: h11 (under wsproto) refuses a value with, for example,
    trailing blanks, and a malformed header the handshake does not read
    (``Authorization: Bearer ``) must not turn into a refusal of its own.
    """
    headers = [(key[5:].replace("_", "-").lower().encode("latin-1"), environ[key].strip(" \t").encode("latin-1"))
               for key in _HANDSHAKE_HEADERS if key in environ and key != "HTTP_HOST"]
    # The server reads no Host, and the reference upgrades without one, or with one that is not ASCII; h11
    # under wsproto wants one (it said "Missing mandatory Host: header", or gave a codec's error as the 400's
    # text).
    host = environ.get("HTTP_HOST", "").strip(" \t")
    if not (host and host.isascii()):
        host = "localhost"
    return [(b"host", host.encode("ascii"))] + headers


#: Seconds between two warnings of upgrades refused for their credentials (the count in between is told).
REFUSED_CREDENTIALS_INTERVAL = 10.0


def _tell_refused_credentials(count: int, latest: Tuple[str, str]) -> None:
    log.warning("%d upgrade(s) refused for their credentials, the latest from %s: %s (told at most every %g s)",
                count, latest[0], latest[1], REFUSED_CREDENTIALS_INTERVAL)


class WebSocketApp:
    """The WSGI application of the server (``/`` and ``/readyz``).

    Args:
        dispatcher: shared JSON-RPC dispatcher.
        config: limits (message size, ping interval).
        authorize: optional ``(environ) -> None or (status, body)`` check run
            on upgrade requests after the Origin check.
    """

    def __init__(self, dispatcher: Dispatcher, config: ServerConfig,
                 authorize: Optional[Callable] = None):
        self.dispatcher = dispatcher
        self.config = config
        self.authorize = authorize
        self._lock = threading.Lock()
        self._connections: "set[WebSocketConnection]" = set()
        self._reserved = 0
        self.refused = BurstWarning(REFUSED_CREDENTIALS_INTERVAL, _tell_refused_credentials)

    def __call__(self, environ, start_response):
        """The answer to one request; a HEAD request's has no content (RFC 9110 9.3.2), whatever its status."""
        body = self._answer(environ, start_response)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else body

    def _answer(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        if environ.get(_ENVIRON_NO_VERSION):  # HTTP/0.9 is not served (nor by the reference)
            return _plain(start_response, "400 Bad Request")
        if "HTTP_ORIGIN" in environ:
            return _plain(start_response, "403 Forbidden")
        if path == "/readyz":
            if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                return _plain(start_response, "200 OK")
            return _plain(start_response, "405 Method Not Allowed", headers=[("Allow", "GET,HEAD")])
        if path != "/":
            return _plain(start_response, "404 Not Found")
        # As the reference: the upgrade request is checked (method, headers)
        # before the credentials are looked at.
        if environ.get("REQUEST_METHOD") != "GET":
            return _plain(start_response, "405 Method Not Allowed", b"Request method must be `GET`")
        if "upgrade" not in environ.get("HTTP_CONNECTION", "").lower():
            return _plain(start_response, "400 Bad Request",
                          b"Connection header did not include 'upgrade'")
        if not environ.get("HTTP_SEC_WEBSOCKET_KEY"):
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Key` header missing")
        # as the reference: the (first) header's value is 13 (werkzeug joins repeated headers with commas)
        if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").split(",")[0].strip() != "13":
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Version` header did not include '13'")
        environ["HTTP_SEC_WEBSOCKET_VERSION"] = "13"  # for wsproto, which takes nothing else
        if not _is_websocket_key(environ["HTTP_SEC_WEBSOCKET_KEY"]):  # RFC 6455 4.2.1 (the reference takes any)
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Key` header is not 16 bytes in base64")
        # wsproto and the connection loop load on the first upgrade: answering
        # /readyz needs neither (~10 ms of a cold start)
        import h11
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request
        from wsproto.utilities import LocalProtocolError, RemoteProtocolError

        from exec_server.server.websocket import WebSocketConnection

        protocol = WSConnection(ConnectionType.SERVER)
        try:
            # werkzeug has parsed the request: hand wsproto its headers, no second parse
            protocol.initiate_upgrade_connection(_request_headers(environ),
                                                 environ.get("RAW_URI") or environ.get("PATH_INFO") or "/")
            event = next(protocol.events(), None)
        except (RemoteProtocolError, LocalProtocolError, h11.ProtocolError, ValueError) as exc:
            # h11 raises its own LocalProtocolError (not wsproto's) on a bad value such as a control
            # character, wsproto UnicodeDecodeError on one that is not ASCII
            return _plain(start_response, "400 Bad Request", str(exc).encode("utf-8"))
        if not isinstance(event, Request):
            return _plain(start_response, "400 Bad Request", b"invalid websocket upgrade request")
        if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":  # RFC 6455 4.1: no upgrade over HTTP/1.0; the reference's text
            return _plain(start_response, "426 Upgrade Required",
                          b"WebSocket request couldn't be upgraded since no upgrade state was present")
        if self.authorize is not None:
            refusal = self.authorize(environ)
            if refusal is not None:
                status, body = refusal
                # A warning (a token rotated on one side, a guess): the peer and why, never the token.
                self.refused.add((environ.get("REMOTE_ADDR", "?"), "%s %s" % (status, body.decode("ascii", "replace"))))
                return _plain(start_response, status, body)
        sock = environ.get("werkzeug.socket")
        if sock is None:
            return _plain(start_response, "500 Internal Server Error", b"no raw socket to upgrade")
        if not self._admit():
            return _plain(start_response, "503 Service Unavailable",
                          b"too many connections (limit %d)" % self.config.max_connections)
        handler = environ.get(_ENVIRON_HANDLER)
        if handler is not None:
            handler.close_connection = True
            handler.mark_upgraded()
        peer = "%s:%s" % (environ.get("REMOTE_ADDR", "?"), environ.get("REMOTE_PORT", "?"))
        try:
            early = handler.take_early_bytes() if handler is not None else b""
            if isinstance(sock, ssl.SSLSocket):
                sock = TLSStream(sock)
            connection = WebSocketConnection(sock, protocol, self.dispatcher, self.config, peer, early)
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            self._connections.add(connection)
        try:
            connection.run()
        finally:
            with self._lock:
                self._connections.discard(connection)
        # The socket was used as a WebSocket: tell werkzeug not to write a response.
        raise ConnectionAbortedError("websocket closed")

    def _admit(self) -> bool:
        """Reserve a connection slot, evicting an idle connection at ``max_connections``; False if full."""
        for _attempt in range(3):
            with self._lock:
                if len(self._connections) + self._reserved < self.config.max_connections:
                    self._reserved += 1
                    return True
                candidates = list(self._connections)
            victim = _idlest(candidates, time.monotonic() - self.config.evict_idle_after)
            if victim is None:
                return False
            with self._lock:
                self._connections.discard(victim)
            victim.evict()
        return False

    def connections(self) -> List["WebSocketConnection"]:
        with self._lock:
            return list(self._connections)


def _idlest(connections: List["WebSocketConnection"], quiet_since: float) -> Optional["WebSocketConnection"]:
    """The connection to evict: silent since before ``quiet_since``, never initialized first, else idle."""
    best = None
    for connection in connections:
        if connection.last_message > quiet_since:
            continue
        key = (connection.initialized, connection.last_message)
        if connection.initialized and not connection.is_idle():
            continue
        if best is None or key < best[0]:
            best = (key, connection)
    return best[1] if best is not None else None
