"""Group: several local servers on loopback ports driven at once, each host's outcome its own."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from urllib.parse import urlsplit

import psutil
import pytest

from conftest import all_gone, running_descendants, start_ours, wait_until
from exec_server import (CallTimeout, Client, ClosedEvent, ExecServerDisconnected, ExitedEvent, Group, GroupError,
                         OutputEvent, ReconnectPolicy)
from exec_server.client.group import DEFAULT_MAX_WORKERS
from exec_server.client.group_fs import host_dirname, host_dirnames
from exec_server.server.auth import CapabilityToken
from faultproxy import FaultProxy

pytestmark = pytest.mark.posix

FAST = ReconnectPolicy(deadline=2.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=1.0)
LINES = 30
NUMBERED = ["/bin/sh", "-c", 'i=1; while [ $i -le %d ]; do echo line$i; i=$((i+1)); sleep 0.05; done' % LINES]
EXPECTED = b"".join(b"line%d\n" % i for i in range(1, LINES + 1))


@pytest.fixture
def servers():
    """``servers(n)`` -> n of our servers on loopback ports; all stopped at teardown."""
    started = []

    def factory(count):
        more = [start_ours() for _ in range(count)]
        started.extend(more)
        return more

    yield factory
    for running in started:
        running.stop()


def refusing_proxy() -> FaultProxy:
    """A loopback port that refuses every connection (close it afterwards)."""
    proxy = FaultProxy(1)
    proxy.refuse(True)
    return proxy


@pytest.fixture
def server_process(tmp_path):
    """An exec-server child process (so it can be SIGKILLed); killed by PID at teardown with its children."""
    log = open(str(tmp_path / "server.log"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    url = process.stdout.readline().decode().strip()
    assert url.startswith("ws://"), url
    yield process, url
    if process.poll() is None:
        process.kill()
    process.wait(10)
    process.stdout.close()
    log.close()


def test_every_host_output_arrives_once_with_its_tag(servers):
    urls = [s.url for s in servers(4)]
    with Group(urls) as group:
        with group.start(NUMBERED) as running:
            seen = {url: [] for url in urls}
            for tagged in running.events(timeout=30):
                assert tagged.error is None, tagged
                seen[tagged.host].append(tagged.event)
        for url in urls:
            events = seen[url]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))  # each once, in order
            assert b"".join(e.data for e in events if isinstance(e, OutputEvent)) == EXPECTED
            assert isinstance(events[-2], ExitedEvent) and events[-2].exit_code == 0
            assert isinstance(events[-1], ClosedEvent)
        result = group.run(["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=30)
        assert list(result) == urls
        assert all((done.returncode, done.stdout, done.stderr) == (4, b"out\n", b"err\n")
                   for done in result.values())
        assert set(result.failed) == set(urls) and not result.ok


def test_refused_killed_and_cut_hosts_each_get_their_own_outcome(servers, server_process):
    """One host refuses connections, one's server is SIGKILLed mid-run, one's link is cut and restored."""
    healthy = servers(2)
    cut_proxy = FaultProxy(urlsplit(healthy[1].url).port)
    refusing = refusing_proxy()
    killed_process, killed_url = server_process
    hosts = {"ok": healthy[0].url, "cut": cut_proxy.url, "refused": refusing.url, "killed": killed_url}
    cuts = 0
    orphans = []
    try:
        with Group(hosts, reconnect=FAST, timeout=5) as group:
            assert set(group.errors) == {"refused"} and isinstance(group.errors["refused"], ExecServerDisconnected)
            with group.start(NUMBERED) as running:
                output = {host: b"" for host in hosts}
                outcome = {}
                for tagged in running.events(timeout=60):
                    if tagged.error is not None:
                        outcome[tagged.host] = tagged.error
                        continue
                    event = tagged.event
                    if isinstance(event, OutputEvent):
                        output[tagged.host] += event.data
                        if tagged.host == "killed" and killed_process.poll() is None:
                            orphans = psutil.Process(killed_process.pid).children(recursive=True)
                            killed_process.send_signal(signal.SIGKILL)
                        if tagged.host == "cut" and cuts < 2 and output["cut"].count(b"\n") >= 5 * (cuts + 1):
                            cut_proxy.cut()
                            cuts += 1
                    elif isinstance(event, ExitedEvent):
                        outcome[tagged.host] = event.exit_code
            assert cuts == 2
            assert outcome["ok"] == 0 and output["ok"] == EXPECTED
            assert outcome["cut"] == 0 and output["cut"] == EXPECTED  # every line exactly once after two cuts
            assert isinstance(outcome["refused"], ExecServerDisconnected) and output["refused"] == b""
            assert isinstance(outcome["killed"], ExecServerDisconnected)
            assert EXPECTED.startswith(output["killed"]) and output["killed"] != EXPECTED
            assert group["ok"].state == "connected" and group["killed"].state == "failed"
    finally:
        cut_proxy.close()
        refusing.close()
        for orphan in orphans:  # the killed server's command, started by this test: end it by PID
            try:
                orphan.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(orphans, timeout=5)


def test_concurrency_bound_holds(servers, tmp_path):
    """Six hosts, max_workers=2: never more than two commands run at once, and two do."""
    running_dir = tmp_path / "running"
    running_dir.mkdir()
    counts = tmp_path / "counts"
    # a marker file per running command (not named after $$: each command may have PID 2 in its own namespace)
    script = 'f=$(mktemp "$0/run.XXXXXX"); ls "$0" | wc -l >> "$1"; sleep 0.4; rm "$f"'
    with Group([s.url for s in servers(6)], max_workers=2) as group:
        result = group.run(["sh", "-c", script, str(running_dir), str(counts)], timeout=30)
    assert all(done.returncode == 0 for done in result.values()), result
    seen = [int(line) for line in counts.read_text().split()]
    assert len(seen) == 6 and max(seen) == 2


def test_check_timeout_and_results_of_failures(servers):
    refusing = refusing_proxy()
    try:
        urls = [s.url for s in servers(2)]
        with Group(urls + [refusing.url]) as group:
            with pytest.raises(GroupError) as raised:
                group.run(["true"], check=True, timeout=30)
            result = raised.value.result
            assert isinstance(result[refusing.url], ExecServerDisconnected)
            assert all(result[url].returncode == 0 for url in urls) and list(result.failed) == [refusing.url]
            assert "1 of 3 hosts failed" in str(raised.value)
            slow = group.run(["sh", "-c", "echo $$; sleep 30"], timeout=0.5)
            assert all(isinstance(slow[url], subprocess.TimeoutExpired) for url in urls)
            assert slow.durations[refusing.url] == 0.0 and all(slow.durations[url] < 10 for url in urls)
    finally:
        refusing.close()


def test_pairs_clients_and_close(servers):
    plain = servers(1)[0]
    secured = start_ours(auth=CapabilityToken.from_token("group-secret"))
    try:
        own = Client.connect(plain.url)
        with Group({"with-token": (secured.url, "group-secret"), "without": secured.url, "mine": own}) as group:
            assert group.hosts == ["with-token", "without", "mine"]
            assert set(group.clients) == {"with-token", "mine"}
            assert "401" in str(group.errors["without"])
            result = group.run(["echo", "hi"], timeout=30)
            assert result["with-token"].stdout == b"hi\n" and result["mine"].stdout == b"hi\n"
            assert isinstance(result["without"], ExecServerDisconnected)
            clients = list(group.clients.values())
        assert all(client.state == "closed" for client in clients)  # the group owned them
        with pytest.raises(ExecServerDisconnected):
            group.run(["true"])
        with Group([(secured.url, "group-secret"), plain.url]) as group:
            assert group.hosts == [secured.url, plain.url] and not group.errors
    finally:
        secured.stop()
    with pytest.raises(ValueError):
        Group([])
    with pytest.raises(ValueError):
        Group([plain.url, plain.url])
    with pytest.raises(ValueError):
        Group([plain.url], max_workers=0)
    assert DEFAULT_MAX_WORKERS == 32


def test_fs_put_everywhere_and_get_from_each(servers, tmp_path):
    urls = [s.url for s in servers(3)]
    payload = os.urandom((1 << 20) * 2 + 123)  # three blocks
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    remote = tmp_path / "remote" / "payload.bin"
    with Group(urls) as group:
        assert list(group.fs.create_directory(remote.parent).values()) == [None] * 3
        put = group.fs.put(str(local), remote)
        assert put.ok and list(put.values()) == [len(payload)] * 3
        assert remote.read_bytes() == payload
        got = group.fs.get(remote, tmp_path / "downloads")
        assert got.ok
        for url in urls:
            path = tmp_path / "downloads" / host_dirname(url) / "payload.bin"
            assert got[url] == str(path) and path.read_bytes() == payload
        assert sorted(os.listdir(tmp_path / "downloads")) == sorted(host_dirname(url) for url in urls)
        missing = group.fs.read_file(tmp_path / "absent")
        assert len(missing.failed) == 3
    assert host_dirname("ws://[::1]:8765") == "___1__8765" and host_dirname("ws://10.0.0.5:8765") == "10.0.0.5_8765"


def test_events_nobody_takes_are_bounded_and_come_later_whole(servers, monkeypatch):
    from exec_server.client import group_events

    urls = [s.url for s in servers(2)]
    numbers = ["/bin/sh", "-c", "seq 1 400000"]  # ~2.7 MB each, in many small chunks
    expected = b"".join(b"%d\n" % i for i in range(1, 400_001))
    monkeypatch.setattr(group_events, "MAX_QUEUED_BYTES", 256 * 1024)
    with Group(urls) as group:
        with group.start(numbers, max_buffered_output=128 * 1024) as running:
            assert all(code == 0 for code in running.wait(timeout=30).values())
            time.sleep(0.5)  # everything has arrived; nobody took an event
            queued = sum(len(item.event.data) for item in list(running._queue.queue)
                         if getattr(item, "event", None) is not None and isinstance(item.event, OutputEvent))
            assert queued <= 256 * 1024 + 64 * 1024  # was every event of both hosts (~5.4 MB)
            assert all(process._buffer.buffered <= 128 * 1024 for process in running.processes.values())
            seen = {url: [] for url in urls}
            for tagged in running.events(timeout=60):
                assert tagged.error is None, tagged
                seen[tagged.host].append(tagged.event)
    for url in urls:
        assert b"".join(e.data for e in seen[url] if isinstance(e, OutputEvent)) == expected
        assert isinstance(seen[url][-1], ClosedEvent)


def test_leaving_a_start_block_or_closing_the_group_ends_what_still_runs(servers):
    urls = [s.url for s in servers(2)]
    with Group(urls) as group:
        with pytest.raises(CallTimeout) as caught:  # as every wait of the client: also a TimeoutError
            with group.start(["sleep", "307"]) as running:
                sleepers = wait_until(lambda: len(running_descendants(os.getpid(), ["sleep", "307"])) == 2
                                      and running_descendants(os.getpid(), ["sleep", "307"]), timeout=20)
                for _ in running.events(timeout=0.3):  # the README's shape: a timeout leaves the block
                    pass
        assert isinstance(caught.value, TimeoutError) and caught.value.timeout == 0.3
        wait_until(lambda: all_gone(sleepers), timeout=15)  # were left for the session's 80 s
        assert [process.returncode for process in running.processes.values()] == [137, 137]
        assert all(not group[url]._endpoint._processes for url in urls)  # forgotten

        running = group.start(["sleep", "308"])
        sleepers = wait_until(lambda: len(running_descendants(os.getpid(), ["sleep", "308"])) == 2
                              and running_descendants(os.getpid(), ["sleep", "308"]), timeout=20)
        running.close()  # stops the pumps only
        time.sleep(0.3)
        assert not any(all_gone([p]) for p in sleepers)
    wait_until(lambda: all_gone(sleepers), timeout=15)  # the group's clients terminated them


def test_fs_get_keeps_hosts_of_one_directory_name_apart(servers, tmp_path):
    urls = [s.url for s in servers(2)]
    source = tmp_path / "app.log"
    source.write_bytes(b"log\n")
    with Group({"web 1": urls[0], "web_1": urls[1], "Web_1": urls[0] + "/?x"}) as group:
        got = group.fs.get(source, tmp_path / "logs")
    assert got.ok and len(set(got.values())) == 3  # all three wrote ./logs/web_1/app.log
    for host, path in got.items():
        assert path == str(tmp_path / "logs" / host_dirnames(group.hosts)[host] / "app.log")
        with open(path, "rb") as downloaded:
            assert downloaded.read() == b"log\n"
    names = host_dirnames(["web 1", "web_1", "Web_1", "ws://a:1/p", "ws://a:1/q", "solo"])
    assert names["solo"] == "solo" and names == host_dirnames(["web 1", "web_1", "Web_1", "ws://a:1/p", "ws://a:1/q",
                                                               "solo"])  # the same directories run after run
    assert len({name.casefold() for name in names.values()}) == 6
    assert all(re.fullmatch(r"(web_1|Web_1|a_1)_[0-9a-f]{8}", name) for host, name in names.items() if host != "solo")


def test_a_timeout_that_is_no_number_of_seconds_is_raised_once_before_anything_runs(servers, tmp_path):
    urls = [s.url for s in servers(2)]
    with Group(urls) as group:
        for bad in (float("nan"), -1.0):
            with pytest.raises(ValueError, match="timeout"):
                group.run(["touch", str(tmp_path / "ran")], timeout=bad)
        assert not (tmp_path / "ran").exists()  # was: each host's result a ValueError (after it connected)


def test_interrupt_reaches_every_host_at_once_though_one_host_does_not_answer(servers):
    """send_interrupt (Ctrl-C of ``exec-server run``) went host by host: a first host whose call does not return
    (an unreachable one waits for the drop's detection, up to 30 s) held the others back until it did."""
    hosts = dict(zip(("silent", "a", "b"), (running.url for running in servers(3))))
    answer = threading.Event()
    with Group(hosts, timeout=5) as group:
        with group.start(["sleep", "30"]) as running:
            silent = running.processes["silent"]
            real = silent.send_interrupt
            silent.send_interrupt = lambda: answer.wait(20) and real()  # its call waits until told to answer
            signaller = threading.Thread(target=running.send_interrupt, daemon=True)
            signaller.start()
            try:
                for host in ("a", "b"):  # reached while the first host's call still waits, not after it
                    assert running.processes[host].wait(timeout=20) in (130, -signal.SIGINT)
                assert signaller.is_alive()
            finally:
                answer.set()
            signaller.join(20)
            assert silent.wait(timeout=20) in (130, -signal.SIGINT)


def test_a_script_that_never_closes_its_group_still_exits(servers, tmp_path):
    """The event pumps of ``Group.start`` were a ThreadPoolExecutor's: the interpreter's exit joins those, so a
    script whose last line started a long command (no ``with``, no ``close``) hung until it ended."""
    url = servers(1)[0].url
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from exec_server import Group\n"
              "running = Group([%r]).start(['sleep', '309'])\n"
              "print('started', flush=True)\n") % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), url)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=20)  # was: still running (sleep 309)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
    assert (child.returncode, out) == (0, b"started\n"), err


