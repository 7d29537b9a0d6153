"""What bounds the server's memory beyond the count limits (README "Limits"): the bytes of the requests a
connection has admitted, and the large results of all connections being built and sent.

Loopback only; every test ends by itself (timeouts on each wait).
"""

import base64
import contextlib
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import start_params, wait_until
from exec_server.server.budget import RESULT_COST_PER_BYTE, ByteBudget
from test_fuzz import _frame, _upgrade

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024


def test_byte_budget_waits_bounded_and_lets_one_oversized_reservation_run_alone():
    budget = ByteBudget(100)
    first = budget.reserve(60, 1.0)
    assert first == 60 and budget.used == 60
    assert budget.reserve(50, 0.0) is None  # 110 > 100
    started = time.monotonic()
    assert budget.reserve(50, 0.2) is None
    assert time.monotonic() - started >= 0.2
    released = threading.Timer(0.2, budget.release, args=(first,))
    released.start()
    assert budget.reserve(50, 5.0) == 50  # woken by the release
    released.join(5)
    budget.release(50)
    assert budget.reserve(1000, 0.0) == 100  # alone: capped at the limit, runs
    assert budget.reserve(1, 0.0) is None  # small, but does not fit: what is reserved never exceeds the limit
    budget.release(100)
    assert budget.used == 0


def test_byte_budget_small_and_empty_reservations_do_not_queue_behind_a_large_one():
    """A 0- or 5-byte fs/readFile waited behind a large reservation that did not fit, up to --send-timeout."""
    budget = ByteBudget(1000)  # small: up to 15 bytes, together up to 125
    held = budget.reserve(500, 0.0)
    results = []
    waiter = threading.Thread(target=lambda: results.append(budget.reserve(800, 30.0)))  # first in line
    waiter.start()
    try:
        wait_until(lambda: budget._waiting, timeout=5)
        started = time.monotonic()
        assert budget.reserve(0, 1.0) == 0  # before: None after 1 s
        assert [budget.reserve(15, 1.0) for _ in range(8)] == [15] * 8  # before: None after 1 s each
        assert time.monotonic() - started < 0.5
        assert budget._waiting  # the large one still waits: the next two are judged against it
        assert budget.reserve(15, 0.0) is None  # the small ones' share (125) is full: in line, behind 800
        assert budget.reserve(16, 0.0) is None  # not small: in line
    finally:
        for _ in range(8):
            budget.release(15)
        budget.release(held)
        waiter.join(10)
    assert results == [800]
    budget.release(800)
    assert budget.used == 0


def test_byte_budget_small_reservations_wait_behind_one_too_large_to_fit_beside_their_share():
    """A waiter over limit - bypass (875 of 1000) could be starved by small ones holding their share: they queue."""
    budget = ByteBudget(1000)
    held = budget.reserve(200, 0.0)
    waiter = threading.Thread(target=budget.reserve, args=(900, 1.0))
    waiter.start()
    try:
        wait_until(lambda: budget._waiting, timeout=5)
        assert budget.reserve(15, 0.0) is None
    finally:
        waiter.join(5)
    assert budget.reserve(15, 0.0) == 15  # once it gave up
    budget.release(15)
    budget.release(held)
    assert budget.used == 0


@contextlib.contextmanager
def _churn(budget, size, users, hold, stagger=0.0):
    """``users`` threads that reserve ``size`` of ``budget`` over and over, holding it ``hold`` seconds each time
    (the n-th starts ``n * stagger`` s late); yields the list of what each reserve returned.  Stopped at the end."""
    stop, granted = threading.Event(), []

    def user(offset):
        time.sleep(offset)
        while not stop.is_set():
            reserved = budget.reserve(size, 5.0)
            granted.append(reserved)
            time.sleep(hold)
            budget.release(reserved)

    threads = [threading.Thread(target=user, args=(index * stagger,)) for index in range(users)]
    for thread in threads:
        thread.start()
    try:
        yield granted
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_byte_budget_small_reservations_cannot_starve_a_large_one():
    """Eight users hold 15 of 1000 each, overlapping, without pause: the large one still goes within its wait."""
    budget = ByteBudget(1000)
    held = budget.reserve(500, 0.0)
    with _churn(budget, 15, users=8, hold=0.01) as granted:
        threading.Timer(0.2, budget.release, args=(held,)).start()
        assert budget.reserve(800, 3.0) == 800  # fits beside the small ones' share
        budget.release(800)
        assert budget.reserve(1000, 3.0) == 1000  # does not: they wait behind it
        budget.release(1000)
    assert granted and all(size == 15 for size in granted)
    assert budget.used == 0


