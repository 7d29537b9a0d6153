"""Liveness of a connection, shared by the server and the client.

:class:`KeepaliveClock` says when to send a WebSocket Ping and when a peer
that has sent nothing (no frame, no Pong) is dead; it knows no socket, the
receive loops of both ends feed it.  :func:`tune_socket` sets TCP keepalive
and ``TCP_USER_TIMEOUT`` where the OS has them, so a peer that vanished is
also noticed by the kernel.  :func:`writable_now` and :func:`abort_socket`
are the two pieces of a send that must not block: check, then give up.

The Codex reference server pings every 30 s and never closes a silent
connection (PROTOCOL.md 1.3); both ends of this project close one after a
deadline, and RFC 6455 peers (the Codex client included) answer Pings, so
nothing changes for them.
"""

import math
import select
import socket
import struct
import sys
import time
from typing import Optional, Tuple

#: What :meth:`KeepaliveClock.poll` asks the loop to do.
PING, DEAD = "ping", "dead"
#: Probes of TCP keepalive sent before the kernel drops the connection.
TCP_KEEPALIVE_PROBES = 3


class KeepaliveClock:
    """When to ping and when a silent peer is dead, on the monotonic clock.

    Args:
        ping_interval: seconds between Pings (0: never ping).
        timeout: seconds of silence after which the peer is dead (0: never).
        now: ``time.monotonic()`` at connection open.
        fixed_schedule: ping every ``ping_interval`` from ``now`` whatever
            arrives (the server, as the reference); False pings only after
            ``ping_interval`` without anything received (the client).

    The receive loop calls :meth:`received` for every read and
    :meth:`poll`/:meth:`wait_time` between reads.  ``last_received`` may be
    read from other threads (a probe compares it with its own start time).
    """

    __slots__ = ("ping_interval", "timeout", "last_received", "_next_ping", "_fixed")

    def __init__(self, ping_interval: float, timeout: float, now: float, fixed_schedule: bool):
        self.ping_interval = ping_interval
        self.timeout = timeout
        self.last_received = now
        self._next_ping: Optional[float] = now + ping_interval if ping_interval else None
        self._fixed = fixed_schedule

    def received(self, now: float) -> None:
        """Bytes arrived at ``now``."""
        self.last_received = now
        if not self._fixed and self.ping_interval:
            self._next_ping = now + self.ping_interval

    def poll(self, now: float) -> Optional[str]:
        """:data:`DEAD` if silent for ``timeout``; :data:`PING` if a Ping is due (then scheduled); else None."""
        if self.timeout and now - self.last_received >= self.timeout:
            return DEAD
        if self._next_ping is not None and now >= self._next_ping:
            self._next_ping = (self._next_ping if self._fixed else now) + self.ping_interval
            if self._next_ping <= now:  # the loop was late: no burst of pings
                self._next_ping = now + self.ping_interval
            return PING
        return None

    def wait_time(self, now: float) -> Optional[float]:
        """Seconds until the next :meth:`poll` has something to say (None: nothing scheduled)."""
        deadlines = []
        if self.timeout:
            deadlines.append(self.last_received + self.timeout)
        if self._next_ping is not None:
            deadlines.append(self._next_ping)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)


#: What the options take at most: Linux's keepalive idle time (seconds) and a C int (milliseconds).
_MAX_KEEPIDLE, _MAX_INT = 32767, 2 ** 31 - 1


def tune_socket(sock: socket.socket, dead_after: float) -> None:
    """TCP_NODELAY, and TCP keepalive plus ``TCP_USER_TIMEOUT`` scaled to ``dead_after`` seconds.

    Keepalive probes start after ``dead_after`` seconds of silence, every
    third of it, :data:`TCP_KEEPALIVE_PROBES` of them; unacknowledged data
    older than twice ``dead_after`` drops the connection (``TCP_USER_TIMEOUT``,
    Linux).  Options the OS lacks are skipped; ``dead_after`` 0 leaves
    keepalive off.  Errors are ignored (a socket that refuses an option
    still works).
    """
    options = [(socket.IPPROTO_TCP, getattr(socket, "TCP_NODELAY", None), 1)]
    if dead_after > 0:
        idle = min(_MAX_KEEPIDLE, max(1, int(math.ceil(dead_after))))
        options += [
            (socket.SOL_SOCKET, getattr(socket, "SO_KEEPALIVE", None), 1),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, idle // 3)),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), TCP_KEEPALIVE_PROBES),
            (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), min(_MAX_INT, int(dead_after * 2000))),
        ]
    for level, name, value in options:
        if name is None:
            continue
        try:
            sock.setsockopt(level, name, value)
        except OSError:
            pass


#: ``struct tcp_info`` of Linux (``linux/tcp.h``, 4.1 and later): its size up to and
#: including ``tcpi_bytes_acked``, and where that u64 lies.
_TCP_INFO_BYTES, _TCPI_BYTES_ACKED_AT = 128, 120
#: ``TIOCOUTQ`` (``SIOCOUTQ`` for a socket): bytes in the send queue, not yet acknowledged.
_TIOCOUTQ = 0x5411


_LINUX = sys.platform.startswith("linux")


def bytes_acked(sock) -> Optional[int]:
    """Bytes of ``sock`` the peer's TCP acknowledged so far (``tcpi_bytes_acked``); None where unknown.

    Linux only, about a microsecond (one ``getsockopt``): cheap enough to
    read before every write.  TLS's own bytes count.
    """
    if not _LINUX:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, ValueError, AttributeError):
        return None
    if len(info) < _TCP_INFO_BYTES:
        return None
    return struct.unpack_from("Q", info, _TCPI_BYTES_ACKED_AT)[0]


