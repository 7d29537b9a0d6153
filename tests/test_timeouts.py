"""One timeout vocabulary: every client wait and call past its deadline raises CallTimeout.

``CallTimeout`` is both ``subprocess.TimeoutExpired`` and ``TimeoutError``.
``Client.run(timeout=)`` covers the start, the input and the wait, and kills
the remote tree when it expires in any of them; the server to client
direction is held by a proxy to make the start or the input outlast it.
"""

import random
import socket
import subprocess
import threading
import time

import psutil
import pytest

from conftest import start_ours, wait_until
from exec_server import CallTimeout, Client, ReconnectPolicy, RpcError, ServerConfig
from faultproxy import FaultProxy

pytestmark = pytest.mark.posix

#: Two sleeps of a duration unique to the run (found by psutil, whatever the PID namespace);
#: the file named by $0 says the tree started.
DURATION = "%.4f" % (300 + random.random())
TREE = 'sleep %s & echo started > "$0"; sleep %s' % (DURATION, DURATION)


@pytest.fixture
def proxied():
    """A client talking to our server through a fault proxy; the proxy released and closed at teardown."""
    server = start_ours()
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1]))
    client = Client.connect(proxy.url)
    timers = []

    def release_after(seconds: float) -> None:
        timer = threading.Timer(seconds, proxy.hold_downstream, args=(False,))
        timers.append(timer)
        timer.start()

    yield client, proxy, release_after
    for timer in timers:
        timer.cancel()
        timer.join(5)
    client.close()
    proxy.close()
    server.stop()


def tree_processes():
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.cmdline() == ["sleep", DURATION] and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            pass
    return found


def assert_tree_gone(started_file) -> None:
    wait_until(started_file.exists)  # the tree did start
    wait_until(lambda: not tree_processes())


def expect_run_timeout(client, argv, timeout, **options) -> float:
    started = time.monotonic()
    with pytest.raises(CallTimeout) as caught:
        client.run(argv, timeout=timeout, **options)
    assert isinstance(caught.value, subprocess.TimeoutExpired) and isinstance(caught.value, TimeoutError)
    assert (caught.value.cmd, caught.value.timeout) == (argv, timeout)
    return time.monotonic() - started


def test_run_timeout_in_start(proxied, tmp_path):
    client, proxy, release_after = proxied
    proxy.hold_downstream(True)  # the start answer comes after the deadline
    release_after(1.0)
    elapsed = expect_run_timeout(client, ["sh", "-c", TREE, str(tmp_path / "pid")], 0.3)
    assert 0.9 < elapsed < 8
    assert_tree_gone(tmp_path / "pid")


def test_run_on_a_silent_server_ends_within_one_grace(proxied, tmp_path, monkeypatch):
    """No answer at all: the start's wait and the terminate share one KILL_GRACE past the timeout (the
    terminate is sent even when no grace is left, so the tree still ends)."""
    from exec_server.client import oneshot
    monkeypatch.setattr(oneshot, "KILL_GRACE", 3.0)
    client, proxy, _release_after = proxied
    proxy.hold_downstream(True)  # nothing comes back, ever
    elapsed = expect_run_timeout(client, ["sh", "-c", TREE, str(tmp_path / "pid")], 1.0)
    assert 3.9 < elapsed < 6.0  # timeout + KILL_GRACE (it was timeout + 2 x KILL_GRACE)
    assert_tree_gone(tmp_path / "pid")


def test_run_whose_start_is_answered_in_the_grace_then_silence_ends_within_that_grace(proxied, tmp_path,
                                                                                      monkeypatch):
    """The kill after a late start answer uses what is left of the same grace, not a new one."""
    from exec_server.client import oneshot
    monkeypatch.setattr(oneshot, "KILL_GRACE", 5.0)
    client, proxy, release_after = proxied
    proxy.hold_downstream(True)
    proxy.hold_downstream_after(b'"sandboxType"')  # the start answer comes at 4.5 s, then nothing
    release_after(4.5)
    elapsed = expect_run_timeout(client, ["sh", "-c", TREE, str(tmp_path / "pid")], 1.0)
    assert 4.4 < elapsed < 7.5  # timeout + KILL_GRACE = 6 s (a fresh grace for the kill made it 9.5 s)
    assert_tree_gone(tmp_path / "pid")