def test_byte_budget_serves_waiters_in_order_so_a_large_reservation_is_not_starved():
    """Three users reserve 30 of 100 in turn, overlapping (each holds it 20 ms): 80 never fitted beside them,
    and the large reservation waited out its timeout while the small ones were granted all along."""
    budget = ByteBudget(100)
    with _churn(budget, 30, users=3, hold=0.02, stagger=0.007) as granted:
        time.sleep(0.1)
        assert budget.reserve(80, 3.0) == 80  # before: None after 3 s
        budget.release(80)
    assert granted and all(size == 30 for size in granted)
    assert budget.used == 0
    assert budget.reserve(10, 0.0) == 10  # a timed-out or served waiter leaves no ticket behind


def test_byte_budget_a_waiter_that_gives_up_lets_the_next_one_through():
    budget = ByteBudget(100)
    held = budget.reserve(90, 0.0)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("large", budget.reserve(50, 0.3)))
    first.start()
    time.sleep(0.1)  # the large one is first in line, then the small one that fits beside what is held
    second = threading.Thread(target=lambda: results.setdefault("small", budget.reserve(10, 5.0)))
    second.start()
    first.join(5)
    second.join(5)
    assert results == {"large": None, "small": 10}  # the small one went once the large one gave up
    budget.release(held)
    budget.release(10)
    assert budget.used == 0


def test_admitted_requests_of_a_connection_hold_at_most_max_message_bytes(configured_server, connect, tmp_path):
    """A connection that pipelines large requests behind a busy worker gets -32001 for the one that would pin more
    than --max-message-bytes of queued messages; the admitted ones run, the refused one does not."""
    running = configured_server(concurrent_requests=1, max_message_bytes=MIB)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("idle", ["sleep", "30"]))
    peer.send({"id": 1, "method": "process/read", "params": {"processId": "idle", "waitMs": 2000}})  # holds the worker
    payload = base64.b64encode(os.urandom(300 * 1024)).decode()  # a 400 KB message each
    for number in (2, 3, 4):
        peer.send({"id": number, "method": "fs/writeFile",
                   "params": {"path": "file://%s/f%d" % (tmp_path, number), "dataBase64": payload}})
    refused = peer.wait_for(lambda m: m.get("id") == 4, timeout=10)
    assert refused["error"]["code"] == -32001 and refused["error"]["message"] == "Server overloaded; retry later."
    assert not any(m.get("id") == 1 for m in peer.received)  # refused at once, while the long poll still runs
    for number in (1, 2, 3):
        assert "result" in peer.wait_for(lambda m, n=number: m.get("id") == n, timeout=10)
    assert (tmp_path / "f2").read_bytes() == (tmp_path / "f3").read_bytes() == base64.b64decode(payload)
    assert not (tmp_path / "f4").exists()
    assert peer.call("environment/status") == {"status": "ready"}  # the connection goes on


def _send(sock, message):
    sock.sendall(_frame(1, json.dumps(message).encode()))


def _drain_at_least(sock, size, timeout=30.0):
    sock.settimeout(timeout)
    received = 0
    while received < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    return received


@contextlib.contextmanager
def _budget_holder(running, path, holds):
    """A second connection that asks fs/readFile of ``path`` and reads nothing: its result is built and its send
    waits, holding ``holds`` bytes of the result budget (waited for).  Yields its socket; closed at the end."""
    slow = _upgrade(urlsplit(running.url).port)
    try:
        _send(slow, {"id": 1, "method": "initialize", "params": {"clientName": "slow"}})
        _send(slow, {"method": "initialized", "params": {}})
        _send(slow, {"id": 2, "method": "fs/readFile", "params": {"path": "file://%s" % path}})
        budget = running.server.dispatcher.result_budget
        wait_until(lambda: budget.used == holds, timeout=10)
        yield slow
    finally:
        slow.close()


