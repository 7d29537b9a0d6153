"""The client's WebSocket transport: :class:`WebSocketTransport` for ``ws://`` and ``wss://`` URLs.

Built on wsproto the same way as the server's connection
(``exec_server.common.websocket``): one send lock, every frame written
whole, Pings answered, a Close frame and a bounded wait on close.  A
``wss://`` connection goes through :class:`exec_server.common.tls.TLSStream`,
so the reader thread and the writers never call OpenSSL at once.  The
opening handshakes are in :mod:`~exec_server.client.ws_open`.  Imported
only when a client connects over WebSocket (wsproto and ssl cost ~30 ms of
start-up that ``exec-server run`` and ``Client.spawn`` do not need).
"""

import collections
import socket
import ssl
import threading
import time
from typing import Callable, Deque, List, Mapping, Optional, Union

from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from exec_server.client.transport import KEEPALIVE_TIMEOUT, PING_INTERVAL, PROBE_TIMEOUT
from exec_server.client.ws_open import CLIENT_RECV_BYTES, open_websocket
from exec_server.common.bearer import check_token, shown_url
from exec_server.common.keepalive import DEAD, PING, KeepaliveClock, abort_socket, wait_readable
from exec_server.common.tls import recv_ready
from exec_server.common.websocket import CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, FrameWriter
from exec_server.protocol.errors import ExecServerDisconnected

#: Largest message the client accepts, bytes (characters of a text message).
CLIENT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Seconds :meth:`WebSocketTransport.close` waits for the server's Close frame.
CLOSE_WAIT = 1.0
#: A timed-out call probes the connection only if nothing arrived for this many seconds.
SUSPECT_AFTER_QUIET = 1.0
#: Seconds a send waits for another thread's frame at least, whatever its timeout: a keepalive Ping being
#: written fails no call (a kill sent with no time left still goes out).
MIN_LOCK_WAIT = 0.1