#: The slowest a peer may take a write's bytes, in bytes per second, judged
#: over each send timeout (``--send-timeout`` on the server, the keepalive
#: timeout on the client): a peer that acknowledges less is dropped as
#: stalled, so a trickle cannot hold a write, its connection's send lock and
#: its result's budget for hours.  4 KiB/s is 32 kbit/s, slower than a modem.
MIN_SEND_RATE = 4096


class WriteProgress:
    """Tells a slow peer from a stalled one while a write waits for room.

    Linux reports a socket writable only once a third of its send buffer
    is free (``sk_stream_min_wspace``), and an autotuned buffer holds a few
    MB: a peer steadily reading 100 KB/s drains that third in ~10 s, so a
    plain timeout on the wait for room dropped it as stalled.  Here a write
    is judged by what the peer's TCP acknowledged (``tcpi_bytes_acked``) in
    windows of ``timeout`` seconds: at least :data:`MIN_SEND_RATE` bytes per
    second over the window and the write goes on, else the peer is stalled.
    A window is judged when a wait for room times out (:meth:`stalled`) and,
    after a write that took only part of the bytes, once it is ``timeout``
    old (:meth:`wrote`): a peer that takes a little now and then is judged
    too.  Where the kernel does not say what was acknowledged (not Linux),
    the bytes the socket accepted stand in for it.
    """

    __slots__ = ("_sock", "_timeout", "_start", "_acked", "_accepted")

    def __init__(self, sock, timeout: Optional[float]):
        """``timeout``: the window, seconds; None: a plain socket's own timeout (None there too: never judged)."""
        self._sock = sock
        if timeout is None and hasattr(sock, "gettimeout"):
            timeout = sock.gettimeout()
        self._timeout = timeout
        self._start = time.monotonic()
        self._acked = bytes_acked(sock) if timeout else None
        self._accepted = 0  # bytes the socket took in this window

    def wrote(self, count: int) -> None:
        """After a write that took ``count`` bytes but not all: judge the window if it lasted ``timeout``.

        Raises:
            socket.timeout: the peer took too little in the window.
        """
        if not self._timeout:
            return
        self._accepted += count
        if time.monotonic() - self._start >= self._timeout and self.stalled():
            raise socket.timeout("the peer took under %d bytes/s for %.1f s" % (MIN_SEND_RATE, self._timeout))

    def stalled(self) -> bool:
        """After a wait for room timed out: whether the peer took too little; if not, a new window begins."""
        if not self._timeout:
            return True
        now = time.monotonic()
        acked = None if self._acked is None else bytes_acked(self._sock)
        if self._acked is not None and acked is None:
            return True
        taken = self._accepted if acked is None else acked - self._acked
        if taken < max(1, MIN_SEND_RATE * (now - self._start)):
            return True
        self._start, self._acked, self._accepted = now, acked, 0
        return False


def send_progress(sock) -> Optional[Tuple[int, int]]:
    """``(bytes the peer's TCP acknowledged so far, bytes still queued to it)``; None where unknown.

    Linux only (``TCP_INFO``'s ``tcpi_bytes_acked`` and ``SIOCOUTQ``); the
    counts include TLS's own bytes.  Tells a slow link (the queue drains)
    from a dead or stalled peer (it does not).
    """
    if not _LINUX:
        return None
    try:
        import fcntl

        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        queued = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return None
    if len(info) < _TCP_INFO_BYTES:
        return None
    return struct.unpack_from("Q", info, _TCPI_BYTES_ACKED_AT)[0], struct.unpack("i", queued)[0]


def wait_readable(sock, timeout: Optional[float]) -> bool:
    """Whether ``sock`` has data (or an end) to read within ``timeout`` seconds (None: wait).

    A TLSStream's decrypted bytes already read off the wire count (poll cannot see them).
    """
    if getattr(sock, "pending", None) is not None and sock.pending():
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(None if timeout is None else int(math.ceil(timeout * 1000))))
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def writable_now(sock: socket.socket) -> bool:
    """Whether a small write to ``sock`` would not block right now."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            return bool(poller.poll(0))
        _, writable, _ = select.select([], [sock], [], 0)
        return bool(writable)
    except (OSError, ValueError):
        return False


#: ``SO_LINGER`` of a connection reset at its close: on, 0 seconds (``struct linger``: two ints).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def abort_socket(sock, reset: bool = False) -> None:
    """End a connection declared dead: wakes a blocked ``recv`` or ``sendall`` at once; errors ignored.

    Both directions are shut down: what is queued to send still goes out,
    then the end (a peer declared silent that was only slow, behind a
    buffering link, still gets it).  With ``reset`` (a peer that stopped
    taking our bytes) its close resets it instead (``SO_LINGER`` 0): the
    kernel drops the queue and the peer learns of the end at once, where
    it went on reading up to a send buffer of stale frames (MiBs at a few
    KiB/s: past its session's TTL).  An ``ssl.SSLSocket`` is shut down at
    the TCP level (its own ``shutdown`` would drop the TLS state under a
    thread still using it).
    """
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        except (OSError, ValueError, AttributeError):
            pass
    try:
        if isinstance(sock, socket.socket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:  # a TLSStream
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass
