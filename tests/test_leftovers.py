"""inherit mode: a background job outlives its command, not its session, also once the command is forgotten.

A command that leaves a job behind (``sh -c "daemon & exit"``) closes; after
``closed_process_retention`` its entry is forgotten (its id unknown).  The
job must still die when the session ends (expiry, eviction, shutdown), as
PROTOCOL.md 7 asks of every process group of an ending session.  Fresh
in-process server per test, loopback only; every process checked with psutil.
"""

import base64
import os
import subprocess
import sys
import threading
import uuid

import psutil
import pytest

from conftest import start_params, wait_until
import test_containment
from exec_server.server.process import marked as marked_trees
from exec_server.server.process.leftovers import Leftovers
from test_containment import TOKEN_ENV, marked

token = test_containment.token  # the fixture: a random marker value; what carries it is killed at teardown

pytestmark = [pytest.mark.posix, pytest.mark.timeout(60),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux containment")]

# fork, setsid, fork: the grandchild writes its PID, ignores the usual signals, keeps stdin open and never
# reads it (its stdout and stderr on the null device, so the command can close); the command exits at once
DAEMON = ("import os, signal, sys, time\n"
          "if os.fork(): os._exit(0)\n"
          "os.setsid()\n"
          "if os.fork(): os._exit(0)\n"
          "null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1); os.dup2(null, 2)\n"
          "for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT): signal.signal(number, signal.SIG_IGN)\n"
          "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
          "time.sleep(1000)\n")


def start_daemon_command(peer, tmp_path, token, **extra):
    """Start the command that leaves the daemon behind; the daemon's PID once it runs, the command closed."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), TOKEN_ENV: token, "DAEMON": DAEMON}
    argv = ["/bin/sh", "-c", '"%s" -c "$DAEMON" %s/daemon.pid' % (sys.executable, tmp_path)]
    peer.call("process/start", start_params("cmd", argv, env=env, **extra))
    pid_file = tmp_path / "daemon.pid"
    wait_until(pid_file.exists, timeout=10)
    return int(pid_file.read_text())


def wait_forgotten(peer, process_id="cmd"):
    def forgotten():
        reply = peer.request("process/read", {"processId": process_id})
        return reply.get("error", {}).get("message") == "unknown process id %s" % process_id
    wait_until(forgotten, timeout=10, interval=0.05)


@pytest.mark.parametrize("end", ["expiry", "eviction", "shutdown"])
def test_a_forgotten_commands_background_job_dies_with_its_session(configured_server, connect, tmp_path, token, end):
    running = configured_server(pid_namespace="inherit", closed_process_retention=0.2,
                                detached_session_ttl=(0.3 if end == "expiry" else 300), max_sessions=1)
    peer = connect(running.url)
    peer.initialize()
    daemon = start_daemon_command(peer, tmp_path, token)
    peer.wait_closed("cmd")
    wait_forgotten(peer)
    job = psutil.Process(daemon)  # identity kept: its PID may be reused once it is gone
    assert job.is_running()  # a job may outlive its command (README "Process containment")
    peer.close()
    if end == "eviction":  # the only session slot goes to a new client: the detached, idle session ends
        # once the server has seen the close: until then the session is attached, and the slot is taken
        wait_until(lambda: "result" in connect(running.url).request("initialize", {"clientName": "t"}),
                   timeout=10, interval=0.05)
    elif end == "shutdown":
        running.stop()
    wait_until(lambda: not marked(token), timeout=10)
    assert not job.is_running() or job.status() == psutil.STATUS_ZOMBIE


def test_a_stdin_writer_blocked_by_a_forgotten_commands_job_ends_with_the_session(configured_server, connect,
                                                                                  tmp_path, token):
    """The job holds the command's stdin pipe and never reads it: bytes accepted for the command wait in the
    server's writer thread, which must end (and free them) when the session ends."""
    running = configured_server(pid_namespace="inherit", closed_process_retention=0.2, detached_session_ttl=0.3)
    peer = connect(running.url)
    peer.initialize()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), TOKEN_ENV: token, "DAEMON": DAEMON}
    argv = ["/bin/sh", "-c", '"%s" -c "$DAEMON" %s/daemon.pid; read -r line' % (sys.executable, tmp_path)]
    peer.call("process/start", start_params("cmd", argv, env=env, pipeStdin=True))
    wait_until((tmp_path / "daemon.pid").exists, timeout=10)
    daemon = int((tmp_path / "daemon.pid").read_text())
    chunk = base64.b64encode(b"line\n" + b"x" * (4 << 20)).decode()  # sh reads one line; the rest waits
    assert peer.call("process/write", {"processId": "cmd", "chunk": chunk, "writeId": "w1"})["status"] == "accepted"
    peer.wait_closed("cmd")
    wait_until(lambda: any(t.name.endswith("-stdin") and t.is_alive() for t in threading.enumerate()), timeout=5)
    wait_forgotten(peer)
    writers = [t for t in threading.enumerate() if t.name.endswith("-stdin") and t.is_alive()]
    assert writers and psutil.Process(daemon).is_running()
    peer.close()  # the session expires 0.3 s later
    wait_until(lambda: not marked(token), timeout=10)
    for writer in writers:
        writer.join(10)
        assert not writer.is_alive()


