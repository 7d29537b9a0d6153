"""A tree is everything a process ever started; a server that dies takes its trees with it (issue 15).

Each escaping shape records that it started (files in ``tmp_path``) and every
process of it carries a token in its environment, so psutil finds them on the
host whatever PID namespace they live in.  Fresh server per test, loopback only.
"""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List

import psutil
import pytest

from conftest import reap, start_params, wait_until, with_env
from exec_server import Client
from exec_server.server.process import contain, guardian
from exec_server.server.process.marked import MARKER_ENV
from exec_server.server.process.spawn import spawn_child

pytestmark = [pytest.mark.posix, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux containment")]

TOKEN_ENV = "CONTAINMENT_TEST_TOKEN"
DAEMON = ("import os, sys, time\n"
          "if os.fork(): os._exit(0)\n"
          "os.setsid()\n"
          "if os.fork(): os._exit(0)\n"
          "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
          "time.sleep(1000)\n")
SHAPES = {
    # a setsid'd grandchild, its parent still running
    "setsid-background": ("setsid sh -c 'touch {d}/a; exec sleep 1000' & sleep 1000", ["a"], 3),
    # setsid after its parent exited: already reparented when the kill comes
    "setsid-after-parent-exit": ("(setsid sh -c 'touch {d}/a; exec sleep 1000' &); exec sleep 1000", ["a"], 2),
    # double fork
    "double-fork": ("( ( sh -c 'touch {d}/a; exec sleep 1000' & ) & ); sleep 1000", ["a"], 3),
    # a classic daemon (fork, setsid, fork) writing a pid file
    "daemon-pid-file": ("%s -c \"$DAEMON\" {d}/daemon.pid; sleep 1000" % sys.executable, ["daemon.pid"], 2),
}
ISOLATE_WORKS = contain.decide("isolate").isolated
MODES = [pytest.param("isolate", marks=pytest.mark.skipif(not ISOLATE_WORKS, reason="no PID namespaces here")),
         "inherit"]


def marked(token):
    """Living (non-zombie) processes whose environment carries ``token``."""
    return with_env(TOKEN_ENV, token)


@pytest.fixture
def token():
    value = uuid.uuid4().hex
    yield value
    for process in marked(value):  # never leave anything behind, whatever the test found
        try:
            process.kill()
        except psutil.Error:
            pass


def shape_params(shape, tmp_path, token, process_id="tree"):
    command, _files, _count = SHAPES[shape]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), TOKEN_ENV: token, "DAEMON": DAEMON}
    return start_params(process_id, ["/bin/sh", "-c", command.format(d=tmp_path)], env=env)


def wait_started(shape, tmp_path, token):
    _command, files, count = SHAPES[shape]
    wait_until(lambda: all((tmp_path / name).exists() for name in files), timeout=10)
    wait_until(lambda: len(marked(token)) >= count, timeout=10)
    if shape == "daemon-pid-file" and not contain.decide("isolate").isolated:
        assert psutil.pid_exists(int((tmp_path / "daemon.pid").read_text()))


def assert_none_survives(token):
    wait_until(lambda: not marked(token), timeout=10)


@contextlib.contextmanager
def _server_process(argv, tmp_path, env=None):
    """``(server, url)``: a server started with ``argv`` that prints its URL (``env``: its environment), its
    stderr in ``server.log``; killed at the end."""
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        try:
            url = server.stdout.readline().decode().strip()
            assert url.startswith("ws://127.0.0.1:"), url
            yield server, url
        finally:
            if server.poll() is None:
                server.kill()
            server.wait(10)
            server.stdout.close()


def cli_server(mode, tmp_path, *extra, env=None):
    """:func:`_server_process` of the exec-server command in ``mode``."""
    return _server_process([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0",
                            "--linux-sandbox-pid-namespace", mode, *extra], tmp_path, env)


#: A server of a library user's own, with the guardian's cover of isolated starts (argv[1]: True or False).
LIBRARY_SERVER = """
import sys
from exec_server import ServerConfig, make_server
server = make_server("ws://127.0.0.1:0", ServerConfig(guard_isolated_starts=sys.argv[1] == "True"))
print(server.url, flush=True)
server.serve_forever()
"""


