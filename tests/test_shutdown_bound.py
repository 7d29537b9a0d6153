"""SIGTERM ends a server subprocess within its shutdown bound whatever its clients and handlers do.

Each test starts ``exec-server`` as a child with a small ``--shutdown-timeout``,
puts it in a bad state (a client that stops reading while a process
streams to it, requests reading FIFOs, a handler blocked for good), sends
SIGTERM and checks: exit status 0 within the bound, and no descendant left
(psutil).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from conftest import Peer, start_params, wait_until

pytestmark = pytest.mark.posix

#: ``--shutdown-timeout`` of the servers here, and the margin allowed for interpreter exit.
SHUTDOWN_TIMEOUT = 2.0
EXIT_MARGIN = 2.5

#: A server whose fs/getMetadata handler blocks for good (as in a hung system call).
STUCK_SERVER = """
import sys, threading
from exec_server.server import handlers
handlers.METHODS["fs/getMetadata"] = ("filesystem", lambda ctx, params: threading.Event().wait())
from exec_server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_server(tmp_path, *options, stuck=False):
    argv = [sys.executable, "-c", STUCK_SERVER] if stuck else [sys.executable, "-m", "exec_server"]
    log = open(str(tmp_path / "server.log"), "wb")
    process = subprocess.Popen(argv + ["--listen", "ws://127.0.0.1:0", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
                                       *options], stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    url = process.stdout.readline().decode().strip()
    assert url.startswith("ws://"), url
    return process, url


def sigterm_and_check(process):
    """SIGTERM; assert exit 0 within the bound and that no descendant survives.  Returns the seconds taken."""
    descendants = psutil.Process(process.pid).children(recursive=True)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(SHUTDOWN_TIMEOUT + EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        raise AssertionError("server still running %.1f s after SIGTERM" % (SHUTDOWN_TIMEOUT + EXIT_MARGIN))
    took = time.monotonic() - start
    process.stdout.close()
    assert status == 0
    gone, alive = psutil.wait_procs(descendants, timeout=2.0)
    alive = [p for p in alive if _running(p)]  # a zombie (the guardian, reparented, not reaped yet) runs nothing
    assert not alive, [p.pid for p in alive]
    return took


def _running(process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop(process) -> None:
    """Kill a server a failed test left running (by its PID)."""
    if process.poll() is None:
        process.kill()
        process.wait(5)
        process.stdout.close()


class NonReadingClient:
    """A WebSocket client that initializes, starts a streaming process and then never reads again."""

    def __init__(self, url: str):
        host, port = url[len("ws://"):].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.protocol = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.protocol.send(Request(host=host, target="/")))
        while not any(isinstance(e, AcceptConnection) for e in self._events()):
            pass
        self.send({"id": 1, "method": "initialize", "params": {"clientName": "stuck"}})
        self.send({"method": "initialized", "params": {}})

    def _events(self):
        self.protocol.receive_data(self.sock.recv(65536))
        return list(self.protocol.events())

    def send(self, message) -> None:
        self.sock.sendall(self.protocol.send(Message(data=json.dumps(message))))

    def close(self) -> None:
        self.sock.close()


def test_sigterm_with_a_client_that_stopped_reading(tmp_path):
    process, url = start_server(tmp_path, "--send-timeout", "60")  # the stalled send outlives the shutdown
    client = NonReadingClient(url)
    try:
        stream = "import sys\nwhile True: sys.stdout.write('y' * 65536)"
        client.send({"id": 2, "method": "process/start",
                     "params": start_params("stream", [sys.executable, "-c", stream])})
        server = psutil.Process(process.pid)
        wait_until(lambda: server.children(), 5.0)
        time.sleep(1.0)  # the socket buffers fill; the server's send blocks under its send lock
        took = sigterm_and_check(process)
        assert took <= SHUTDOWN_TIMEOUT + EXIT_MARGIN
    finally:
        client.close()
        stop(process)


def test_a_remote_run_learns_the_exit_of_a_server_shutdown(tmp_path):
    """``exec-server run --url`` of a command the server kills at SIGTERM ends with 137 at once, instead of
    recovering a session that died with the server until its reconnect deadline (25 s)."""
    process, url = start_server(tmp_path)
    run = subprocess.Popen([sys.executable, "-m", "exec_server", "run", "--url", url, "--", "sh", "-c",
                            "echo up; exec sleep 300"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert run.stdout.readline() == b"up\n"
        sigterm_and_check(process)
        assert run.wait(10) == 137
    finally:
        run.kill()
        run.wait(10)
        run.stdout.close()
        stop(process)


def test_sigterm_with_fifo_reads_refused_and_other_requests_served(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    process, url = start_server(tmp_path)
    peer = Peer(url)
    try:
        peer.initialize()
        ids = []
        for index in range(20):
            peer._next_id += 1
            ids.append(peer._next_id)
            peer.send({"id": peer._next_id, "method": "fs/readFile", "params": {"path": "file://" + fifo}})
        replies = [peer.wait_for(lambda m, i=i: m.get("id") == i, 5.0) for i in ids]
        assert all(r["error"]["code"] == -32600 and "is a FIFO, not a regular file" in r["error"]["message"]
                   for r in replies), replies[0]
        assert peer.call("environment/status") == {"status": "ready"}
        took = sigterm_and_check(process)
        assert took <= SHUTDOWN_TIMEOUT + EXIT_MARGIN
    finally:
        peer.close()
        stop(process)


def test_sigterm_with_a_handler_blocked_for_good(tmp_path):
    process, url = start_server(tmp_path, stuck=True)
    peer = Peer(url)
    try:
        peer.initialize()
        peer.call("process/start", start_params("sleeper", ["sleep", "60"]))
        for index in range(3):
            peer.send({"id": 900 + index, "method": "fs/getMetadata", "params": {"path": "/"}})
        assert peer.call("environment/status") == {"status": "ready"}  # blocked requests starve nothing
        wait_until(lambda: len(psutil.Process(process.pid).threads()) >= 4, 5.0)
        took = sigterm_and_check(process)
        assert took <= SHUTDOWN_TIMEOUT + EXIT_MARGIN
    finally:
        peer.close()
        stop(process)
    with open(str(tmp_path / "server.log")) as log:
        assert "request thread(s) still blocked" in log.read()
