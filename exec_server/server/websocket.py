"""WebSocket transport: the werkzeug WSGI app and the per-connection loop.

HTTP answers follow PROTOCOL.md 1.1: ``GET``/``HEAD /readyz`` is 200, an
``Origin`` header is 403 on every path, ``/`` without an upgrade is 400, other
paths 404.  The upgrade is negotiated with wsproto (no subprotocol, no
extensions); after it the request thread owns the socket and runs
:class:`WebSocketConnection`: frames are parsed and built by wsproto, and
every outbound frame (response, notification, ping, close) is written whole
with ``sendall`` under one send lock.  A TLS socket (``wss://``) is used
through :class:`exec_server.common.tls.TLSStream`, which keeps the reading
and the writing threads from calling OpenSSL at the same time.
"""

import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Callable, List, Optional, Tuple, Union

from werkzeug.serving import WSGIRequestHandler
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong,
                            Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from exec_server.common.tls import TLSStream
from exec_server.common.websocket import send_frames as _send_frames
from exec_server.server.auth import ENVIRON_AUTHORIZATION
from exec_server.server.config import ServerConfig
from exec_server.server.connection import Dispatcher
from exec_server.protocol.errors import ProtocolViolation

log = logging.getLogger(__name__)

#: WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009
_FAILURE_CODES = (CLOSE_PROTOCOL_ERROR, 1007, CLOSE_MESSAGE_TOO_BIG)
#: Bytes asked of the socket per ``recv``.
RECV_BYTES = 256 * 1024

_ENVIRON_HANDLER = "exec_server.request_handler"


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 material (no lone surrogate, e.g. from a non-UTF-8 file name)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class RequestHandler(WSGIRequestHandler):
    """werkzeug's handler, quiet, and closing the TCP connection after an upgrade."""

    def make_environ(self):
        environ = super().make_environ()
        environ[_ENVIRON_HANDLER] = self
        # every Authorization header in order (the environ joins repeated ones with commas)
        environ[ENVIRON_AUTHORIZATION] = self.headers.get_all("Authorization") or []
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


def _new_selector() -> selectors.BaseSelector:
    """poll(2) where there is one: unlike epoll it needs no descriptor of its own."""
    return selectors.PollSelector() if hasattr(selectors, "PollSelector") else selectors.DefaultSelector()


#: The request headers the WebSocket handshake reads (WSGI environ keys).
_HANDSHAKE_HEADERS = ("HTTP_HOST", "HTTP_CONNECTION", "HTTP_UPGRADE", "HTTP_SEC_WEBSOCKET_KEY",
                      "HTTP_SEC_WEBSOCKET_VERSION", "HTTP_SEC_WEBSOCKET_PROTOCOL", "HTTP_SEC_WEBSOCKET_EXTENSIONS")


def _request_headers(environ) -> List[Tuple[bytes, bytes]]:
    """The upgrade request's handshake headers from the WSGI environ, for wsproto.

    Only those: h11 (under wsproto) refuses a value with, for example,
    trailing blanks, and a malformed header the handshake does not read
    (``Authorization: Bearer ``) must not turn into a refusal of its own.
    """
    return [(key[5:].replace("_", "-").lower().encode("latin-1"), environ[key].strip(" \t").encode("latin-1"))
            for key in _HANDSHAKE_HEADERS if key in environ]


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

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
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
        if "13" not in (v.strip() for v in environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").split(",")):
            return _plain(start_response, "400 Bad Request", b"`Sec-WebSocket-Version` header did not include '13'")
        protocol = WSConnection(ConnectionType.SERVER)
        try:
            # werkzeug has parsed the request: hand wsproto its headers, no second parse
            protocol.initiate_upgrade_connection(_request_headers(environ),
                                                 environ.get("RAW_URI") or environ.get("PATH_INFO") or "/")
            event = next(protocol.events(), None)
        except (RemoteProtocolError, LocalProtocolError) as exc:  # h11 raises the latter on a bad value
            return _plain(start_response, "400 Bad Request", str(exc).encode("utf-8"))
        if not isinstance(event, Request):
            return _plain(start_response, "400 Bad Request", b"invalid websocket upgrade request")
        if self.authorize is not None:
            refusal = self.authorize(environ)
            if refusal is not None:
                status, body = refusal
                return _plain(start_response, status, body)
        sock = environ.get("werkzeug.socket")
        if sock is None:
            return _plain(start_response, "500 Internal Server Error", b"no raw socket to upgrade")
        with self._lock:
            if len(self._connections) + self._reserved >= self.config.max_connections:
                full = True
            else:
                full = False
                self._reserved += 1
        if full:
            return _plain(start_response, "503 Service Unavailable",
                          b"too many connections (limit %d)" % self.config.max_connections)
        handler = environ.get(_ENVIRON_HANDLER)
        if handler is not None:
            handler.close_connection = True
        peer = "%s:%s" % (environ.get("REMOTE_ADDR", "?"), environ.get("REMOTE_PORT", "?"))
        if isinstance(sock, ssl.SSLSocket):
            sock = TLSStream(sock)
        try:
            connection = WebSocketConnection(sock, protocol, self.dispatcher, self.config, peer)
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

    def connections(self) -> List["WebSocketConnection"]:
        with self._lock:
            return list(self._connections)


class WebSocketConnection:
    """One upgraded connection: reads frames, feeds the dispatcher, writes frames.

    ``send_text`` and ``close`` are thread-safe (one send lock); ``run`` is
    called once, on the connection's request thread.
    """

    def __init__(self, sock: Union[socket.socket, TLSStream], protocol: WSConnection, dispatcher: Dispatcher,
                 config: ServerConfig, peer: str):
        self._sock = sock
        self._protocol = protocol
        self._config = config
        self._send_lock = threading.Lock()
        self._closing = False
        self.peer = peer
        prefix = "failed to parse websocket JSON-RPC message from exec-server websocket %s: " % peer
        self._rpc = dispatcher.open_connection(self.send_text, prefix)

    def _send_event(self, event) -> None:
        with self._send_lock:
            data = self._protocol.send(event)
            self._sock.sendall(data)

    def send_text(self, *texts: str) -> None:
        """Send each JSON-RPC message as one text frame, all in one write.

        Raises:
            ConnectionError: the connection is closing or closed.
        """
        if not all(_encodable(text) for text in texts):
            texts = tuple(text.encode("utf-8", "replace").decode("utf-8") for text in texts)
        try:
            with self._send_lock:
                if len(texts) == 1:
                    self._sock.sendall(self._protocol.send(Message(data=texts[0])))
                else:
                    _send_frames(self._sock, [self._protocol.send(Message(data=text)) for text in texts])
        except LocalProtocolError:
            raise ConnectionResetError("websocket is closed") from None

    def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "") -> None:
        """Send a Close frame and stop reading (used at server shutdown)."""
        self._closing = True
        try:
            self._send_event(CloseConnection(code=code, reason=reason))
        except (LocalProtocolError, OSError):
            pass
        try:
            if isinstance(self._sock, TLSStream):
                self._sock.shutdown_read()
            else:
                self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def run(self) -> None:
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            self._send_event(AcceptConnection())
            self._loop()
        except (OSError, LocalProtocolError) as exc:
            log.debug("websocket %s: %s", self.peer, exc)
        except Exception:
            log.exception("websocket %s failed", self.peer)
        finally:
            self._rpc.close()

    def _loop(self) -> None:
        interval = self._config.ping_interval
        next_ping = time.monotonic() + interval if interval else None
        parts: List[Union[str, bytes]] = []
        size = 0
        limit = self._config.max_message_bytes
        # A TLS stream may hold decrypted bytes already read off the wire: select
        # would not see them, so they are read first.
        pending = self._sock.pending if isinstance(self._sock, TLSStream) else (lambda: 0)
        with _new_selector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while not self._closing:
                if next_ping is not None:
                    now = time.monotonic()
                    if now >= next_ping:
                        self._send_event(Ping(b""))
                        next_ping += interval
                        continue
                    if not pending() and not selector.select(next_ping - now):
                        continue
                data = self._sock.recv(RECV_BYTES)
                if not data:
                    self._protocol.receive_data(None)
                    return
                self._protocol.receive_data(data)
                for event in self._protocol.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        size += len(event.data)
                        if size > limit:
                            self._close_with(CLOSE_MESSAGE_TOO_BIG, "message exceeds %d bytes" % limit)
                            return
                        parts.append(event.data)
                        if not event.message_finished:
                            continue
                        message = parts[0] if len(parts) == 1 else type(parts[0])().join(parts)
                        parts, size = [], 0
                        try:
                            self._rpc.receive(message)
                        except ProtocolViolation as violation:
                            self._close_with(CLOSE_PROTOCOL_ERROR, violation.reason[:120])
                            return
                    elif isinstance(event, Ping):
                        self._send_event(event.response())
                    elif isinstance(event, CloseConnection):
                        # wsproto reports a malformed frame as a Close with 1002, 1007 or 1009
                        code = event.code if event.code in _FAILURE_CODES else CLOSE_NORMAL
                        try:
                            self._send_event(CloseConnection(code=code))
                        except LocalProtocolError:
                            pass
                        return
                    elif isinstance(event, Pong):
                        pass

    def _close_with(self, code: int, reason: str) -> None:
        try:
            self._send_event(CloseConnection(code=code, reason=reason))
        except (LocalProtocolError, OSError):
            pass