def test_connect_to_a_server_that_never_answers_initialize_ends_at_the_timeout(monkeypatch):
    """The silent server is left without a closing handshake: no CLOSE_WAIT on top of ``timeout``."""
    from exec_server.client import websocket
    monkeypatch.setattr(websocket, "CLOSE_WAIT", 30.0)  # a wait for the server's Close frame would show
    server = start_ours()
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1]))
    try:
        proxy.blackhole_after(b"HTTP/1.1 101")  # the upgrade passes (reason phrases vary), then nothing
        started = time.monotonic()
        with pytest.raises(CallTimeout, match="initialize"):
            # no probe and no keepalive either: only the abort can end the close before CLOSE_WAIT
            Client.connect(proxy.url, timeout=1.0,
                           reconnect=ReconnectPolicy(probe_timeout=0, ping_interval=0, keepalive_timeout=0))
        assert 0.9 < time.monotonic() - started < 5.0
    finally:
        proxy.close()
        server.stop()


def test_run_timeout_as_in_the_issue(server):
    with Client.connect(server.url) as client:
        expect_run_timeout(client, ["sleep", "7"], 0.002)
        # nothing of ours is left running (the autouse fixture checks it too)
        import psutil
        wait_until(lambda: not [p for p in psutil.Process().children(recursive=True) if p.is_running()
                                and p.status() != psutil.STATUS_ZOMBIE and p.cmdline() == ["sleep", "7"]])


def test_run_timeout_in_input(proxied, tmp_path):
    client, proxy, release_after = proxied
    proxy.hold_downstream_after(b'"sandboxType"')  # the start answer passes; the write's is held
    release_after(1.5)
    elapsed = expect_run_timeout(client, ["sh", "-c", TREE, str(tmp_path / "pid")], 0.5, input=b"data")
    assert 0.4 < elapsed < 8
    assert_tree_gone(tmp_path / "pid")


def test_run_timeout_in_wait(server, tmp_path):
    with Client.connect(server.url) as client:
        elapsed = expect_run_timeout(client, ["sh", "-c", TREE, str(tmp_path / "pid")], 0.5)
        assert elapsed < 8
        assert_tree_gone(tmp_path / "pid")


def test_every_wait_and_call_raises_call_timeout(proxied):
    client, proxy, _release_after = proxied
    process = client.start(["sleep", "30"])
    with process:
        for wait in (process.wait, process.communicate, process.next_event):
            with pytest.raises(subprocess.TimeoutExpired) as caught:
                wait(timeout=0.05)
            assert isinstance(caught.value, TimeoutError) and caught.value.cmd == ["sleep", "30"]
            assert caught.value.timeout == 0.05 and "after 0.05 seconds" in str(caught.value)  # what was given
        with pytest.raises(CallTimeout) as caught:
            process.read(process.last_seq, wait=5.0, timeout=0.1)
        assert caught.value.cmd == "process/read" and str(caught.value) == "process/read: no response within 0.100 s"
        proxy.hold_downstream(True)
        with pytest.raises(TimeoutError):
            client.call("environment/status", {}, timeout=0.1)
        proxy.hold_downstream(False)


def test_read_takes_seconds_and_wait_ms_is_deprecated(server):
    with Client.connect(server.url) as client:
        process = client.start(["sleep", "30"])
        with process:
            started = time.monotonic()
            assert process.read(0, wait=0.3)["nextSeq"] == 1
            assert 0.25 < time.monotonic() - started < 5
            with pytest.warns(DeprecationWarning, match="wait_ms"):
                assert process.read(0, wait_ms=10)["nextSeq"] == 1


def test_remote_process_context_manager_kills_what_runs(server, tmp_path):
    with Client.connect(server.url) as client:
        with client.start(["sh", "-c", TREE, str(tmp_path / "pid")]) as process:
            wait_until(lambda: (tmp_path / "pid").exists() and len(tree_processes()) == 2)
        assert process.returncode == 137  # SIGKILL, the whole tree
        assert_tree_gone(tmp_path / "pid")
        with client.start(["sh", "-c", "exit 3"]) as process:
            assert process.wait(timeout=10) == 3
        assert process.returncode == 3


