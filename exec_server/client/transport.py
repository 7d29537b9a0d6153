"""Client transports: a blocking message pipe to one server connection.

A transport has ``send(text)``, ``receive() -> text`` (blocking; raises
:class:`~exec_server.protocol.errors.ExecServerDisconnected` once closed) and
``close()``.  The WebSocket one is simple-websocket's client with a connect
timeout, TCP_NODELAY and whole-frame writes under one lock.
"""

import socket
import threading
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlsplit

import simple_websocket
from simple_websocket.ws import Base as _WebSocketBase
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage

from exec_server.protocol.errors import ExecServerDisconnected

#: Largest message the client accepts, bytes.
CLIENT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Bytes asked of the socket per ``recv``.
CLIENT_RECV_BYTES = 256 * 1024


class _LockedSocket:
    """A socket whose ``send`` writes whole buffers under one lock.

    simple-websocket writes pongs and closes from its own thread with
    ``socket.send``; routing every write through ``sendall`` under this lock
    keeps frames whole.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.lock = threading.Lock()

    def send(self, data: bytes) -> int:
        with self.lock:
            self._sock.sendall(data)
        return len(data)

    sendall = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _SimpleWebSocket(simple_websocket.Client):
    def __init__(self, url: str, timeout: Optional[float], headers: Optional[Mapping[str, str]]):
        parts = urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError("only ws:// URLs are supported, got %r" % url)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.subprotocols = []
        self.extra_headeers = list((headers or {}).items())  # simple-websocket's attribute name
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _WebSocketBase.__init__(self, _LockedSocket(raw), connection_type=ConnectionType.CLIENT,
                                    receive_bytes=CLIENT_RECV_BYTES, max_message_size=CLIENT_MAX_MESSAGE_BYTES)
        except BaseException:
            raw.close()
            raise

    def handshake(self) -> None:
        # simple-websocket's own handshake loops forever when the peer closes
        # before answering; this one stops at end of stream.
        self.sock.send(self.ws.send(Request(host=self.host, target=self.path, subprotocols=self.subprotocols,
                                            extra_headers=self.extra_headeers)))
        event = None
        while event is None:
            data = self.sock.recv(self.receive_bytes)
            if not data:
                raise ConnectionError("connection closed during the WebSocket handshake")
            self.ws.receive_data(data)
            event = next(self.ws.events(), None)
        if isinstance(event, RejectConnection):
            raise ConnectionError("WebSocket upgrade refused with HTTP %d" % event.status_code)
        if not isinstance(event, AcceptConnection):
            raise ConnectionError("unexpected WebSocket handshake event %r" % (event,))
        self.subprotocol = event.subprotocol
        self.connected = True
        self.sock.settimeout(None)


class WebSocketTransport:
    """One WebSocket connection to ``ws://host:port``.  Thread-safe send."""

    def __init__(self, url: str, timeout: Optional[float] = 10.0, headers: Optional[Mapping[str, str]] = None):
        try:
            self._ws = _SimpleWebSocket(url, timeout, headers)
        except (OSError, simple_websocket.ConnectionError, simple_websocket.ConnectionClosed) as exc:
            raise ExecServerDisconnected("cannot connect to %s: %s" % (url, exc)) from exc
        self.url = url

    def send(self, text: str) -> None:
        ws = self._ws
        if not ws.connected:
            raise ExecServerDisconnected("connection closed")
        try:
            with ws.sock.lock:
                ws.sock._sock.sendall(ws.ws.send(TextMessage(data=text)))
        except Exception as exc:
            raise ExecServerDisconnected("send failed: %s" % exc) from exc

    def receive(self) -> Union[str, bytes]:
        while True:
            try:
                message = self._ws.receive()
            except simple_websocket.ConnectionClosed as exc:
                raise ExecServerDisconnected("connection closed (%s)" % exc.reason) from None
            if message is not None:
                return message
            if not self._ws.connected:
                raise ExecServerDisconnected("connection closed")

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:
            try:
                self._ws.sock.close()
            except Exception:
                pass


class StdioTransport:
    """JSON-RPC over a child's stdin/stdout, one message per line.

    The child is an exec-server started with ``--listen stdio`` (directly, or
    through ``ssh``).  Its stderr is drained to logging (logger
    ``exec_server.child``) so it can never block on a full pipe.  ``close``
    closes the child's stdin (the server then kills its process trees and
    exits), waits up to ``CHILD_EXIT_GRACE`` seconds, then kills the child's
    tree.
    """

    #: Seconds a child may take to exit after its stdin closed.
    CHILD_EXIT_GRACE = 2.0

    def __init__(self, argv, env=None, cwd=None):
        import logging
        import subprocess
        import sys

        from exec_server.common.tree import CREATE_NEW_PROCESS_GROUP

        options = {"creationflags": CREATE_NEW_PROCESS_GROUP} if sys.platform.startswith("win") \
            else {"start_new_session": True}
        try:
            self._child = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, env=env, cwd=cwd, **options)
        except OSError as exc:
            raise ExecServerDisconnected("cannot start %s: %s" % (argv[0], exc)) from exc
        self.pid = self._child.pid
        self._send_lock = threading.Lock()
        self._closed = False  # no more sends
        self._finished = False  # resources released
        self._log = logging.getLogger("exec_server.child")
        self._stdout = self._child.stdout
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="exec-server-child-stderr",
                                               daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        stream = self._child.stderr
        try:
            for line in iter(stream.readline, b""):
                self._log.info("%s", line.rstrip().decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def send(self, text: str) -> None:
        data = text.encode("utf-8") + b"\n"
        with self._send_lock:
            if self._closed:
                raise ExecServerDisconnected("exec-server child is closed")
            try:
                self._child.stdin.write(data)
                self._child.stdin.flush()
            except (OSError, ValueError) as exc:
                raise ExecServerDisconnected("cannot write to the exec-server child: %s" % exc) from exc

    def receive(self) -> bytes:
        while True:
            try:
                line = self._stdout.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                status = self._child.poll()
                raise ExecServerDisconnected("exec-server child closed its output%s"
                                             % ("" if status is None else " (exit status %d)" % status))
            line = line.rstrip(b"\r\n")
            if line.strip():
                return line

    def close(self) -> None:
        """End the child: close its stdin, wait briefly, then kill its tree."""
        import subprocess

        from exec_server.common.tree import kill_tree

        with self._send_lock:
            if self._finished:
                return
            self._finished = True
            self._closed = True
            try:
                self._child.stdin.close()
            except OSError:
                pass
        try:
            self._child.wait(self.CHILD_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            kill_tree(self.pid)
            try:
                self._child.wait(self.CHILD_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                pass
        for stream in (self._stdout,):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr_thread.join(self.CHILD_EXIT_GRACE)

    def kill(self) -> None:
        """Kill the child's tree at once (used when it misbehaves)."""
        from exec_server.common.tree import kill_tree

        with self._send_lock:
            self._closed = True
        kill_tree(self.pid)
        try:
            self._child.wait(self.CHILD_EXIT_GRACE)
        except Exception:
            pass