def test_two_threads_taking_the_events_both_end_when_every_host_closed(servers):
    """A second consumer blocked in the queue when the first took the last pump's word waited for its
    timeout (forever without one)."""
    urls = [s.url for s in servers(2)]
    with Group(urls) as group:
        with group.start(NUMBERED) as running:
            taken, ended = [], []

            def consume() -> None:
                for tagged in running.events(timeout=30):
                    taken.append(tagged)
                ended.append(time.monotonic())

            consumers = [threading.Thread(target=consume) for _ in range(2)]
            for consumer in consumers:
                consumer.start()
            for consumer in consumers:
                consumer.join(40)
            assert len(ended) == 2 and max(ended) - min(ended) < 5.0  # was: the second after its 30 s
            assert sorted(t.host for t in taken if isinstance(t.event, ClosedEvent)) == sorted(urls)
            for url in urls:
                output = sorted((t.event for t in taken if t.host == url and isinstance(t.event, OutputEvent)),
                                key=lambda event: event.seq)
                assert b"".join(event.data for event in output) == EXPECTED  # each event once, to one of them
            assert list(running.events(timeout=1)) == []  # a later call ends at once too


def test_closing_the_events_waits_pump_stop_wait_at_most_for_a_held_pump(monkeypatch):
    """A pump held in its process's next_event (a catch-up read after a reconnect) no longer holds close()
    (PUMP_STOP_WAIT, 5 s by default): it is a daemon thread, left to end by itself."""
    from exec_server.client import group_events

    assert group_events.PUMP_STOP_WAIT == 5.0
    monkeypatch.setattr(group_events, "PUMP_STOP_WAIT", 0.5)
    release = threading.Event()

    class Held:
        done = True

        def next_event(self, timeout=None):
            release.wait(30)  # past its timeout
            return None

    running = group_events.GroupProcesses(["true"], ["h"], {"h": Held()}, {}, {})
    try:
        started = time.monotonic()
        running.close()
        assert 0.4 <= time.monotonic() - started < 3.0
        assert [t for t in threading.enumerate() if t.name.startswith("exec-server-group-events")]
    finally:
        release.set()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("exec-server-group-events")],
               timeout=5)