def library_server(guarded, tmp_path, env=None):
    """:func:`_server_process` of :data:`LIBRARY_SERVER`."""
    return _server_process([sys.executable, "-c", LIBRARY_SERVER, str(guarded)], tmp_path, env)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_terminate_kills_every_escaper(configured_server, connect, tmp_path, token, shape, mode):
    running = configured_server(pid_namespace=mode)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", shape_params(shape, tmp_path, token))
    wait_started(shape, tmp_path, token)
    assert peer.call("process/terminate", {"processId": "tree"}) == {"running": True}
    assert_none_survives(token)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_session_expiry_kills_every_escaper(configured_server, connect, tmp_path, token, shape, mode):
    running = configured_server(pid_namespace=mode, detached_session_ttl=0.3)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", shape_params(shape, tmp_path, token))
    wait_started(shape, tmp_path, token)
    peer.close()  # detached; the session expires 0.3 s later
    assert_none_survives(token)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_server_sigterm_kills_every_escaper(tmp_path, token, shape, mode):
    with cli_server(mode, tmp_path) as (server, url):
        with Client.connect(url, timeout=10) as client:
            client.call("process/start", shape_params(shape, tmp_path, token), timeout=10)
            wait_started(shape, tmp_path, token)
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        assert_none_survives(token)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tty", [False, True])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_server_sigkill_takes_every_tree_along(tmp_path, token, shape, tty, mode):
    """isolate: the parent-death signal ends the namespace, and the namespace takes everything;
    inherit: the guardian reads end of file and kills everything carrying the server's token."""
    with cli_server(mode, tmp_path) as (server, url):
        with Client.connect(url, timeout=10) as client:
            client.call("process/start", dict(shape_params(shape, tmp_path, token), tty=tty), timeout=10)
            wait_started(shape, tmp_path, token)
            time.sleep(1.2)  # longer than an idle request thread lives: the spawner thread must stay
            server.kill()
            server.wait(10)
        assert_none_survives(token)


@pytest.mark.skipif(not ISOLATE_WORKS, reason="no PID namespaces here")
@pytest.mark.parametrize("server_kind", ["command", "library"])
@pytest.mark.parametrize("tty", [False, True])
def test_server_sigkill_before_the_death_signal_is_armed_takes_the_tree_along(tmp_path, tty, server_kind):
    """``setpriv`` arms the parent-death signal after its exec (and ``unshare --kill-child`` its child's after its
    fork): a server killed before then left the isolated tree running forever, reparented to PID 1.  Here a
    ``setpriv`` that takes 2 s to start holds that window open; the guardian must take the tree.  The
    ``exec-server`` command's server has that cover, and a library user's with
    ``ServerConfig(guard_isolated_starts=True)`` (it could not have it but through a private function)."""
    real = shutil.which("setpriv")
    folder = tmp_path / "bin"
    folder.mkdir()
    slow = folder / "setpriv"
    slow.write_text('#!/bin/sh\nif [ -n "$SLOW_SETPRIV" ]; then sleep 2; fi\nexec %s "$@"\n' % real)
    slow.chmod(0o755)
    argv = ["sleep", "1000.%d" % random.randrange(10 ** 9)]
    env = dict(os.environ, PATH="%s:%s" % (folder, os.environ.get("PATH", "/usr/bin:/bin")))
    starting = cli_server("isolate", tmp_path, env=env) if server_kind == "command" \
        else library_server(True, tmp_path, env=env)
    with starting as (server, url):
        client = Client.connect(url, timeout=10, reconnect=None)
        try:
            client.start(argv, env={"SLOW_SETPRIV": "1"}, tty=tty, timeout=10)
            server.kill()  # within the slow setpriv's 2 s
            server.wait(10)
        finally:
            client.close()

    def survivors():
        return [p for p in psutil.process_iter() if _cmdline(p) == argv]

    time.sleep(3)  # the slow setpriv has run unshare and the program by now, if nothing killed it
    try:
        assert not survivors()
    finally:
        for process in survivors():
            process.kill()