def test_an_infinite_timeout_waits_without_limit_and_nan_is_refused(server):
    """inf (or 1e300) was a raw OverflowError from threading or the socket, NaN timed out at once."""
    import math

    with Client.connect(server.url, timeout=math.inf) as client:
        assert client.run(["echo", "ok"], timeout=math.inf).stdout == b"ok\n"
        assert client.start(["true"]).wait(timeout=1e300) == 0
        assert client.fs.get_metadata("/")["isDirectory"]
        with pytest.raises(ValueError, match="^timeout must be a number of seconds, not NaN$"):
            client.run(["true"], timeout=math.nan)
    with pytest.raises(ValueError, match="^timeout must be a number of seconds, not NaN$"):
        Client.connect(server.url, timeout=math.nan)
    for value in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="^deadline must be a finite number of seconds, 0 or more$"):
            ReconnectPolicy(deadline=value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_server_duration_must_be_finite(value):
    with pytest.raises(ValueError, match="^detached_session_ttl must be a finite number of seconds, 0 or more$"):
        ServerConfig(detached_session_ttl=value)


NOT_NEGATIVE = "must be a finite number of seconds, 0 or more"
OVER_0 = "must be a finite number of seconds, over 0"


@pytest.mark.parametrize("make, message", [
    (lambda: ServerConfig(detached_session_ttl=-1.0), "detached_session_ttl " + NOT_NEGATIVE),
    (lambda: ServerConfig(tls_handshake_timeout=0.0), "tls_handshake_timeout " + OVER_0),
    (lambda: ServerConfig(shutdown_timeout=float("inf")), "shutdown_timeout " + OVER_0),
    (lambda: ReconnectPolicy(connect_timeout=0.0), "connect_timeout " + OVER_0),
    (lambda: ReconnectPolicy(probe_timeout=-0.5), "probe_timeout " + NOT_NEGATIVE),
    # past what the OS timers hold: a socket timeout of 1e10 s failed every connection with a traceback
    (lambda: ServerConfig(upgrade_timeout=1e10), "upgrade_timeout must be at most 1000000000 seconds"),
    (lambda: ReconnectPolicy(keepalive_timeout=2e9), "keepalive_timeout must be at most 1000000000 seconds"),
])
def test_every_duration_setting_is_checked_by_one_rule(make, message):
    with pytest.raises(ValueError, match="^%s$" % message):
        make()


@pytest.mark.parametrize("dead_after", [1.1e6, 1e9])
def test_a_long_keepalive_timeout_still_connects(dead_after):
    """TCP_USER_TIMEOUT is a C int of milliseconds: 1.1e6 s overflowed it, and setsockopt's TypeError failed every
    upgrade (a 500) and every client connect; the options are clamped to what the kernel takes."""
    from exec_server.common.keepalive import tune_socket

    with socket.socket() as sock:
        tune_socket(sock, dead_after)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2 ** 31 - 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 32767


def test_a_start_sent_again_after_a_drop_times_out_naming_the_time_given():
    """Sent again on the recovered connection, it timed out with what was left ("no response within
    20.507 s" after 30 s had passed)."""
    from exec_server.client.recovery import RequestOutcomeUnknown, start_once

    attempts = []

    def call(method, params, timeout):
        attempts.append(timeout)
        if len(attempts) == 1:
            time.sleep(0.2)
            raise RequestOutcomeUnknown("process/start: the connection dropped before the answer")
        raise CallTimeout(method, timeout)

    with pytest.raises(CallTimeout) as caught:
        start_once(call, {"processId": "p"}, 30.0)
    assert len(attempts) == 2 and attempts[1] < 30.0
    assert (caught.value.timeout, str(caught.value)) == (30.0, "process/start: no response within 30.000 s")


def test_run_without_a_timeout_names_the_start_timeout_it_met(memory_server, monkeypatch):
    """run(timeout=None) during a long outage raised "timed out after None seconds" (after a hidden 30 s)."""
    from exec_server.client import oneshot

    monkeypatch.setattr(oneshot, "START_TIMEOUT", 0.5)
    monkeypatch.setattr(oneshot, "KILL_GRACE", 0.5)
    server = memory_server()
    policy = ReconnectPolicy(deadline=30.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=1.0)
    with Client.open(server.connector, timeout=5, reconnect=policy) as client:
        server.refusing = True
        server.cut()
        wait_until(lambda: client.state == "recovering", timeout=10)
        with pytest.raises(CallTimeout) as caught:
            client.run(["echo", "hi"], timeout=None)
        assert str(caught.value) == "process/start: no response within 0.500 s"
        server.refusing = False
        wait_until(lambda: client.state == "connected", timeout=10)
        assert client.run(["echo", "hi"], timeout=None).stdout == b"hi\n"


def test_a_start_that_raises_leaves_no_process_running(proxied, tmp_path):
    """A negative or NaN timeout made start send its request and then raise CallTimeout (its deadline had
    passed), and a start that timed out forgot its handle: either way the process ran on, out of reach of
    the caller and of close(), until the session expired (80 s after the script ended).  Now the start that
    raised has sent process/terminate for it, and waited for its answer (UNKNOWN_START_KILL_WAIT, 5 s)."""
    client, proxy, release_after = proxied
    argv = ["sh", "-c", TREE, str(tmp_path / "pid")]
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="^timeout must"):
            client.start(argv, timeout=bad)
    with pytest.raises(CallTimeout):
        client.start(argv, timeout=0)  # a poll: sent, not waited for
    proxy.hold_downstream(True)  # the answer of the next one comes after its timeout
    release_after(1.0)
    with pytest.raises(CallTimeout):
        client.start(argv, timeout=0.3)
    time.sleep(1.5)  # the trees would have started by now
    wait_until(lambda: not tree_processes(), timeout=5)  # was: three trees of two sleeps each
    assert not client._endpoint._processes  # no handle kept
    assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\n"


