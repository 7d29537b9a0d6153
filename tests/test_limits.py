"""Named limits not covered elsewhere: open file handles, fs/readFile size, sessions, connections, queues."""

import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import start_ours, wait_until
from exec_server import Client, ExecServerDisconnected
from exec_server.server.config import ServerConfig
from exec_server.protocol.errors import InvalidRequest
from fs_helper import operations


def test_open_file_handle_limit(tmp_path):
    running = start_ours(ServerConfig(max_open_files=2))
    try:
        (tmp_path / "f").write_bytes(b"x")
        with Client.connect(running.url, timeout=5) as client:
            first = client.fs.open(tmp_path / "f")
            second = client.fs.open(tmp_path / "f")
            with pytest.raises(InvalidRequest) as caught:
                client.fs.open(tmp_path / "f")
            assert caught.value.message == "too many open file handles (limit 2)"
            first.close()
            client.fs.open(tmp_path / "f").close()  # a slot is free again
            second.close()
    finally:
        running.stop()


def test_read_file_size_limit(server, tmp_path):
    with open(tmp_path / "big", "wb") as handle:
        handle.truncate(operations.READ_FILE_LIMIT + 1)  # sparse: no 64 MiB written
    with Client.connect(server.url, timeout=5) as client:
        with pytest.raises(InvalidRequest) as caught:
            client.fs.read_file(tmp_path / "big")
    assert caught.value.message == "file `%s/big` is larger than %d bytes; read it with fs/open" % (
        tmp_path, operations.READ_FILE_LIMIT)


def test_file_handles_close_with_their_connection(server, tmp_path):
    import psutil

    (tmp_path / "f").write_bytes(b"x")
    me = psutil.Process()
    client = Client.connect(server.url, timeout=5)
    client.call("environment/status")
    baseline = me.num_fds()
    for _ in range(5):
        client.fs.open(tmp_path / "f")
    assert me.num_fds() >= baseline + 5
    client.close()
    wait_until(lambda: me.num_fds() <= baseline)


def test_session_limit(configured_server, connect):
    running = configured_server(max_sessions=1)
    first = connect(running.url)
    first.initialize()
    second = connect(running.url)
    reply = second.request("initialize", {"clientName": "two"})
    assert reply["error"] == {"code": -32600, "message": "too many sessions on this exec-server (limit 1)"}


def dropped_and_kept(connect, url: str, dropped_id: str, kept_id: str):
    """Assert session ``dropped_id`` is gone and resume ``kept_id``: the peer that holds it, initialized."""
    gone = connect(url)
    assert gone.request("initialize", {"clientName": "late", "resumeSessionId": dropped_id})["error"] == {
        "code": -32600, "message": "unknown session id %s" % dropped_id}
    back = connect(url)
    assert back.request("initialize", {"clientName": "back", "resumeSessionId": kept_id})["result"][
        "sessionId"] == kept_id
    back.send({"method": "initialized", "params": {}})
    return back


def test_session_limit_drops_the_oldest_idle_detached_session(configured_server, connect):
    from conftest import start_params

    running = configured_server(max_sessions=2)
    busy = connect(running.url)
    busy_id = busy.initialize()["sessionId"]
    busy.call("process/start", start_params("sleeper", ["sleep", "30"]))
    busy.close()  # detached with a running process: kept
    idle = connect(running.url)
    idle_id = idle.initialize()["sessionId"]
    idle.call("process/start", start_params("quick", ["true"]))
    idle.wait_closed("quick")
    idle.close()  # detached with nothing running: may be dropped

    def new_session_accepted():
        peer = connect(running.url)
        reply = peer.request("initialize", {"clientName": "new"})
        return peer if "result" in reply else None

    newcomer = wait_until(new_session_accepted)  # once both connections are seen closed
    newcomer.send({"method": "initialized", "params": {}})
    back = dropped_and_kept(connect, running.url, idle_id, busy_id)
    assert back.call("process/terminate", {"processId": "sleeper"}) == {"running": True}
    refused = connect(running.url)  # both sessions attached now
    assert refused.request("initialize", {"clientName": "more"})["error"]["message"] == (
        "too many sessions on this exec-server (limit 2)")


