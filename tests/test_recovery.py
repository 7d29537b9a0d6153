"""The client survives dropped connections (through a fault-injecting proxy, or the in-memory pair)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import all_gone, running_descendants, wait_until
from exec_server import Client, ExecServerDisconnected, OutputEvent, ProcessOutputGap, ReconnectPolicy
from faultproxy import FaultProxy

pytestmark = pytest.mark.posix

FAST = ReconnectPolicy(deadline=10.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=2.0)


def port_of(url: str) -> int:
    return urlsplit(url).port


@pytest.fixture
def proxy_to():
    proxies = []

    def factory(url: str) -> FaultProxy:
        proxy = FaultProxy(port_of(url))
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.close()


def collect_stdout(process, timeout=30.0) -> bytes:
    stdout, _stderr = process.communicate(timeout=timeout)
    return stdout


def test_numbered_lines_survive_three_cuts(any_server, proxy_to):
    proxy = proxy_to(any_server.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        script = "i=1; while [ $i -le 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"
        process = client.start(["/bin/sh", "-c", script])
        for _ in range(3):
            time.sleep(0.4)
            proxy.cut()
        stdout = collect_stdout(process)
        assert stdout == b"".join(b"line%d\n" % i for i in range(1, 41))
        assert process.returncode == 0
        wait_until(lambda: client.state == "connected")


def test_exit_during_outage_is_reported_after_recovery(any_server, proxy_to):
    proxy = proxy_to(any_server.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "sleep 0.3; echo bye; exit 7"])
        proxy.refuse(True)
        proxy.cut()
        time.sleep(0.8)  # the process exits while nobody is connected
        proxy.refuse(False)
        assert process.wait(timeout=10) == 7
        assert collect_stdout(process) == b"bye\n"


def test_calls_wait_during_recovery(any_server, proxy_to):
    proxy = proxy_to(any_server.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        proxy.refuse(True)
        proxy.cut()
        wait_until(lambda: client.state == "recovering")
        threading.Timer(0.3, proxy.refuse, args=(False,)).start()
        assert client.call("environment/status", timeout=10) == {"status": "ready"}


def test_attached_session_is_retried_until_detached(memory_server):
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "sleep 1; echo done"])
        held = server.cut(server_side=False)  # the server still sees the old connection (-32010)
        # two resumes refused while the old connection is attached: still recovering
        wait_until(lambda: sum(t.seen.count("initialize") for t in server.transports[1:]) >= 2)
        assert client.state == "recovering"
        server.release(held)
        assert client.call("environment/status", timeout=10) == {"status": "ready"}
        assert collect_stdout(process) == b"done\n"
        wait_until(lambda: client.state == "connected")


def test_unknown_session_is_terminal(memory_server):
    first = memory_server()
    second = memory_server()
    target = [first]
    client = Client.open(lambda timeout: target[0].connector(timeout), timeout=5, reconnect=FAST)
    try:
        process = client.start(["sleep", "30"])
        target[0] = second
        started = time.monotonic()
        first.cut()
        with pytest.raises(ExecServerDisconnected, match="unknown session id"):
            process.wait(timeout=10)
        assert time.monotonic() - started < 5.0
        assert client.state == "failed"
        with pytest.raises(ExecServerDisconnected):
            client.call("environment/status", timeout=5)
    finally:
        client.close()


def test_ttl_expiry_kills_tree_and_fails_client(configured_server, proxy_to, tmp_path):
    running = configured_server(detached_session_ttl=0.5)
    proxy = proxy_to(running.url)
    pid_file = tmp_path / "pid"
    client = Client.connect(proxy.url, timeout=5, reconnect=FAST)
    try:
        process = client.start(["/bin/sh", "-c", "sleep 300 & echo $! > %s; wait" % pid_file])
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip())
        tree = wait_until(lambda: running_descendants(os.getpid(), ["sleep", "300"]))
        proxy.refuse(True)
        proxy.cut()
        wait_until(lambda: all_gone(tree), timeout=10)  # expiry killed the tree
        proxy.refuse(False)
        with pytest.raises(ExecServerDisconnected):
            process.wait(timeout=15)
        assert client.state == "failed"
    finally:
        client.close()


def test_recovery_deadline_ends_in_failed(configured_server, proxy_to):
    running = configured_server()
    proxy = proxy_to(running.url)
    policy = ReconnectPolicy(deadline=0.5, initial_backoff=0.02, max_backoff=0.1, connect_timeout=0.5)
    client = Client.connect(proxy.url, timeout=5, reconnect=policy)
    try:
        process = client.start(["sleep", "30"])
        proxy.refuse(True)
        proxy.cut()
        with pytest.raises(ExecServerDisconnected, match="not recovered within"):
            process.wait(timeout=10)
        with pytest.raises(ExecServerDisconnected):
            client.start(["true"])
    finally:
        client.close()
        proxy.refuse(False)


def test_gap_fails_only_that_process(configured_server, proxy_to, tmp_path):
    running = configured_server(retained_output_chunks=3, spool_bytes_per_process=0)  # memory only: a gap
    proxy = proxy_to(running.url)
    go = tmp_path / "go"  # chatty writes only once the connection is cut (its 0.2 s sleep lost to a slow start)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        chatty = client.start(["/bin/sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.02; done; '
                               'for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.01; done; sleep 30', str(go)])
        quiet = client.start(["/bin/sh", "-c", "sleep 0.8; echo quiet"])
        proxy.refuse(True)
        proxy.cut()
        go.touch()
        on_server = running.server.registry.get(client.session_id).get(chatty.process_id)
        wait_until(lambda: on_server.read(0).next_seq > 4, timeout=10)  # 4 chunks while cut: more than retained
        proxy.refuse(False)
        with pytest.raises(ProcessOutputGap) as caught:
            chatty.wait(timeout=10)
        assert caught.value.missing[0] == 1
        assert collect_stdout(quiet) == b"quiet\n"
        wait_until(lambda: client.state == "connected")


def test_write_in_flight_is_sent_again_and_applied_once(memory_server):
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["cat"], stdin=True)
        outcome = server.lose_answer(lambda: process.write(b"once\n", timeout=10), '"status"')  # applied; lost
        assert outcome == [None]  # sent again with its writeId: "accepted"
        event = process.next_event(timeout=10)  # recovered by the catch-up read, exactly once
        assert event == OutputEvent(1, "stdout", b"once\n")
        wait_until(lambda: client.state == "connected")
        assert sum(t.seen.count("process/write") for t in server.transports) == 2  # re-sent, not re-applied
        with pytest.raises(subprocess.TimeoutExpired):
            process.next_event(timeout=0.2)
        process.terminate()
        assert process.wait(timeout=5) == 137


def test_read_in_flight_is_retried(memory_server):
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "sleep 1; echo late"])
        results = []
        reader = threading.Thread(target=lambda: results.append(process.read(wait=5.0, timeout=15)))
        reader.start()
        wait_until(lambda: "process/read" in server.transports[0].seen)  # the long poll is on the server
        server.cut()
        reader.join(15)
        assert results and [c["seq"] for c in results[0]["chunks"]] == [1]
        process.communicate(timeout=10)


def test_close_during_a_reconnect_leaves_no_connection_behind(memory_server):
    """close() while the recovery is opening a connection: that connection is closed, never resumed."""
    server = memory_server()
    entered, gate = threading.Event(), threading.Event()

    def connector(timeout):
        if server.transports:  # a reconnect: hold it inside the connector
            entered.set()
            gate.wait(10)
        return server.connector(timeout)

    client = Client.open(connector, timeout=5, reconnect=FAST)
    server.cut()
    assert entered.wait(10)
    client.close()
    gate.set()
    wait_until(lambda: len(server.transports) == 2 and server.transports[1].server_ended, timeout=10)
    assert server.transports[1].seen == []  # no initialize (no resume) was sent on it
    assert client.state == "closed"


@pytest.mark.parametrize("drop_on", [
    lambda message: message.get("method") == "initialize",  # the resume
    lambda message: message.get("method") == "process/read" and message["params"]["waitMs"] == 0,  # catch-up
    lambda message: message.get("method") == "process/read" and message["params"]["waitMs"] > 0,  # the user's
], ids=["resume", "catch-up", "resent-read"])
def test_a_resumed_connection_that_drops_is_retried_at_once(memory_server, drop_on):
    """The recovery's new connection drops during the resume, the catch-up or the resend of the user's read
    in flight: the next attempt follows after the backoff, not after connect_timeout, the user's read is
    sent again until a connection holds, and the recovered process still gives all its output."""
    server = memory_server()
    slow_to_notice = ReconnectPolicy(deadline=60.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=30.0)
    attempts = []

    def connector(timeout):
        transport = server.connector(timeout)
        attempts.append(time.monotonic())
        if 2 <= len(attempts) <= 4:  # the first three reconnects drop on the message drop_on picks
            send, reader_name = transport.send, "exec-server-client-reader-%d" % len(attempts)

            def send_or_drop(text):
                if drop_on(json.loads(text)):
                    transport.drop()  # the request is lost on the way and the connection ends
                    # ... and the client has seen the end before the recovery goes on (no race to "connected")
                    wait_until(lambda: not [t for t in threading.enumerate() if t.name == reader_name])
                else:
                    send(text)
            transport.send = send_or_drop
        return transport

    with Client.open(connector, timeout=5, reconnect=slow_to_notice) as client:
        process = client.start(["/bin/sh", "-c", "echo before; read line; echo after"], stdin=True)
        wait_until(lambda: process.last_seq >= 1, timeout=10)
        results = []
        reader = threading.Thread(target=lambda: results.append(process.read(1, wait=10.0, timeout=40)))
        reader.start()
        wait_until(lambda: "process/read" in server.transports[0].seen)  # the long poll is on the server
        server.cut()
        assert client.call("environment/status", timeout=20) == {"status": "ready"}
        # the catch-up runs after each resume: before the process ends (nothing to catch up then), three drops
        wait_until(lambda: len(attempts) >= 5, timeout=20)
        process.write(b"go\n")
        reader.join(20)
        assert results and [(c["seq"], c["chunk"]) for c in results[0]["chunks"]] == [(2, "YWZ0ZXIK")]
        assert collect_stdout(process) == b"before\nafter\n"  # the catch-ups (after each resume) are over
        assert process.returncode == 0
        # the first connection, three dropped, one that holds; a resume sent at once after a drop can also meet
        # the server still detaching the dropped one (-32010): one more attempt after attached_retry_interval
        assert 5 <= len(attempts) <= 7, attempts
        assert attempts[-1] - attempts[1] < 10.0  # three drops; each used to wait connect_timeout (30 s)


def test_a_slow_link_recovers_what_was_written_while_detached(configured_server, proxy_to):
    """After a drop, 512 KiB written while detached comes back over a link that carries less than that per
    connect_timeout: the catch-up reads are sized to the link, so none times out (one reconnect, every byte)."""
    running = configured_server()
    proxy = proxy_to(running.url)
    policy = ReconnectPolicy(deadline=30.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=2.0)
    size = 512 * 1024
    with Client.connect(proxy.url, timeout=5, reconnect=policy) as client:
        process = client.start(["/bin/sh", "-c", "sleep 0.3; head -c %d /dev/zero; echo end" % size])
        proxy.refuse(True)
        proxy.cut()
        time.sleep(1.0)  # the output is written while nobody is connected
        proxy.throttle_downstream(192 * 1024)  # one read of it all (~700 KB of JSON) takes ~3.6 s here
        proxy.refuse(False)
        stdout = collect_stdout(process, timeout=60)
        assert (process.returncode, len(stdout), stdout[-4:]) == (0, size + 4, b"end\n")
        assert stdout.count(b"\0") == size
        assert proxy.accepted == 2  # the first connection and one reconnect: no catch-up read timed out


def test_catch_up_reads_follow_the_link():
    from exec_server.client import catch_up as r
    kib = 1024
    assert r.CATCH_UP_MIN_READ_BYTES < r.CATCH_UP_FIRST_READ_BYTES < r.CATCH_UP_READ_BYTES
    # a full read well within its share (1.25 s) of the 5 s timeout: four times as much next, up to the most;
    # full also when chunks of 5000 bytes stopped 523 bytes short of the budget (our server's reads do)
    assert r.next_read_bytes(64 * kib, 64 * kib, 0.01, 5.0, True) == 256 * kib
    assert r.next_read_bytes(64 * kib, 65013, 0.01, 5.0, True) == 256 * kib
    assert r.next_read_bytes(64 * kib, 64 * kib, 0.0, 5.0, True) == 256 * kib
    assert r.next_read_bytes(r.CATCH_UP_READ_BYTES, r.CATCH_UP_READ_BYTES, 0.1, 5.0, True) == r.CATCH_UP_READ_BYTES
    # ... but never more than the link carries in the share: 64 KiB in 1 s -> 80 KiB in 1.25 s
    assert r.next_read_bytes(64 * kib, 64 * kib, 1.0, 5.0, True) == 80 * kib
    # a short read (the output ends) that came quickly: the same again
    assert r.next_read_bytes(256 * kib, 10, 0.01, 5.0, False) == 256 * kib
    # slower than its share: what the link carried in 1.25 s, never below the fewest
    assert r.next_read_bytes(1024 * kib, 1024 * kib, 2.5, 5.0, True) == 512 * kib
    assert r.next_read_bytes(64 * kib, 64 * kib, 4.9, 2.0, True) == r.CATCH_UP_MIN_READ_BYTES
    assert r.next_read_bytes(64 * kib, 0, 3.0, 5.0, False) == r.CATCH_UP_MIN_READ_BYTES
    with pytest.raises(ValueError, match="connect_timeout"):
        ReconnectPolicy(connect_timeout=0)


def test_catch_up_reads_grow_when_chunks_do_not_fill_the_budget(configured_server, proxy_to, monkeypatch):
    """Output in 5000-byte writes: a read's chunks stop short of its budget (the next would pass it), and
    the reads still grow past the first 64 KiB, so 2 MB come back in a handful of reads, every byte."""
    from exec_server.client.endpoint import Endpoint

    asked = []
    real_call_on = Endpoint.call_on

    def spy(self, generation, method, params, *args, **kwargs):
        if method == "process/read" and params.get("waitMs") == 0:
            asked.append(params["maxBytes"])
        return real_call_on(self, generation, method, params, *args, **kwargs)

    monkeypatch.setattr(Endpoint, "call_on", spy)
    running = configured_server()
    proxy = proxy_to(running.url)
    script = ("import sys, time\nline = b'y' * 4999 + b'\\n'\ntime.sleep(0.3)\nfor _ in range(400):\n"
              "    sys.stdout.buffer.write(line); sys.stdout.buffer.flush(); time.sleep(0.0005)\n")
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        process = client.start([sys.executable, "-c", script])
        proxy.refuse(True)
        proxy.cut()
        time.sleep(2.0)  # the output is written while nobody is connected
        proxy.refuse(False)
        stdout = collect_stdout(process, timeout=60)
    assert (process.returncode, len(stdout), stdout.count(b"y")) == (0, 400 * 5000, 400 * 4999)
    assert max(asked) >= 256 * 1024 and len(asked) < 20, asked


def test_a_wait_timing_out_while_the_connection_drops_does_not_deadlock(server, proxy_to, monkeypatch):
    """A timed-out wait probes the connection (the endpoint's lock) and a recovery's catch-up asks each
    handle whether it is done (the handle's lock): neither may hold its own lock while taking the other's."""
    from exec_server.client.endpoint import Endpoint

    proxy = proxy_to(server.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        process = client.start(["sleep", "30"])
        probing = threading.Event()
        suspect = Endpoint.suspect

        def slow_suspect(self):  # widen the moment a thread could be preempted in
            probing.set()
            time.sleep(0.3)
            return suspect(self)

        monkeypatch.setattr(Endpoint, "suspect", slow_suspect)

        def poll():
            try:
                process.next_event(timeout=0.01)
            except subprocess.TimeoutExpired:
                pass

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        assert probing.wait(5)
        proxy.cut()  # the recovery's catch-up runs while the poll probes
        poller.join(20)
        assert not poller.is_alive()  # was a deadlock: the poll and the recovery each held what the other wanted
        wait_until(lambda: client.state == "connected", timeout=10)
        process.terminate()
        assert process.wait(timeout=10) != 0


def test_close_during_a_reconnect_backoff_ends_the_recovery_thread_at_once(memory_server):
    """close() while the recovery waits out its backoff: its thread ended only when the backoff (up to
    max_backoff) had passed; now close() wakes it."""
    server = memory_server()
    attempts = []

    def connector(timeout):
        if server.transports:  # a reconnect: refused, so the recovery backs off
            attempts.append(time.monotonic())
            raise ExecServerDisconnected("refused")
        return server.connector(timeout)

    policy = ReconnectPolicy(deadline=120.0, initial_backoff=60.0, max_backoff=60.0, connect_timeout=2.0)
    client = Client.open(connector, timeout=5, reconnect=policy)
    server.cut()
    wait_until(lambda: attempts, timeout=10)
    recovery = [thread for thread in threading.enumerate() if thread.name == "exec-server-client-recovery"]
    assert len(recovery) == 1
    client.close()
    recovery[0].join(5)
    assert not recovery[0].is_alive() and len(attempts) == 1
    assert client.state == "closed"


def test_a_call_interrupted_while_it_waits_is_not_sent_again_after_a_reconnect(memory_server):
    """Ctrl-C while a call waits for its answer: the call stayed among the pending ones, and a reconnect sent it
    again (a long poll of a process the caller had given up)."""
    server = memory_server()
    client = Client.open(server.connector, timeout=5, reconnect=FAST)
    try:
        process = client.start(["sleep", "30"])
        client.forget(process)  # so the reconnect's catch-up does not read it
        main = threading.get_ident()

        def interrupt_once_sent():
            wait_until(lambda: "process/read" in server.transports[0].seen, timeout=10)
            time.sleep(0.2)  # the caller is waiting for the answer
            signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt_once_sent, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            client.call("process/read", {"processId": process.process_id, "afterSeq": 0, "maxBytes": None,
                                         "waitMs": 20000}, timeout=30)
        server.cut()
        wait_until(lambda: len(server.transports) >= 2 and client.state == "connected", timeout=10)
        client.call("environment/info", {}, timeout=10)
        assert all("process/read" not in transport.seen for transport in server.transports[1:])
        process.terminate(timeout=10)
    finally:
        client.close()


def test_close_while_reconnecting_terminates_the_processes_once_recovered(memory_server):
    """close() terminated nothing unless connected: a client closed while it reconnected (a server stopped
    for a moment) left its processes running until the session expired (80 s)."""
    server = memory_server()
    marker = "62.5"
    client = Client.open(server.connector, timeout=5, reconnect=FAST)
    client.start(["sleep", marker])
    wait_until(lambda: len(running_descendants(os.getpid(), ["sleep", marker])) == 1, timeout=10)
    server.refusing = True
    server.cut()
    wait_until(lambda: client.state == "recovering", timeout=10)
    threading.Timer(1.0, lambda: setattr(server, "refusing", False)).start()  # back within CLOSE_TERMINATE_WAIT
    client.close()
    wait_until(lambda: not running_descendants(os.getpid(), ["sleep", marker]), timeout=10)
    server.close()


def _blocking_reconnects(server, release: threading.Event, late: list):
    """A connector whose reconnects block until ``release`` (a token callable that stopped answering), then
    connect; what they made is kept in ``late``."""
    def connector(timeout):
        if server.transports:
            release.wait(60)
            late.append(server.connector(timeout))
            return late[-1]
        return server.connector(timeout)
    return connector


def test_a_connect_that_blocks_does_not_hold_the_recovery_past_its_deadline(memory_server):
    """The connector (with the user's token callable) ran on the recovery thread, bounded by nothing: a
    callable that blocked kept the client recovering past the policy's deadline (every wait without a
    timeout with it), and one that returned late reconnected the client after its deadline."""
    server, release, late = memory_server(), threading.Event(), []
    policy = ReconnectPolicy(deadline=1.0, initial_backoff=0.02, max_backoff=0.1, connect_timeout=0.5)
    client = Client.open(_blocking_reconnects(server, release, late), timeout=5, reconnect=policy)
    try:
        process = client.start(["sleep", "30"])
        server.cut()
        begun = time.monotonic()
        with pytest.raises(ExecServerDisconnected, match="not recovered within 1.0 s: .*did not end in time"):
            process.wait()  # no timeout: the deadline is the bound
        assert time.monotonic() - begun < 3.0 and client.state == "failed"
        recovery = [thread for thread in threading.enumerate() if thread.name == "exec-server-client-recovery"]
        for thread in recovery:
            thread.join(5)
        assert not any(thread.is_alive() for thread in recovery)
        release.set()  # the connect ends after the client gave up on it: its transport is closed, not used
        wait_until(lambda: late and late[-1].server_ended, timeout=10)
        assert client.state == "failed"
    finally:
        release.set()
        client.close()


def test_close_while_a_reconnect_blocks_ends_the_recovery_at_once(memory_server):
    server, release, late = memory_server(), threading.Event(), []
    policy = ReconnectPolicy(deadline=120.0, initial_backoff=0.02, max_backoff=0.1, connect_timeout=0.5)
    client = Client.open(_blocking_reconnects(server, release, late), timeout=5, reconnect=policy)
    try:
        server.cut()
        wait_until(lambda: any(thread.name == "exec-server-client-connect" for thread in threading.enumerate()),
                   timeout=10)
        recovery = [thread for thread in threading.enumerate() if thread.name == "exec-server-client-recovery"]
        begun = time.monotonic()
        client.close()
        for thread in recovery:
            thread.join(5)
        assert not any(thread.is_alive() for thread in recovery) and time.monotonic() - begun < 2.0
        assert client.state == "closed"
        release.set()
        wait_until(lambda: late and late[-1].server_ended, timeout=10)  # closed when it came
    finally:
        release.set()
        client.close()


def test_a_token_callable_that_blocks_during_a_reconnect_fails_the_client_at_its_deadline(server, proxy_to):
    """The same through ``Client.connect``'s ``token`` callable over a real WebSocket."""
    proxy, calls, release = proxy_to(server.url), [], threading.Event()

    def token():
        calls.append(time.monotonic())
        if len(calls) > 1:
            release.wait(60)
        return "unused"

    policy = ReconnectPolicy(deadline=1.0, initial_backoff=0.02, max_backoff=0.1, connect_timeout=0.5)
    client = Client.connect(proxy.url, timeout=5, token=token, reconnect=policy)
    try:
        process = client.start(["sleep", "30"])
        proxy.cut()
        with pytest.raises(ExecServerDisconnected, match="did not end in time"):
            process.wait(timeout=30)
        assert len(calls) == 2 and time.monotonic() - calls[1] < 3.0
    finally:
        release.set()
        client.close()