@pytest.mark.parametrize("waiting", ["process/read", "fs/readFile"])
def test_a_large_result_waits_while_others_fill_the_result_budget(configured_server, connect, tmp_path, waiting):
    """Connection A asks for a 16 MiB file and does not read its response (22 MB of base64: more than the
    socket buffers hold, so the server's send waits): the result holds the whole budget.
    B's large result (spooled output, or the same file) is not built until A has read its own."""
    size = 16 * MIB
    running = configured_server(max_result_bytes_in_flight=RESULT_COST_PER_BYTE * size)
    data = os.urandom(size)
    (tmp_path / "big").write_bytes(data)
    peer = connect(running.url)
    peer.initialize()
    if waiting == "process/read":
        peer.call("process/start", start_params("big", ["head", "-c", str(4 * MIB), str(tmp_path / "big")]))
        peer.wait_closed("big", timeout=30)
        request = {"processId": "big", "afterSeq": 0, "maxBytes": None}
    else:
        request = {"path": "file://%s/big" % tmp_path}
    budget = running.server.dispatcher.result_budget
    with _budget_holder(running, tmp_path / "big", budget.limit) as slow:  # A's result is built and being sent
        peer.send({"id": 7, "method": waiting, "params": request})
        with pytest.raises(AssertionError):  # B waits for the budget while A does not read
            peer.wait_for(lambda m: m.get("id") == 7, timeout=1.0)
        assert _drain_at_least(slow, size * 4 // 3) >= size * 4 // 3
    reply = peer.wait_for(lambda m: m.get("id") == 7, timeout=20)
    if waiting == "process/read":
        chunks = reply["result"]["chunks"]
        assert b"".join(base64.b64decode(c["chunk"]) for c in chunks) == data[:4 * MIB]
    else:
        assert base64.b64decode(reply["result"]["dataBase64"]) == data
    wait_until(lambda: budget.used == 0, timeout=10)


@pytest.mark.parametrize("max_bytes", [None, 64 * 1024])
def test_a_spooled_read_waiting_for_the_budget_does_not_stall_its_connection(configured_server, connect, tmp_path,
                                                                             max_bytes):
    """A process/read without waitMs runs on the connection's reader thread, but never waits there for the result
    budget (that froze the connection, no other answer, no Pong, up to --send-timeout): a large spooled read goes
    to a request thread, a small one (``INLINE_SPOOL_READ_BYTES``) too once it finds the budget taken."""
    size = 16 * MIB
    running = configured_server(max_result_bytes_in_flight=RESULT_COST_PER_BYTE * size)
    (tmp_path / "big").write_bytes(os.urandom(size))
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("big", ["head", "-c", str(4 * MIB), str(tmp_path / "big")]))
    peer.wait_closed("big", timeout=30)
    budget = running.server.dispatcher.result_budget
    with _budget_holder(running, tmp_path / "big", budget.limit) as slow:
        params = {"processId": "big", "afterSeq": 0, **({} if max_bytes is None else {"maxBytes": max_bytes})}
        peer.send({"id": 7, "method": "process/read", "params": params})
        started = time.monotonic()
        assert peer.call("environment/status", timeout=5) == {"status": "ready"}  # answered while 7 waits
        assert time.monotonic() - started < 2.0
        assert not any(m.get("id") == 7 for m in peer.received)
        assert _drain_at_least(slow, size * 4 // 3) >= size * 4 // 3
    assert peer.wait_for(lambda m: m.get("id") == 7, timeout=20)["result"]["chunks"]


def test_a_small_spooled_read_is_answered_while_long_polls_hold_every_request_thread(
        configured_server, connect, tmp_path):
    """A catch-up's 64 KiB reads of spooled output run on the reader thread while the result budget is free: they
    were queued behind the connection's long polls (here both request threads wait 20 s on a quiet process)."""
    running = configured_server(concurrent_requests=2)
    data = os.urandom(3 * MIB)
    (tmp_path / "big").write_bytes(data)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("big", ["cat", str(tmp_path / "big")]))
    peer.wait_closed("big", timeout=30)
    peer.call("process/start", start_params("quiet", ["sleep", "60"]))
    for number in (8, 9):
        peer.send({"id": number, "method": "process/read",
                   "params": {"processId": "quiet", "afterSeq": 0, "waitMs": 20000}})
    time.sleep(0.5)  # both long polls hold a request thread
    started = time.monotonic()
    reply = peer.call("process/read", {"processId": "big", "afterSeq": 0, "maxBytes": 64 * 1024}, timeout=15)
    assert time.monotonic() - started < 5.0
    assert reply["chunks"][0]["seq"] == 1
    got = b"".join(base64.b64decode(c["chunk"]) for c in reply["chunks"])
    assert 0 < len(got) <= 64 * 1024 and got == data[:len(got)]
    assert not any(m.get("id") in (8, 9) for m in peer.received)  # still waiting
    peer.call("process/terminate", {"processId": "quiet"}, timeout=10)


