"""Silent connections through a fault proxy: keepalive on both ends, fast takeover, stalled writes.

Every server and client here uses small keepalive settings so each test
takes a few seconds; the defaults (Pings every 5 s, dead after 10 s,
takeover probe 2 s) are the same code with other numbers.
"""

import json
import os
import socket
import sys
import threading
import time

import psutil
import pytest

from conftest import Peer, wait_until
from exec_server import Client, ExecServerDisconnected, make_server
from exec_server.client.recovery import ReconnectPolicy
from exec_server.common.keepalive import DEAD, PING, KeepaliveClock
from exec_server.server import handlers
from exec_server.server.config import ServerConfig
from faultproxy import FaultProxy

#: Output of the 3 s command: 30 numbered lines, one every 0.1 s.
LINES = 30
STREAM = [sys.executable, "-c",
          "import sys, time\n"
          "for i in range(%d):\n"
          "    sys.stdout.write('line %%04d %%s\\n' %% (i, 'x' * 200)); sys.stdout.flush(); time.sleep(0.1)\n" % LINES]
EXPECTED = b"".join(b"line %04d %s\n" % (i, b"x" * 200) for i in range(LINES))
#: Keepalive of the clients that must not notice anything by themselves.
NO_KEEPALIVE = dict(ping_interval=0.0, keepalive_timeout=0.0, probe_timeout=0.0)


@pytest.fixture
def live():
    """``live(**ServerConfig fields)`` -> (server, proxy in front of it); all stopped at teardown."""
    made = []

    def factory(**settings):
        server = make_server("ws://127.0.0.1:0", ServerConfig(**settings)).start()
        proxy = FaultProxy(server.port)
        made.append((server, proxy))
        return server, proxy

    yield factory
    for server, proxy in made:
        proxy.close()
        server.shutdown()


def test_keepalive_clock_pings_on_schedule_and_declares_silence_dead():
    clock = KeepaliveClock(1.0, 2.5, now=0.0, fixed_schedule=True)
    assert clock.poll(0.5) is None and clock.wait_time(0.5) == 0.5
    assert clock.poll(1.0) == PING and clock.poll(1.5) is None
    clock.received(1.9)
    assert clock.poll(2.0) == PING  # fixed schedule: whatever arrived
    assert clock.poll(4.3) == PING and clock.poll(4.39) is None  # late loop: no burst
    assert clock.poll(4.4) == DEAD
    idle = KeepaliveClock(1.0, 2.5, now=0.0, fixed_schedule=False)
    idle.received(0.8)
    assert idle.poll(1.5) is None and idle.poll(1.8) == PING  # one second after the last bytes


def test_config_and_policy_refuse_a_keepalive_timeout_within_the_ping_interval():
    with pytest.raises(ValueError, match="keepalive_timeout must exceed ping_interval"):
        ServerConfig(ping_interval=5.0, keepalive_timeout=5.0)
    with pytest.raises(ValueError, match="keepalive_timeout must exceed ping_interval"):
        ReconnectPolicy(ping_interval=5.0, keepalive_timeout=4.0)
    with pytest.raises(ValueError, match="^send_timeout must be a finite number of seconds, over 0$"):
        ServerConfig(send_timeout=0)


def test_run_through_a_blackhole_gets_every_byte_exactly_once_within_the_detection_bound(live):
    server, proxy = live(ping_interval=0.5, keepalive_timeout=1.5, takeover_probe_timeout=0.5)
    policy = ReconnectPolicy(deadline=15.0, ping_interval=0.3, keepalive_timeout=1.0, probe_timeout=0.5)
    with Client.connect(proxy.url, reconnect=policy) as client:
        states = []
        blackholed = threading.Event()

        def blackhole_mid_run() -> None:
            time.sleep(1.0)
            accepted = proxy.accepted
            assert proxy.blackhole() == 1
            blackholed.set()
            t0 = time.monotonic()
            # the state leaves "connected", or (a loaded machine may not run this thread in the short window the
            # recovery takes) the reconnect has already reached the proxy
            wait_until(lambda: client.state != "connected" or proxy.accepted > accepted, 5.0, 0.005)
            states.append(time.monotonic() - t0)

        thread = threading.Thread(target=blackhole_mid_run)
        start = time.monotonic()
        thread.start()
        done = client.run(STREAM, timeout=30)
        elapsed = time.monotonic() - start
        thread.join(10)
    assert blackholed.is_set()
    assert done.returncode == 0
    assert done.stdout == EXPECTED  # each byte once, in order
    # detected within keepalive_timeout (+ one poll); the takeover probe and catch-up follow
    assert states and states[0] <= policy.keepalive_timeout + 0.5, states
    assert elapsed < 3.0 + policy.keepalive_timeout + 0.5 + 3.0, elapsed