def test_session_limit_drops_a_session_that_keeps_nothing_first(configured_server, connect):
    """The oldest detached session has a process whose output its client has not read back; a younger one
    keeps no process (a ``cp``'s): the younger one goes, and the older one's output is still there."""
    import base64

    from conftest import start_params

    running = configured_server(max_sessions=2)
    victim = connect(running.url)
    victim_id = victim.initialize()["sessionId"]
    victim.call("process/start", start_params("result", ["sh", "-c", "echo important-result"]))
    victim.wait_closed("result")
    victim.close()
    empty = connect(running.url)
    empty_id = empty.initialize()["sessionId"]
    empty.close()
    registry = running.server.registry
    wait_until(lambda: all(registry.get(i).holder() is None for i in (victim_id, empty_id)))  # both detached
    assert "result" in connect(running.url).request("initialize", {"clientName": "new"})
    back = dropped_and_kept(connect, running.url, empty_id, victim_id)
    read = back.call("process/read", {"processId": "result", "afterSeq": 0})
    assert b"".join(base64.b64decode(chunk["chunk"]) for chunk in read["chunks"]) == b"important-result\n"
    assert (read["exitCode"], read["closed"]) == (0, True)


def test_connection_limit(configured_server, connect):
    from urllib.parse import urlsplit

    from conftest import http_request

    running = configured_server(max_connections=1)
    first = connect(running.url)
    first.initialize()
    response = http_request(urlsplit(running.url).port,
                            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 503")
    assert response.endswith(b"too many connections (limit 1)")
    first.close()

    def connects() -> bool:
        try:
            Client.connect(running.url, timeout=5, reconnect=None).close()
            return True
        except ExecServerDisconnected:  # still 503 until the first connection is gone
            return False

    wait_until(connects)  # the slot is free again


def test_request_queue_limit_refuses_with_overloaded(configured_server, connect):
    from conftest import start_params

    running = configured_server(concurrent_requests=2, max_queued_requests=1)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("idle", ["sleep", "30"]))
    for request_id in (1, 2, 3):  # two run, one waits
        peer.send({"id": request_id, "method": "process/read",
                   "params": {"processId": "idle", "afterSeq": 0, "waitMs": 1500}})
    refused = peer.request("process/read", {"processId": "idle", "afterSeq": 0, "waitMs": 1500})
    assert refused["error"] == {"code": -32001, "message": "Server overloaded; retry later."}
    # the reader thread is not blocked: a request that needs no pool thread is answered now
    assert peer.call("process/terminate", {"processId": "idle"}) == {"running": True}
    for request_id in (1, 2, 3):  # every admitted request is answered
        reply = peer.wait_for(lambda m, wanted=request_id: m.get("id") == wanted)
        assert "result" in reply, reply
    assert peer.call("process/read", {"processId": "idle", "afterSeq": 0, "waitMs": 10})["exited"] is True


def test_client_resends_a_request_refused_as_overloaded(configured_server, tmp_path, monkeypatch):
    import threading

    from exec_server.client import endpoint as client_module
    from exec_server.protocol.errors import ServerOverloaded

    running = configured_server(concurrent_requests=1, max_queued_requests=0)
    (tmp_path / "f").write_bytes(b"payload")
    with Client.connect(running.url, timeout=5) as client:
        process = client.start(["sleep", "30"])
        poll = threading.Thread(target=client.call, args=("process/read", {
            "processId": process.process_id, "afterSeq": 0, "waitMs": 1000}))
        poll.start()
        try:
            monkeypatch.setattr(client_module, "OVERLOAD_RETRY_DELAYS", ())
            # the single slot is taken by the long poll: without resends the error surfaces
            with pytest.raises(ServerOverloaded):
                wait_until(lambda: client.fs.read_file(tmp_path / "f") is None, timeout=2)
            monkeypatch.undo()
            # with them, the client sends again until the slot is free
            assert client.fs.read_file(tmp_path / "f") == b"payload"
        finally:
            poll.join(5)
            process.terminate()