def test_a_guardian_that_dies_while_the_server_runs_is_replaced(tmp_path):
    """inherit: a program killed the guardian (it can see it, as the same user); the server went on with no
    cover (a zombie guardian, nothing logged), so a later SIGKILL of the server left every tree running.  The
    next start replaces it, with a warning, and the new one covers the trees started before it too."""
    first, second = (["sleep", "1000.%d" % random.randrange(10 ** 9)] for _ in range(2))

    def survivors():
        return [p for p in psutil.process_iter() if _cmdline(p) in (first, second)]

    with cli_server("inherit", tmp_path) as (server, url):
        client = Client.connect(url, timeout=10, reconnect=None)
        try:
            client.start(first, timeout=10)
            guardians = [child for child in psutil.Process(server.pid).children()
                         if "exec_server.server.process.guardian" in " ".join(_cmdline(child) or [])]
            assert len(guardians) == 1
            guardians[0].kill()  # by its PID, as a program of the same user could
            wait_until(lambda: _cmdline(guardians[0]) is None, 10)  # a zombie: its parent is the server
            client.start(second, timeout=10)
            replaced = [child for child in psutil.Process(server.pid).children()
                        if "exec_server.server.process.guardian" in " ".join(_cmdline(child) or [])]
            assert len(replaced) == 1 and replaced[0].pid != guardians[0].pid
            assert not psutil.pid_exists(guardians[0].pid)  # reaped (was: a zombie for the server's life)
            server.kill()
            server.wait(10)
        finally:
            client.close()
    try:
        wait_until(lambda: not survivors(), 10)  # was: both sleeps ran on, reparented
    finally:
        for process in survivors():
            process.kill()
    assert "the guardian (pid %d) ended with status -9 while the server runs" % guardians[0].pid \
        in (tmp_path / "server.log").read_text()


def test_the_guardians_cover_of_isolated_starts_is_a_bool_off_by_default():
    from exec_server import ServerConfig

    assert ServerConfig().guard_isolated_starts is False
    with pytest.raises(ValueError, match="^guard_isolated_starts must be True or False$"):
        ServerConfig(guard_isolated_starts="yes")


def _cmdline(process):
    """``process``'s command line; None when it is gone or a zombie."""
    try:
        return process.cmdline() if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_reaches_a_program_that_made_its_own_process_group(configured_server, tmp_path, mode):
    """GNU ``timeout`` (and ``bash -i``, any ``setpgid(0, 0)``) leaves the group the interrupt went to; in
    ``isolate`` its init forwards no SIGINT, so ``run -- timeout 600 make`` ignored Ctrl-C (the reference, and
    ``inherit``, interrupt it: the program leads its own group there)."""
    running = configured_server(pid_namespace=mode)
    script = ("import os, sys, time\n"
              "if os.getsid(0) != os.getpid():\n"
              "    os.setpgid(0, 0)  # a session leader (inherit mode) leads its group already, and may not\n"
              "open(sys.argv[1], 'w').close()\n"
              "time.sleep(60)\n")
    with Client.connect(running.url, timeout=10) as client:
        timed = client.start(["timeout", "60", "sh", "-c", "touch %s/t; exec sleep 60" % tmp_path])
        grouped = client.start([sys.executable, "-c", script, str(tmp_path / "g")])
        wait_until(lambda: (tmp_path / "t").exists() and (tmp_path / "g").exists(), timeout=10)
        timed.send_interrupt()
        grouped.send_interrupt()
        assert timed.wait(timeout=10) == 130  # timeout ends by the signal its command died of
        assert grouped.wait(timeout=10) == 130  # Python ends by SIGINT after a KeyboardInterrupt


@pytest.mark.skipif(not ISOLATE_WORKS, reason="no PID namespaces here")
def test_isolated_child_view_and_exit_codes(configured_server, tmp_path):
    running = configured_server(pid_namespace="isolate")
    with Client.connect(running.url, timeout=10) as client:
        done = client.run(["/bin/sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'; exit 3"], timeout=10)
        assert (done.returncode, done.stdout.split()[0]) == (3, b"2")  # PID 2 under the namespace's init
        assert int(done.stdout.split()[1]) <= 4  # its own /proc: the init, the shell, ls, grep
        assert client.run(["/bin/sh", "-c", "kill -TERM $$"], timeout=10).returncode == 143
        renamed = client.run(["/bin/sh", "-c", "echo $0"], timeout=10, arg0="renamed")
        assert renamed.stdout == b"renamed\n"
        sleeper = client.start(["sh", "-c", "touch %s/s1; exec sleep 100" % tmp_path])
        wait_until(lambda: (tmp_path / "s1").exists(), timeout=5)
        sleeper.send_interrupt()
        assert sleeper.wait(timeout=10) == 130
        tty_sleeper = client.start(["sh", "-c", "touch %s/s2; exec sleep 100" % tmp_path], tty=True)
        wait_until(lambda: (tmp_path / "s2").exists(), timeout=5)
        tty_sleeper.send_interrupt()
        assert tty_sleeper.wait(timeout=10) == 1  # a tty child killed by a signal reads 1, as before
        trap = client.start(["sh", "-c", "trap 'echo got-int; exit 9' INT; touch %s/s3; sleep 100 & wait" % tmp_path],
                            tty=True)
        wait_until(lambda: (tmp_path / "s3").exists(), timeout=5)
        trap.send_interrupt()
        assert trap.wait(timeout=10) == 9