@pytest.mark.parametrize("end, bounds", [(None, (1.5, 3.0)), ("cut", (0.3, 1.3)), ("reset", (0.3, 1.3))])
def test_second_client_resumes_a_blackholed_session_within_the_probe_bound(live, connect, end, bounds):
    """A silent holder is closed after the takeover probe's 2 s; one whose connection ends meanwhile (FIN
    or RST, 0.3 s in) lets the resume go on then (review m, F3: a FIN counted as an answer, -32010)."""
    server, proxy = live()  # the defaults: takeover_probe_timeout 2 s
    first = Client.connect(proxy.url, reconnect=ReconnectPolicy(deadline=0.5, **NO_KEEPALIVE))
    try:
        process = first.start(["sleep", "30"])
        proxy.blackhole()
        # the first client, reset or cut too, must not come back and resume its session before the second does
        # (a loaded CI run met that race: -32010 to the second)
        proxy.refuse(True)
        peer: Peer = connect(server.url)
        timer = threading.Timer(0.3, getattr(proxy, end) if end else lambda: None)
        start = time.monotonic()
        timer.start()
        reply = peer.request("initialize", {"clientName": "second", "resumeSessionId": first.session_id})
        took = time.monotonic() - start
        timer.join(5)
        assert reply.get("result", {}).get("sessionId") == first.session_id, reply
        assert bounds[0] <= took < bounds[1], took
        peer.send({"method": "initialized", "params": {}})
        read = peer.call("process/read", {"processId": process.process_id, "afterSeq": 0, "waitMs": 0})
        assert read["exited"] is False  # the same session, its process still running
        assert peer.call("process/terminate", {"processId": process.process_id}) == {"running": True}
    finally:
        first.close()


def test_resume_of_a_live_session_still_gets_32010_quickly(live, connect):
    server, _proxy = live()
    with Client.connect(server.url) as first:
        peer = connect(server.url)
        start = time.monotonic()
        reply = peer.request("initialize", {"clientName": "second", "resumeSessionId": first.session_id})
        assert reply["error"]["code"] == -32010, reply
        assert time.monotonic() - start < 1.0
        assert first.call("environment/status", timeout=5) == {"status": "ready"}


def test_server_detaches_a_blackholed_session_without_any_resume(live):
    server, proxy = live(ping_interval=0.3, keepalive_timeout=1.0)
    client = Client.connect(proxy.url, reconnect=ReconnectPolicy(deadline=0.5, **NO_KEEPALIVE))
    try:
        session = server.registry.get(client.session_id)
        assert session.holder() is not None
        proxy.blackhole()
        start = time.monotonic()
        wait_until(lambda: session.holder() is None, 5.0, 0.01)
        took = time.monotonic() - start
        assert took <= 1.0 + 0.5, took  # keepalive_timeout, and one loop turn
        assert server.registry.get(client.session_id) is session  # detached, not forgotten: the TTL runs
    finally:
        client.close()


def test_timed_out_call_on_a_silent_connection_starts_recovery(live):
    server, proxy = live(takeover_probe_timeout=0.3)  # the server's first Ping comes after 5 s
    policy = ReconnectPolicy(deadline=10.0, ping_interval=20.0, keepalive_timeout=60.0, probe_timeout=0.5)
    with Client.connect(proxy.url, reconnect=policy) as client:
        proxy.blackhole()
        time.sleep(1.1)  # quiet for longer than SUSPECT_AFTER_QUIET
        with pytest.raises(TimeoutError):
            client.call("environment/status", timeout=0.3)
        wait_until(lambda: client.state == "recovering", 2.0, 0.01)  # probe_timeout, far below 60 s
        assert client.call("environment/status", timeout=10) == {"status": "ready"}


