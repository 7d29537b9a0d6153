"""The client, and ``exec-server run``, against servers that break the protocol in ways that used to hang them.

Found by an adversarial pass on the client: a server that accepts every resume and drops the connection again,
one that skips a seq, answers a resume with another session, never reports a command's end after its kill or
never reports its exit; a stdio child that floods stderr without a newline; a send stalled by a server that no
longer reads.  Each test checks what a user sees: the call or the command ends, in bounded time, with one
clear error, and no thread, transport or memory piles up.

Loopback and in-memory servers only; every wait has a timeout.
"""

import contextlib
import fnmatch
import inspect
import os
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from conftest import start_ours, wait_until
from exec_server import CallTimeout, Client, ExecServerDisconnected, ReconnectPolicy
from exec_server.client.recovery import ReconnectPolicy as Policy
from exec_server.protocol.errors import InternalError
from faultproxy import FaultProxy

pytestmark = [pytest.mark.posix, pytest.mark.timeout(120)]

FAST = ReconnectPolicy(deadline=3.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=1.0)
IGNORED = '{"method":"x/ignored","params":{}}'


def _drop_the_exit(text: str, in_reads: bool = False):
    """A server that never reports the exit: ``exited`` dropped (None), ``closed`` takes its seq (no hole);
    ``in_reads``: its reads do not tell the exit either."""
    message = json.loads(text)
    if message.get("method") == "process/exited":
        return None
    if message.get("method") == "process/closed":
        message["params"]["seq"] -= 1
        return json.dumps(message)
    result = message.get("result")
    if in_reads and isinstance(result, dict) and "nextSeq" in result:
        result["exited"], result["exitCode"] = False, None
        return json.dumps(message)
    return text


def _hide_the_exit(text: str):
    """A server that never tells the exit, in its notifications (:func:`_drop_the_exit`) nor in its reads."""
    return _drop_the_exit(text, in_reads=True)


def _mute_the_end(text: str):
    """A server that never reports a command's exit nor its close (None: dropped)."""
    return None if json.loads(text).get("method") in ("process/exited", "process/closed") else text


def _lose_the_first_chunk(text: str):
    """Output seq 1 never arrives live, nor in a read (the server no longer has it)."""
    message = json.loads(text)
    params = message.get("params") or {}
    if message.get("method") == "process/output" and params.get("seq") == 1:
        return None
    result = message.get("result")
    if isinstance(result, dict) and "nextSeq" in result:
        result["chunks"] = [chunk for chunk in result["chunks"] if chunk["seq"] != 1]
        return json.dumps(message)
    return text


@contextlib.contextmanager
def _servers_rewriting(monkeypatch, rewrite, count: int = 2):
    """``count`` of our servers in this process, whose every message (notification or response) goes through
    ``rewrite`` (None: dropped); yields their URLs."""
    from exec_server.server import connection

    original = connection.RpcConnection._write

    def write(self, *texts):
        kept = [text for text in (rewrite(str(each)) for each in texts) if text is not None]
        if kept:
            original(self, *kept)

    monkeypatch.setattr(connection.RpcConnection, "_write", write)
    servers = [start_ours() for _ in range(count)]
    try:
        yield [running.url for running in servers]
    finally:
        for running in servers:
            running.stop()


def _missed_while_held(server, process) -> None:
    """``process`` (waiting for a line on stdin, then 0.3 s) writes a line while the server's messages are lost."""
    process.write(b"go\n", timeout=10)
    server.holding_downstream = True
    wait_until(lambda: any('"process/output"' in t for t in server.transports[-1].held), timeout=20)
    server.holding_downstream = False


