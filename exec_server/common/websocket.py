"""WebSocket framing over a blocking socket, shared by the server and the client.

Both ends build their connection on wsproto (``WSConnection``: bytes in,
events out; events in, bytes out) and write through the pieces here:
:func:`send_frames` writes a batch of frames with gathered writes, and
:class:`FrameWriter` is one connection's send side (one lock, whole frames).
Nothing here reads: each end runs its own receive loop and feeds wsproto.
"""

import socket
import threading
from typing import Iterable, List, Optional

from wsproto import WSConnection
from wsproto.events import Event, Message
from wsproto.utilities import LocalProtocolError

from exec_server.common.keepalive import WriteProgress, writable_now

#: WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
#: Codes wsproto reports for a malformed frame (a Close it synthesised).
FAILURE_CODES = (CLOSE_PROTOCOL_ERROR, 1007, CLOSE_MESSAGE_TOO_BIG)
#: Bytes asked of the socket per ``recv``.
RECV_BYTES = 256 * 1024
#: A message of this many characters or more is sent as frames of this size (RFC 6455
#: fragmentation); the server's responses use the same size (``protocol.wire.LARGE_MESSAGE_CHARS``).
LARGE_TEXT_CHARS = 1024 * 1024
#: Seconds a TLS Close frame may take in :func:`send_now` (encryption may need a few round trips of the buffer).
SEND_NOW_TIMEOUT = 0.05


#: Bytes one bounded TLS write covers: the stall bound applies per piece.
_TLS_PIECE = 256 * 1024


def send_all(sock, data: bytes, timeout: Optional[float] = None) -> None:
    """Write all of ``data``, failing only when the peer stops taking bytes.

    On a plain socket with a timeout each wait for room is bounded by the
    socket's timeout, not the whole write (``socket.sendall`` bounds the
    whole write, which would fail a large message to a slow but reading
    peer), and a wait that times out goes on while the peer's TCP
    acknowledged at least :data:`~exec_server.common.keepalive.MIN_SEND_RATE`
    bytes per second meanwhile (:class:`~exec_server.common.keepalive.WriteProgress`:
    a peer reading 100 KB/s frees too little of a large send buffer per
    timeout for the socket to report room; one that trickles is judged
    every ``timeout`` even while it takes a little).  On a
    :class:`~exec_server.common.tls.TLSStream` the write goes in pieces of
    :data:`_TLS_PIECE` bytes, each bounded the same way by ``timeout``.  The
    caller holds the connection's send lock.

    Raises:
        OSError: the socket failed, or the peer took under ``MIN_SEND_RATE``
            bytes per second for a timeout (``socket.timeout``); the
            connection is dead.
    """
    view = memoryview(data)
    if not hasattr(sock, "send"):  # a TLSStream
        while view:
            sock.sendall(view[:_TLS_PIECE], timeout)
            view = view[_TLS_PIECE:]
        return
    progress = WriteProgress(sock, timeout)
    while view:
        try:
            sent = sock.send(view)
        except socket.timeout:
            if progress.stalled():
                raise
            continue
        view = view[sent:]
        if view:
            progress.wrote(sent)


def send_now(sock, data: bytes) -> bool:
    """Write a small frame only if it can go out at once; False if it did not (or only in part).

    Used for Close frames at shutdown and eviction: a peer that does not
    read gets its socket shut down instead of a wait.
    """
    try:
        if not writable_now(sock):
            return False
        if not hasattr(sock, "send"):  # a TLSStream
            sock.sendall(data, SEND_NOW_TIMEOUT)
            return True
        return sock.send(data) == len(data)
    except OSError:
        return False