def test_client_that_stops_reading_is_dropped_after_the_send_timeout(live):
    server, proxy = live(send_timeout=1.0)
    client = Client.connect(proxy.url, reconnect=ReconnectPolicy(deadline=0.5, **NO_KEEPALIVE))
    try:
        session = server.registry.get(client.session_id)
        client.start([sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('y' * 65536)"])
        # Stalled only once the start's response has come through: a stall set earlier could stop the
        # proxy before it forwarded that response (a CI run on a loaded machine caught it).
        proxy.stall("downstream")  # the proxy stops reading what the server writes
        start = time.monotonic()
        wait_until(lambda: session.holder() is None, 30.0, 0.02)
        assert time.monotonic() - start < 20.0  # buffers fill, then one send_timeout
    finally:
        for process in server.registry.get(client.session_id).processes():
            process.kill_tree()
        client.close()


def test_faultproxy_reset_aborts_both_sides(live):
    server, proxy = live()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        wait_until(lambda: proxy.connections, 2.0)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.settimeout(5)
            sock.recv(1)


def test_a_write_the_server_stops_taking_is_sent_again_after_recovering(live, tmp_path):
    """A large request the server stops reading (its pings still arrive): the call completes on a new
    connection within its time, with the whole file written."""
    server, proxy = live(ping_interval=0.2, keepalive_timeout=60.0)
    # keepalive_timeout: the stalled connection is given up after it; the new one must not be for the time the
    # server spends on the whole message before it reads a Ping again (~0.2 s alone, over 1.5 s in a loaded CI)
    policy = ReconnectPolicy(deadline=20.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=2.0,
                             ping_interval=0.5, keepalive_timeout=3.0, probe_timeout=0.5)
    with Client.connect(proxy.url, reconnect=policy) as client:
        proxy.stall("upstream")  # the proxy stops reading what the client writes
        payload = os.urandom(48 * 1024 * 1024)  # far more than the socket buffers hold
        started = time.monotonic()
        client.fs.write_file(tmp_path / "big.bin", payload)
        assert time.monotonic() - started < 40.0  # 5-9 s here, the transfers twice (and more) in a loaded CI
        assert (tmp_path / "big.bin").read_bytes() == payload
        assert client.call("environment/status", timeout=10) == {"status": "ready"}


def test_a_send_that_stops_part_way_ends_the_websocket():
    """Part of a frame may be on the wire when a write times out: nothing may follow it on that stream
    (the next frame would land inside the unfinished one), so the transport ends the connection."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Ping, Request

    from exec_server.client.websocket import WebSocketTransport

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():  # accept the upgrade, then ping (so the client's keepalive is content) and read nothing
        sock, _ = listener.accept()
        accepted.append(sock)
        protocol = WSConnection(ConnectionType.SERVER)
        while not any(isinstance(event, Request) for event in protocol.events()):
            protocol.receive_data(sock.recv(65536))
        sock.sendall(protocol.send(AcceptConnection()))
        while not stop.wait(0.1):
            sock.sendall(protocol.send(Ping(b"")))

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    transport = WebSocketTransport("ws://127.0.0.1:%d" % listener.getsockname()[1], timeout=5,
                                   ping_interval=0.0, keepalive_timeout=1.0, probe_timeout=0.0)
    try:
        with pytest.raises(ExecServerDisconnected):
            transport.send("x" * (32 * 1024 * 1024))  # no progress for keepalive_timeout: fails part-way
        stop.set()
        thread.join(5)
        server_side = accepted[0]
        server_side.settimeout(5.0)
        ended = False
        while not ended:  # what the client wrote, then its end (FIN or RST), never more frames
            try:
                ended = not server_side.recv(1 << 20)
            except ConnectionResetError:
                ended = True
        with pytest.raises(ExecServerDisconnected):
            transport.send("after")
    finally:
        stop.set()
        transport.close()
        for sock in accepted:
            sock.close()
        listener.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's send queue counts (TCP_INFO)")
def test_a_slow_link_that_still_takes_output_is_not_a_silent_peer(live):
    """The server's Ping waits behind seconds of queued output on a slow link, so its Pong comes late; the
    peer is taking that output all along, so the connection lives (as over ssh): every byte, one connection."""
    server, proxy = live(ping_interval=0.3, keepalive_timeout=1.0)
    size = 384 * 1024
    proxy.throttle_downstream(96 * 1024)  # ~4 s of output, queued in the server's socket
    with Client.connect(proxy.url, reconnect=None) as client:
        done = client.run(["head", "-c", str(size), "/dev/zero"], timeout=60)
        assert (done.returncode, len(done.stdout)) == (0, size)
        assert client.call("environment/status", timeout=10) == {"status": "ready"}


def test_what_arrived_while_the_connection_was_busy_is_read_before_judging_silence(live, monkeypatch):
    """A request that runs on the connection's own thread (environment/info, made to take 2 s here) outlasts
    keepalive_timeout.  The request that came meanwhile shows the peer alive: no drop."""
    family, info = handlers.METHODS["environment/info"]

    def slow_info(ctx, params):
        time.sleep(2.0)
        return info(ctx, params)

    monkeypatch.setitem(handlers.METHODS, "environment/info", (family, slow_info))
    server, proxy = live(ping_interval=0.3, keepalive_timeout=1.0)
    with Client.connect(proxy.url, reconnect=None) as client:
        answers = []
        busy = threading.Thread(target=lambda: answers.append(client.call("environment/info", {}, timeout=10)))
        busy.start()
        time.sleep(0.5)  # the connection's thread is in the slow request
        assert client.call("environment/status", timeout=10) == {"status": "ready"}
        busy.join(10)
        assert answers and "platformOs" in answers[0]
        assert client.call("environment/status", timeout=10) == {"status": "ready"}


def test_a_takeover_probe_leaves_a_live_holder_on_a_slow_link(live, connect):
    """The holder reads at ~400 KB/s behind megabytes of queued output, so the probe's Ping cannot be answered
    within the probe timeout; it takes the output meanwhile, which shows it alive: the resume gets -32010 and
    the holder keeps its session."""
    server, proxy = live()  # the defaults: takeover_probe_timeout 2 s
    proxy.throttle_downstream(400_000)
    first = Client.connect(proxy.url, reconnect=ReconnectPolicy(deadline=0.5, **NO_KEEPALIVE))
    try:
        flood = first.start(["sh", "-c", "yes | head -c 200000000"])
        session = server.registry.get(first.session_id)
        time.sleep(1.0)  # output queues in the server's socket, behind which any Ping waits
        peer: Peer = connect(server.url)
        reply = peer.request("initialize", {"clientName": "second", "resumeSessionId": first.session_id},
                             timeout=10)
        assert reply.get("error", {}).get("code") == -32010, reply
        assert session.holder() is not None and first.state == "connected"
        flood.terminate(timeout=30)
    finally:
        first.close()


def test_a_takeover_probe_leaves_a_holder_reading_a_large_response(live, connect, tmp_path):
    """The holder reads a 24 MiB fs/readFile response at ~2 MB/s: the server's one write of it holds the send
    lock for seconds, so the probe's Ping is never written; the holder taking those bytes shows it alive."""
    server, proxy = live()
    data = os.urandom(24 << 20)
    (tmp_path / "big").write_bytes(data)
    proxy.throttle_downstream(2_000_000)
    first = Client.connect(proxy.url, reconnect=ReconnectPolicy(deadline=0.5, **NO_KEEPALIVE))
    got = {}
    reader = threading.Thread(target=lambda: got.update(data=first.fs.read_file(tmp_path / "big")))
    try:
        session = server.registry.get(first.session_id)
        reader.start()
        time.sleep(2.0)  # the response is being written
        peer: Peer = connect(server.url)
        reply = peer.request("initialize", {"clientName": "second", "resumeSessionId": first.session_id},
                             timeout=10)
        assert reply.get("error", {}).get("code") == -32010, reply
        assert session.holder() is not None
        reader.join(120)
        assert got.get("data") == data
    finally:
        first.close()
        reader.join(10)


def test_a_connection_dropped_as_stalled_is_reset_not_drained(live):
    """A connection the server declared dead for a write without progress (``send_timeout``) was shut down in
    order: its end waited behind the send buffer (MiBs of stale frames here) that a slow peer went on reading,
    past its session's TTL.  It is reset now: the peer reads at most what its own receive buffer held, then a
    connection reset.  (A peer declared silent still gets the orderly end: see the holder reading a large
    response above, which a buffering link made late with its Pong.)"""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    from conftest import start_params

    server, _proxy = live(send_timeout=1.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.settimeout(10)
    ws = WSConnection(ConnectionType.CLIENT)
    texts, session_id = [], None

    def until(predicate):
        while not predicate():
            ws.receive_data(sock.recv(65536) or None)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    texts.append(event.data)
                elif isinstance(event, AcceptConnection):
                    texts.append("accepted")

    try:
        sock.sendall(ws.send(Request(host="127.0.0.1", target="/")))
        until(lambda: "accepted" in texts)
        sock.sendall(ws.send(TextMessage('{"id":1,"method":"initialize","params":{"clientName":"t"}}')))
        until(lambda: any('"sessionId"' in text for text in texts))
        session_id = json.loads(next(text for text in texts if '"sessionId"' in text))["result"]["sessionId"]
        sock.sendall(ws.send(TextMessage('{"method":"initialized","params":{}}')))
        flood = [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('y' * 65536)"]
        sock.sendall(ws.send(TextMessage(json.dumps({"id": 2, "method": "process/start",
                                                     "params": start_params("flood", flood)}))))
        until(lambda: any(text.startswith('{"id":2') for text in texts))
        session = server.registry.get(session_id)
        wait_until(lambda: session.holder() is None, 30.0, 0.02)  # we stopped reading: declared dead
        ours = sock.getsockname()
        process = psutil.Process()
        connections = getattr(process, "net_connections", None) or process.connections

        def server_side_open():
            return any(c.raddr and tuple(c.raddr) == ours for c in connections(kind="tcp"))

        wait_until(lambda: not server_side_open(), 30.0, 0.02)  # closed: its end (a reset, or a FIN) is queued
        received, ended = 0, "nothing within 10 s"
        try:
            while received < 64 * 1024 * 1024:
                data = sock.recv(65536)
                if not data:
                    ended = "end of stream"
                    break
                received += len(data)
        except ConnectionResetError:
            ended = "reset"
        assert (ended, received < 1024 * 1024) == ("reset", True), (ended, received)  # was: MiBs, then the end
    finally:
        session = server.registry.get(session_id) if session_id else None
        for process in session.processes() if session else ():
            process.kill_tree()
        sock.close()