def test_a_start_that_times_out_in_a_recovery_terminates_what_it_started_once_recovered(proxied, tmp_path):
    """A start whose connection dropped, sent again and timed out while the client recovered: its terminate waits
    for the recovery (UNKNOWN_START_KILL_WAIT, 5 s, at most), so the process it had started is killed."""
    from exec_server.client.control import UNKNOWN_START_KILL_WAIT

    assert UNKNOWN_START_KILL_WAIT == 5.0
    client, proxy, _ = proxied
    proxy.hold_downstream(True)  # the start reaches the server (the tree starts); its answer does not come back

    def drop_then_recover() -> None:
        time.sleep(0.5)
        proxy.refuse(True)
        proxy.cut()
        proxy.hold_downstream(False)
        time.sleep(1.5)
        proxy.refuse(False)

    dropping = threading.Thread(target=drop_then_recover)
    dropping.start()
    try:
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            client.start(["sh", "-c", TREE, str(tmp_path / "pid")], timeout=1.0)
        assert time.monotonic() - started < 1.0 + UNKNOWN_START_KILL_WAIT + 2.0
        assert (tmp_path / "pid").exists()  # it did start
        wait_until(lambda: not tree_processes(), timeout=10)  # was: running until close() or the session's end
    finally:
        dropping.join(10)
        proxy.refuse(False)
    assert not client._endpoint._processes
    assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\n"


def test_a_caller_id_stays_taken_by_its_closed_handle(proxied):
    """A handle of the caller's own process id stays its client's after ``closed`` (as before handles of the
    client's own ids were released): a second start of that id is refused by the client, and the old handle's
    terminate can never reach a later process of that id."""
    client, _, _ = proxied
    old = client.start(["true"], process_id="job")
    assert old.wait(timeout=10) == 0
    with pytest.raises(ValueError, match="already used by this client"):
        client.start(["sleep", "30"], process_id="job")
    assert old.terminate(timeout=10) is False
    client.forget(old)
    new = client.start(["echo", "again"], process_id="job-2")
    assert new.communicate(timeout=10) == (b"again\n", b"")