def test_stdin_queue_limit_keeps_server_memory_flat(tmp_path):
    """64 writes of 4 MiB to a child that never reads: the server queues at most the limit
    (plus one chunk), answers the rest with StdinQueueFullError, and its RSS stays flat."""
    import subprocess
    import sys

    import psutil

    from exec_server import StdinQueueFullError

    limit = 2 * 1024 * 1024
    stderr = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0",
                               "--max-stdin-queue-bytes", str(limit)],
                              stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        assert url.startswith("ws://127.0.0.1:")
        measured = psutil.Process(server.pid)
        chunk = b"x" * (4 * 1024 * 1024)
        with Client.connect(url, timeout=10) as client:
            sleeper = client.start(["sleep", "60"], stdin=True)
            sleeper.write(chunk[:1024], timeout=30)  # warm up the stdin path
            baseline = measured.memory_info().rss
            refused = 0
            for _ in range(64):
                try:
                    sleeper.write(chunk, timeout=30)
                except StdinQueueFullError as exc:
                    refused += 1
                    assert exc.limit_bytes == limit and exc.queued_bytes >= 1024
                    assert exc.message.startswith("stdin queue is full: ")
            grown = measured.memory_info().rss - baseline
            assert refused >= 63, refused
            assert grown < 32 * 1024 * 1024, "server RSS grew by %d bytes" % grown  # 64 x 4 MiB = 256 MiB
            assert sleeper.terminate()
            sleeper.wait(timeout=10)
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
        stderr.close()
    assert b"Traceback" not in (tmp_path / "server.log").read_bytes()


def test_stdin_queue_frees_as_the_child_reads(configured_server):
    """The limit counts unread bytes only: a child that reads takes far more than the limit in total."""
    import time

    from exec_server import StdinQueueFullError

    running = configured_server(max_stdin_queue_bytes=64 * 1024)
    with Client.connect(running.url, timeout=10) as client:
        reader = client.start(["sh", "-c", "cat > /dev/null"], stdin=True)
        total = 0
        deadline = time.monotonic() + 20
        while total < 1024 * 1024 and time.monotonic() < deadline:
            try:
                reader.write(b"y" * 32768, timeout=30)
                total += 32768
            except StdinQueueFullError:
                time.sleep(0.005)  # the child has not read yet
        assert total >= 1024 * 1024
        assert reader.terminate()
        reader.wait(timeout=10)


def test_pending_upgrade_limit_closes_one_more_at_once(configured_server, connect, caplog):
    """Sockets that never send their upgrade hold a thread each until --upgrade-timeout; past
    --max-pending-upgrades a new one is closed unread at once, and upgraded WebSockets do not count."""
    running = configured_server(max_pending_upgrades=3, upgrade_timeout=30.0)
    port = int(running.url.rsplit(":", 1)[1])
    peers = [connect(running.url) for _ in range(3)]  # upgraded: not pending
    for peer in peers:
        peer.initialize()
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted and waiting for a request line
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        try:
            assert extra.recv(1) == b""  # closed unread, not after the 30 s upgrade timeout
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5.0
        extra.close()
        assert "closed unread: 3 are already waiting for their upgrade" in caplog.text
        # our client says where to look (it named a wss:// server alone); a reset, if the close
        # came after its upgrade request, is told in the system's words
        with pytest.raises(ExecServerDisconnected, match="refuses it at one of its limits: see the server's log"
                                                         "|[Rr]eset"):
            Client.connect(running.url, timeout=10)
    finally:
        for sock in silent:
            sock.close()
    # The slots come back as each socket's thread sees its end: a WebSocket upgrade succeeds again well
    # before the 30 s upgrade timeout (an upgraded probe gives its slot back as it upgrades).
    wait_until(lambda: _upgrades(port), timeout=10)
    late = connect(running.url)
    assert late.initialize()["sessionId"]