class WebSocketTransport:
    """One WebSocket connection to ``ws://host:port/path`` or ``wss://`` (TLS).  Implements :class:`Transport`.

    Keepalive: after ``ping_interval`` seconds without anything from the
    server a Ping is sent; after ``keepalive_timeout`` seconds without
    anything (no frame, no Pong) the connection is dead and :meth:`receive`
    reports its end (the client then recovers).  A write that makes no
    progress for ``keepalive_timeout`` seconds ends it too.  TCP keepalive
    and ``TCP_USER_TIMEOUT`` are set where the OS has them.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        timeout: seconds for the TCP connect, the TLS handshake and the
            upgrade together; None blocks.
        headers: extra HTTP headers for the upgrade (Authorization, traceparent, ...).
        ping_interval: seconds of silence before a Ping (0: never ping).
        keepalive_timeout: seconds of silence after which the connection is
            dead (0: never; must exceed ``ping_interval``).
        probe_timeout: seconds :meth:`suspect` waits for an answer (0: no probe).
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
                 ssl_context: Optional[ssl.SSLContext] = None, ping_interval: float = PING_INTERVAL,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT, probe_timeout: float = PROBE_TIMEOUT):
        self.url = url
        sock, protocol = open_websocket(url, timeout, headers, ssl_context, keepalive_timeout)
        self._sock = sock
        self._protocol = protocol
        self._writer = FrameWriter(sock, protocol, keepalive_timeout or None)
        self._messages: Deque[Union[str, bytes]] = collections.deque()
        self._parts: List[Union[str, bytes]] = []
        self._size = 0
        self._ended: Optional[str] = None  # why the connection ended, once it has
        #: The code of the server's Close frame, once one came (1009: a message of ours was too big).
        self.close_code: Optional[int] = None
        self._done = threading.Event()  # set when the reader saw the end
        self._closing = False
        self._reader: Optional[int] = None  # thread id of the receiving thread
        self._clock = KeepaliveClock(ping_interval, keepalive_timeout, time.monotonic(), fixed_schedule=False)
        self._probe_timeout = probe_timeout
        self._probe: Optional[threading.Event] = None  # set by the reader when anything arrives
        self._dead_reason: Optional[str] = None  # why a probe shut the socket down
        self._handle_events()  # frames that came with the 101 answer

    def send(self, text: str) -> None:
        """Send ``text`` as one text message (whole, under the send lock; frames of 1 MiB when larger).

        Raises:
            ExecServerDisconnected: the connection is closed or the write failed.
        """
        self.send_within(text, None)

    def send_within(self, text: str, timeout: Optional[float]) -> None:
        """:meth:`send`, waiting at most ``timeout`` s (None: no limit) for another thread's message to go out first.

        The write itself is bounded as :meth:`send`'s (``keepalive_timeout``); the wait for the
        connection lasts :data:`MIN_LOCK_WAIT` s at least.

        Raises:
            TimeoutError: another thread's message still held the connection after ``timeout`` s; nothing
                was sent and the connection stays.
            ExecServerDisconnected: as :meth:`send`.
        """
        if self._ended is not None:
            raise ExecServerDisconnected("connection closed")
        writer = self._writer
        # a ^C while another thread's message goes out leaves the stream whole: raised as is
        wait = None if timeout is None else max(timeout, MIN_LOCK_WAIT)
        if not writer.lock.acquire(timeout=-1 if wait is None else wait):
            raise TimeoutError("another message to the exec-server was still being sent after %.3f s" % wait)
        try:
            writer.write_texts(text)
        except OSError as exc:
            # Part of the frame may be out: nothing more can be written on this stream without
            # corrupting it, so it ends here (the reader sees the end and the client recovers).
            self._dead_reason = self._dead_reason or "connection lost: send failed: %s" % exc
            abort_socket(self._sock, reset=True)
            raise ExecServerDisconnected("send failed: %s" % exc) from exc
        except BaseException:
            # Ctrl-C between two frames of a large message, or in one: the next message would go out
            # as the rest of this one (the server would never see it), so the stream ends here too,
            # and the client's next call (the kill that follows a ^C) goes on a resumed connection.
            self._dead_reason = self._dead_reason or "connection lost: a send was interrupted"
            abort_socket(self._sock, reset=True)
            raise
        finally:
            writer.lock.release()

    def ping(self) -> None:
        """Send a Ping frame (the server answers with a Pong, which is ignored).

        Raises:
            ExecServerDisconnected: the connection is closed or the write failed.
        """
        try:
            self._writer.send_event(Ping(b""))
        except (OSError, LocalProtocolError) as exc:
            raise ExecServerDisconnected("ping failed: %s" % exc) from exc

    def _send_ping(self) -> bool:
        """A keepalive Ping; skipped (False) while another write holds the lock for ``CLOSE_WAIT`` s."""
        try:
            return self._writer.send_event(Ping(b""), timeout=CLOSE_WAIT)
        except (OSError, LocalProtocolError):
            return True  # a failed write shows as the end of the stream

    def suspect(self) -> None:
        """A call or wait timed out: if the server has been quiet, ping it now and give it ``probe_timeout`` s.

        Non-blocking: a short-lived thread waits for the answer and, if
        nothing arrives, shuts the socket down, so :meth:`receive` reports the
        end and the client recovers.  No-op while a probe runs, after the end,
        or when something arrived in the last :data:`SUSPECT_AFTER_QUIET` s.
        """
        start = time.monotonic()
        if (self._ended is not None or not self._probe_timeout or self._probe is not None
                or start - self._clock.last_received < SUSPECT_AFTER_QUIET):
            return
        probe = self._probe = threading.Event()
        threading.Thread(target=self._await_probe, args=(probe, start), name="exec-server-client-probe",
                         daemon=True).start()

    def _await_probe(self, probe: threading.Event, start: float) -> None:
        try:
            # here, not on the caller's thread, which another thread's stalled write would hold up; a Ping
            # that cannot go out (a large write holds the connection) is no verdict: that write's own bound
            # (keepalive_timeout) ends a dead connection, and a slow one is not cut in the middle
            if not self._send_ping():
                return
            if probe.wait(self._probe_timeout) or self._clock.last_received >= start or self._ended is not None:
                return
            self._dead_reason = "connection lost: no answer to a keepalive probe within %.1f s" % self._probe_timeout
            abort_socket(self._sock)
        finally:
            self._probe = None

    def receive(self) -> Union[str, bytes]:
        """The next whole message (str for text frames), blocking; call from one thread only.

        Server Pings are answered here.  Messages that arrived before the end
        are returned before the end is reported.

        Raises:
            ExecServerDisconnected: the connection ended (Close, end of
                stream, socket error, or a message over CLIENT_MAX_MESSAGE_BYTES).
        """
        messages = self._messages
        clock = self._clock
        while not messages:
            if self._ended is not None:
                raise ExecServerDisconnected(self._ended)
            self._reader = threading.get_ident()
            now = time.monotonic()
            action = clock.poll(now)
            if action == DEAD:
                self._end("connection lost: nothing from the server for %.1f s (keepalive)" % clock.timeout)
                continue
            if action == PING:
                self._send_ping()
                continue
            try:
                wait = clock.wait_time(now)
                if not wait_readable(self._sock, wait):
                    continue
                data = recv_ready(self._sock, CLIENT_RECV_BYTES, wait)
            except socket.timeout:  # part of a TLS record, its rest not come within the wait
                continue
            except (OSError, ValueError) as exc:
                self._end(self._dead_reason or "connection closed (%s)" % exc)
                continue
            clock.received(time.monotonic())
            probe = self._probe
            if probe is not None:
                probe.set()
            if not data and self._dead_reason is not None:
                self._end(self._dead_reason)
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
                self.close_code = event.code
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

    def abort(self) -> None:
        """Close the socket at once, without the closing handshake (for a server that stopped answering)."""
        if self._closing:
            return
        self._closing = True
        if self._ended is None:
            self._ended = "connection aborted"
        self._release()

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


def connector_for(url: str, headers: Optional[Mapping[str, str]], token: Union[str, Callable[[], str], None],
                  ssl_context: Optional[ssl.SSLContext], ping_interval: float = PING_INTERVAL,
                  keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                  probe_timeout: float = PROBE_TIMEOUT) -> Callable[[Optional[float]], "WebSocketTransport"]:
    """The ``connector(timeout)`` of :meth:`exec_server.Client.connect`: a new connection each call.

    ``token`` (a string, or a callable called before every connect) is sent
    as ``Authorization: Bearer <token>``.

    Raises:
        ValueError: ``token`` is a string no header can carry (:func:`~exec_server.common.bearer.check_token`),
            or a header name or value is not one HTTP allows (checked by the WebSocket library, before any
            connect; a CR or LF would have split it into two headers).
        TypeError: a header name or value that is neither str nor bytes.
    Raises (from the connector):
        ExecServerDisconnected: as :class:`WebSocketTransport`, or the token callable raised.
        ExecServerTLSError: as :class:`WebSocketTransport`.
    """
    headers = dict(headers or {})
    _check_headers(headers)
    if isinstance(token, str):
        check_token(token)

    def connector(connect_timeout: Optional[float]) -> WebSocketTransport:
        upgrade_headers = headers
        if token is not None:
            try:
                value = check_token(token() if callable(token) else token)
            except Exception as exc:
                raise ExecServerDisconnected("cannot get a token for %s: %s" % (shown_url(url), exc)) from exc
            upgrade_headers = dict(headers, Authorization="Bearer " + value)
        return WebSocketTransport(url, connect_timeout, upgrade_headers, ssl_context, ping_interval,
                                  keepalive_timeout, probe_timeout)

    return connector


def _check_headers(headers: Mapping[Union[str, bytes], Union[str, bytes]]) -> None:
    """Raise what the upgrade request would for ``headers``, now: wsproto (h11) writes it and checks each."""
    import h11
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request

    for name, value in headers.items():
        if not isinstance(name, (str, bytes)) or not isinstance(value, (str, bytes)):
            raise TypeError("header names and values must be str (or bytes), not %s: %r"
                            % (type(value if isinstance(name, (str, bytes)) else name).__name__, name))
        try:
            WSConnection(ConnectionType.CLIENT).send(Request(host="host", target="/", extra_headers=[(name, value)]))
        except (h11.LocalProtocolError, LocalProtocolError, UnicodeError) as exc:
            raise ValueError("header %r: %s" % (name, exc)) from None