def send_frames(sock: socket.socket, frames: List[bytes], timeout: Optional[float] = None) -> None:
    """Write ``frames`` in order with gathered writes (``sendmsg``), without joining them first.

    Joining copied every byte once more (7 % of the server's time while
    streaming); where ``sendmsg`` is missing (Windows) they are joined.  A
    wait for room is bounded as in :func:`send_all`.  The caller holds the
    connection's send lock.

    Raises:
        OSError: the socket failed, or the peer took under ``MIN_SEND_RATE``
            bytes per second for a timeout (``socket.timeout``); the
            connection is dead.
    """
    if not hasattr(sock, "sendmsg"):
        send_all(sock, b"".join(frames), timeout)
        return
    views = [memoryview(frame) for frame in frames]
    progress = WriteProgress(sock, timeout)
    while views:
        try:
            sent = sock.sendmsg(views[:64])  # well under any IOV_MAX
        except socket.timeout:
            if progress.stalled():
                raise
            continue
        accepted = sent
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]
        if views:
            progress.wrote(accepted)


def send_fragmented(sock, protocol: WSConnection, pieces: Iterable[str], timeout: Optional[float] = None) -> None:
    """Write one text message as consecutive frames, a frame per piece (RFC 6455 section 5.4 fragmentation).

    Each frame is built and written before the next piece is taken, so a
    large message is never whole in memory.  The caller holds the
    connection's send lock; control frames wait for the last frame.

    Raises:
        OSError: as :func:`send_all`; LocalProtocolError: the connection is closing.
    """
    pieces = iter(pieces)
    piece = next(pieces, "")
    while True:
        following = next(pieces, None)
        send_all(sock, protocol.send(Message(data=piece, message_finished=following is None)), timeout)
        if following is None:
            return
        piece = following


class FrameWriter:
    """The send side of one WebSocket connection: every frame whole, under one lock.

    Every writer of the connection (messages, pings, pongs, close) goes
    through :meth:`send_event` or :meth:`send_texts`, so frames written from
    several threads never interleave.  Thread-safe.

    Args:
        sock: the connected socket, or a TLSStream.
        protocol: the connection's wsproto state machine, shared with the
            receive loop (which only feeds it bytes and reads events).
        write_timeout: seconds over which a write's peer must take
            :data:`~exec_server.common.keepalive.MIN_SEND_RATE` bytes per
            second (a plain socket's own timeout if None there); None waits.
    """

    def __init__(self, sock: socket.socket, protocol: WSConnection, write_timeout: Optional[float] = None):
        self.sock = sock
        self.protocol = protocol
        self.write_timeout = write_timeout
        self.lock = threading.Lock()

    def send_event(self, event: Event, timeout: Optional[float] = None) -> bool:
        """Build and write one wsproto event (Ping, Pong, CloseConnection, Message).

        Args:
            timeout: seconds to wait for the send lock; None waits.
        Returns:
            False if the lock was not free within ``timeout`` (nothing sent).
        Raises:
            LocalProtocolError: the event is not valid in the connection's state
                (e.g. anything after a Close).
            OSError: the socket failed.
        """
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            send_all(self.sock, self.protocol.send(event), self.write_timeout)
        finally:
            self.lock.release()
        return True

    def send_texts(self, *texts: str) -> None:
        """Send each text as one text frame, all in one write.

        A text of :data:`LARGE_TEXT_CHARS` or more (an upload's base64) goes
        alone, in frames of that many characters (:func:`send_fragmented`):
        neither its UTF-8 bytes nor its frame are ever whole in memory.

        Raises:
            ConnectionResetError: the connection is closing or closed.
            OSError: the socket failed.
        """
        with self.lock:
            self.write_texts(*texts)

    def write_texts(self, *texts: str) -> None:
        """:meth:`send_texts` for a caller that holds :attr:`lock` (raises the same)."""
        try:
            if len(texts) == 1 and len(texts[0]) >= LARGE_TEXT_CHARS:
                text, step = texts[0], LARGE_TEXT_CHARS
                pieces = (text[start:start + step] for start in range(0, len(text), step))
                send_fragmented(self.sock, self.protocol, pieces, self.write_timeout)
            elif len(texts) == 1:
                send_all(self.sock, self.protocol.send(Message(data=texts[0])), self.write_timeout)
            else:
                send_frames(self.sock, [self.protocol.send(Message(data=text)) for text in texts],
                            self.write_timeout)
        except LocalProtocolError:
            raise ConnectionResetError("websocket is closed") from None