@pytest.mark.parametrize("mode", MODES)
def test_an_interactive_job_control_shell_on_a_pty_exits_with_its_status(configured_server, mode):
    """``sh -i`` (dash: job control) saves the terminal's foreground group at start and restores it at exit; it
    must see that group (in isolate mode the PTY's session is made inside the PID namespace), and Ctrl-C typed
    on the terminal reaches the foreground job only."""
    running = configured_server(pid_namespace=mode)
    with Client.connect(running.url, timeout=10) as client:
        shell = client.start(["sh", "-i"], tty=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                          "PS1": "$ "})
        shell.write(b"sleep 100; echo after-int\n")
        time.sleep(0.5)
        shell.write(b"\x03")  # Ctrl-C: the sleep ends, the shell goes on
        shell.write(b"echo ok; exit 5\n")
        out, _err = shell.communicate(timeout=20)
    assert shell.returncode == 5, out
    assert b"ok\r\n" in out and b"Cannot set tty process group" not in out, out


#: As FORK_THEN_EXEC, but the init's child runs the arg0 step, which waits 1 s before it execs ``sleep``.
SHIM_THEN_EXEC = """
import os, sys
if os.fork() == 0:              # the init
    if os.fork() == 0:          # its child: the arg0 step
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", sys.argv[1], "", "/bin/sleep", "sleep", "30"])
    os.wait()
    os._exit(0)
os.wait()
"""


def test_an_interrupt_waits_for_the_program_not_the_arg0_step(monkeypatch):
    """With arg0 an interpreter execs the program under the namespace's init: a SIGINT that reached that
    interpreter would kill it (exit 130) and the program's trap would never run."""
    slow_shim = "import time; time.sleep(1.0)\n" + contain.ARG0_SHIM
    monkeypatch.setattr(contain, "ARG0_SHIM", slow_shim)
    assert_the_wait_ends_at_the_program([sys.executable, "-c", SHIM_THEN_EXEC, slow_shim])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arg0", ["", "-", "x y"])
def test_any_arg0_is_the_programs_argv0(configured_server, mode, arg0):
    """Linux allows an empty argv[0] (as the reference's Command::arg0 does); os.execv does not, so the
    isolate mode's interpreter must not use it there."""
    running = configured_server(pid_namespace=mode)
    with Client.connect(running.url, timeout=10) as client:
        done = client.run(["/bin/sh", "-c", 'echo "[$0]"'], arg0=arg0, timeout=20)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"[%s]\n" % arg0.encode(), b"")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ctype", [None, "C", "C.UTF-8"])
def test_arg0_leaves_the_environment_as_the_client_gave_it(configured_server, mode, ctype):
    """Under isolate, arg0 goes through an interpreter, which sets LC_CTYPE in a C locale (PEP 538): the
    program must still get exactly the environment the client asked for."""
    running = configured_server(pid_namespace=mode)
    env = {"PATH": "/usr/bin:/bin", **({} if ctype is None else {"LC_CTYPE": ctype})}
    with Client.connect(running.url, timeout=10) as client:
        done = client.run(["/usr/bin/env"], env=env, inherit_env=False, arg0="renamed", timeout=20)
    listed = dict(line.split("=", 1) for line in done.stdout.decode().splitlines())
    listed.pop(MARKER_ENV, None)  # inherit mode's marker
    assert listed == env


@pytest.mark.skipif(not ISOLATE_WORKS, reason="no PID namespaces here")
@pytest.mark.parametrize("guarded", [False, True])
def test_a_program_named_with_an_equals_sign_runs_through_the_arg0_step_only_after_env(tmp_path, guarded):
    """The guarded prefix ends with ``env -u``, which would take ``./a=b`` for an assignment: there such a name
    goes through the arg0 step; under the plain prefix the namespace's init execs it directly (one exec less)."""
    program = tmp_path / "a=b"
    program.write_text('#!/bin/sh\necho "ran $0 $1"\n')
    program.chmod(0o755)
    containment = contain.decide("isolate")
    prefix = containment.guarded_prefix() if guarded else containment.prefix
    env = dict(os.environ, **{MARKER_ENV: "unused.x"})
    popen, _master, _terminal = spawn_child(["./a=b", "one"], str(tmp_path), env, False, False, None, prefix=prefix)
    try:
        out, err = popen.communicate(timeout=20)
    finally:
        reap(popen)
    assert (popen.returncode, out, err) == (0, b"ran ./a=b one\n", b"")
    assert (contain.ARG0_SHIM in popen.args) is guarded