def test_a_spooled_read_reserves_what_it_may_return_not_its_whole_budget(configured_server, connect, tmp_path):
    """``maxBytes: null`` (how the Codex client catches up) may return up to --max-read-bytes (16 MiB), but a
    process that spooled 1.5 MiB can return no more: its read must not wait for 5 x 16 MiB of budget."""
    running = configured_server(max_result_bytes_in_flight=RESULT_COST_PER_BYTE * 16 * MIB)
    (tmp_path / "big").write_bytes(os.urandom(8 * MIB))
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("small", ["head", "-c", str(3 * MIB // 2), str(tmp_path / "big")]))
    peer.wait_closed("small", timeout=30)
    with _budget_holder(running, tmp_path / "big", RESULT_COST_PER_BYTE * 8 * MIB):  # half of it, held
        peer.send({"id": 7, "method": "process/read", "params": {"processId": "small", "afterSeq": 0,
                                                                 "maxBytes": None}})
        reply = peer.wait_for(lambda m: m.get("id") == 7, timeout=3)  # at once, while the holder stalls
        assert sum(len(base64.b64decode(c["chunk"])) for c in reply["result"]["chunks"]) == 3 * MIB // 2


def test_a_tiny_read_is_answered_at_once_while_a_large_one_waits_for_the_budget(configured_server, connect, tmp_path):
    """One connection's 12 MiB download holds 3/4 of the result budget, another's 8 MiB waits first in line for
    it: a 5-byte and an empty fs/readFile are answered at once (before: after --send-timeout, all behind it)."""
    running = configured_server(max_result_bytes_in_flight=RESULT_COST_PER_BYTE * 16 * MIB, send_timeout=10.0)
    (tmp_path / "held").write_bytes(os.urandom(12 * MIB))
    (tmp_path / "waits").write_bytes(os.urandom(8 * MIB))
    (tmp_path / "tiny").write_bytes(b"hello")
    (tmp_path / "empty").write_bytes(b"")
    peer = connect(running.url)
    peer.initialize()
    budget = running.server.dispatcher.result_budget
    with _budget_holder(running, tmp_path / "held", RESULT_COST_PER_BYTE * 12 * MIB) as slow:
        peer.send({"id": 7, "method": "fs/readFile", "params": {"path": "file://%s/waits" % tmp_path}})
        wait_until(lambda: budget._waiting, timeout=10)  # first in line: does not fit beside the holder
        started = time.monotonic()
        tiny = peer.call("fs/readFile", {"path": "file://%s/tiny" % tmp_path}, timeout=5)
        empty = peer.call("fs/readFile", {"path": "file://%s/empty" % tmp_path}, timeout=5)
        assert time.monotonic() - started < 2.0
        assert base64.b64decode(tiny["dataBase64"]) == b"hello" and empty["dataBase64"] == ""
        assert not any(m.get("id") == 7 for m in peer.received)
        assert _drain_at_least(slow, 16 * MIB) >= 16 * MIB
    reply = peer.wait_for(lambda m: m.get("id") == 7, timeout=20)
    assert len(base64.b64decode(reply["result"]["dataBase64"])) == 8 * MIB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's acknowledged bytes")
def test_a_client_that_trickles_a_large_response_is_dropped_and_the_budget_freed(configured_server, tmp_path):
    """A client taking ~2.5 KB/s (under MIN_SEND_RATE) of an 8 MiB fs/readFile held the response's 24 MiB of
    result budget and its connection's send lock for as long as it went on reading a little."""
    running = configured_server(send_timeout=1.0)
    (tmp_path / "big").write_bytes(os.urandom(8 * MIB))
    slow = _upgrade(urlsplit(running.url).port, receive_buffer=1)
    budget = running.server.dispatcher.result_budget
    stop, ended = threading.Event(), threading.Event()  # ended: the reader saw an end or an error

    def trickle():
        try:
            while not stop.is_set() and slow.recv(256):
                time.sleep(0.1)
        except OSError:
            pass
        ended.set()

    try:
        _send(slow, {"id": 1, "method": "initialize", "params": {"clientName": "slow"}})
        _send(slow, {"method": "initialized", "params": {}})
        _send(slow, {"id": 2, "method": "fs/readFile", "params": {"path": "file://%s/big" % tmp_path}})
        reader = threading.Thread(target=trickle, daemon=True)
        reader.start()
        wait_until(lambda: budget.used == RESULT_COST_PER_BYTE * 8 * MIB, timeout=10)
        wait_until(lambda: budget.used == 0, timeout=8)  # before: held as long as the client read
        wait_until(lambda: not running.server.dispatcher.connections(), timeout=5)  # the connection was dropped
        assert not ended.is_set()  # the client went on reading all along (the kernel still sends what was queued)
    finally:
        stop.set()
        slow.close()


def test_a_start_that_fails_keeps_nothing_of_its_request(server, connect):
    """A -32603 start (E2BIG here) kept its whole request alive in a reference cycle of its error's context (the
    spawner's future and the frames it went through): 50 MB arguments took 100 MB each until a full collection."""
    import gc
    import types

    peer = connect(server.url)
    peer.initialize()
    argument = "x" * 4_000_000  # over the kernel's 128 KiB limit for one argument
    gc.collect()
    gc.disable()
    try:
        reply = peer.request("process/start", start_params("too-long", ["echo", argument]), timeout=30)
        assert reply["error"]["code"] == -32603 and "Argument list too long" in reply["error"]["message"]

        def held():  # the reply is sent before the handler's frames are let go: wait for that, not a guess
            return [o.f_code.co_name for o in gc.get_objects() if isinstance(o, types.FrameType)
                    and o.f_code.co_name in ("spawn_child", "process_start", "_execute_child")]
        wait_until(lambda: held() == [], timeout=10)  # gc is off: a reference cycle would keep them for good
    finally:
        gc.enable()


def test_the_embedded_servers_messages_wait_for_their_client_within_a_bound():
    """The embedded server (``exec-server run``) queued its messages for the client without bound: a client
    whose reader lagged behind a fast command held the lag in memory (tens of MiB under load).  Now past
    MAX_QUEUED_CHARS the server's send waits, the command waits in its pipe, and nothing is lost."""
    from conftest import running_descendants
    from exec_server.cli.embedded import MAX_QUEUED_CHARS, EmbeddedServer

    size = 48 << 20
    argv = ["head", "-c", str(size), "/dev/zero"]
    with EmbeddedServer() as server:
        transport = server.connector()
        transport.send(json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "t"}}))
        transport.send(json.dumps({"method": "initialized", "params": {}}))
        transport.send(json.dumps({"id": 2, "method": "process/start", "params": start_params("p", argv)}))
        wait_until(lambda: transport.queued >= MAX_QUEUED_CHARS, timeout=30)
        time.sleep(1.0)  # a server that did not wait would queue on (the whole output is ~64 MiB of text)
        assert transport.queued < MAX_QUEUED_CHARS + (1 << 20)
        assert running_descendants(os.getpid(), argv), "the command should wait in its pipe"
        received, seqs, closed = 0, [], False
        while not closed:
            message = json.loads(transport.receive())
            if message.get("method") == "process/output":
                received += len(base64.b64decode(message["params"]["chunk"]))
                seqs.append(message["params"]["seq"])
            closed = message.get("method") == "process/closed"
        assert received == size and seqs == sorted(seqs) and transport.queued == 0
