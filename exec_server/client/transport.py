"""Client transports: what the client needs of a connection to one server.

:class:`Transport` is the interface (a blocking message pipe);
:data:`Connector` opens one.  The implementations:
:class:`exec_server.client.websocket.WebSocketTransport` (``ws://``,
``wss://``), :class:`exec_server.client.stdio.StdioTransport` (a child
speaking stdio) and the in-process one of ``exec-server run``
(:mod:`exec_server.cli.embedded`).  This module imports nothing heavy.
"""

from typing import Callable, Optional, Protocol, Union

#: Keepalive defaults (the ``ReconnectPolicy`` fields of the same names), seconds.
PING_INTERVAL = 5.0
KEEPALIVE_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0


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
        """End the connection (bounded); later sends raise ExecServerDisconnected.

        A transport may also have ``abort()``: end at once, without a closing
        handshake, when the peer has stopped answering (see :func:`abort`),
        and ``send_within(text, timeout)``: ``send`` bounded by ``timeout``
        seconds (see :func:`send_within`).
        """

    def ping(self) -> None:
        """Send a keepalive if the transport has one (a no-op otherwise)."""

    def suspect(self) -> None:
        """A call timed out: check now that the peer is alive, ending the connection if not (non-blocking)."""


def abort(transport: Transport) -> None:
    """End ``transport`` at once (the peer is silent): its ``abort()`` if it has one, else ``close()``."""
    getattr(transport, "abort", transport.close)()


def send_within(transport: Transport, text: str, timeout: Optional[float]) -> None:
    """Send ``text`` on ``transport`` within ``timeout`` seconds (None: no limit), where it can bound a send.

    ``transport.send_within(text, timeout)`` if it has one, else
    ``transport.send(text)`` (the WebSocket transport bounds a stalled write
    by its ``keepalive_timeout`` instead).

    Raises:
        TimeoutError: the message did not go out within ``timeout`` s (the
            transport says whether the connection stays).
        ExecServerDisconnected: the connection is gone.
    """
    bounded = getattr(transport, "send_within", None)
    if bounded is None or timeout is None:
        transport.send(text)
    else:
        bounded(text, timeout)


#: ``connector(timeout_seconds) -> Transport``: opens a new connection (the client calls it again to reconnect).
Connector = Callable[[Optional[float]], Transport]