def test_inherit_mode_marks_the_environment(configured_server):
    running = configured_server(pid_namespace="inherit")
    with Client.connect(running.url, timeout=10) as client:
        done = client.run(["/bin/sh", "-c", "echo ${%s:-none}" % contain.MARKER_ENV], timeout=10)
    token, _, process_id = done.stdout.strip().decode().partition(".")
    assert guardian.marker_prefix() == token + "." and len(process_id) == 32  # the guardian sweeps this token
    assert psutil.pid_exists(guardian.running_pid())


def test_guardian_kills_its_token_on_end_of_file(tmp_path):
    """The guardian sweeps every process carrying its token once its stdin reaches end of file."""
    token = uuid.uuid4().hex
    marked_env = dict(os.environ, **{contain.MARKER_ENV: token + ".x"})
    victim = subprocess.Popen(["/bin/sh", "-c", "setsid sleep 300 & wait"], env=marked_env,
                              stdin=subprocess.DEVNULL)
    bystander = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    guard = subprocess.Popen([sys.executable, "-m", guardian.__name__, token], stdin=subprocess.PIPE)
    try:
        wait_until(lambda: len([p for p in psutil.process_iter(["environ"])
                                if (p.info["environ"] or {}).get(contain.MARKER_ENV) == token + ".x"]) == 2,
                   timeout=10)
        guard.stdin.close()  # as when the server's process dies
        assert guard.wait(timeout=20) == 0
        assert victim.wait(timeout=10) == -9
        wait_until(lambda: not [p for p in psutil.process_iter(["environ"])
                                if (p.info["environ"] or {}).get(contain.MARKER_ENV) == token + ".x"], timeout=10)
        assert bystander.poll() is None  # unmarked: left alone
    finally:
        for process in (victim, bystander, guard):
            if process.poll() is None:
                process.kill()
            process.wait(10)


def test_unavailable_isolation_falls_back_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(contain, "_decided", {})
    monkeypatch.setattr(contain, "find_dumb_init", lambda: None)
    with caplog.at_level("WARNING", logger=contain.__name__):
        first = contain.decide("isolate")
        second = contain.decide("isolate")
    assert first is second and first.mode == "inherit" and "dumb-init not found" in first.reason
    assert len([r for r in caplog.records if "PID namespace isolation unavailable" in r.getMessage()]) == 1


def zombie_children(process: psutil.Process):
    """The zombies among ``process``'s children (one reaped between listing and asking is none)."""
    zombies = []
    for child in process.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child)
        except psutil.NoSuchProcess:
            pass
    return zombies


def test_inherit_mode_server_adopts_and_reaps_orphans(tmp_path, token):
    """The exec-server command in inherit mode is the child subreaper: an orphan reparents to it
    (not PID 1), is killed by terminate and reaped, without waitpid(-1)."""
    with cli_server("inherit", tmp_path) as (server, url):
        with Client.connect(url, timeout=10) as client:
            client.call("process/start", shape_params("setsid-after-parent-exit", tmp_path, token), timeout=10)
            wait_started("setsid-after-parent-exit", tmp_path, token)
            me = psutil.Process(server.pid)
            wait_until(lambda: len([p for p in me.children() if p in marked(token)]) >= 2, timeout=10)
            assert client.call("process/terminate", {"processId": "tree"}, timeout=10) == {"running": True}
            assert_none_survives(token)
            wait_until(lambda: not zombie_children(me), timeout=10)
            done = client.run(["sh", "-c", "exit 7"], timeout=10)  # a Popen's status is never stolen
            assert done.returncode == 7
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0


def test_inherit_mode_server_reaps_orphans_that_die_between_sweeps(tmp_path):
    """An orphan that lives and dies between two of the Reaper's sweeps (1 s apart) was never seen alive with
    its marker, and stayed a zombie (a PID, and a task under a TasksMax) as long as the server: one per
    ``(job &)`` of a short command.  Now every zombie child the server did not fork itself is reaped, and
    no Popen's status is stolen."""
    with cli_server("inherit", tmp_path) as (server, url):
        me = psutil.Process(server.pid)
        with Client.connect(url, timeout=10) as client:
            for number in range(20):
                done = client.run(["sh", "-c", "(sleep 0.01 &); exit %d" % (number % 5 + 1)], timeout=10)
                assert done.returncode == number % 5 + 1  # a Popen's status is never stolen
            wait_until(lambda: not zombie_children(me), timeout=10)
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0