def _upgrades(port: int) -> bool:
    """Whether a WebSocket upgrade is accepted now (a socket closed unread is False); the socket is closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 101")
        except OSError:
            return False


def test_a_connection_without_a_thread_gives_its_pending_slot_back(caplog, capsys):
    """If no thread can be started for a connection, it is closed and does not hold its slot for good;
    a warning says why (it was a traceback on stderr per connection)."""
    from conftest import Peer
    from exec_server import make_server

    server = make_server("ws://127.0.0.1:0", ServerConfig(max_pending_upgrades=1)).start()
    threads = server._wsgi._connection_threads
    run = threads.run
    failures = []

    def no_thread(*args):
        if not failures:
            failures.append(True)
            raise RuntimeError("can't start new thread")
        return run(*args)
    threads.run = no_thread
    try:
        first = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        assert first.recv(1) == b""  # closed
        first.close()
        peer = Peer(server.url)  # the only slot is free again
        assert peer.initialize()["sessionId"]
        peer.close()
    finally:
        server.shutdown()
    assert "1 connection(s) closed unread: no thread for them (can't start new thread)" in caplog.text
    assert "Traceback" not in capsys.readouterr().err


def test_refusals_after_the_warning_are_told_at_shutdown(caplog):
    """A flood's first refusal was warned of, and the rest never were once it stopped within 10 s."""
    running = start_ours(ServerConfig(max_pending_upgrades=1, upgrade_timeout=30.0))
    port = int(running.url.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        time.sleep(0.3)  # accepted, waiting for its request line: the only slot
        for _ in range(3):
            extra = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                assert extra.recv(1) == b""  # closed unread
            except ConnectionResetError:
                pass
            extra.close()
    finally:
        silent.close()
        running.stop()
    assert ("1 connection(s) closed unread: 1 are already waiting for their upgrade (--max-pending-upgrades) "
            "(told at most every 10 s)") in caplog.text
    assert ("2 connection(s) closed unread: 1 are already waiting for their upgrade "
            "(--max-pending-upgrades) (told at most every 10 s)") in caplog.text


def test_long_write_ids_are_remembered_by_digest(configured_server, connect):
    """4096 writeIds are remembered per process: one of 1 MiB must not pin 1 MiB (nor 4096 of them 4 GiB).
    A resent long id is still answered ``accepted`` without writing again."""
    import base64
    import gc
    import tracemalloc

    from conftest import start_params

    running = configured_server()
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("cat", ["cat"], pipeStdin=True))
    long_ids = ["%d-%s" % (number, "i" * (1 << 20)) for number in range(8)]
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for number, write_id in enumerate(long_ids):
            chunk = base64.b64encode(b"%d\n" % number).decode()
            assert peer.call("process/write", {"processId": "cat", "chunk": chunk, "writeId": write_id}) == {
                "status": "accepted"}
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 3 << 20, kept  # the ids are 8 MiB (the server's reader still holds the last message)
    resent = base64.b64encode(b"again\n").decode()
    assert peer.call("process/write", {"processId": "cat", "chunk": resent, "writeId": long_ids[3]}) == {
        "status": "accepted"}
    peer.call("process/write", {"processId": "cat", "chunk": "", "writeId": "end", "closeStdin": True})
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in peer.wait_closed("cat")
                      if m["method"] == "process/output")
    assert output == b"".join(b"%d\n" % number for number in range(8))


