"""The WSGI side of the WebSocket server: ``/readyz``, Origin, the upgrade and admission.

HTTP answers follow PROTOCOL.md 1.1: ``GET``/``HEAD /readyz`` is 200, an
``Origin`` header is 403 on every path, ``/`` without an upgrade is 400, other
paths 404.  The upgrade is negotiated with wsproto (no subprotocol, no
extensions) after the request is checked as the reference does (method,
handshake headers, then credentials); then the request thread runs a
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
        handler = environ.get(ENVIRON_HANDLER)
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