def test_a_server_that_drops_each_resumed_connection_at_its_catch_up_fails_the_client_at_the_deadline(
        memory_server):
    """Each drop began a recovery of its own, with a fresh deadline and no backoff: a server that accepts every
    resume and drops the connection at the catch-up's first read (a crash on it, a proxy's size limit) kept the
    client reconnecting thousands of times, for as long as a wait lasted."""
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "read line; sleep 0.3; echo missed; exec sleep 60"], stdin=True)
        _missed_while_held(server, process)

        def drop_at_reads(text: str) -> str:
            if '"nextSeq"' in text:
                threading.Thread(target=server.cut).start()
                return IGNORED
            return text

        server.rewrite = drop_at_reads
        started = time.monotonic()
        server.cut()
        with pytest.raises(ExecServerDisconnected, match="not recovered within 3.0 s"):
            process.wait(timeout=30)
        assert time.monotonic() - started < 10
        assert len(server.transports) < 30, len(server.transports)  # with the backoff: a handful, not thousands
        assert client.state == "failed"


def test_reconnects_keep_no_ended_reader_thread(memory_server):
    """Every reconnect kept its ended reader thread (and its transport, through a finalizer) until the
    client's end: a long-lived client on a flaky link grew without bound."""
    server = memory_server()
    policy = ReconnectPolicy(deadline=10.0, initial_backoff=0.01, max_backoff=0.05, connect_timeout=2.0)
    with Client.open(server.connector, timeout=5, reconnect=policy) as client:
        for _ in range(10):
            before = client.connection_number  # a resume that meets the old connection not yet detached takes two
            server.cut()
            wait_until(lambda: client.state == "connected" and client.connection_number > before, timeout=10)
            time.sleep(1.1)  # the resumed connection proves itself: the next drop is a new outage
        assert client.call("environment/status", timeout=5) == {"status": "ready"}
        wait_until(lambda: len([r for r in client._endpoint._readers if r.is_alive()]) == 1, timeout=10)
        assert len(client._endpoint._readers) <= 2, client._endpoint._readers


def test_a_resume_answered_with_another_session_fails_the_client(memory_server):
    """The client took any answer to its resume: connected, it sent its calls into a session that owns none of
    its processes, which all failed as gone."""
    server = memory_server()

    def other_session(text: str) -> str:
        message = json.loads(text)
        result = message.get("result")
        if isinstance(result, dict) and "sessionId" in result and len(server.transports) > 1:
            result["sessionId"] = "not-the-session"
            return json.dumps(message)
        return text

    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["sleep", "60"])
        server.rewrite = other_session
        server.cut()
        with pytest.raises(ExecServerDisconnected, match="cannot be resumed: .* with session 'not-the-session'"):
            process.wait(timeout=20)
        assert client.state == "failed"


def test_the_backoff_of_a_long_recovery_does_not_overflow():
    """``initial_backoff * 2 ** attempt`` overflowed a float at attempt 1024 (OverflowError: the recovery died
    with a traceback): with the default policy, after ~17 minutes of outage if the deadline allows it."""
    policy = Policy(initial_backoff=0.05, max_backoff=1.0)
    assert [policy.backoff(attempt) for attempt in (0, 1, 1024, 10 ** 6)] == [0.05, 0.1, 1.0, 1.0]


def test_a_skipped_live_seq_is_read_back_once_closed_arrives(memory_server):
    """A server that skips a seq in its live notifications (here: output 2 never arrives) left the events after
    the hole held for ever: communicate timed out though ``closed`` had come.  Now ``closed`` held behind a
    hole makes the consumer read the hole back with ``process/read``."""
    server = memory_server()

    def skip_second_chunk(text: str) -> str:
        message = json.loads(text)
        params = message.get("params") or {}
        if message.get("method") == "process/output" and params.get("seq") == 2:
            return IGNORED
        return text

    server.rewrite = skip_second_chunk
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["/bin/sh", "-c", "printf a; sleep 0.2; printf b; sleep 0.2; printf c"])
        assert process.communicate(timeout=15) == (b"abc", b"")
        assert process.returncode == 0


def test_run_raises_when_the_server_reports_closed_without_an_exit(memory_server):
    """``Client.run`` returned ``returncode=None`` (and ``check=True`` passed) where ``wait`` raises."""
    server = memory_server()
    server.rewrite = lambda text: _hide_the_exit(text) or IGNORED
    with Client.open(server.connector, timeout=5) as client:
        with pytest.raises(InternalError, match="without reporting its exit"):
            client.run(["/bin/sh", "-c", "exit 3"], timeout=15, check=True)