def test_an_interrupt_waits_for_the_program_within_program_start_wait(caplog):
    """wait_program_started: True once the init's child exists; False at the timeout (logged) or at once
    when the process has ended (PROGRAM_START_WAIT bounds it; 10 s by default)."""
    assert contain.PROGRAM_START_WAIT == 10.0
    chain = subprocess.Popen(["/bin/sh", "-c", "/bin/sh -c 'sleep 30; :'; :"])  # pid -> sh -> sleep
    lone = subprocess.Popen(["/bin/sh", "-c", "sleep 30; :"])  # pid -> sleep: no grandchild
    try:
        wait_until(lambda: any(child.children() for child in psutil.Process(chain.pid).children()), timeout=10)
        assert contain.wait_program_started(chain.pid, timeout=5)
        started = time.monotonic()
        assert not contain.wait_program_started(lone.pid, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert "did not start within 0.3 s" in caplog.text
        started = time.monotonic()
        assert not contain.wait_program_started(lone.pid, timeout=30, ended=lambda: True)
        assert time.monotonic() - started < 5
    finally:
        for process in (chain, lone):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait(10)


#: pid -> an "init" -> a forked copy of the init that waits 1 s, then execs ``sleep`` (dumb-init's fork then exec).
FORK_THEN_EXEC = """
import os, sys, time
if os.fork() == 0:              # the init
    if os.fork() == 0:          # its child: still the init's command line for a second
        time.sleep(1.0)
        os.execvp("sleep", ["sleep", "30"])
    os.wait()
    os._exit(0)
os.wait()
"""


def test_an_interrupt_waits_for_the_programs_exec_not_only_its_fork():
    """Between dumb-init's fork and the exec the child has dumb-init's do-nothing signal handlers, so a
    SIGINT then is swallowed: the wait ends only once the init's child runs another command line."""
    assert_the_wait_ends_at_the_program([sys.executable, "-c", FORK_THEN_EXEC])


def test_the_inits_command_line_is_read_after_its_childs(monkeypatch):
    """The init's command line was read before its children: read while it was still unshare's forked copy, with
    the children listed after its exec and fork, dumb-init's own copy before its exec (dumb-init's command line)
    differed from it and was taken for the program, which the SIGINT then missed (that copy's do-nothing
    handlers swallow it)."""
    dumb_init = ["dumb-init", "--single-child", "--", "sleep", "30"]

    class Init:
        listed = False

        def cmdline(self):
            return dumb_init if self.listed else ["unshare", "--pid", "--fork"]

        def children(self):
            self.listed = True  # it has exec'd dumb-init and forked by now
            return [copy]

    class Copy:
        pid = 4
        lines = [dumb_init, dumb_init, ["sleep", "30"]]  # the fork, then the exec

        def cmdline(self):
            return self.lines.pop(0) if len(self.lines) > 1 else self.lines[0]

    copy, init = Copy(), Init()

    class Top:
        def __init__(self, pid):
            pass

        def children(self):
            return [init]

    monkeypatch.setattr(psutil, "Process", Top)
    assert contain._started_program(1, timeout=5, ended=lambda: False) is copy
    assert copy.cmdline() == ["sleep", "30"]  # returned once exec'd, not before


def assert_the_wait_ends_at_the_program(argv):
    """Start ``argv`` (pid -> init -> what becomes ``sleep 30``): wait_program_started returns once it is."""
    chain = subprocess.Popen(argv)
    try:
        wait_until(lambda: any(init.children() for init in psutil.Process(chain.pid).children()), timeout=10)
        assert contain.wait_program_started(chain.pid, timeout=10)
        programs = [child for init in psutil.Process(chain.pid).children() for child in init.children()]
        assert [program.cmdline() for program in programs] == [["sleep", "30"]]
    finally:
        for child in psutil.Process(chain.pid).children(recursive=True):
            child.kill()
        chain.kill()
        chain.wait(10)


@pytest.mark.skipif(not ISOLATE_WORKS, reason="no PID namespaces here")
def test_an_isolated_tree_is_killed_without_a_scan_of_the_process_table(configured_server, monkeypatch):
    """Killing the group ends the namespace and everything in it, an escaper included, so there is no
    per-tree scan of all processes (which made a shutdown with hundreds of trees take seconds)."""
    from exec_server.common import tree

    scans = []
    descendants_of = tree.descendants_of
    monkeypatch.setattr(tree, "descendants_of", lambda pid: scans.append(pid) or descendants_of(pid))
    duration = "%.4f" % (300 + random.random())
    running = configured_server()
    with Client.connect(running.url, timeout=5) as client:
        process = client.start(["sh", "-c", "setsid sleep %s & sleep %s" % (duration, duration)])

        def both_sleeps():
            found = [p for p in psutil.Process().children(recursive=True) if _cmdline(p) == ["sleep", duration]]
            return found if len(found) == 2 else None
        sleeps = wait_until(both_sleeps, timeout=10)
        process.terminate()
        assert process.wait(timeout=10) == 137
    wait_until(lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in sleeps), timeout=10)
    assert scans == []