def test_a_group_does_not_keep_the_output_of_every_start_its_caller_dropped(servers):
    """A Group kept each GroupProcesses its start made until it closed unless a consumer drained its events: a
    long-lived script that started and waited (as with Popen) held all of their output (10 runs of 1 MB: 10 MB),
    and ``finished`` stayed False though every pump had ended."""
    import gc
    import weakref

    url = servers(1)[0].url
    with Group([url]) as group:
        dropped = []
        for _ in range(5):
            running = group.start(["head", "-c", "1000000", "/dev/zero"])
            assert running.wait(timeout=30) == {url: 0}
            wait_until(lambda: running.finished, timeout=10)  # was: False until events() took every event
            dropped.append(weakref.ref(running))
        held = group.start(["sh", "-c", "echo kept"])
        running = held
        gc.collect()
        assert all(ref() is None for ref in dropped)  # was: all five, with their 5 MB of queued output
        assert [tagged.event.data for tagged in held.events(timeout=10)
                if isinstance(tagged.event, OutputEvent)] == [b"kept\n"]  # one still held keeps its events


def test_a_lone_string_or_path_is_the_program_alone_on_every_host(servers, tmp_path):
    urls = [s.url for s in servers(2)]
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\necho ran \"$#\"\n")
    script.chmod(0o755)
    with Group(urls) as group:
        for argv in (str(script), script):
            result = group.run(argv, timeout=30)
            assert [result[url].stdout for url in urls] == [b"ran 0\n"] * 2  # was: a program named "/"
            assert result[urls[0]].args == [str(script)]
        with group.start(str(script)) as running:
            assert running.errors == {} and running.args == [str(script)]
            assert dict(running.wait(timeout=30)) == {url: 0 for url in urls}
        for bad, error in (([], ValueError), ([None], TypeError), ([b"\xff"], TypeError)):
            with pytest.raises(error):
                group.run(bad)
            with pytest.raises(error):
                group.start(bad)