def test_a_shutdown_scans_for_all_its_processes_markers_at_once(configured_server, connect, tmp_path, token,
                                                                monkeypatch):
    """inherit mode: each closed command's marker was looked for in scans of its own (until two in a row found
    nothing), at the shutdown's kill and again at the sessions' close: ~6 s for a session of 1000 finished
    commands, past --shutdown-timeout.  Now one scan finds them all; the job a command left still dies."""
    calls = []
    real = marked_trees.kill_marked

    def counting(*markers):
        calls.append(markers)
        return real(*markers)

    monkeypatch.setattr(marked_trees, "kill_marked", counting)
    running = configured_server(pid_namespace="inherit")
    peer = connect(running.url)
    peer.initialize()
    for name in ("a", "b", "c", "d"):
        peer.call("process/start", start_params(name, ["true"]))
        peer.wait_closed(name)
    daemon = psutil.Process(start_daemon_command(peer, tmp_path, token))
    peer.wait_closed("cmd")
    running.stop()
    assert 1 <= len(calls) <= 2 and all(len(markers) == 5 for markers in calls), calls  # kill, then close
    wait_until(lambda: not daemon.is_running() or daemon.status() == psutil.STATUS_ZOMBIE, timeout=10)


def test_leftovers_keep_only_markers_a_living_process_carries():
    markers = ["leftovers-test.%s" % uuid.uuid4().hex for _ in range(3)]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"],
                               env=dict(os.environ, **{marked_trees.MARKER_ENV: markers[1]}))
    try:
        wait_until(lambda: marked_trees.marked_processes({markers[1]}), timeout=10)
        leftovers = Leftovers(checked_at=3)
        for marker in markers:
            leftovers.add(marker)
        assert leftovers.pruned(10)
        assert len(leftovers) == 1  # the check at 3 dropped the two no process carries
        assert leftovers.close() == 1
        assert sleeper.wait(10) == -9
        leftovers.add(markers[0])  # after the close: killed at once (nothing carries it)
        assert len(leftovers) == 0
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait(10)


def test_the_leftover_scan_runs_off_the_callers_thread(monkeypatch):
    """The 256th forgotten command's scan ran on the server's scheduler thread (every session's timers waited for
    it: ~0.2 ms per process on the host, a second on a host of 5000 processes)."""
    release, scans = threading.Event(), []

    def slow_scan(markers):
        scans.append(set(markers))
        release.wait(10)
        return []

    monkeypatch.setattr(marked_trees, "marked_processes", slow_scan)
    leftovers = Leftovers(checked_at=2)
    leftovers.add("leftovers-test.a")
    leftovers.add("leftovers-test.b")  # starts the scan, and returns at once (before: 10 s)
    wait_until(lambda: scans, timeout=10)  # the scan's thread has begun it (it may not have run yet)
    leftovers.add("leftovers-test.c")  # one scan at a time
    assert len(leftovers) == 3 and len(scans) == 1
    release.set()
    assert leftovers.pruned(10)
    assert len(leftovers) == 1 and len(scans) == 2  # c came after the scan began; two scans before a drop


def test_a_marked_job_that_forks_and_exits_during_a_scan_is_killed_by_the_next(token, monkeypatch):
    """A scan lists the PIDs first: the child of a job that forked and exited while the scan ran is in no scan's
    list but the next one's.  Here the first scan misses the process, as in that race; kill_marked scans again."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"],
                               env=dict(os.environ, **{marked_trees.MARKER_ENV: token}))
    real, scans = marked_trees.marked_processes, []

    def first_scan_misses(markers):
        scans.append(1)
        return [] if len(scans) == 1 else real(markers)

    try:
        wait_until(lambda: real({token}), timeout=10)
        monkeypatch.setattr(marked_trees, "marked_processes", first_scan_misses)
        assert marked_trees.kill_marked(token) == 1  # before: 0, and the process lived on
        assert sleeper.wait(10) == -9
        assert len(scans) >= 2
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait(10)


def test_a_scan_thread_that_cannot_start_postpones_the_scan(monkeypatch):
    """Where no thread can be started (RLIMIT_NPROC, shared with the user's jobs in inherit mode), add raised
    and left the unstarted thread as the running scan: no scan ever again, and pruned() raised."""
    real_start = threading.Thread.start

    def no_thread(thread):
        if thread.name == "exec-server-leftovers":
            raise RuntimeError("can't start new thread")
        return real_start(thread)

    leftovers = Leftovers(checked_at=2)
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    leftovers.add("leftovers-test.a")
    leftovers.add("leftovers-test.b")  # the scan cannot start: before, RuntimeError here
    assert len(leftovers) == 2 and leftovers.pruned(0)
    leftovers.add("leftovers-test.c")  # no new attempt (nor warning) until the markers have doubled
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert leftovers.pruned(0) and len(leftovers) == 3
    leftovers.add("leftovers-test.d")  # 4: scans
    assert leftovers.pruned(10)
    assert len(leftovers) == 0  # no process carries any of them


def test_a_forgotten_process_drops_its_output_even_when_keeping_its_marker_fails(monkeypatch):
    """Session._forget handed the marker to Leftovers first: when that raised, the output (its spool file) was
    kept for the session's life."""
    from exec_server.server.config import ServerConfig
    from exec_server.server.scheduler import Scheduler
    from exec_server.server.session import Session

    class Process:
        process_id, marker, discarded = "p", "leftovers-test.d", False

        def discard_output(self):
            self.discarded = True

    def failing_add(self, marker):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Leftovers, "add", failing_add)
    scheduler = Scheduler()
    try:
        session, process = Session("s", ServerConfig(), scheduler), Process()
        session._processes[process.process_id] = process
        with pytest.raises(RuntimeError):
            session._forget(process)
        assert process.discarded and not session.processes()
    finally:
        scheduler.stop(5)