def test_a_long_polls_wait_counts_from_its_arrival_not_from_its_thread(configured_server, connect):
    """More long polls than request threads: those that waited for a thread used to wait their whole
    ``waitMs`` after it (answered at 1, 2 and 3 times it); each now answers ``waitMs`` after it arrived
    (review m, F5)."""
    from conftest import start_params

    running = configured_server(concurrent_requests=2)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("quiet", ["sleep", "30"]))
    start = time.monotonic()
    for request_id in range(100, 106):
        peer.send({"id": request_id, "method": "process/read",
                   "params": {"processId": "quiet", "afterSeq": 0, "waitMs": 1000}})
    answered = {}
    while len(answered) < 6:
        message = peer.recv(timeout=10)
        assert message is not None, answered
        if message.get("id") in range(100, 106):
            answered[message["id"]] = time.monotonic() - start
            assert message["result"]["chunks"] == [] and message["result"]["exited"] is False
    assert max(answered.values()) < 1.8, answered  # 3.0 s for the last two before
    assert min(answered.values()) >= 0.9, answered
    peer.call("process/terminate", {"processId": "quiet"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE as on Linux")
def test_an_accept_without_descriptors_waits_instead_of_spinning():
    """Out of file descriptors (EMFILE) the accept loop waits ``ACCEPT_RETRY_WAIT`` between tries and warns once;
    the connections queued meanwhile are served once descriptors are free again."""
    code = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)); "
            "sys.argv = ['exec-server', '--listen', 'ws://127.0.0.1:0']; runpy.run_module('exec_server', "
            "run_name='__main__')")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    held = []
    try:
        url = server.stdout.readline().decode().strip()
        port = int(url.rsplit(":", 1)[1])
        for _ in range(70):  # each one accepted takes a descriptor until its upgrade: the rest wait in the queue
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        watched = psutil.Process(server.pid)
        wait_until(lambda: watched.num_fds() >= 46, timeout=10)
        before = sum(watched.cpu_times()[:2])
        time.sleep(1.0)
        assert sum(watched.cpu_times()[:2]) - before < 0.5  # it spun at ~1 s of CPU per second
        for sock in held:
            sock.close()
        with Client.connect(url, timeout=20) as client:
            assert client.run(["echo", "served"], timeout=20).stdout == b"served\n"
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        _out, err = server.communicate(timeout=20)
    assert err.count(b"cannot accept connections: Too many open files; they wait in the queue") == 1, err[-2000:]


def test_pending_upgrades_are_counted_by_ipv6_slash_64():
    """A peer holding a whole IPv6 /64 (as one host usually does) got around the per-address limit with a new
    address for each socket; an IPv4 address mapped into IPv6 counts as that IPv4 address."""
    from exec_server.server.app import peer_source

    assert peer_source("2001:db8::1") == peer_source("2001:db8::ffff:2") == "2001:db8::/64"
    assert peer_source("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert peer_source("::ffff:192.0.2.7") == peer_source("192.0.2.7") == "192.0.2.7"
    assert peer_source("fe80::1%eth0") == "fe80::/64"
    assert peer_source("not-an-address:") == "not-an-address:"


def test_one_peer_address_cannot_take_every_pending_slot(configured_server, caplog):
    """One source trickling sockets that never upgrade took all 256 slots: /readyz and every client failed."""
    running = configured_server(max_pending_upgrades=8, max_pending_upgrades_per_address=2, upgrade_timeout=30.0)
    port = int(running.url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.3)  # accepted and waiting for a request line
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            try:
                assert extra.recv(1) == b""  # closed unread, not after the 30 s upgrade timeout
            except ConnectionResetError:
                pass
        assert "closed unread: 2 from 127.0.0.1 are already waiting for their upgrade" in caplog.text
        # another source address (all of 127.0.0.0/8 is this host's loopback) still gets its answer
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)) as other:
            other.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for sock in silent:
            sock.close()
    wait_until(lambda: _upgrades(port), timeout=10)  # the address's slots come back
