"""Admission under load, on loopback, bounded in count and time.

Idle WebSockets at ``max_connections``, slow upgrades (slowloris) and a
burst of half-open sockets: a well-behaved client is still served within
:data:`SERVED_WITHIN` seconds, each bad socket is closed by the server
within its bound, and the server's threads and descriptors come back to
their baseline.
"""

import socket
import time

import psutil
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from conftest import wait_until
from exec_server import Client, make_server
from exec_server.server.config import ServerConfig
from exec_server.server.threads import IDLE_SECONDS

#: The latency promised to a well-behaved client during a flood, seconds (generous: 2 shared cores).
SERVED_WITHIN = 3.0
#: Sockets of each kind; small enough for a shared machine, large enough to exceed the limits.
MAX_CONNECTIONS = 8
SLOW_UPGRADES = 40
HALF_OPEN = 150


def upgraded_socket(port: int) -> socket.socket:
    """A WebSocket that never initializes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    protocol = WSConnection(ConnectionType.CLIENT)
    sock.sendall(protocol.send(Request(host="127.0.0.1", target="/")))
    while True:
        protocol.receive_data(sock.recv(65536))
        if any(isinstance(event, AcceptConnection) for event in protocol.events()):
            return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closed ``sock`` within ``timeout`` s (reads and drops what it sent first)."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def served(url: str) -> float:
    """Seconds for a well-behaved client to connect, initialize and get an answer."""
    start = time.monotonic()
    with Client.connect(url, timeout=SERVED_WITHIN, reconnect=None) as client:
        assert client.call("environment/status", timeout=SERVED_WITHIN) == {"status": "ready"}
    return time.monotonic() - start


def resources():
    me = psutil.Process()
    return me.num_threads(), me.num_fds()


@pytest.fixture
def flood_server():
    # the flood and the healthy client share 127.0.0.1 here: the per-address cap (tests/test_limits.py) is lifted
    server = make_server("ws://127.0.0.1:0", ServerConfig(
        max_connections=MAX_CONNECTIONS, evict_idle_after=0.3, upgrade_timeout=1.0, initialize_timeout=30.0,
        max_pending_upgrades_per_address=256)).start()
    yield server
    server.shutdown()


def test_idle_websockets_at_the_limit_make_room_for_a_healthy_client(flood_server):
    idle = [upgraded_socket(flood_server.port) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.4)  # longer than evict_idle_after
        assert served(flood_server.url) < SERVED_WITHIN
        assert sum(closed_by_server(sock, 2.0) for sock in idle) >= 1  # one was evicted (1013) for it
    finally:
        for sock in idle:
            sock.close()


def test_busy_connections_at_the_limit_are_not_evicted(flood_server):
    clients = [Client.connect(flood_server.url, reconnect=None) for _ in range(MAX_CONNECTIONS)]
    try:
        for client in clients:
            client.start(["sleep", "30"])
        time.sleep(0.4)
        with pytest.raises(Exception, match="503"):
            Client.connect(flood_server.url, timeout=2, reconnect=None)
    finally:
        for client in clients:
            client.close()


def test_uninitialized_connection_is_closed_after_initialize_timeout():
    server = make_server("ws://127.0.0.1:0", ServerConfig(initialize_timeout=0.5)).start()
    try:
        sock = upgraded_socket(server.port)
        start = time.monotonic()
        sock.settimeout(3)
        data = sock.recv(65536)
        assert time.monotonic() - start < 2.0
        assert b"initialize not received within 0.5 s" in data
        sock.close()
    finally:
        server.shutdown()


def test_slowloris_upgrade_is_cut_after_upgrade_timeout(flood_server):
    sock = socket.create_connection(("127.0.0.1", flood_server.port), timeout=5)
    try:
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        start = time.monotonic()
        closed = False
        for byte in request:  # one byte every 0.1 s: each read is quick, the whole is not
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - start > 3.0:
                break
        assert closed or closed_by_server(sock, 1.0)
        assert time.monotonic() - start < 1.0 + 1.5
    finally:
        sock.close()


def test_flood_of_slow_upgrades_and_half_open_sockets_costs_only_its_lifetime(flood_server):
    served(flood_server.url)  # warm: the scheduler thread and imports exist before the baseline
    time.sleep(IDLE_SECONDS + 0.2)  # the connection threads of the warm-up have ended
    base_threads, base_fds = resources()
    bad = []
    try:
        for index in range(SLOW_UPGRADES):
            sock = socket.create_connection(("127.0.0.1", flood_server.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
            bad.append(sock)
        for index in range(HALF_OPEN):
            bad.append(socket.create_connection(("127.0.0.1", flood_server.port), timeout=5))
        assert served(flood_server.url) < SERVED_WITHIN
        closed = [closed_by_server(sock, 0.0) for sock in bad]
        deadline = time.monotonic() + 1.0 + 2.0  # upgrade_timeout, and a margin for a loaded machine
        for index, sock in enumerate(bad):
            closed[index] = closed[index] or closed_by_server(sock, max(0.0, deadline - time.monotonic()))
        assert all(closed), "%d of %d sockets still open" % (closed.count(False), len(bad))
    finally:
        for sock in bad:
            sock.close()
    wait_until(lambda: resources()[0] <= base_threads, IDLE_SECONDS + 5.0, 0.05)
    wait_until(lambda: resources()[1] <= base_fds, 5.0, 0.05)
