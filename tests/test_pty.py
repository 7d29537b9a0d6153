"""PTY processes (``tty: true``) as the reference runs them: environment, terminal and end of file."""

import base64
import os
import pwd
import subprocess
import sys

import psutil
import pytest

from conftest import running_descendants, sandbox_writing, start_params, wait_until
from test_sandbox import needs_bwrap


def pty_output(peer, process_id):
    events = sorted(peer.wait_closed(process_id), key=lambda m: m["params"]["seq"])
    return b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")


def login_shell() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        return "/bin/sh"


@pytest.mark.parametrize("env,expected", [({}, None), ({"SHELL": "/no/such/shell"}, "/no/such/shell")])
def test_a_pty_child_without_shell_gets_the_login_shell(connect, any_server, env, expected):
    """portable-pty (the reference's PTY) sets SHELL, when the request's env has none, to the user's login
    shell (the password database's, not the server's $SHELL); one in the env is kept as given; a pipe child
    gets no SHELL."""
    peer = connect(any_server.url)
    peer.initialize()
    env = dict(env, PATH="/usr/bin:/bin")
    peer.call("process/start", start_params("t", ["/usr/bin/env"], tty=True, env=env))
    lines = pty_output(peer, "t").decode().split("\r\n")
    assert "SHELL=%s" % (expected or login_shell()) in lines, lines
    peer.call("process/start", start_params("p", ["/usr/bin/env"], env=env))
    lines = pty_output(peer, "p").decode().split("\n")
    assert [line for line in lines if line.startswith("SHELL=")] == (["SHELL=" + expected] if expected else [])


HANDLES_SIGINT = ("import time\ntry:\n    print('ready', flush=True)\n    time.sleep(20)\nexcept KeyboardInterrupt:\n"
                  "    print('caught', flush=True)\ntime.sleep(0.3)\nprint('done', flush=True)")


@needs_bwrap
@pytest.mark.parametrize("tty", [True, False])
def test_an_interrupt_reaches_a_sandboxed_program_and_spares_bubblewrap(connect, server, tmp_path, tty):
    """process/signal interrupt went to bubblewrap's process group: bubblewrap, without a SIGINT handler,
    died of it and --die-with-parent took the sandbox, so a program that handles SIGINT (a REPL, a shell)
    was killed (a PTY: exit 1 after "caught"; pipes: 130, and the program, a session leader there, never
    even got the signal)."""
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("s", ["python3", "-c", HANDLES_SIGINT], tty=tty,
                                            sandbox=sandbox_writing(tmp_path)))
    peer.wait_for(lambda m: m.get("method") == "process/output" and b"ready" in base64.b64decode(m["params"]["chunk"]))
    peer.call("process/signal", {"processId": "s", "signal": "interrupt"})
    events = sorted(peer.wait_closed("s"), key=lambda m: m["params"]["seq"])
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    assert output.replace(b"\r\n", b"\n") == b"ready\ncaught\ndone\n"
    assert [m["params"]["exitCode"] for m in events if m["method"] == "process/exited"] == [0]


def _write(peer, process_id, data, write_id):
    return peer.call("process/write", {"processId": process_id, "chunk": base64.b64encode(data).decode(),
                                       "writeId": write_id})


@needs_bwrap
def test_a_ctrl_c_typed_on_a_sandboxed_pty_reaches_the_program_alone(connect, server, tmp_path):
    """A ^C typed on the PTY (byte 0x03 written by process/write) is sent by the kernel to the terminal's
    foreground process group.  That was bubblewrap's (it owned the terminal): bubblewrap, without a SIGINT
    handler, died of it and --die-with-parent took the sandbox, so a program handling SIGINT was killed
    (exit 1 after "caught").  Now an init inside the sandbox makes the program the terminal's session leader:
    the program alone gets the SIGINT, handles it and exits by itself; and the window size reaches it."""
    peer = connect(server.url)
    peer.initialize()
    script = ("import os, time\ntry:\n    print('ready', os.get_terminal_size(), flush=True)\n    time.sleep(20)\n"
              "except KeyboardInterrupt:\n    print('caught', flush=True)\ntime.sleep(0.3)\nprint('done', flush=True)")
    peer.call("process/start", start_params("c", ["python3", "-c", script], tty=True,
                                            sandbox=sandbox_writing(tmp_path)))
    peer.wait_for(lambda m: m.get("method") == "process/output" and b"ready" in base64.b64decode(m["params"]["chunk"]))
    assert _write(peer, "c", b"\x03", "w1")["status"] == "accepted"
    events = sorted(peer.wait_closed("c"), key=lambda m: m["params"]["seq"])
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    text = output.replace(b"\r\n", b"\n")
    assert text.startswith(b"ready os.terminal_size(columns=80, lines=24)\n")
    assert text.endswith(b"caught\ndone\n"), text
    assert [m["params"]["exitCode"] for m in events if m["method"] == "process/exited"] == [0]


