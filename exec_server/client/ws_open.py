"""Opening a client WebSocket: the TCP connect, the TLS handshake of ``wss://`` and the HTTP upgrade.

:func:`open_websocket` hands :class:`~exec_server.client.websocket.WebSocketTransport`
a socket whose upgrade wsproto accepted (frames that came with the 101 answer
stay in the returned ``WSConnection``).  Imported with that module only.
"""

import socket
import ssl
import time
from typing import Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from exec_server.common.bearer import shown_url
from exec_server.common.keepalive import tune_socket
from exec_server.common.tls import TLSStream
from exec_server.protocol.errors import ExecServerDisconnected, ExecServerTLSError

#: Bytes asked of the socket per ``recv``.
CLIENT_RECV_BYTES = 256 * 1024
#: Bytes of a refused upgrade's body kept for the error message.
_REJECT_BODY_BYTES = 64 * 1024


def open_websocket(url: str, timeout: Optional[float], headers: Optional[Mapping[str, str]],
                   ssl_context: Optional[ssl.SSLContext],
                   keepalive_timeout: float) -> Tuple[Union[socket.socket, TLSStream], WSConnection]:
    """Connect to ``url`` (``ws://`` or ``wss://``) and upgrade; returns the socket and its wsproto connection.

    ``timeout``: seconds for the TCP connect, the TLS handshake and the
    upgrade together (None blocks).  The socket is tuned for keepalive
    (:func:`~exec_server.common.keepalive.tune_socket`) and its writes are
    bounded by ``keepalive_timeout`` seconds; a ``wss://`` socket is wrapped
    in :class:`~exec_server.common.tls.TLSStream`.

    Raises:
        ValueError: the URL is neither ``ws://`` nor ``wss://``.
        ExecServerTLSError: the TLS handshake failed; the message says why.
        ExecServerDisconnected: the server cannot be reached, or refused the
            upgrade (the message names the HTTP status and the body).
    """
    parts, shown = urlsplit(url), shown_url(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError("only ws:// and wss:// URLs are supported, got %r" % shown)
    deadline = None if timeout is None else time.monotonic() + timeout
    secure = parts.scheme == "wss"
    host, port = parts.hostname, parts.port or (443 if secure else 80)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    try:
        if timeout is not None and timeout <= 0:  # create_connection would make it non-blocking: EINPROGRESS
            raise socket.timeout("timed out")
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:  # its words alone ("Connection refused"), as the command's own line says them
        raise ExecServerDisconnected("cannot connect to %s: %s" % (shown, exc.strerror or exc)) from exc
    handshaken = False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            sock = _tls_handshake(sock, host, ssl_context or ssl.create_default_context(), deadline, shown)
            handshaken = True
        protocol = WSConnection(ConnectionType.CLIENT)
        sock.sendall(protocol.send(Request(host=host, target=target,
                                           extra_headers=list((headers or {}).items()))))
        _await_accept(sock, protocol, deadline, secure)
        tune_socket(sock, keepalive_timeout)
        sock.settimeout(keepalive_timeout or None)  # bounds each write; reads wait in poll first
    except (OSError, RemoteProtocolError, LocalProtocolError) as exc:
        sock.close()
        if isinstance(exc, ExecServerDisconnected):
            raise
        if handshaken and isinstance(exc, (ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            # TLS 1.3: a server checks the client's certificate (or its lack) after the handshake
            raise ExecServerTLSError("TLS connection to %s ended before the upgrade: %s (a server started with "
                                     "--tls-client-ca wants a client certificate it trusts)"
                                     % (shown, getattr(exc, "reason", None) or "closed by the server")) from exc
        raise ExecServerDisconnected("cannot connect to %s: %s"
                                     % (shown, getattr(exc, "strerror", None) or exc)) from exc
    if secure:
        sock = TLSStream(sock)  # the reader and the writers must not call OpenSSL at once
    return sock, protocol


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
        plain = exc.reason in _NOT_TLS_REASONS  # a plain HTTP answer read as a TLS record
        raise ExecServerTLSError("TLS handshake with %s failed: %s%s" % (
            url, exc.reason or exc, " (the server does not speak TLS: a ws:// server?)" if plain else "")) from exc


#: OpenSSL's reasons when the peer answered the ClientHello with something that is not TLS.
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST")


def _await_accept(sock: socket.socket, protocol: WSConnection, deadline: Optional[float],
                  secure: bool = True) -> None:
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
            raise ConnectionError("connection closed during the WebSocket handshake (%sas does a server that "
                                  "refuses it at one of its limits: see the server's log)"
                                  % ("" if secure else "a wss:// server closes a plain connection so, "))
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