def daemon_group_shell(tag: str) -> str:
    """A daemon in a session and group of its own: its leader keeps the marker, its other member drops it
    (``env -i``); both sleep with ``tag`` in their arguments."""
    return ('setsid sh -c "env -i sleep 300.%s1 & exec sleep 300.%s2" </dev/null >/dev/null 2>&1 &' % (tag, tag))


def sleepers(tag: str):
    return [p for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [None])[0] == "sleep" and p.info["cmdline"][1:] in (
                ["300.%s1" % tag], ["300.%s2" % tag])]


def test_a_marked_daemons_whole_group_dies_with_its_tree_in_inherit_mode(configured_server):
    """The group member that dropped the marker outlived terminate (only the marked leader was killed);
    now the group of every marked process is killed too (a daemon that forks a successor and exits, again
    and again, keeps its group while its PID changes)."""
    tag = str(random.randrange(10 ** 6))
    running = configured_server(pid_namespace="inherit")
    try:
        with Client.connect(running.url, timeout=10) as client:
            process = client.start(["sh", "-c", daemon_group_shell(tag) + " true"])
            assert process.wait(timeout=20) == 0  # the daemon is nobody's descendant now: only its marker
            wait_until(lambda: len(sleepers(tag)) == 2, timeout=10)
            assert client.call("process/terminate", {"processId": process.process_id}, timeout=20) is not None
            wait_until(lambda: not sleepers(tag), timeout=10)
    finally:
        for leftover in sleepers(tag):
            leftover.kill()


def test_the_guardian_kills_a_marked_daemons_whole_group():
    tag = str(random.randrange(10 ** 6))
    token = uuid.uuid4().hex
    tree = subprocess.Popen(["sh", "-c", daemon_group_shell(tag) + " true"], stdin=subprocess.DEVNULL,
                            env=dict(os.environ, **{contain.MARKER_ENV: token + ".x"}))
    guard = subprocess.Popen([sys.executable, "-m", guardian.__name__, token], stdin=subprocess.PIPE)
    try:
        assert tree.wait(timeout=20) == 0
        wait_until(lambda: len(sleepers(tag)) == 2, timeout=10)
        guard.stdin.close()  # as when the server's process dies
        assert guard.wait(timeout=20) == 0
        wait_until(lambda: not sleepers(tag), timeout=10)
    finally:
        for leftover in sleepers(tag):
            leftover.kill()
        if guard.poll() is None:
            guard.kill()
        guard.wait(10)


def test_at_its_orderly_end_an_inherit_mode_server_kills_the_orphans_no_marker_sweep_finds(tmp_path):
    """A daemon that left its tree's group and dropped the marker (``setsid env -i``; a non-dumpable one hides
    its marker the same way from a server that is not root) outlived the server's SIGTERM: only an orphan whose
    environment could not be read was killed then.  Every orphan the server adopted is now."""
    duration = "1000.%d" % random.randrange(10 ** 9)
    argv = ["sleep", duration]
    with cli_server("inherit", tmp_path) as (server, url):
        with Client.connect(url, timeout=10, reconnect=None) as client:
            assert client.run(["true"], timeout=10).returncode == 0  # the server is the subreaper by now
            process = client.start(["sh", "-c", "setsid env -i sleep %s >/dev/null 2>&1 </dev/null &" % duration])
            assert process.wait(timeout=10) == 0
            daemon = wait_until(lambda: [p for p in psutil.process_iter() if _cmdline(p) == argv], timeout=10)[0]
            wait_until(lambda: daemon.ppid() == server.pid, timeout=10)  # an orphan the server adopted
            assert contain.MARKER_ENV not in daemon.environ()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    try:
        wait_until(lambda: not daemon.is_running() or daemon.status() == psutil.STATUS_ZOMBIE, timeout=10)
    finally:
        if daemon.is_running():
            daemon.kill()