def test_forget_takes_a_handle_or_its_process_id(proxied):
    """``forget("job")`` frees the caller's id as ``forget(handle)`` does (it raised AttributeError); the next
    start of that id goes to the server, which still retains the closed one; anything else is a TypeError."""
    client, _, _ = proxied
    old = client.start(["true"], process_id="job")
    assert old.wait(timeout=10) == 0
    with pytest.raises(TypeError, match="a RemoteProcess or its process id, not int"):
        client.forget(1)
    client.forget("job")
    with pytest.raises(RpcError, match="process job already exists"):
        client.start(["true"], process_id="job")


def test_a_start_whose_terminate_is_lost_in_a_drop_sends_it_again_once_recovered(proxied, tmp_path):
    """The start reaches the server, then its connection goes silent both ways: the start times out, its
    terminate goes into the dead connection, which the probe then ends (RequestOutcomeUnknown).  The start
    returned then and the tree ran on; now the terminate is sent again on the recovered connection."""
    client, proxy, _ = proxied
    proxy.hold_downstream(True)  # the start's answer is held, then lost with the connection

    def silence() -> None:
        time.sleep(0.5)
        proxy.blackhole()
        proxy.hold_downstream(False)

    silencing = threading.Thread(target=silence)
    silencing.start()
    try:
        with pytest.raises(CallTimeout):
            client.start(["sh", "-c", TREE, str(tmp_path / "pid")], timeout=1.0)
    finally:
        silencing.join(10)
    assert_tree_gone(tmp_path / "pid")  # was: running on, the client recovered
    assert not client._endpoint._processes


def test_wait_returns_after_a_catch_up_that_filled_the_buffer(proxied):
    """Output written while the client was away, more than ``max_buffered_output``: the catch-up's reads (with a
    budget, so each one's ``nextSeq`` follows its last chunk) stop at the buffer's limit before the one that
    reaches the exit's seq, so no ``exited`` was published and ``wait`` hung until its timeout (only a consumer's
    read refills).  A read's ``exited`` state gives the exit code at once, as a live ``exited`` past the limit
    does; the output is all there for a consumer."""
    client, proxy, _ = proxied
    lines = b"".join(b"line-%d\n" % number for number in range(1, 31))
    script = "sleep 1; for i in $(seq 30); do echo line-$i; sleep 0.01; done; exit 3"  # 30 chunks
    process = client.start(["sh", "-c", script], max_buffered_output=200)
    proxy.refuse(True)
    proxy.cut()
    time.sleep(2.5)  # it has written and exited meanwhile
    proxy.refuse(False)
    wait_until(lambda: client.state == "connected", timeout=15)
    assert process.wait(timeout=10) == 3  # was: CallTimeout
    assert process.communicate(timeout=10) == (lines, b"")


def test_a_run_whose_start_failed_sends_its_terminate_again_after_a_drop():
    """A run interrupted in its start terminates what it may have started; that terminate, lost in a drop
    (RequestOutcomeUnknown), was given up where Client.start's own is sent again once recovered: now both
    are, within the run's grace."""
    from exec_server.client import oneshot
    from exec_server.client.recovery import RequestOutcomeUnknown

    sent = []

    class StartInterrupted:
        server_platform = "linux"

        def supports(self, name):
            return True

        def start(self, command, timeout, process_id, **options):
            raise KeyboardInterrupt  # ^C while the start was in flight

        def call(self, method, params, timeout):
            sent.append((method, params["processId"], timeout))
            if len(sent) == 1:
                raise RequestOutcomeUnknown("process/terminate: the connection dropped before the answer")
            return {}

    with pytest.raises(KeyboardInterrupt):
        oneshot.run(StartInterrupted(), ["true"], None, 5.0, False, True, None, None, None, None, {})
    assert [method for method, _, _ in sent] == ["process/terminate"] * 2
    assert sent[0][1] == sent[1][1] and sent[0][1].startswith("proc-")
    assert all(0 < timeout <= 5.0 + oneshot.KILL_GRACE for _, _, timeout in sent)  # within the run's one grace
