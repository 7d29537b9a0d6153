"""The client survives dropped connections (through a fault-injecting proxy, or the in-memory pair)."""

import json
import os
import subprocess
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import all_gone, pid_alive, running_descendants, wait_until
from exec_server import (Client, ExecServerDisconnected, OutputEvent, ProcessOutputGap, ReconnectPolicy,
                         RequestOutcomeUnknown)
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
        process = client.start(["/bin/sh", "-c", "i=1; while [ $i -le 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"])
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


def test_gap_fails_only_that_process(configured_server, proxy_to):
    running = configured_server(retained_output_chunks=3, spool_bytes_per_process=0)  # memory only: a gap
    proxy = proxy_to(running.url)
    with Client.connect(proxy.url, timeout=5, reconnect=FAST) as client:
        chatty = client.start(["/bin/sh", "-c", "sleep 0.2; for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.01; done; sleep 30"])
        quiet = client.start(["/bin/sh", "-c", "sleep 0.8; echo quiet"])
        proxy.refuse(True)
        proxy.cut()
        time.sleep(0.6)
        proxy.refuse(False)
        with pytest.raises(ProcessOutputGap) as caught:
            chatty.wait(timeout=10)
        assert caught.value.missing[0] == 1
        assert collect_stdout(quiet) == b"quiet\n"
        wait_until(lambda: client.state == "connected")


def test_write_in_flight_is_outcome_unknown_and_not_repeated(memory_server):
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["cat"], stdin=True)
        server.holding_downstream = True  # the server gets the write; its answer never reaches us
        errors = []

        def write():
            try:
                process.write(b"once\n", timeout=10)
            except Exception as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        wait_until(lambda: any('"status"' in text for text in server.transports[0].held))  # answered, lost
        server.refusing = True
        server.cut()
        server.holding_downstream = False
        server.refusing = False
        writer.join(10)
        assert len(errors) == 1 and isinstance(errors[0], RequestOutcomeUnknown)
        event = process.next_event(timeout=10)  # recovered by the catch-up read, exactly once
        assert event == OutputEvent(1, "stdout", b"once\n")
        wait_until(lambda: client.state == "connected")
        assert sum(t.seen.count("process/write") for t in server.transports) == 1  # never re-sent
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


NOT_BASE64 = "AB=="  # trailing bits set: the reference's decoder and ours refuse it


def corrupt_chunks(text: str, reads_too: bool) -> str:
    """The text with every process/output chunk (and with ``reads_too`` every process/read chunk) replaced."""
    message = json.loads(text)
    if message.get("method") == "process/output":
        message["params"]["chunk"] = NOT_BASE64
    elif reads_too and isinstance(message.get("result"), dict) and "chunks" in message["result"]:
        for chunk in message["result"]["chunks"]:
            chunk["chunk"] = NOT_BASE64
    else:
        return text
    return json.dumps(message)


def test_a_malformed_output_notification_is_recovered_by_a_read(memory_server, caplog):
    """A process/output the client cannot decode ends that connection; the resumed session's process/read
    brings the same output back, so nothing is lost and nothing is logged as a reader failure."""
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        corrupted = []

        def once(text: str) -> str:
            if corrupted or '"process/output"' not in text:
                return text
            corrupted.append(text)
            return corrupt_chunks(text, reads_too=False)

        server.rewrite = once
        process = client.start(["/bin/sh", "-c", "echo first; read line; echo second"], stdin=True)
        wait_until(lambda: corrupted and len(server.transports) == 2, timeout=10)
        wait_until(lambda: client.state == "connected", timeout=10)
        process.write(b"go\n")
        process.close_stdin()
        assert collect_stdout(process) == b"first\nsecond\n"
        assert process.returncode == 0
    assert "client reader failed" not in caplog.text
    assert "malformed message: invalid process/output: Invalid last symbol 66, offset 1." in caplog.text


def test_output_that_cannot_be_decoded_even_after_resuming_fails_the_process(memory_server, caplog):
    """If the catch-up read is malformed too, the process fails with a clear error (and is terminated on the
    server) instead of the recovery thread dying with the client left ``recovering``."""
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        server.rewrite = lambda text: corrupt_chunks(text, reads_too=True)
        process = client.start(["/bin/sh", "-c", "echo first; exec sleep 60"])
        with pytest.raises(ExecServerDisconnected, match="cannot be recovered: exec-server sent a malformed "
                                                         "process/read result: ValueError: Invalid last symbol"):
            process.wait(timeout=10)
        wait_until(lambda: "process/terminate" in server.transports[-1].seen, timeout=10)
        assert client.call("environment/status", timeout=5) == {"status": "ready"}
    assert "recovery failed" not in caplog.text and "client reader failed" not in caplog.text