def test_an_exit_the_notifications_left_out_is_read_back(memory_server):
    """The reference now and then sends ``closed`` with no ``exited`` before it (once in ~20 streams of 64 MiB):
    ``run`` raised InternalError though a ``process/read`` tells the exit code."""
    server = memory_server()
    server.rewrite = lambda text: _drop_the_exit(text) or IGNORED
    with Client.open(server.connector, timeout=5) as client:
        done = client.run(["/bin/sh", "-c", "echo out; exit 3"], timeout=15)
    assert (done.returncode, done.stdout) == (3, b"out\n")
    assert not any('"process/exited"' in text for transport in server.transports for text in transport.seen)


#: ``exec-server run`` with its embedded server, whose messages to the client go through ``rewrite(text)``
#: (None: dropped).  argv[1] is the source that defines ``rewrite``; the rest are run's arguments.
MISBEHAVING_RUN = textwrap.dedent("""
    import json, sys
    from exec_server.cli import embedded, main
    exec(sys.argv[1])
    original = embedded.EmbeddedTransport._from_server
    def patched(self, *texts):
        return original(self, *[t for t in (rewrite(str(x)) for x in texts) if t is not None])
    embedded.EmbeddedTransport._from_server = patched
    sys.exit(main(["run"] + sys.argv[2:]))
""")


