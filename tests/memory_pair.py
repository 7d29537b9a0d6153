"""An in-memory client/server pair: a real ``Client`` talking to the server's dispatcher, no sockets.

:class:`MemoryServer` holds a ``Dispatcher`` (with its session registry) and
hands out :class:`MemoryTransport` connections through :meth:`MemoryServer.connector`,
the ``connector(timeout)`` that ``Client.open`` takes.  Each connection is two
queues: the client's ``send`` enqueues for a server-side reader thread that
feeds ``RpcConnection.receive`` (one reader, as on a socket), and the
dispatcher's ``send`` enqueues for the client's ``receive``.

Faults, deterministic and without timing: :meth:`MemoryServer.cut` drops every
connection on both sides, ``cut(server_side=False)`` only on the client's side
(the server keeps its old connection until :meth:`MemoryServer.release`),
``refusing`` makes the connector fail, ``hold_downstream`` drops everything
the server sends, and ``rewrite`` (a ``text -> text`` function) alters it.
``MemoryTransport.seen`` lists the methods the server received, so a test
can wait for "the server has it" instead of sleeping.
"""

import json
import queue
import threading
import time
from typing import Any, Callable, List, Optional, Union

from exec_server.protocol.errors import ExecServerDisconnected, ProtocolViolation
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.server.sessions import SessionRegistry

_END = None


class MemoryTransport:
    """One connection; implements the client's ``Transport`` (send, receive, close, ping)."""

    def __init__(self, server: "MemoryServer"):
        self._server = server
        self._to_server: "queue.SimpleQueue[Optional[str]]" = queue.SimpleQueue()
        self._to_client: "queue.SimpleQueue[Optional[Union[str, bytes]]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._client_ended = False
        self._server_ended = False
        #: Methods of the requests and notifications the server received, in order.
        self.seen: List[str] = []
        #: What the server sent while ``holding_downstream`` (never delivered).
        self.held: List[str] = []
        self.connection = server.dispatcher.open_connection(self._from_server,
                                                            "failed to parse memory JSON-RPC message: ",
                                                            transport="memory")
        self._reader = threading.Thread(target=self._serve, name="memory-server-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------ server side
    def _from_server(self, *texts: str) -> None:
        texts = tuple(str(text) for text in texts)  # a large response comes as RawJson pieces: the text it sends
        with self._lock:
            if self._server_ended:
                raise ConnectionResetError("memory connection is closed")
            if self._server.holding_downstream:
                self.held.extend(texts)
                return  # lost on the way, as on a held network
            if self._client_ended:
                return  # lost on the way, as on a cut network
            rewrite = self._server.rewrite
            for text in texts:
                self._to_client.put(text if rewrite is None else rewrite(text))

    def _serve(self) -> None:
        while True:
            text = self._to_server.get()
            if text is _END:
                break
            try:
                message = json.loads(text)
                self.seen.append(message.get("method", "") if isinstance(message, dict) else "")
            except ValueError:
                self.seen.append("")
            try:
                self.connection.receive(text)
            except ProtocolViolation:
                break
        self.drop()
        self.connection.close()

    # ------------------------------------------------------------ client side
    def send(self, text: str) -> None:
        with self._lock:
            if self._client_ended:
                raise ExecServerDisconnected("memory connection is closed")
            self._to_server.put(text)

    def receive(self) -> Union[str, bytes]:
        item = self._to_client.get()
        if item is _END:
            self._to_client.put(_END)  # every later receive ends too
            raise ExecServerDisconnected("memory connection closed")
        return item

    def ping(self) -> None:
        pass

    def close(self) -> None:
        self.drop()

    # ------------------------------------------------------------ faults
    def drop(self, server_side: bool = True) -> None:
        """End the client's side; with ``server_side`` also the server's (its connection closes)."""
        with self._lock:
            if not self._client_ended:
                self._client_ended = True
                self._to_client.put(_END)
            if server_side and not self._server_ended:
                self._server_ended = True
                self._to_server.put(_END)

    @property
    def server_ended(self) -> bool:
        with self._lock:
            return self._server_ended

    def join(self, timeout: float = 5.0) -> None:
        self._reader.join(timeout)


class MemoryServer:
    """A dispatcher and its registry; ``connector`` opens connections to it.  Close with :meth:`close`."""

    def __init__(self, config: Optional[ServerConfig] = None):
        self.registry = SessionRegistry(config or ServerConfig())
        self.dispatcher = Dispatcher(self.registry)
        self.transports: List[MemoryTransport] = []
        self.refusing = False
        self.holding_downstream = False
        #: ``text -> text`` applied to every message the server sends (a broken or hostile server).
        self.rewrite: Optional[Callable[[str], str]] = None

    def connector(self, timeout: Optional[float] = None) -> MemoryTransport:
        if self.refusing:
            raise ExecServerDisconnected("memory server refuses connections")
        transport = MemoryTransport(self)
        self.transports.append(transport)
        return transport

    def cut(self, server_side: bool = True) -> List[MemoryTransport]:
        """Drop every open connection; returns them (``release`` ends the server side later)."""
        cut = list(self.transports)
        for transport in cut:
            transport.drop(server_side)
        return cut

    def lose_answer(self, action: Callable[[], Any], marker: str, timeout: float = 20.0) -> List[Any]:
        """Run ``action()`` on a thread while the server's answers are lost; once one containing
        ``marker`` was lost, cut the connection and let the client reconnect.  Returns
        ``[what action returned or raised]`` (empty if it did not end within ``timeout`` s)."""
        outcome: List[Any] = []

        def run() -> None:
            try:
                outcome.append(action())
            except Exception as exc:  # noqa: BLE001 - handed to the test
                outcome.append(exc)

        self.holding_downstream = True
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + timeout
        while not any(marker in text for text in self.transports[-1].held) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.refusing = True
        self.cut()
        self.holding_downstream = False
        self.refusing = False
        thread.join(max(0.0, deadline - time.monotonic()))
        return outcome

    def release(self, transports: List[MemoryTransport]) -> None:
        """End the server side of connections cut with ``server_side=False``."""
        for transport in transports:
            transport.drop(server_side=True)

    def close(self) -> None:
        self.holding_downstream = False
        for transport in self.cut():
            transport.join()
        self.registry.close_all()