def test_a_groups_own_argument_mistakes_are_raised_once_not_as_each_hosts_error(servers):
    url = servers(1)[0].url
    for kwargs, error in ((dict(timeout=float("nan")), ValueError), (dict(timeout=-1), ValueError),
                          (dict(max_workers=1.5), TypeError), (dict(max_workers=0), ValueError)):
        with pytest.raises(error):
            Group([url], **kwargs)
    for hosts in ([None], [5], [(5, "token")], {"a": None}, [()]):
        with pytest.raises((TypeError, ValueError)):
            Group(hosts)


def test_the_readers_of_a_client_left_open_end_before_the_interpreter_finalizes(servers):
    """A script ending with its client open left the reader threads reading while the interpreter finalized:
    the connection was torn down under them and a reader's error, printed then, aborted the process (SIGABRT,
    CI met it with a Group).  At exit the client's transports are closed and their readers end first."""
    url = servers(1)[0].url
    script = textwrap.dedent("""
        import atexit, sys, threading
        sys.path.insert(0, %r)
        # registered first, so run last: what is still running once the client's own exit handler has run
        atexit.register(lambda: sys.stderr.write("left: %%r\\n" %% sorted(
            t.name for t in threading.enumerate() if t.name.startswith("exec-server-client-reader"))))
        from exec_server import Client
        client = Client.connect(%r, timeout=10)
        process = client.start(["sleep", "308"])
        print("started", flush=True)
    """) % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), url)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
    assert (child.returncode, out, err) == (0, b"started\n", b"left: []\n")