def _ended(process: psutil.Process) -> bool:
    """Whether ``process`` has exited (a zombie, or reaped: gone between two looks too)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@needs_bwrap
def test_a_job_control_shell_in_a_sandboxed_pty_runs_its_jobs(connect, server, tmp_path):
    """An interactive shell in a sandbox leads its terminal's session, so it can give the terminal to a job
    (tcsetpgrp) and take it back: a ^C typed while the job runs ends the job, not the shell or the sandbox (which
    also ended it: the shell, unable to set the terminal's group, went on with ``Cannot set tty process group``)."""
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("sh", ["/bin/sh", "-i"], tty=True, sandbox=sandbox_writing(tmp_path),
                                            env={"PATH": "/usr/bin:/bin", "PS1": "$ "}))
    _write(peer, "sh", b"sleep 31\n", "w1")
    (job,) = wait_until(lambda: running_descendants(os.getpid(), ["sleep", "31"]), timeout=10)
    _write(peer, "sh", b"\x03", "w2")
    wait_until(lambda: _ended(job), timeout=10)
    _write(peer, "sh", b"echo after-sleep $?\nexit 5\n", "w3")
    events = sorted(peer.wait_closed("sh"), key=lambda m: m["params"]["seq"])
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    # the job's status, killed by SIGINT (128 + 2); the typed line's echo has "$?" (it may come before a prompt)
    assert b"after-sleep 130\r\n" in output, output
    assert [m["params"]["exitCode"] for m in events if m["method"] == "process/exited"] == [5], output


def _command(entries, init):
    """The sandbox command of a PTY program under a restricted profile of (path, access) ``entries``, its init
    (``dumb-init``) found at ``init``."""
    from exec_server.server.fs.helper import bubblewrap_command
    from exec_server.server.fs.sandbox import parse_sandbox
    from exec_server.server.process import contain

    context = {"permissions": {"type": "managed", "network": "enabled", "file_system": {
        "type": "restricted", "entries": [{"path": {"type": "path", "path": "file://" + path}, "access": access}
                                          for path, access in entries]}}, "windowsSandboxLevel": "disabled"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contain, "find_dumb_init", lambda: init)
        return bubblewrap_command(parse_sandbox(context, process=True), [], "bwrap", python=False,
                                  new_session=False, mount_points=[], terminal_init=contain.sandbox_init_command())


def test_the_sandbox_init_runs_only_where_the_sandbox_shows_its_libraries(tmp_path):
    """dumb-init is dynamically linked: under a profile that hides the C library, or part of it, it could not
    start (``error while loading shared libraries``), where a static program did; there the sandbox runs the
    program as before (bubblewrap keeps the terminal).  Nor is it shown inside a folder the profile denies, nor
    in one it is reached through by a symlink (bubblewrap follows it inside the sandbox)."""
    from exec_server.server.process.contain import init_takes_terminal

    init = tmp_path / "venv" / "bin" / "dumb-init"
    init.parent.mkdir(parents=True)
    init.write_bytes(b"")
    work = tmp_path / "work"
    work.mkdir()
    shown = _command([("/", "read"), (str(work), "write")], str(init))
    assert init_takes_terminal(shown) and shown[-1] == "--"
    assert shown[shown.index("/dev") + 1:][:2] == ["--", str(init)]
    assert ["--ro-bind", str(init), str(init)] == shown[shown.index(str(init)) - 1:][:3]
    hidden = _command([(str(work), "write")], str(init))  # no system folder at all
    assert hidden[-1] == "--" and "dumb-init" not in " ".join(hidden) and not init_takes_terminal(hidden)
    for lib in ("/lib", os.path.realpath("/lib"), "/usr/lib") + _libc_folder():
        denied_lib = _command([("/", "read"), (lib, "none")], str(init))
        assert not init_takes_terminal(denied_lib) and "dumb-init" not in " ".join(denied_lib), lib
    denied_init = _command([("/", "read"), (str(init.parent), "none")], str(init))
    assert not init_takes_terminal(denied_init) and "dumb-init" not in " ".join(denied_init)
    (tmp_path / "link").symlink_to("venv")
    through_link = _command([("/", "read"), (str(init.parent), "none")], str(tmp_path / "link" / "bin" / "dumb-init"))
    assert not init_takes_terminal(through_link) and "dumb-init" not in " ".join(through_link)
    assert not init_takes_terminal(_command([("/", "read")], None))


