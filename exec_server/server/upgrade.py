"""The WSGI side of the WebSocket server: ``/readyz``, Origin, the upgrade and admission.

HTTP answers follow PROTOCOL.md 1.1: ``GET``/``HEAD /readyz`` is 200, an
``Origin`` header is 403 on every path, ``/`` without an upgrade is 400, other
paths 404.  The upgrade request is checked as the reference checks it
(method, handshake headers, then credentials) and accepted with no
subprotocol and no extension (:func:`switching_protocols`); then the
request thread runs a
:class:`~exec_server.server.websocket.WebSocketConnection`.  The request
handler (:mod:`exec_server.server.http_request`) bounds the time until the
upgrade (``upgrade_timeout``) and :class:`WebSocketApp` admits at most ``max_connections`` WebSockets,
evicting an idle one before refusing a new one.
"""

import logging
import ssl
import threading
import time
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from exec_server.common.tls import TLSStream
from exec_server.server.burst_warning import BurstWarning
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.http_request import ENVIRON_HANDLER, ENVIRON_NO_VERSION

if TYPE_CHECKING:
    from exec_server.server.websocket import WebSocketConnection

log = logging.getLogger(__name__)


def _plain(start_response, status: str, body: bytes = b"", headers=None):
    headers = list(headers or [])
    if body:
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [body]


#: RFC 6455 4.2.2: the GUID appended to the client's key before hashing it into ``Sec-WebSocket-Accept``.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _first_value(environ, name: str) -> Optional[str]:
    """The value of the request's first ``name`` header without its blanks, or None: the WSGI environ joins
    repeated headers with commas (``Upgrade: websocket, h2c`` and two ``Upgrade`` headers look alike there), and
    the reference reads the first header alone."""
    handler = environ.get(ENVIRON_HANDLER)
    value = handler.headers.get(name) if handler is not None else environ.get("HTTP_" + name.upper().replace("-", "_"))
    return None if value is None else value.strip(" \t")


def _is_utf8(value: str) -> bool:
    """Whether a header value (its bytes as Latin-1 characters, as http.server gives them) is UTF-8 text."""
    try:
        value.encode("latin-1").decode("utf-8")
        return True
    except UnicodeError:
        return False


def _is_websocket_key(key: str) -> bool:
    """True for one nonce of 16 bytes in base64, as RFC 6455 4.2.1 asks of a client (two keys, joined with
    a comma, are not one)."""
    import base64
    import binascii

    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error):
        return False


def switching_protocols(key: str) -> bytes:
    """The ``101 Switching Protocols`` answer to an upgrade request whose ``Sec-WebSocket-Key`` is ``key``
    (checked by :func:`_is_websocket_key`): no subprotocol, no extension, as the reference (RFC 6455 4.2.2).

    Written here, not by wsproto's handshake object: that one rebuilt the request werkzeug had parsed, wrote
    it and parsed it again with h11 (~135 us of an upgrade's ~1 ms, #17); the frames are wsproto's
    :class:`wsproto.connection.Connection`, which its documentation offers for a handshake done elsewhere.
    """
    import base64
    import hashlib

    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _ACCEPT_GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


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
        if environ.get(ENVIRON_NO_VERSION):  # HTTP/0.9 is not served (nor by the reference)
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
        # As the reference, in its order, each header's first value: Connection holds "upgrade" (in UTF-8),
        # Upgrade is "websocket" (any case), a key is there, the version is 13; then HTTP/1.1.
        connection_header = _first_value(environ, "Connection") or ""
        if not (_is_utf8(connection_header) and "upgrade" in connection_header.lower()):
            return _plain(start_response, "400 Bad Request",
                          b"Connection header did not include 'upgrade'")
        if (_first_value(environ, "Upgrade") or "").lower() != "websocket":
            return _plain(start_response, "400 Bad Request", b"`Upgrade` header did not include 'websocket'")
        key = _first_value(environ, "Sec-WebSocket-Key")
        if key is None:
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Key` header missing")
        if _first_value(environ, "Sec-WebSocket-Version") != "13":
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Version` header did not include '13'")
        if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":  # RFC 6455 4.1: no upgrade over HTTP/1.0; the reference's text
            return _plain(start_response, "426 Upgrade Required",
                          b"WebSocket request couldn't be upgraded since no upgrade state was present")
        # Ours, after the reference's checks: RFC 6455 4.2.1, 11.3.1, one key of 16 bytes (the reference takes any
        # text, and the first of many); the environ's value joins every key header's, so a second one is refused
        if not _is_websocket_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip(" \t")):
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Key` header is not 16 bytes in base64")
        if self.authorize is not None:
            refusal = self.authorize(environ)
            if refusal is not None:
                status, body = refusal
                # A warning (a token rotated on one side, a guess): the peer and why, never the token.
                self.refused.add((environ.get("REMOTE_ADDR", "?"), "%s %s" % (status, body.decode("ascii", "replace"))))
                return _plain(start_response, status, body)
        # wsproto and the connection loop load on the first upgrade: answering
        # /readyz needs neither (~10 ms of a cold start)
        from exec_server.server.websocket import WebSocketConnection

        sock = environ.get("werkzeug.socket")
        if sock is None:
            return _plain(start_response, "500 Internal Server Error", b"no raw socket to upgrade")
        if not self._admit():
            return _plain(start_response, "503 Service Unavailable",
                          b"too many connections (limit %d)" % self.config.max_connections)
        handler = environ.get(ENVIRON_HANDLER)
        if handler is not None:
            handler.close_connection = True
            handler.mark_upgraded()
        peer = "%s:%s" % (environ.get("REMOTE_ADDR", "?"), environ.get("REMOTE_PORT", "?"))
        try:
            early = handler.take_early_bytes() if handler is not None else b""
            if isinstance(sock, ssl.SSLSocket):
                sock = TLSStream(sock)
            connection = WebSocketConnection(sock, self.dispatcher, self.config, peer, early, switching_protocols(key))
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