MODES = ["isolate", "inherit", pytest.param("reference", marks=pytest.mark.reference)]


@pytest.fixture
def start_of(configured_server, connect, tmp_path):
    """``start_of(mode, argv)`` -> the answer to a ``process/start`` of ``argv`` on ours in that pid-namespace
    mode, or on the reference (started for it, stopped at teardown)."""
    from conftest import reference_binary, start_reference

    references = []

    def answer(mode: str, argv: List[str]) -> Dict[str, Any]:
        if mode == "reference":
            if reference_binary() is None:
                pytest.skip("the reference server is not installed")
            home = tmp_path / ("home%d" % len(references))
            home.mkdir()
            references.append(start_reference(str(home)))
            running = references[-1]
        else:
            running = configured_server(pid_namespace=mode)
        peer = connect(running.url)
        peer.initialize()
        return peer.request("process/start", start_params("p", argv), timeout=10)

    yield answer
    for running in references:
        running.stop()


def _elf_header(machine: int, elf_type: int) -> str:
    """A 64-bit little-endian ELF header (as latin-1 text) of that machine and type, nothing after it."""
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + elf_type.to_bytes(2, "little") + machine.to_bytes(2, "little")
    return (header + b"\0" * (64 - len(header))).decode("latin-1")


HOST_MACHINE = {"x86_64": 62, "aarch64": 183}.get(os.uname().machine, 62)
FOREIGN_ELF = _elf_header(183 if HOST_MACHINE == 62 else 62, 2)  # an executable of another machine
OBJECT_ELF = _elf_header(HOST_MACHINE, 1)  # a relocatable object (.o) of this one

BAD_PROGRAMS = {  # file content -> what execve says of it
    "#!/nonexistent/interpreter\n": "No such file or directory (os error 2)",
    "\x7fELF short": "Exec format error (os error 8)",
    "touch {ran}\n": "Exec format error (os error 8)",  # no #!: execvp's fallback ran it with /bin/sh
    "": "Exec format error (os error 8)",
    "#!/bin/sh\r\ntouch {ran}\r\n": "No such file or directory (os error 2)",  # the interpreter is "/bin/sh\r"
    "#!nosuch/interpreter\n": "No such file or directory (os error 2)",  # relative: from the working directory
    "#!/" + "x" * 300: "Exec format error (os error 8)",  # the interpreter's name cut off by the kernel's buffer
    FOREIGN_ELF + "\ntouch {ran}\n": "Exec format error (os error 8)",  # passed as ELF, then ran under sh
    OBJECT_ELF + "\ntouch {ran}\n": "Exec format error (os error 8)",
}


@pytest.mark.parametrize("content", list(BAD_PROGRAMS),
                         ids=["missing-interpreter", "short-elf", "text", "empty", "crlf", "relative-interpreter",
                              "cut-interpreter", "foreign-elf", "object-elf"])
@pytest.mark.parametrize("mode", MODES)
def test_a_program_the_kernel_cannot_execute_fails_its_start_as_execve_says(start_of, tmp_path, content, mode):
    """Under isolate, the chain's last execvp ran an executable text file with /bin/sh (its lines as commands),
    and a missing interpreter or a bad binary started and exited 127: a start the reference (and inherit) fails
    with -32603 and the OS text."""
    program, ran = tmp_path / "program", tmp_path / "ran"
    program.write_text(content.format(ran=ran), encoding="latin-1")
    program.chmod(0o755)
    reply = start_of(mode, [str(program)])
    assert reply.get("error") == {"code": -32603, "message": BAD_PROGRAMS[content]}, reply
    time.sleep(0.3)
    assert not ran.exists()


@pytest.mark.parametrize("mode", MODES)
def test_an_executable_fifo_fails_its_start_at_once(start_of, tmp_path, mode):
    """execve refuses a file that is not regular (EACCES); reading the start of an executable FIFO to judge it
    would have waited for a writer for good."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo.chmod(0o755)
    reply = start_of(mode, [str(fifo)])
    assert reply.get("error") == {"code": -32603, "message": "Permission denied (os error 13)"}, reply