def _misbehaving_run(rewrite, *args: str) -> subprocess.Popen:
    """``exec-server run ARGS`` in a child whose embedded server's messages go through ``rewrite`` (a function of
    this module, using ``json`` and this module's functions alone: its source and theirs are handed over)."""
    helpers = [globals()[name] for name in rewrite.__code__.co_names if inspect.isfunction(globals().get(name))]
    source = "".join(inspect.getsource(function) for function in helpers + [rewrite]) + "rewrite = %s\n" % (
        rewrite.__name__)
    return subprocess.Popen([sys.executable, "-c", MISBEHAVING_RUN, source] + list(args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("ending", ["SIGTERM", "SIGHUP", "two SIGINTs"])
def test_run_ends_after_an_ending_signal_though_the_server_never_reports_the_end(tmp_path, ending):
    """The kill was sent, but run waited for ``closed`` for ever: a server that never reports it (a wedged tree,
    a silent server) made run unstoppable but by SIGKILL.  Now the end has KILL_WAIT (10 s)."""
    marker = tmp_path / "started"
    run = _misbehaving_run(_mute_the_end, "--", "/bin/sh", "-c", "touch %s; exec sleep 60" % marker)
    err = _signalled_once_started(run, marker.exists, [signal.SIGINT, signal.SIGINT] if ending == "two SIGINTs"
                                  else [getattr(signal, ending)])
    assert run.returncode == 255, err
    lines = err.decode().splitlines()
    assert lines[-1] == "exec-server run: the remote command did not report its end within 10 s of the kill", lines


def _signalled_once_started(run: subprocess.Popen, started, signals, timeout: float = 40) -> bytes:
    """Send ``signals`` to ``run`` once ``started()`` (and 0.3 s more: it waits for the command's events);
    its stderr once it has ended (within ``timeout`` s; else it is killed and the test fails)."""
    try:
        wait_until(started, timeout=20)
        time.sleep(0.3)
        for number in signals:
            run.send_signal(number)
            time.sleep(0.2)
        return run.communicate(timeout=timeout)[1]
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=10)


def test_run_names_lost_output_in_one_line_instead_of_a_traceback(tmp_path):
    """Output the server no longer has (``ProcessOutputGap``: likely against the reference's 1 MiB retention
    after an outage) ended run with a Python traceback and status 1."""
    run = _misbehaving_run(_lose_the_first_chunk, "--", "/bin/sh", "-c",
                           "printf lost; sleep 0.3; printf kept; sleep 0.3")
    _out, err = run.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert run.returncode == 255, err
    assert len(lines) == 1 and lines[0].startswith("exec-server run: ") and "Traceback" not in lines[0], lines
    assert lines[0].endswith(" lost output seqs 1..1 missing from the server's notifications"), lines


def test_run_says_so_when_the_server_reports_no_exit_status():
    """Closed without an exit status ended run with 255 and not a word."""
    run = _misbehaving_run(_hide_the_exit, "--", "/bin/sh", "-c", "exit 3")
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 255, err
    assert err.decode().splitlines() == [
        "exec-server run: the server reported the command's end without its exit status"]


def test_run_reads_back_an_exit_the_notifications_left_out():
    """As ``Client.run``: the exit status a read tells, not 255 and "without its exit status"."""
    run = _misbehaving_run(_drop_the_exit, "--", "/bin/sh", "-c", "exit 3")
    _out, err = run.communicate(timeout=60)
    assert (run.returncode, err) == (3, b"")


def test_a_stdio_child_flooding_stderr_without_a_newline_costs_the_client_no_memory(tmp_path):
    """The child's stderr was read a line at a time without a bound: 100 MiB without a newline were held whole
    (and copied again to log them)."""
    flood = 100 * 1024 * 1024
    script = ("import os, sys; chunk = b'x' * (1 << 20)\n"
              "for _ in range(%d): os.write(2, chunk)\n"
              "from exec_server.cli import main; sys.exit(main(['--listen', 'stdio']))\n" % (flood >> 20))
    before = psutil.Process().memory_info().rss
    with Client.spawn([sys.executable, "-c", script], timeout=60) as client:  # answers once its stderr was read
        grown = psutil.Process().memory_info().rss - before
        assert client.call("environment/status", timeout=10) == {"status": "ready"}
    assert grown < 40 * 1024 * 1024, grown


def test_a_call_keeps_its_timeout_while_another_threads_send_is_stalled():
    """A server that no longer reads stalls a large send; a second thread's ``call(timeout=1)`` waited for the
    send lock behind it until the keepalive gave up (~19 s)."""
    running = start_ours()
    proxy = FaultProxy(int(running.url.rsplit(":", 1)[1]))
    try:
        client = Client.connect(proxy.url, timeout=5, reconnect=None)
        try:
            proxy.stall("upstream")
            big = threading.Thread(target=lambda: _quietly(lambda: client.call(
                "fs/writeFile", {"path": "file:///dev/null", "dataBase64": "A" * (48 * 1024 * 1024)}, timeout=30)),
                daemon=True)
            big.start()
            time.sleep(1.0)  # its send fills the buffers and waits, holding the connection's send lock
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                client.call("environment/status", timeout=1.0)
            assert time.monotonic() - started < 3.0
        finally:
            client.close()
            big.join(30)
    finally:
        proxy.close()
        running.stop()


def _quietly(action) -> None:
    try:
        action()
    except Exception:
        pass


@pytest.mark.parametrize("chunks, exit_seq, gap, exit_at", [
    ([2], 3, [1], None),  # seq 1 is lost output: the exit arrived at 3
    ([2], None, None, 1),  # nothing says where the exit was: seq 1 may be it (the reference's order)
    ([1, 3], 2, None, 2),  # the exit between two chunks (the reference sends it before the last output)
    ([1, 4], 2, [3], None),  # the exit at 2 accounts for one missing seq, not for 3
])
def test_a_read_tells_a_lost_chunk_from_the_exit_by_the_exits_own_seq(chunks, exit_seq, gap, exit_at):
    """A read's result does not say the exit's seq, so the client took any one missing seq for it: a chunk the
    server had evicted, while the ``exited`` notification (held behind it) had come, was lost without a word."""
    from exec_server.client.events import ExitedEvent, catch_up_events

    result = {"chunks": [{"seq": seq, "stream": "stdout", "chunk": "eA=="} for seq in chunks],
              "nextSeq": chunks[-1] + 1, "exited": True, "exitCode": 0, "closed": True}
    events, lost = catch_up_events(result, 0, False, exit_seq)
    assert (list(lost) if lost is not None else None) == gap
    exits = [event.seq for event in events if isinstance(event, ExitedEvent)]
    assert exits == ([] if exit_at is None else [exit_at])


def test_a_read_cut_by_its_budget_publishes_no_closed_at_its_last_chunk():
    """With ``maxBytes`` a read's ``nextSeq`` follows its last chunk (PROTOCOL.md 5.4): a closed process's read
    that the budget cut before its last output was taken to say ``closed`` at that chunk's seq, so the rest of
    the output was never read (``communicate`` lost the last line: test_timeouts, once on a loaded machine)."""
    from exec_server.client.events import ClosedEvent, ExitedEvent, OutputEvent, catch_up_events

    cut = {"chunks": [{"seq": seq, "stream": "stdout", "chunk": "eA=="} for seq in (28, 29)],
           "nextSeq": 30, "exited": True, "exitCode": 3, "closed": True}
    events, lost = catch_up_events(cut, 27, False)
    assert lost is None and [type(event) for event in events] == [OutputEvent, OutputEvent]
    rest = {"chunks": [{"seq": 30, "stream": "stdout", "chunk": "eA=="}], "nextSeq": 33, "exited": True,
            "exitCode": 3, "closed": True}  # the next read, whole: exited 31, closed 32
    events, lost = catch_up_events(rest, 29, False)
    assert lost is None and [(type(event), event.seq) for event in events] == [
        (OutputEvent, 30), (ExitedEvent, 31), (ClosedEvent, 32)]


def test_run_on_several_hosts_ends_after_an_ending_signal_though_no_host_reports_the_end(tmp_path, monkeypatch):
    """As for one host: SIGTERM killed the trees, then run waited for every host's ``closed`` for ever."""
    with _servers_rewriting(monkeypatch, _mute_the_end) as urls:
        run = subprocess.Popen([sys.executable, "-m", "exec_server", "run", "--url", urls[0], "--url", urls[1],
                                "--", "/bin/sh", "-c", 'mktemp -p "%s"; exec sleep 60' % tmp_path],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = _signalled_once_started(run, lambda: len(list(tmp_path.iterdir())) == 2, [signal.SIGTERM])
    assert run.returncode == 123, err
    assert err.count(b"did not report its end within 10 s of the kill") == 2, err


def _outage(server, seconds: float) -> None:
    """Cut every connection and refuse new ones for ``seconds``."""
    server.refusing = True
    server.cut()
    time.sleep(seconds)
    server.refusing = False


def test_a_short_drop_right_after_a_long_recovery_still_recovers(memory_server):
    """A recovery that took 2.5 s of a 3 s deadline ends once the resumed connection answers a call: a 1 s drop
    0.3 s later is an outage of its own (it was failed with the 0.5 s left, though the server was back)."""
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        before = client.connection_number
        _outage(server, 2.5)
        wait_until(lambda: client.state == "connected" and client.connection_number > before, timeout=5)
        assert client.call("environment/status", timeout=5) == {"status": "ready"}
        time.sleep(0.3)
        _outage(server, 1.0)
        assert client.call("environment/status", timeout=10) == {"status": "ready"}
        assert client.state == "connected"


def test_a_drop_during_a_slow_catch_up_gets_the_time_its_connection_was_up(memory_server):
    """The catch-up's reads go unanswered for a while (a slow server) on a connection that otherwise works;
    a drop past the first outage's deadline was failed at once, without one attempt: the outage's clock now
    stands still while a resumed connection is up."""
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        process = client.start(["sleep", "60"])
        slow = [True]
        server.rewrite = lambda text: IGNORED if slow[0] and '"nextSeq"' in text else text
        started = time.monotonic()
        before = client.connection_number
        _outage(server, 1.0)
        wait_until(lambda: client.state == "connected" and client.connection_number > before, timeout=5)
        time.sleep(max(0.0, 3.5 - (time.monotonic() - started)))  # past the first outage's 3 s deadline
        slow[0] = False
        server.cut()  # one drop; the server takes the resume at once
        assert client.call("environment/status", timeout=10) == {"status": "ready"}
        process.terminate(timeout=5)


def test_events_held_behind_a_hole_are_bounded_in_number_not_only_in_bytes():
    """Empty chunks sent ahead of a missing seq were held without end (none counts against the byte limit):
    a million of them held ~240 MiB.  Past MAX_HELD_EVENTS live events are dropped and read back instead."""
    from exec_server.client.buffer import MAX_HELD_EVENTS, EventBuffer
    from exec_server.client.events import OutputEvent

    buffer = EventBuffer(limit=None)
    for seq in range(2, MAX_HELD_EVENTS + 1000):
        buffer.add(OutputEvent(seq, "stdout", b""))
    assert len(buffer._held) <= MAX_HELD_EVENTS and buffer.dropping and buffer.refill
    assert buffer.begin_refill() == 0  # the refill reads from the hole on


def _run_on_two_hosts(monkeypatch, rewrite, script: str, timeout: float = 60):
    """``exec-server run`` of ``sh -c SCRIPT`` on two of our servers rewriting their messages with ``rewrite``:
    (its CompletedProcess, the summary's host rows)."""
    with _servers_rewriting(monkeypatch, rewrite) as urls:
        done = subprocess.run([sys.executable, "-m", "exec_server", "run", "--url", urls[0], "--url", urls[1],
                               "--", "/bin/sh", "-c", script], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    return done, done.stderr.decode().splitlines()[2:]


@pytest.mark.parametrize("rewrite", [_hide_the_exit, _drop_the_exit], ids=["hidden", "read-back"])
def test_run_on_several_hosts_names_a_missing_exit_status(monkeypatch, rewrite):
    """Closed without exited counted as 255 in the summary, with no word of why; an exit status a read
    tells is each host's status, as on one host."""
    done, rows = _run_on_two_hosts(monkeypatch, rewrite, "exit 3")
    assert done.returncode == 123, done.stderr
    if rewrite is _hide_the_exit:
        assert all(fnmatch.fnmatchcase(row, "* 255 *  the server reported the command's end without its exit status")
                   for row in rows) and len(rows) == 2, rows
    else:
        assert [row.split()[1] for row in rows] == ["3", "3"] and "exit status" not in done.stderr.decode(), rows


def _unanswered_start(text: str):
    """A server that never answers ``process/start`` (the one result with a ``sandboxType``)."""
    result = json.loads(text).get("result")
    return None if isinstance(result, dict) and "sandboxType" in result else text


@pytest.mark.parametrize("rewrite, words", [
    (_lose_the_first_chunk, "process proc-* lost output seqs 1..1 missing from the server's notifications"),
    pytest.param(_unanswered_start, "process/start: no response within 30.000 s", marks=pytest.mark.slow),
], ids=["lost-chunk", "unanswered-start"])
def test_run_on_several_hosts_words_a_lost_chunk_and_an_unanswered_start_as_one_host_does(
        monkeypatch, rewrite, words):
    """Each host's line in the summary had the Python class's name before one host's words
    (``ProcessOutputGap: process ...``, ``CallTimeout: process/start: ...``)."""
    done, rows = _run_on_two_hosts(monkeypatch, rewrite, "printf lost; sleep 0.3; printf kept", timeout=90)
    assert done.returncode == 123, done.stderr
    assert len(rows) == 2 and all(fnmatch.fnmatchcase(row, "*  " + words) for row in rows), rows
    assert all(row.split()[1] == "255" for row in rows), rows


def test_wait_reads_the_exit_of_a_closed_without_exited_dropped_past_the_limit(memory_server):
    """``wait`` waited for ``closed`` to be published, which a handle past its limit only does once a consumer
    has read the output before it: a process closed without ``exited`` (the reference now and then sends none)
    kept ``wait`` to its timeout.  It reads the exit from the server once ``closed`` arrived, one chunk at most."""
    server = memory_server()
    server.rewrite = lambda text: _drop_the_exit(text) or IGNORED
    with Client.open(server.connector, timeout=5) as client:
        process = client.start(["/bin/sh", "-c", "seq 1 300000; exit 3"], max_buffered_output=64 * 1024)
        reads = []
        call = client.call

        def counting(method, params=None, timeout=None):
            if method == "process/read":
                reads.append(params)
            return call(method, params, timeout)

        client.call = counting
        assert process.wait(timeout=10) == 3
        assert process._buffer.dropping and not process.done
        assert [params["maxBytes"] for params in reads] == [0]  # not the output not read


@pytest.mark.parametrize("hosts", [1, 2])
def test_output_lost_after_an_ending_signal_leaves_the_kills_status(tmp_path, monkeypatch, hosts):
    """After SIGTERM the output is not read: that a part of it was lost does not matter any more.  A gap met
    while run waited for the next event (one host), or reported by a host's events (several hosts), made run
    end with 255 and "lost output" instead of the kill's 137."""
    script = 'printf lost; mktemp -p "%s"; exec sleep 60' % tmp_path
    if hosts == 1:
        run = _misbehaving_run(_lose_the_first_chunk, "--", "/bin/sh", "-c", script)
        err = _signalled_once_started(run, lambda: len(list(tmp_path.iterdir())) == 1, [signal.SIGTERM])
        assert (run.returncode, err) == (137, b"")
        return
    with _servers_rewriting(monkeypatch, _lose_the_first_chunk) as urls:
        run = subprocess.Popen([sys.executable, "-m", "exec_server", "run", "--url", urls[0], "--url", urls[1],
                                "--", "/bin/sh", "-c", script],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = _signalled_once_started(run, lambda: len(list(tmp_path.iterdir())) == 2, [signal.SIGTERM])
    rows = err.decode().splitlines()[2:]
    assert run.returncode == 123 and [row.split()[1] for row in rows] == ["137", "137"], err
    assert b"lost output" not in err, err


def _slow_start(text: str):
    """A server that answers ``process/start`` (the one result with a ``sandboxType``) 3 s late."""
    result = json.loads(text).get("result")
    if isinstance(result, dict) and "sandboxType" in result:
        time.sleep(3)
    return text


@pytest.mark.parametrize("hosts", [1, 2])
def test_an_ending_signal_before_the_start_is_answered_leaves_nothing_running(tmp_path, monkeypatch, hosts):
    """run installed its handlers once the command had started: SIGTERM before that (while a start was in
    flight, or a host was still connecting) killed run on the spot, and the commands started went on until
    their sessions expired.  It ends as Ctrl-C does now: the starts are terminated, then 143 and one line."""
    from conftest import running_descendants

    marker = "61.%d" % hosts
    with _servers_rewriting(monkeypatch, _slow_start, count=hosts) as urls:
        run = subprocess.Popen([sys.executable, "-m", "exec_server", "run"]
                               + [word for url in urls for word in ("--url", url)]
                               + ["--", "/bin/sh", "-c", 'mktemp -p "%s"; exec sleep %s' % (tmp_path, marker)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = _signalled_once_started(run, lambda: len(running_descendants(os.getpid(), ["sleep", marker])) == hosts,
                                      [signal.SIGTERM])  # 0.3 s later: the start's answer comes at 3 s
        assert (run.returncode, err) == (143, b"exec-server run: ended by signal 15\n")
        wait_until(lambda: not running_descendants(os.getpid(), ["sleep", marker]), timeout=10)


def test_a_ctrl_c_while_a_host_is_still_connecting_ends_run_at_once():
    """The connects ran on a pool whose threads the interpreter joins at its exit: one Ctrl-C waited for a
    silent host's whole connect timeout (30 s here)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers the WebSocket upgrade
    server = start_ours()
    try:
        run = subprocess.Popen([sys.executable, "-m", "exec_server", "run", "--timeout", "30", "--url", server.url,
                                "--url", "ws://127.0.0.1:%d" % silent.getsockname()[1], "--", "echo", "hi"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        began = time.monotonic()  # 1.5 s: connected to one host, connecting to the other
        err = _signalled_once_started(run, lambda: time.monotonic() - began > 1.2, [signal.SIGINT], timeout=10)
    finally:
        server.stop()
        silent.close()
    assert (run.returncode, err) == (-signal.SIGINT, b"exec-server run: interrupted\n")
