"""A TLS socket shared by one reading thread and writing threads.

OpenSSL forbids using one SSL object from two threads at once, and
``ssl.SSLSocket`` adds no lock of its own (python/cpython#76714,
openssl/openssl#20446): a reader blocked in ``recv`` while another thread
calls ``sendall`` can corrupt the connection.  :class:`TLSStream` puts the
socket in non-blocking mode and makes every OpenSSL call under one lock,
waiting for the descriptor *outside* the lock, so a reader waiting for data
never holds up a writer and the other way round.  It offers what the
WebSocket code of both ends uses of a socket: ``recv``, ``sendall``,
``pending``, ``fileno``, ``shutdown_read``, ``close``.
"""

import errno
import selectors
import socket
import ssl
import threading
import time
from typing import Optional, Union

from exec_server.common.keepalive import WriteProgress

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: The selector class for one socket's waits: poll(2) where there is one (unlike epoll it needs no
#: descriptor of its own), else the platform's default.
POLL_SELECTOR = selectors.PollSelector if hasattr(selectors, "PollSelector") else selectors.DefaultSelector


def _wait(sock: ssl.SSLSocket, error: Exception, deadline: Optional[float]) -> None:
    """Wait until ``sock`` can do what ``error`` (want read / want write) asks.

    Raises:
        socket.timeout: ``deadline`` (monotonic) passed first.
    """
    event = selectors.EVENT_READ if isinstance(error, ssl.SSLWantReadError) else selectors.EVENT_WRITE
    if sock.fileno() < 0:
        raise OSError(errno.EBADF, "the connection is closed")
    with POLL_SELECTOR() as selector:
        selector.register(sock, event)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise socket.timeout("timed out")
            if selector.select(remaining):
                return


class TLSStream:
    """One TLS connection used by a reader thread and writer threads at once.

    Args:
        sock: a connected ``ssl.SSLSocket`` whose handshake is done; it is
            switched to non-blocking mode and owned by the stream from now on.

    ``recv`` is called by one thread at a time, ``sendall`` by one thread at a
    time (the connection's send lock); the two may run at the same time.
    """

    def __init__(self, sock: ssl.SSLSocket):
        sock.setblocking(False)
        self._sock = sock
        self._lock = threading.Lock()  # around every OpenSSL call on the socket

    def fileno(self) -> int:
        return self._sock.fileno()

    def pending(self) -> int:
        """Decrypted bytes already read off the wire (``select`` cannot see them)."""
        with self._lock:
            return self._sock.pending()

    def recv(self, size: int, timeout: Optional[float] = None) -> bytes:
        """Up to ``size`` decrypted bytes, blocking until there are some; b"" at the end.

        Raises:
            socket.timeout: nothing came within ``timeout`` seconds (None waits).
            OSError: the connection failed (``ssl.SSLError`` included).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                try:
                    return self._sock.recv(size)
                except _WANT as want:
                    error = want
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
            _wait(self._sock, error, deadline)

    def sendall(self, data: bytes, timeout: Optional[float] = None) -> None:
        """Encrypt and write all of ``data``.

        ``timeout`` bounds the time without progress: a wait that reaches it
        goes on while the peer's TCP acknowledged at least
        :data:`~exec_server.common.keepalive.MIN_SEND_RATE` bytes per second
        meanwhile (see :class:`~exec_server.common.keepalive.WriteProgress`).

        Raises:
            socket.timeout: the peer took under ``MIN_SEND_RATE`` bytes per
                second for ``timeout`` seconds.
            OSError: the connection failed.
        """
        progress = None if timeout is None else WriteProgress(self._sock, timeout)
        deadline = None
        view = memoryview(data)
        while view:
            with self._lock:
                try:
                    # a write that wanted to wait is retried with the same bytes, as OpenSSL requires
                    sent = self._sock.send(view)
                    error = None
                except _WANT as want:
                    error = want
            if error is None:
                view = view[sent:]
                deadline = None  # the next wait is timed from its start
                if view and progress is not None:
                    progress.wrote(sent)
                continue
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            try:
                _wait(self._sock, error, deadline)
            except socket.timeout:
                if progress.stalled():
                    raise
                deadline = time.monotonic() + timeout

    def setsockopt(self, *args) -> None:
        self._sock.setsockopt(*args)

    def getsockopt(self, *args):
        return self._sock.getsockopt(*args)

    def shutdown_read(self) -> None:
        """Wake a blocked ``recv`` (it returns b""); the TLS state is kept for a last write."""
        self.shutdown(socket.SHUT_RD)

    def shutdown(self, how: int) -> None:
        """Shut down the TCP connection (``socket.SHUT_*``) and wake threads waiting on it.

        Unlike ``SSLSocket.shutdown`` this keeps the TLS state, so a write
        that still may happen is encrypted, never sent in the clear.
        """
        socket.socket.shutdown(self._sock, how)

    def close(self) -> None:
        with self._lock:
            self._sock.close()


def recv_ready(sock: Union[socket.socket, TLSStream], size: int, wait: Optional[float]) -> bytes:
    """One read of a socket ``select`` found readable: up to ``size`` bytes, b"" at the end.

    A plain socket has bytes then; a TLS one may hold part of a record only,
    so its wait for the rest is bounded by ``wait`` seconds (None: none), as
    the select was, and a reader's keepalive and deadlines still run.

    Raises:
        socket.timeout: (TLS only) the record's rest did not come within ``wait``.
        OSError: the connection failed.
    """
    return sock.recv(size, wait) if isinstance(sock, TLSStream) else sock.recv(size)
