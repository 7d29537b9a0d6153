"""Client transports: a blocking message pipe to one server connection.

:class:`Transport` is what the client's endpoint needs of a connection;
:class:`WebSocketTransport` is the WebSocket one, built on wsproto the same
way as the server's connection (``exec_server.common.websocket``): one send
lock, every frame written whole, Pings answered, a Close frame and a bounded
wait on close.  A ``wss://`` connection goes through
:class:`exec_server.common.tls.TLSStream`, so the reader thread and the
writers never call OpenSSL at once.  The stdio transport is in
:mod:`exec_server.client.stdio`.
"""

import collections
import socket
import ssl
import threading
import time
from typing import Callable, Deque, List, Mapping, Optional, Protocol, Union
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, CloseConnection, Message, Ping, RejectConnection, RejectData,
                            Request)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from exec_server.common.tls import TLSStream
from exec_server.common.websocket import CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, FrameWriter
from exec_server.protocol.errors import ExecServerDisconnected, ExecServerTLSError

#: Largest message the client accepts, bytes (characters of a text message).
CLIENT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Bytes asked of the socket per ``recv``.
CLIENT_RECV_BYTES = 256 * 1024
#: Seconds :meth:`WebSocketTransport.close` waits for the server's Close frame.
CLOSE_WAIT = 1.0
#: Bytes of a refused upgrade's body kept for the error message.
_REJECT_BODY_BYTES = 64 * 1024


class Transport(Protocol):
    """One connection to a server, as the client's endpoint uses it.

    ``send`` may be called from any thread; ``receive`` from one reader
    thread only; ``close`` from any thread, any number of times.
    """

    def send(self, text: str) -> None:
        """Send one JSON-RPC message.  Raises ExecServerDisconnected if the connection is gone."""

    def receive(self) -> Union[str, bytes]:
        """The next message, blocking.  Raises ExecServerDisconnected once the connection ended."""

    def close(self) -> None:
        """End the connection (bounded); later sends raise ExecServerDisconnected."""

    def ping(self) -> None:
        """Send a keepalive if the transport has one (a no-op otherwise)."""


#: ``connector(timeout_seconds) -> Transport``: opens a new connection (the client calls it again to reconnect).
Connector = Callable[[Optional[float]], Transport]


class WebSocketTransport:
    """One WebSocket connection to ``ws://host:port/path`` or ``wss://`` (TLS).  Implements :class:`Transport`.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        timeout: seconds for the TCP connect, the TLS handshake and the
            upgrade together; None blocks.
        headers: extra HTTP headers for the upgrade (Authorization, traceparent, ...).
        ssl_context: the client-side context of a ``wss://`` URL (trusted CAs,
            client certificate); None uses ``ssl.create_default_context()``,
            the system's trust store with host name checking.
    Raises:
        ValueError: the URL is neither ``ws://`` nor ``wss://``.
        ExecServerTLSError: the TLS handshake failed (e.g. the server's
            certificate is not trusted); the message says why.
        ExecServerDisconnected: the server cannot be reached, or refused the
            upgrade (the message names the HTTP status and the body).
    """

    def __init__(self, url: str, timeout: Optional[float] = 10.0, headers: Optional[Mapping[str, str]] = None,
                 ssl_context: Optional[ssl.SSLContext] = None):
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError("only ws:// and wss:// URLs are supported, got %r" % url)
        self.url = url
        deadline = None if timeout is None else time.monotonic() + timeout
        secure = parts.scheme == "wss"
        host, port = parts.hostname, parts.port or (443 if secure else 80)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ExecServerDisconnected("cannot connect to %s: %s" % (url, exc)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if secure:
                sock = _tls_handshake(sock, host, ssl_context or ssl.create_default_context(), deadline, url)
            protocol = WSConnection(ConnectionType.CLIENT)
            sock.sendall(protocol.send(Request(host=host, target=target,
                                               extra_headers=list((headers or {}).items()))))
            _await_accept(sock, protocol, deadline)
            sock.settimeout(None)
        except (OSError, RemoteProtocolError, LocalProtocolError) as exc:
            sock.close()
            if isinstance(exc, ExecServerDisconnected):
                raise
            raise ExecServerDisconnected("cannot connect to %s: %s" % (url, exc)) from exc
        if secure:
            sock = TLSStream(sock)  # the reader and the writers must not call OpenSSL at once
        self._sock = sock
        self._protocol = protocol
        self._writer = FrameWriter(sock, protocol)
        self._messages: Deque[Union[str, bytes]] = collections.deque()
        self._parts: List[Union[str, bytes]] = []
        self._size = 0
        self._ended: Optional[str] = None  # why the connection ended, once it has
        self._done = threading.Event()  # set when the reader saw the end
        self._closing = False
        self._reader: Optional[int] = None  # thread id of the receiving thread
        self._handle_events()  # frames that came with the 101 answer

    def send(self, text: str) -> None:
        """Send ``text`` as one text frame (whole, under the send lock).

        Raises:
            ExecServerDisconnected: the connection is closed or the write failed.
        """
        if self._ended is not None:
            raise ExecServerDisconnected("connection closed")
        try:
            self._writer.send_texts(text)
        except OSError as exc:
            raise ExecServerDisconnected("send failed: %s" % exc) from exc

    def ping(self) -> None:
        """Send a Ping frame (the server answers with a Pong, which is ignored).

        Raises:
            ExecServerDisconnected: the connection is closed or the write failed.
        """
        try:
            self._writer.send_event(Ping(b""))
        except (OSError, LocalProtocolError) as exc:
            raise ExecServerDisconnected("ping failed: %s" % exc) from exc

    def receive(self) -> Union[str, bytes]:
        """The next whole message (str for text frames), blocking; call from one thread only.

        Server Pings are answered here.  Messages that arrived before the end
        are returned before the end is reported.

        Raises:
            ExecServerDisconnected: the connection ended (Close, end of
                stream, socket error, or a message over CLIENT_MAX_MESSAGE_BYTES).
        """
        messages = self._messages
        while not messages:
            if self._ended is not None:
                raise ExecServerDisconnected(self._ended)
            self._reader = threading.get_ident()
            try:
                data = self._sock.recv(CLIENT_RECV_BYTES)
            except OSError as exc:
                self._end("connection closed (%s)" % exc)
                continue
            try:
                self._protocol.receive_data(data or None)
            except RemoteProtocolError as exc:
                self._end("connection closed (%s)" % exc)
                continue
            self._handle_events()
            if not data:
                self._end("connection closed")
        return messages.popleft()

    def _handle_events(self) -> None:
        """Drain wsproto's events: queue whole messages, answer Pings, note a Close."""
        for event in self._protocol.events():
            if isinstance(event, Message):
                data = event.data
                if event.message_finished and not self._parts:
                    if len(data) > CLIENT_MAX_MESSAGE_BYTES:
                        self._too_big()
                        return
                    self._messages.append(data)
                    continue
                self._size += len(data)
                if self._size > CLIENT_MAX_MESSAGE_BYTES:
                    self._too_big()
                    return
                self._parts.append(data)
                if event.message_finished:
                    parts = self._parts
                    self._messages.append(type(parts[0])().join(parts))
                    self._parts, self._size = [], 0
            elif isinstance(event, Ping):
                try:
                    self._writer.send_event(event.response())
                except (OSError, LocalProtocolError):
                    pass
            elif isinstance(event, CloseConnection):
                if self._protocol.state == ConnectionState.REMOTE_CLOSING:
                    try:
                        self._writer.send_event(event.response(), timeout=CLOSE_WAIT)
                    except (OSError, LocalProtocolError):
                        pass
                self._end("connection closed (%s)" % (event.reason or event.code))
                return

    def _too_big(self) -> None:
        reason = "message exceeds %d bytes" % CLIENT_MAX_MESSAGE_BYTES
        try:
            self._writer.send_event(CloseConnection(code=CLOSE_MESSAGE_TOO_BIG, reason=reason), timeout=CLOSE_WAIT)
        except (OSError, LocalProtocolError):
            pass
        self._end("connection closed (%s)" % reason)

    def _end(self, reason: str) -> None:
        """The reader saw the end: remember why, wake :meth:`close`, release the socket."""
        if self._ended is None:
            self._ended = reason
        self._done.set()
        self._release()

    def _release(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv or sendall
        except OSError:
            pass
        with self._writer.lock:
            self._sock.close()

    def close(self) -> None:
        """Send a Close frame, wait up to CLOSE_WAIT seconds for the server's, then close the socket.

        Idempotent and thread-safe; does not wait when called from the
        receiving thread (nobody else would read the answer).
        """
        if self._closing:
            return
        self._closing = True
        if self._ended is None:
            try:
                self._writer.send_event(CloseConnection(code=CLOSE_NORMAL), timeout=CLOSE_WAIT)
            except (OSError, LocalProtocolError):
                pass
            if self._reader is not None and self._reader != threading.get_ident():
                self._done.wait(CLOSE_WAIT)
        if self._ended is None:
            self._ended = "connection closed"
        self._release()


def _tls_handshake(sock: socket.socket, host: str, context: ssl.SSLContext, deadline: Optional[float],
                   url: str) -> ssl.SSLSocket:
    """Wrap ``sock`` in TLS and complete the handshake before ``deadline``.

    Raises:
        ExecServerTLSError: the handshake failed; a certificate failure is
            named (``certificate verify failed: <why>``).
        OSError: the connection failed or timed out.
    """
    if deadline is not None:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ExecServerTLSError("TLS handshake with %s failed: certificate verify failed: %s"
                                 % (url, exc.verify_message or exc.reason)) from exc
    except ssl.SSLError as exc:
        sock.close()
        raise ExecServerTLSError("TLS handshake with %s failed: %s" % (url, exc.reason or exc)) from exc


def _await_accept(sock: socket.socket, protocol: WSConnection, deadline: Optional[float]) -> None:
    """Read the upgrade's answer until wsproto accepts it.

    Raises:
        ConnectionError: refused (``HTTP <status>: <body>``), or the stream ended first.
        socket.timeout: the deadline passed.
    """
    status = None
    body = b""
    while True:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out during the WebSocket handshake")
            sock.settimeout(remaining)
        data = sock.recv(CLIENT_RECV_BYTES)
        if not data:
            if status is not None:
                raise ConnectionError(_refusal(status, body))
            raise ConnectionError("connection closed during the WebSocket handshake")
        protocol.receive_data(data)
        for event in protocol.events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise ConnectionError(_refusal(status, body))
            elif isinstance(event, RejectData):
                body = (body + event.data)[:_REJECT_BODY_BYTES]
                if event.body_finished:
                    raise ConnectionError(_refusal(status, body))
            else:
                raise ConnectionError("unexpected WebSocket handshake event %r" % (event,))


def _refusal(status: Optional[int], body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    message = "WebSocket upgrade refused with HTTP %s" % status
    return message + (": " + text[:200] if text else "")