def rewrite_json(match, change):
    """A ``MemoryServer.rewrite`` that applies ``change(message)`` to each JSON message ``match`` accepts."""
    def rewrite(text: str) -> str:
        message = json.loads(text)
        if not match(message):
            return text
        change(message)
        return json.dumps(message)
    return rewrite


def test_a_peer_that_is_not_an_exec_server_is_named_so(memory_server):
    server = memory_server()
    server.rewrite = rewrite_json(lambda m: "sessionId" in (m.get("result") or {}),
                                  lambda m: m.__setitem__("result", {"userAgent": "some-app-server/0.1"}))
    with pytest.raises(ExecServerDisconnected, match="not an exec-server: its initialize result has no sessionId"):
        Client.open(server.connector, timeout=5)
    assert all(transport.server_ended for transport in server.transports)


def test_an_environment_info_that_is_not_an_object_counts_as_absent(memory_server):
    server = memory_server()
    server.rewrite = rewrite_json(lambda m: "sessionId" in (m.get("result") or {}),
                                  lambda m: m["result"].__setitem__("environmentInfo", ["not", "an", "object"]))
    with Client.open(server.connector, timeout=5) as client:
        assert client.environment_info == {}
        assert client.run(["sh", "-c", "echo ok"], cwd="/tmp", timeout=10).stdout == b"ok\n"


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


@pytest.mark.parametrize("change, error", [
    # every read answers with what the client already has (seqs one back): the catch-up stops instead of
    # reading the same again forever
    (lambda r: ([chunk.__setitem__("seq", chunk["seq"] - 1) for chunk in r["chunks"]],
                r.__setitem__("nextSeq", r["nextSeq"] - 1)), None),
    # an absurd nextSeq: a gap reported as a range, without a list of 2**53 seqs
    (lambda r: r.__setitem__("nextSeq", 2 ** 53), ProcessOutputGap),
    # a seq that is not an integer: this process fails, not the client
    (lambda r: [chunk.__setitem__("seq", "1") for chunk in r["chunks"]], ExecServerDisconnected),
])
def test_a_catch_up_read_from_a_broken_server_ends(memory_server, change, error):
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "echo one; read line; sleep 0.5; echo two; exec sleep 60"],
                               stdin=True)
        wait_until(lambda: process.last_seq >= 1, timeout=10)
        process.write(b"go\n", timeout=10)
        server.holding_downstream = True  # what the server sends now is lost: the catch-up must read it
        wait_until(lambda: any('"process/output"' in text for text in server.transports[-1].held), timeout=10)
        server.holding_downstream = False
        server.rewrite = rewrite_json(lambda m: isinstance(m.get("result"), dict) and "nextSeq" in m["result"],
                                      lambda m: change(m["result"]))
        server.cut()
        wait_until(lambda: client.state == "connected" and len(server.transports) >= 2, timeout=10)
        if error is not None:
            with pytest.raises(error):
                process.wait(timeout=10)
        assert client.call("environment/status", timeout=5) == {"status": "ready"}
        if error is ProcessOutputGap:
            with pytest.raises(ProcessOutputGap) as caught:
                process.wait(timeout=1)
            assert isinstance(caught.value.missing, range) and caught.value.missing[-1] >= 2 ** 53 - 2
        process.kill()


@pytest.mark.parametrize("sent, seen", [
    ("3", 3),  # not an integer: a malformed message; the resumed session's read has the real code
    (None, -1),  # null: unknown, and the wait still ends
])
def test_an_exit_code_that_is_not_an_integer(memory_server, sent, seen):
    server = memory_server()
    server.rewrite = rewrite_json(lambda m: m.get("method") == "process/exited",
                                  lambda m: m["params"].__setitem__("exitCode", sent))
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "exit 3"])
        assert process.wait(timeout=10) == seen
        assert client.call("environment/status", timeout=5) == {"status": "ready"}
