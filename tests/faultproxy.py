"""A fault-injecting TCP proxy on loopback for recovery tests.

Forwards every accepted connection to ``127.0.0.1:target_port`` and can, on
demand, cut all connections (both sides), reset them (RST), blackhole them
(stop forwarding both ways, keep every socket open, as a dead NAT or a
sleeping laptop; now, or once the server sent a given marker), stall one direction, limit what the server sends
to a rate (a slow link: :meth:`throttle_downstream`), cut only the client side while the
server side stays open, refuse new connections, or point new connections at
another port.  Connections accepted after a blackhole or stall flow
normally.  Stops by itself with :meth:`close`.
"""

import socket
import struct
import threading
from typing import List, Tuple


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._held: set = set()
        self._blackholed: set = set()  # sockets whose incoming bytes are dropped
        self._stalled: set = set()  # sockets whose incoming bytes are not read
        self._resetting: set = set()  # sockets to close with an RST
        self._refusing = False
        self._hold_downstream = threading.Event()
        self._hold_downstream.set()  # set = flowing
        self._hold_after = None  # bytes: hold downstream once they have been forwarded
        self._blackhole_after = None  # bytes: blackhole that connection once they have been forwarded
        self._downstream_rate = 0  # bytes per second from the server to the client (0: unlimited)
        self._closed = False
        self.accepted = 0  # connections forwarded since the start
        self._threads: List[threading.Thread] = []
        self._spawn(self._accept_loop)

    @property
    def url(self) -> str:
        return "ws://127.0.0.1:%d" % self.port

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing, target = self._refusing, self.target_port
            if refusing:
                client.close()
                continue
            try:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if self._downstream_rate:  # a slow link keeps the backlog in the server's send queue
                    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                upstream.settimeout(5)
                upstream.connect(("127.0.0.1", target))
                upstream.settimeout(None)
            except OSError:
                upstream.close()
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        tail = b""  # the end of what was forwarded before: a marker may span two reads
        try:
            while True:
                while source in self._stalled:
                    threading.Event().wait(0.01)
                rate = self._downstream_rate if downstream else 0
                data = source.recv(4096 if rate else 65536)
                if rate:
                    threading.Event().wait(len(data) / rate)
                if not data:
                    break
                if downstream:
                    self._hold_downstream.wait()
                if source in self._blackholed:
                    continue
                sink.sendall(data)
                seen, tail = tail + data, (tail + data)[-256:]
                if downstream and self._hold_after is not None and self._hold_after in seen:
                    self._hold_after = None
                    self._hold_downstream.clear()
                if downstream and self._blackhole_after is not None and self._blackhole_after in seen:
                    self._blackhole_after = None
                    with self._lock:
                        self._blackholed.update((source, sink))
        except OSError:
            pass
        finally:
            with self._lock:
                held = set(self._held)
                resetting = source in self._resetting
            if resetting:
                source.close()
                return
            if source in self._blackholed:
                return  # nothing crosses a blackhole, not even the end of the stream
            for sock in (source, sink):
                if sock in held:
                    continue
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if source not in held:
                source.close()

    def throttle_downstream(self, bytes_per_second: int) -> None:
        """Forward what servers send at most at ``bytes_per_second`` (0: unlimited), from now on.

        Connections accepted from now on get a small receive buffer towards the server, so the
        backlog of a slow link builds up in the server's send queue, as on a real one.
        """
        self._downstream_rate = bytes_per_second

    def cut(self) -> None:
        """Close every current connection on both sides at once."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def cut_client_side(self) -> List[socket.socket]:
        """Close the client sides only; the server keeps its sockets open.  Returns them."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._held.update(upstream for _client, upstream in pairs)
        for client, _upstream in pairs:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return [upstream for _client, upstream in pairs]

    @property
    def connections(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._pairs)

    def blackhole(self) -> int:
        """Stop forwarding on every current connection, both ways, keeping all sockets open.

        Bytes still arrive and are dropped (nothing is closed, nothing
        answered).  New connections flow normally.  Returns how many
        connections were blackholed.
        """
        with self._lock:
            pairs = list(self._pairs)
            for client, upstream in pairs:
                self._blackholed.update((client, upstream))
        return len(pairs)

    def stall(self, direction: str) -> None:
        """Stop reading one direction of every current connection (``upstream``: client to server,
        ``downstream``: server to client), so the sender's buffers fill and its writes block."""
        with self._lock:
            for client, upstream in self._pairs:
                self._stalled.add(client if direction == "upstream" else upstream)

    def reset(self) -> None:
        """Abort every current connection with a TCP RST on both sides."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._stalled.clear()
            for pair in pairs:
                self._resetting.update(pair)
        for client, upstream in pairs:
            for sock in (client, upstream):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)  # wakes the pump; closing with linger 0 sends the RST
                except OSError:
                    pass

    def refuse(self, refusing: bool) -> None:
        with self._lock:
            self._refusing = refusing

    def hold_downstream(self, holding: bool) -> None:
        """Stop (or resume) forwarding server-to-client bytes."""
        if holding:
            self._hold_downstream.clear()
        else:
            self._hold_downstream.set()

    def hold_downstream_after(self, marker: bytes) -> None:
        """Hold the server-to-client direction once a read containing ``marker`` was forwarded."""
        self._hold_after = marker

    def blackhole_after(self, marker: bytes) -> None:
        """Blackhole the connection whose server sends ``marker``, once it has been forwarded."""
        self._blackhole_after = marker

    def retarget(self, port: int) -> None:
        with self._lock:
            self.target_port = port

    def close(self) -> None:
        self._hold_downstream.set()
        self._stalled.clear()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        self.cut()
        for thread in self._threads:
            thread.join(2.0)
