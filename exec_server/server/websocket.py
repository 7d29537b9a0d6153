"""One upgraded WebSocket connection: the per-connection loop, keepalive and bounded writes.

Frames are parsed and built by wsproto, and every outbound frame (response,
notification, ping, close) is written whole under one send lock, each write
bounded by ``send_timeout``.  A TLS socket (``wss://``) is used through
:class:`exec_server.common.tls.TLSStream`, which keeps the reading and the
writing threads from calling OpenSSL at the same time.  Keepalive (Pings, a silence deadline, the
takeover probe), the ``initialize`` time limit and the bounded Close of
shutdown and eviction live here; the WSGI side (``/readyz``, the upgrade,
admission) is :mod:`exec_server.server.upgrade`.
"""

import logging
import selectors
import socket
import threading
import time
from typing import Callable, List, Optional, Union

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from exec_server.common.keepalive import (DEAD, PING, KeepaliveClock, abort_socket, send_progress, tune_socket,
                                          writable_now)
from exec_server.common.tls import POLL_SELECTOR, TLSStream, recv_ready
from exec_server.common.websocket import (CLOSE_GOING_AWAY, CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL,  # noqa: F401
                                          CLOSE_POLICY_VIOLATION, CLOSE_PROTOCOL_ERROR, CLOSE_TRY_AGAIN_LATER,
                                          FAILURE_CODES as _FAILURE_CODES, RECV_BYTES)
from exec_server.common.websocket import (send_all as _send_all, send_fragmented as _send_fragmented,
                                          send_frames as _send_frames, send_now as _send_now)
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.protocol.errors import ProtocolViolation
from exec_server.protocol.jsonrpc import utf8_size
from exec_server.protocol.wire import RawJson
from exec_server.protocol.handshake import NEW

#: What each fragment of a message but its last counts against ``max_message_bytes`` besides its payload:
#: about the memory of the piece kept until the message is whole, so a message of many empty or tiny
#: fragments is refused (1009) before it holds more than the limit.
FRAGMENT_OVERHEAD_BYTES = 64

