"""WebSocket framing over a blocking socket, shared by the server and the client.

Both ends build their connection on wsproto (``WSConnection``: bytes in,
events out; events in, bytes out) and write through the pieces here:
:func:`send_frames` writes a batch of frames with gathered writes, and
:class:`FrameWriter` is one connection's send side (one lock, whole frames).
Nothing here reads: each end runs its own receive loop and feeds wsproto.
"""

import socket
import threading
from typing import List, Optional

from wsproto import WSConnection
from wsproto.events import Event, Message
from wsproto.utilities import LocalProtocolError

#: WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009
#: Codes wsproto reports for a malformed frame (a Close it synthesised).
FAILURE_CODES = (CLOSE_PROTOCOL_ERROR, 1007, CLOSE_MESSAGE_TOO_BIG)
#: Bytes asked of the socket per ``recv``.
RECV_BYTES = 256 * 1024


def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data``; with a socket timeout, each wait for room is bounded, not the whole write.

    (``socket.sendall`` bounds the whole write by the timeout, which would
    fail a large message to a slow but reading peer.)  The caller holds the
    connection's send lock.

    Raises:
        OSError: the socket failed, or no byte could be written for the
            socket's timeout (``socket.timeout``); the connection is dead.
    """
    view = memoryview(data)
    while view:
        view = view[sock.send(view):]


def send_frames(sock: socket.socket, frames: List[bytes]) -> None:
    """Write ``frames`` in order with gathered writes (``sendmsg``), without joining them first.

    Joining copied every byte once more (7 % of the server's time while
    streaming); where ``sendmsg`` is missing (Windows) they are joined.  The
    caller holds the connection's send lock.

    Raises:
        OSError: the socket failed; the connection is dead.
    """
    if not hasattr(sock, "sendmsg"):
        send_all(sock, b"".join(frames))
        return
    views = [memoryview(frame) for frame in frames]
    while views:
        sent = sock.sendmsg(views[:64])  # well under any IOV_MAX
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


class FrameWriter:
    """The send side of one WebSocket connection: every frame whole, under one lock.

    Every writer of the connection (messages, pings, pongs, close) goes
    through :meth:`send_event` or :meth:`send_texts`, so frames written from
    several threads never interleave.  Thread-safe.

    Args:
        sock: the connected socket (blocking).
        protocol: the connection's wsproto state machine, shared with the
            receive loop (which only feeds it bytes and reads events).
    """

    def __init__(self, sock: socket.socket, protocol: WSConnection):
        self.sock = sock
        self.protocol = protocol
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
            send_all(self.sock, self.protocol.send(event))
        finally:
            self.lock.release()
        return True

    def send_texts(self, *texts: str) -> None:
        """Send each text as one text frame, all in one write.

        Raises:
            ConnectionResetError: the connection is closing or closed.
            OSError: the socket failed.
        """
        try:
            with self.lock:
                if len(texts) == 1:
                    send_all(self.sock, self.protocol.send(Message(data=texts[0])))
                else:
                    send_frames(self.sock, [self.protocol.send(Message(data=text)) for text in texts])
        except LocalProtocolError:
            raise ConnectionResetError("websocket is closed") from None