def _libc_folder():
    """The folder of the C library this interpreter maps (one item), or nothing (not glibc, not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            found = {os.path.dirname(os.path.realpath(line.split()[-1])) for line in maps
                     if os.path.basename(line.split()[-1]).startswith("libc.so")}
    except OSError:
        return ()
    return tuple(found) if len(found) == 1 else ()


def _static_program(path, text: bytes, status: int):
    """A static x86-64 Linux executable at ``path`` that writes ``text`` and exits with ``status`` (no loader, no
    C library: the ELF header, one loadable segment and eight instructions)."""
    import struct

    code = (b"\xb8\x01\x00\x00\x00\xbf\x01\x00\x00\x00\x48\x8d\x35\x13\x00\x00\x00"  # write(1, text, len)
            + b"\xba" + struct.pack("<I", len(text)) + b"\x0f\x05"
            + b"\xb8\x3c\x00\x00\x00\xbf" + struct.pack("<I", status) + b"\x0f\x05") + text  # exit(status)
    size, base = 64 + 56 + len(code), 0x400000
    header = struct.pack("<4sBBBB8sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, b"", 2, 0x3E, 1, base + 120, 64, 0, 0,
                         64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    path.write_bytes(header + segment + code)
    path.chmod(0o755)


@needs_bwrap
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the static program is x86-64 machine code")
def test_a_static_program_runs_on_a_pty_in_a_sandbox_that_hides_the_c_library(connect, server, tmp_path):
    """A profile may deny the C library's folder below a readable /usr/lib: dumb-init, dynamically linked, cannot
    start there (``error while loading shared libraries``, exit 127), but a static program could, as before the
    init: the sandbox then runs it without the init."""
    if not _libc_folder():
        pytest.skip("this interpreter maps no glibc libc.so")
    (libraries,) = _libc_folder()
    program = tmp_path / "static"
    _static_program(program, b"static-ok\n", 7)
    entries = [{"path": {"type": "path", "path": "file:///"}, "access": "read"},
               {"path": {"type": "path", "path": "file://" + libraries}, "access": "none"}]
    profile = {"permissions": {"type": "managed", "network": "enabled",
                               "file_system": {"type": "restricted", "entries": entries}},
               "windowsSandboxLevel": "disabled"}
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("s", [str(program)], tty=True, sandbox=profile))
    events = sorted(peer.wait_closed("s"), key=lambda m: m["params"]["seq"])
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    assert output == b"static-ok\r\n"
    assert [m["params"]["exitCode"] for m in events if m["method"] == "process/exited"] == [7]


@needs_bwrap
def test_a_sandboxed_program_that_signals_every_process_it_can_is_not_sent_them_twice(connect, server, tmp_path):
    """In the sandbox the PTY's init (dumb-init) is PID 2, which ``kill -TERM -1`` reaches (it spares the caller and
    PID 1 only): forwarding it to the program's group killed the program (143) with a signal it had not been
    sent.  The init forwards nothing there: the program prints and exits by itself."""
    peer = connect(server.url)
    peer.initialize()
    script = "kill -TERM -1; kill -HUP -1; sleep 0.5; echo survived; exit 4"
    peer.call("process/start", start_params("k", ["/bin/sh", "-c", script], tty=True,
                                            sandbox=sandbox_writing(tmp_path)))
    events = sorted(peer.wait_closed("k"), key=lambda m: m["params"]["seq"])
    output = b"".join(base64.b64decode(m["params"]["chunk"]) for m in events if m["method"] == "process/output")
    assert output == b"survived\r\n"
    assert [m["params"]["exitCode"] for m in events if m["method"] == "process/exited"] == [4]


def _ignoring_hup_quit_usr1() -> None:  # a server started under nohup, as a shell's background job,
    import signal  # by a parent that blocks SIGTERM and SIGUSR2

    for number in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGUSR2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("which", ["ours", "reference"])
def test_a_pty_child_gets_the_default_of_the_signals_its_server_ignores(tmp_path, which):
    """A server started under ``nohup`` (SIGHUP ignored) passed that on to every PTY child, so a terminal's
    hang-up did not end them; the reference's PTY (portable-pty) sets SIGCHLD, SIGHUP, SIGINT, SIGQUIT,
    SIGTERM and SIGALRM back to their default and empties the signal mask, and a pipe child keeps what the
    server ignores, on both."""
    from conftest import reference_binary
    from exec_server import Client

    if which == "ours":
        argv = [sys.executable, "-m", "exec_server", "--linux-sandbox-pid-namespace", "inherit"]
    else:
        if reference_binary() is None:
            pytest.skip("reference server not installed (set EXEC_SERVER_REFERENCE)")
        argv = [reference_binary(), "exec-server"]
    server = subprocess.Popen(argv + ["--listen", "ws://127.0.0.1:0"], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, preexec_fn=_ignoring_hup_quit_usr1,
                              env=dict(os.environ, CODEX_HOME=str(tmp_path)))
    try:
        with Client.connect(server.stdout.readline().decode().strip(), timeout=10) as client:
            ignored, blocked = {}, {}
            for tty in (False, True):
                status = client.run(["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"], tty=tty,
                                    timeout=20).stdout.split()
                blocked[tty], ignored[tty] = int(status[1], 16), int(status[3], 16)
    finally:
        server.kill()
        server.wait(10)
        server.stdout.close()
    hup, quit_, usr1 = 1 << 0, 1 << 2, 1 << 9
    assert ignored[False] & (hup | quit_ | usr1) == hup | quit_ | usr1  # pipes: as the server ignores them
    assert ignored[True] & (hup | quit_ | usr1) == usr1  # a PTY: SIGHUP and SIGQUIT at their default
    assert blocked[True] == 0  # and none blocked