log = logging.getLogger(__name__)


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 material (no lone surrogate, e.g. from a non-UTF-8 file name)."""
    try:
        return text.isascii() or bool(text.encode("utf-8"))  # no copy for ASCII (a large result: base64)
    except UnicodeEncodeError:
        return False


class WebSocketConnection:
    """One upgraded connection: reads frames, feeds the dispatcher, writes frames.

    ``send_text``, ``close``, ``evict`` and ``probe`` are thread-safe (one
    send lock); ``run`` is called once, on the connection's request thread.
    Every write is bounded: a write whose peer takes under
    :data:`~exec_server.common.keepalive.MIN_SEND_RATE` bytes per second
    for ``send_timeout`` seconds (the socket's timeout) marks the connection
    dead and shuts its socket down, which ends ``run`` and detaches the
    session.  A peer silent for ``keepalive_timeout`` seconds is dead too.
    ``early``: bytes the peer sent after its upgrade request, before the 101
    (read with the request), handled before any read of the socket;
    ``accept``: the ``101 Switching Protocols`` answer, written first by :meth:`run`.
    """

    def __init__(self, sock: Union[socket.socket, TLSStream], dispatcher: Dispatcher, config: ServerConfig, peer: str,
                 early: bytes = b"", accept: bytes = b""):
        # the 101 until written: the first write under the send lock carries it (the loop's, or a Close of
        # shutdown or eviction that comes before it: the peer must read the 101 first)
        self._sock, self._early, self._accept = sock, early, accept
        self._protocol = Connection(ConnectionType.SERVER)  # the frames (the handshake is done by then)
        self._config = config
        self._send_lock = threading.Lock()
        self._closing = False
        self._dead = False  # a write failed or stalled: nothing more is written
        self.peer = peer
        now = time.monotonic()
        self.opened = now
        #: When the last whole JSON-RPC message arrived (monotonic; eviction picks the quietest).
        self.last_message = now
        keepalive = config.keepalive_timeout if config.ping_interval else 0.0
        self._clock = KeepaliveClock(config.ping_interval, keepalive, now, fixed_schedule=True)
        self._received = threading.Condition()
        self._probes = 0  # probes waiting for bytes from the peer
        self._ended = False  # the connection's thread is done (the peer closed, or a failure): no probe waits
        # The send queue as the last Ping left it (see _pong_delayed): bytes acknowledged then (or at
        # the last look since), where the Ping's bytes end, and whether it was still queued.
        self._acked = 0
        self._ping_end: Optional[int] = None
        self._ping_delayed = False
        prefix = "failed to parse websocket JSON-RPC message from exec-server websocket %s: " % peer
        self._rpc = dispatcher.open_connection(self.send_text, prefix, probe=self.probe)

    @property
    def initialized(self) -> bool:
        """Whether ``initialize`` has succeeded on this connection."""
        return self._rpc.handshake.state != NEW

    def is_idle(self) -> bool:
        """No request in flight and no running process in the session it holds."""
        return self._rpc.is_idle()

    def _pong_delayed(self) -> bool:
        """Whether the Pong we miss cannot have come yet: a slow link, not a silent peer.

        Our last Ping waits behind output queued in the socket (4 MiB take
        16 s at 256 KiB/s).  True while that Ping is still queued and the
        peer has taken bytes since the last look, and once more right after
        it got through (time for the peer to read up to it and answer).  A
        peer that takes nothing (it stopped reading, or vanished) or got the
        Ping long ago and answers nothing stays silent.  False where the
        kernel cannot say (not Linux).
        """
        progress = send_progress(self._sock)
        if progress is None or self._ping_end is None:
            return False
        acked, before = progress[0], self._acked
        self._acked = acked
        if acked < self._ping_end:
            self._ping_delayed = acked > before
        else:  # the Ping got through since the last look: one more timeout for its Pong, no more
            self._ping_delayed, was_delayed = False, self._ping_delayed
            return was_delayed
        return self._ping_delayed

    def _sent_ping(self) -> None:
        """Note where the Ping just written ends in the socket's byte stream (see :meth:`_pong_delayed`).

        Progress is measured from the first Ping still queued, not from the
        latest: acknowledgements come in bursts as the peer's window opens.
        """
        progress = send_progress(self._sock)
        if progress is not None:
            if self._ping_end is None or progress[0] >= self._ping_end:
                self._acked = progress[0]
            self._ping_end = progress[0] + progress[1]

    def _die(self, reset: bool = False) -> None:
        """A write failed or stalled (``reset``: see :func:`~exec_server.common.keepalive.abort_socket`), or the
        peer is silent: stop writing and wake the reader."""
        self._dead = True
        self._closing = True
        abort_socket(self._sock, reset)

    def _send_event(self, event, lock_timeout: Optional[float] = None) -> None:
        """Write one event (None: nothing but the 101 if unsent) whole, bounded by the socket's timeout.

        Raises:
            OSError: the write failed or stalled (the connection is now dead),
                or the send lock was not free within ``lock_timeout``.
            LocalProtocolError: the event is not valid in the connection's state.
        """
        if not self._send_lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
            raise TimeoutError("send lock busy")
        try:
            if self._dead:
                raise ConnectionResetError("websocket is dead")
            data, self._accept = self._accept + (b"" if event is None else self._protocol.send(event)), b""
            try:
                _send_all(self._sock, data, self._config.send_timeout)
            except OSError:
                self._die(reset=True)
                raise
        finally:
            self._send_lock.release()

    def send_text(self, *texts: str) -> None:
        """Send each JSON-RPC message as one text frame, all in one write.

        Raises:
            ConnectionError: the connection is closing, closed or dead.
            OSError: the write failed or stalled for ``send_timeout`` s (now dead).
        """
        if len(texts) == 1 and isinstance(texts[0], RawJson):
            self._send_fragments(texts[0])
            return
        if not all(_encodable(text) for text in texts):
            texts = tuple(text.encode("utf-8", "replace").decode("utf-8") for text in texts)
        if len(texts) == 1:
            self._write(lambda: _send_all(self._sock, self._protocol.send(Message(data=texts[0])),
                                          self._config.send_timeout))
        else:
            self._write(lambda: _send_frames(self._sock, [self._protocol.send(Message(data=text)) for text in texts],
                                             self._config.send_timeout))

    def _send_fragments(self, message: RawJson) -> None:
        """Send a large message as frames of :data:`~exec_server.protocol.wire.LARGE_MESSAGE_CHARS`
        characters: it never exists whole as one str, its UTF-8 bytes and its frame.  Raises as :meth:`send_text`.
        """
        pieces = (piece if _encodable(piece) else piece.encode("utf-8", "replace").decode("utf-8")
                  for piece in message.fragments())
        self._write(lambda: _send_fragmented(self._sock, self._protocol, pieces, self._config.send_timeout))

    def _write(self, write: Callable[[], None]) -> None:
        """Run ``write`` under the send lock: a failed write kills the connection.  Raises as :meth:`send_text`."""
        try:
            with self._send_lock:
                if self._dead:
                    raise ConnectionResetError("websocket is dead")
                try:
                    write()
                except OSError:
                    self._die(reset=True)
                    raise
        except LocalProtocolError:
            raise ConnectionResetError("websocket is closed") from None

    def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "", lock_timeout: float = 0.0) -> None:
        """Send a Close frame if it can go out at once, and stop reading; never blocks longer than ``lock_timeout``.

        A connection whose send lock stays busy (a write stalled on a peer
        that does not read) or whose socket buffer is full gets no Close
        frame: its socket is shut down instead.  Used at server shutdown
        and eviction.
        """
        self._closing = True
        if not self._send_lock.acquire(timeout=lock_timeout if lock_timeout > 0 else 0):
            self._die()
            return
        try:
            if self._dead or not writable_now(self._sock):
                self._die()
                return
            frame, self._accept = self._accept + self._protocol.send(CloseConnection(code=code, reason=reason)), b""
            if not _send_now(self._sock, frame):
                self._die()
                return
        except LocalProtocolError:  # a Close went out already
            pass
        except OSError:
            self._die()
            return
        finally:
            self._send_lock.release()
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def evict(self) -> None:
        """Close an idle connection to admit a new one (1013 try again later)."""
        log.info("websocket %s closed to make room (max_connections)", self.peer)
        self.close(CLOSE_TRY_AGAIN_LATER, "exec-server at its connection limit")

    def probe(self, timeout: float) -> bool:
        """Whether the peer is alive: a Ping, then anything from it within ``timeout`` seconds.

        A peer that stays silent is dead: the connection is closed and its
        session detached before this returns False.  A peer that answers
        nothing but takes the output queued to it (a slow link: our Ping waits
        behind that output, as in :meth:`_pong_delayed`) is alive.  Called
        from another connection's thread (a resume); bounded by ``timeout``.
        """
        start = time.monotonic()
        deadline = start + timeout
        before = send_progress(self._sock)
        with self._received:
            self._probes += 1
        try:
            ping_end = None  # where our Ping ends in the byte stream, once written
            try:
                self._send_event(Ping(b"probe"), lock_timeout=timeout / 2)
                sent = send_progress(self._sock)
                ping_end = None if sent is None else sent[0] + sent[1]
            except (OSError, LocalProtocolError):
                pass  # busy (behind a large write) or failed
            with self._received:
                while self._clock.last_received < start and not (self._dead or self._ended):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._received.wait(remaining)
            if self._ended:
                return False  # closed meanwhile (its session detached): nothing to wait for
            alive = self._clock.last_received >= start and not self._dead
            if not alive and not self._dead and before is not None:
                after = send_progress(self._sock)  # it took output meanwhile, and not yet our Ping: a slow link
                alive = after is not None and after[0] > before[0] and (ping_end is None or after[0] < ping_end)
        finally:
            with self._received:
                self._probes -= 1
        if not alive:
            log.info("websocket %s did not answer a takeover probe within %.1f s; closed", self.peer, timeout)
            self._die()
            self._rpc.close()
        return alive

    def run(self) -> None:
        config = self._config
        tune_socket(self._sock, self._clock.timeout)
        try:
            if not isinstance(self._sock, TLSStream):  # a TLSStream bounds each write itself
                self._sock.settimeout(config.send_timeout)  # bounds every write; reads wait in select first
            self._send_event(None)  # the 101
            self._loop()
        except (OSError, LocalProtocolError) as exc:
            log.debug("websocket %s: %s", self.peer, exc)
        except Exception:
            log.exception("websocket %s failed", self.peer)
        finally:
            self._rpc.close()
            with self._received:  # a takeover probe waiting for this peer learns it is gone
                self._ended = True
                self._received.notify_all()

    def _loop(self) -> None:
        clock = self._clock
        init_limit = self._config.initialize_timeout
        init_deadline = self.opened + init_limit if init_limit else None
        parts: List[Union[str, bytes]] = []
        size = 0
        limit = self._config.max_message_bytes
        # A TLS stream may hold decrypted bytes already read off the wire: select
        # would not see them, so they are read first.
        pending = self._sock.pending if isinstance(self._sock, TLSStream) else (lambda: 0)
        with POLL_SELECTOR() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while not self._closing:
                now = time.monotonic()
                action = clock.poll(now)
                if action == DEAD:
                    if pending() or selector.select(0) or self._pong_delayed():
                        clock.received(now)  # bytes wait to be read (this thread was busy), or a slow link
                        continue
                    log.info("websocket %s silent for %.1f s; closed", self.peer, clock.timeout)
                    self._die()
                    return
                if action == PING:
                    self._send_event(Ping(b""))
                    self._sent_ping()
                    continue
                wait = clock.wait_time(now)
                if init_deadline is not None:
                    if self._rpc.handshake.state != NEW:
                        init_deadline = None
                    elif now >= init_deadline:
                        self._close_with(CLOSE_POLICY_VIOLATION, "initialize not received within %g s" % init_limit)
                        return
                    else:
                        wait = init_deadline - now if wait is None else min(wait, init_deadline - now)
                wake = None if wait is None else now + wait
                if not (self._early or pending() or selector.select(wait)):
                    continue
                if self._early:
                    data, self._early = self._early, b""
                else:
                    try:
                        data = recv_ready(self._sock, RECV_BYTES,
                                          None if wake is None else max(0.0, wake - time.monotonic()))
                    except socket.timeout:  # part of a TLS record, its rest not come by then
                        continue
                if not data:  # the peer's end: no sign of life for a takeover probe (run's end wakes it)
                    self._protocol.receive_data(None)
                    return
                now = time.monotonic()
                clock.received(now)
                if self._probes:
                    with self._received:
                        self._received.notify_all()
                self._protocol.receive_data(data)
                for event in self._protocol.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        # a frame that ends before its message does: one more fragment follows (a frame
                        # arriving in pieces, TCP segment by segment, is one fragment, not many)
                        size += utf8_size(event.data) + (FRAGMENT_OVERHEAD_BYTES if event.frame_finished
                                                         and not event.message_finished else 0)
                        if size > limit:
                            self._close_with(CLOSE_MESSAGE_TOO_BIG, "message exceeds %d bytes" % limit)
                            return
                        parts.append(event.data)
                        if not event.message_finished:
                            continue
                        message = parts[0] if len(parts) == 1 else type(parts[0])().join(parts)
                        parts, size = [], 0
                        self.last_message = now
                        try:
                            self._rpc.receive(message)
                        except ProtocolViolation as violation:
                            self._close_with(CLOSE_PROTOCOL_ERROR, violation.reason[:120])
                            return
                    elif isinstance(event, Ping):  # (a Pong needs nothing: its bytes were a sign of life)
                        self._send_event(event.response())
                    elif isinstance(event, CloseConnection):
                        # wsproto reports a malformed frame as a Close with 1002, 1007 or 1009
                        code = event.code if event.code in _FAILURE_CODES else CLOSE_NORMAL
                        try:
                            self._send_event(CloseConnection(code=code))
                        except LocalProtocolError:
                            pass
                        return

    def _close_with(self, code: int, reason: str) -> None:
        try:
            self._send_event(CloseConnection(code=code, reason=reason))
        except (LocalProtocolError, OSError):
            pass
