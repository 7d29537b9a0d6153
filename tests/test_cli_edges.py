"""``exec-server run`` at its local edges: closed or full output, closed stdin, bad bytes, signals to several hosts.

Each case printed a Python traceback, hung, or left the remote commands
running until the session expired (80 s).
"""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import reap, running_descendants, start_ours, wait_until
from exec_server.cli.output import LocalOutput
from exec_server.server.config import ServerConfig

pytestmark = pytest.mark.posix

CLI = [sys.executable, "-m", "exec_server"]
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}


def signalled(cli: subprocess.Popen, number: int, ready) -> tuple:
    """Send signal ``number`` to ``cli`` once ``ready()`` returns; ``(stdout, stderr)`` after it ends."""
    try:
        ready()
        cli.send_signal(number)
        return cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()


@pytest.fixture
def two():
    servers = [start_ours() for _ in range(2)]
    yield [word for server in servers for word in ("--url", server.url)]
    for server in servers:
        server.stop()


def shell(line: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``line`` in sh, where ``$CLI`` is the exec-server command (for redirections of its own descriptors)."""
    return subprocess.run(["sh", "-c", line], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(ENV, CLI=" ".join(CLI)))


@pytest.mark.parametrize("redirect", [">&-", "> /dev/full"])
def test_output_that_cannot_be_written_ends_run_with_one_line(redirect):
    done = shell("$CLI run -- sh -c 'echo hi; sleep 56.5' %s" % redirect)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(b"exec-server run: cannot write to stdout: ") and b"Traceback" not in done.stderr
    assert done.stderr.count(b"\n") == 1


@pytest.mark.parametrize("redirect, closed", [("<&-", "stdin"), (">&-", "stdout"), ("<&- >&-", "stdin and stdout")])
def test_a_stdio_server_without_its_stdin_or_stdout_says_so_in_one_line(redirect, closed):
    """It raised AttributeError (sys.stdin or sys.stdout None) with a traceback."""
    done = shell("$CLI --listen stdio %s" % redirect, timeout=30)
    assert (done.returncode, done.stderr.decode()) == (1, "exec-server: cannot listen: %s closed (--listen stdio)\n"
                                                       % closed)


def test_a_stdio_server_without_its_stderr_serves():
    """``2>&-``: it answered nothing and ended with status 1 (pointing stray output at stderr raised)."""
    request = json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "t"}}) + "\n"
    done = subprocess.run(["sh", "-c", "$CLI --listen stdio 2>&-"], input=request.encode(), capture_output=True,
                          timeout=30, env=dict(ENV, CLI=" ".join(CLI)))
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["id"] == 1 and "sessionId" in json.loads(lines[0])["result"]


@pytest.mark.parametrize("redirect", [">&-", "> /dev/full"])
def test_a_listener_whose_stdout_cannot_be_written_serves_on(redirect):
    """Printing its URL raised (AttributeError, ENOSPC) with a traceback and status 1; now a warning says so on
    stderr, with the URL, and the server serves."""
    from exec_server import Client

    child = subprocess.Popen(["sh", "-c", "exec $CLI --listen ws://127.0.0.1:0 %s" % redirect],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(ENV, CLI=" ".join(CLI)))
    try:
        for _ in range(20):  # a warning of the containment probe may come first (no PID namespace there)
            warning = child.stderr.readline().decode()
            if "cannot write the URL" in warning or not warning:
                break
        assert "cannot write the URL to stdout (" in warning and "serving on ws://127.0.0.1:" in warning
        with Client.connect(warning.split("serving on ")[1].strip(), timeout=10) as client:
            assert client.run(["echo", "hi"], timeout=30).stdout == b"hi\n"
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
        assert b"Traceback" not in child.stderr.read()
    finally:
        reap(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/fd")
def test_descriptors_closed_at_start_get_the_null_device():
    """With stdin and stderr closed at start, the next files and sockets took descriptors 0 and 2 (a child or a
    stray write to stderr reached them); now the null device holds them, as in OpenSSH."""
    child = subprocess.Popen(["sh", "-c", "exec $CLI --listen ws://127.0.0.1:0 <&- 2>&-"], stdout=subprocess.PIPE,
                             env=dict(ENV, CLI=" ".join(CLI)))
    try:
        assert child.stdout.readline().startswith(b"ws://127.0.0.1:")
        assert [os.readlink("/proc/%d/fd/%d" % (child.pid, fd)) for fd in (0, 2)] == ["/dev/null"] * 2
    finally:
        reap(child)


def test_the_recovery_notice_never_reaches_stdout_when_stderr_was_closed(monkeypatch, capsys):
    """``print(file=sys.stderr)`` with stderr closed at start wrote the notice into stdout, the remote command's
    output; the notice of the missing closeStdin and cp's note on an interrupted server copy did the same."""
    from exec_server.cli import run

    monkeypatch.setattr(sys, "stderr", None)
    run._RecoveryNotice(25.0).emit(logging.LogRecord("t", logging.INFO, __file__, 1, "recovered", None, None))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("option", ["--stdin", "--tty"])
def test_a_closed_stdin_is_the_remote_end_of_file(option):
    done = shell("$CLI run %s -- cat <&-" % option, timeout=30)
    assert (done.returncode, done.stderr) == (0, b"")


def test_a_stdin_that_cannot_be_read_is_the_remote_end_of_file(tmp_path):
    """``run --stdin -- cat 0>FILE``: stdin opened write-only (EBADF; EIO from a terminal that is gone): the
    forwarding stopped without closing the remote stdin, and run waited for good on ``cat``."""
    done = shell("$CLI run --stdin -- cat 0>%s" % (tmp_path / "written"), timeout=30)
    assert (done.returncode, done.stderr) == (0, b"exec-server run: cannot read stdin: Bad file descriptor; the "
                                                 b"remote stdin gets its end of file\n")


def test_a_stdin_left_non_blocking_is_waited_on():
    """A stdin whose O_NONBLOCK another program set (EAGAIN on an empty pipe) ended the forwarding at once."""
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    cli = subprocess.Popen(CLI + ["run", "--stdin", "--", "cat"], stdin=reader, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=ENV)
    os.close(reader)
    try:
        time.sleep(0.5)  # run reads an empty pipe meanwhile
        os.write(writer, b"late\n")
        os.close(writer)
        out, err = cli.communicate(timeout=30)
    finally:
        reap(cli)
    assert (cli.returncode, out, err) == (0, b"late\n", b"")


@pytest.mark.parametrize("words", [[b"--", b"arg\xff"], [b"--env", b"NAME=\xff", b"--", b"true"]])
def test_bytes_that_are_not_utf8_are_a_usage_error(words):
    argv = [os.fsencode(word) for word in CLI] + [b"run"] + words
    done = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=ENV)
    assert done.returncode == 2 and b"is not UTF-8 (the protocol carries UTF-8 text)" in done.stderr, done.stderr
    assert done.stderr.count(b"\n") == 1
    assert b"b'arg\\xff'" in done.stderr or b"b'\\xff'" in done.stderr, done.stderr  # the bytes given, not '\udcff'


@pytest.mark.parametrize("command", ["run", "cp"])
def test_a_via_command_line_with_an_unbalanced_quote_is_a_usage_error(command):
    operands = ["--", "true"] if command == "run" else ["/etc/hostname", ":/nonexistent/x"]
    done = subprocess.run(CLI + [command, "--via", "'x"] + operands, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=ENV)
    assert (done.returncode, done.stderr) == (
        2, b"exec-server %s: --via is not a command line: No closing quotation ('x)\n" % command.encode())


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_several_hosts_end_their_remote_commands_at_sigterm_and_sighup(two, number):
    argv = ["sleep", "57.%d" % number]
    cli = subprocess.Popen(CLI + ["run"] + two + ["--", "sh", "-c", "echo ready; exec %s" % " ".join(argv)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)

    def ready():
        assert cli.stdout.readline().endswith(b"] ready\n") and cli.stdout.readline().endswith(b"] ready\n")
        wait_until(lambda: len(running_descendants(os.getpid(), argv)) == 2, timeout=10)

    _out, err = signalled(cli, number, ready)
    assert cli.returncode == 123 and err.count(b"  137 ") == 2, err
    wait_until(lambda: not running_descendants(os.getpid(), argv), timeout=10)


def test_several_hosts_into_a_closed_pipe_end_with_141_and_their_commands(two):
    """``run --url A --url B -- yes | head -1``: as for one host, 141 and the remote trees killed."""
    cli = subprocess.Popen(CLI + ["run"] + two + ["--", "yes", "58"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)
    try:
        assert cli.stdout.readline().endswith(b"] 58\n")
        cli.stdout.close()  # the reader leaves, as head does
        assert cli.wait(timeout=30) == 141
        assert b"Traceback" not in cli.stderr.read()
    finally:
        reap(cli)
    wait_until(lambda: not running_descendants(os.getpid(), ["yes", "58"]), timeout=10)


INTERRUPT_BEFORE_THE_WRITE = """
from fs_helper import replacing
def interrupted(*args):  # the signal lands before the write begins
    os.kill(os.getpid(), SIGNUM)
    raise AssertionError('the signal did not end it')
replacing._write_and_rename = interrupted
"""
INTERRUPT_AS_IT_IS_MADE = """
real_open = os.open
def opening(path, *args, **kwargs):  # the signal lands as the temporary file has just been made
    fd = real_open(path, *args, **kwargs)
    if str(path).endswith('.tmp'):
        os.kill(os.getpid(), SIGNUM)
    return fd
os.open = opening
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("where", [INTERRUPT_BEFORE_THE_WRITE, INTERRUPT_AS_IT_IS_MADE], ids=["before-write", "made"])
def test_a_signal_right_after_the_temporary_file_is_made_leaves_none(server, tmp_path, signum, where):
    """A SIGTERM (or ^C) between the making of a download's temporary file and the writing that removes it on
    an error left the file beside the destination (CI met it on Python 3.10, whose mkstemp takes longer to
    return the name it made)."""
    (tmp_path / "remote.bin").write_bytes(b"NEW")
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "dest.bin").write_bytes(b"OLD")
    source, destination = ":%s" % (tmp_path / "remote.bin"), str(folder / "dest.bin")
    code = ("import os, sys\nSIGNUM = %d\n%s\n"
            "from exec_server.cli import console_main\n"
            "sys.argv = ['exec-server', 'cp', '--url', %r, %r, %r]\n"
            "console_main()\n") % (signum, where, server.url, source, destination)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=ENV)
    assert done.returncode == (-signum if signum == signal.SIGINT else 128 + signum), done.stderr
    assert os.listdir(folder) == ["dest.bin"] and (folder / "dest.bin").read_bytes() == b"OLD"


@pytest.mark.parametrize("number, words", [(signal.SIGTERM, b"ended by signal 15"), (signal.SIGINT, b"interrupted")])
def test_sigterm_ends_a_cp_download_as_ctrl_c_does(server, tmp_path, number, words):
    """The temporary file beside the destination goes, the old file stays, status 128 + N, one line that names
    cp (Ctrl-C's said ``exec-server: interrupted``)."""
    source = tmp_path / "big.bin"
    with open(source, "wb") as handle:
        handle.truncate(0)
        for _ in range(96):
            handle.write(os.urandom(1 << 20))
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "dest.bin").write_bytes(b"OLD")
    cli = subprocess.Popen(CLI + ["cp", "--url", server.url, ":%s" % source, str(folder / "dest.bin")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)
    _out, err = signalled(cli, number,  # once its temporary file is there
                          lambda: wait_until(lambda: len(os.listdir(folder)) == 2, timeout=30, interval=0.001))
    assert (cli.returncode, err) == (-number if number == signal.SIGINT else 128 + number,
                                     b"exec-server cp: %s\n" % words)
    assert os.listdir(folder) == ["dest.bin"] and (folder / "dest.bin").read_bytes() == b"OLD"


def test_an_interrupted_copy_on_the_server_says_it_goes_on(monkeypatch, capsys):
    """``cp :A :B`` is one fs/copy request: Ctrl-C cannot stop it, and cp says so rather than imply it did."""
    from exec_server.cli import cp

    class Connected:
        fs = None

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return None

    def interrupted(fs, source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(cp, "connect", lambda args, name: Connected())
    monkeypatch.setattr(cp, "copy", interrupted)
    args = type("Args", (), {"url": "ws://127.0.0.1:1", "via": None, "source": ":/a", "destination": ":/b"})
    with pytest.raises(KeyboardInterrupt):
        cp.copy_files(args)
    assert "the copy on the server is one request, which goes on to its end" in capsys.readouterr().err


@pytest.mark.parametrize("words", [["run"], ["run", "hosts"], ["cp"]])
def test_ctrl_c_stops_the_shell_loop_that_runs_it(request, tmp_path, words):
    """A shell waiting for a command that a Ctrl-C (SIGINT to the terminal's foreground group) ended with a
    status of 130 takes it as handled and goes on with its script (bash's wait-and-cooperative-exit): ``for``
    loops of run and cp went on to the next command.  They now end by SIGINT once the remote trees and the
    temporary files are dealt with, as Python does for a KeyboardInterrupt nothing caught."""
    marker = "61.%d" % len(words[0] + "".join(words[1:]))
    if words[0] == "cp":
        server = start_ours()
        request.addfinalizer(server.stop)
        fifo = tmp_path / "slow"
        os.mkfifo(str(fifo))  # cp's local read of a FIFO waits for a writer: the copy is under way for good
        command = CLI + ["cp", "--url", server.url, str(tmp_path / "slow"), ":%s" % (tmp_path / "copy")]
        ready = lambda: (time.sleep(1.0), True)[1]  # noqa: E731
    else:
        urls = request.getfixturevalue("two") if words[1:] else []
        command = CLI + ["run"] + urls + ["--", "sleep", marker]
        sleepers = 2 if urls else 1
        ready = lambda: len(running_descendants(os.getpid(), ["sleep", marker])) == sleepers  # noqa: E731
    script = 'for i in 1 2 3; do "$@"; echo "next $i $?"; done'
    shell = subprocess.Popen(["bash", "-c", script, "loop"] + command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        wait_until(ready, timeout=20)
        os.killpg(shell.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = shell.communicate(timeout=30)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.communicate()
    assert (shell.returncode, out) == (-signal.SIGINT, b""), err
    assert b"Traceback" not in err
    wait_until(lambda: not running_descendants(os.getpid(), ["sleep", marker]), timeout=10)


def test_an_interrupted_run_ends_by_sigint_after_its_exit_handlers(tmp_path):
    """Ending by SIGINT skipped the interpreter's exit handlers (killed itself before them): an interrupted
    ``run --otel`` exported nothing.  Now the KeyboardInterrupt nothing catches ends it, as Python ends any."""
    witness = tmp_path / "exit-handlers-ran"
    code = ("import atexit, sys\n"
            "atexit.register(lambda: open(%r, 'w').close())\n"
            "from exec_server.cli import console_main\n"
            "sys.argv = ['exec-server', 'run', '--', 'sleep', '61.5']\n"
            "console_main()\n") % str(witness)
    cli = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, env=ENV)
    _out, err = signalled(cli, signal.SIGINT, lambda: wait_until(
        lambda: running_descendants(cli.pid, ["sleep", "61.5"]), timeout=20))
    # (before run's own handlers are in place, the interrupt is run's, which says so)
    assert cli.returncode == -signal.SIGINT and err in (b"", b"exec-server run: interrupted\n"), err
    assert witness.exists()


def _wait_until_idle(process: psutil.Process, timeout: float, quiet: float = 0.5) -> None:
    """Until ``process`` used no CPU for ``quiet`` seconds in a row (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    last, since = sum(process.cpu_times()[:2]), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "still busy after %g s" % timeout
        time.sleep(0.1)
        now = sum(process.cpu_times()[:2])
        if now - last > 0.01:
            last, since = now, time.monotonic()


def test_output_a_slow_reader_fell_too_far_behind_for_is_told_as_such(tmp_path):
    """The protocol has no flow control: a reader that falls behind by more than run buffers and the server
    retains loses output, and run says why in words a user can act on (it said ``process proc-... lost output
    seqs A..B before it was read (max_buffered_output)``)."""
    reader, writer = os.pipe()
    done = tmp_path / "written"
    cli = subprocess.Popen(CLI + ["--retained-output-bytes", "65536", "--spool-bytes-per-process", "0", "run", "--",
                                  "sh", "-c", "head -c 100000000 /dev/zero; touch %s" % done],
                           stdout=writer, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)
    os.close(writer)
    try:
        # nothing is read until all is written: 64 MiB wait in run, the rest is dropped and not retained
        wait_until(done.exists, timeout=60)
        # and until run has taken in what the server sent: under load its reader lags behind the embedded
        # server, whose messages wait in memory, and the first reads made room for them (CI py313: no loss)
        _wait_until_idle(psutil.Process(cli.pid), timeout=60)
        received = 0
        while True:
            data = os.read(reader, 1 << 20)
            if not data:
                break
            received += len(data)
        err = cli.communicate(timeout=60)[1]
    finally:
        reap(cli)
        os.close(reader)
    assert cli.returncode == 255 and 0 < received < 100000000
    assert err.startswith(b"exec-server run: output lost (seqs ") and err.endswith(
        b": the command wrote faster than its output was read, and fell behind by more than run buffers (64 MiB) "
        b"and the server retains (--retained-output-bytes, --spool-bytes-per-process); the remote command was "
        b"killed\n"), err


def test_server_options_before_run_configure_its_embedded_server():
    """``exec-server --linux-sandbox-pid-namespace inherit run ...`` ran in the default mode: the server options
    were parsed and dropped (and the same option after ``run`` is unknown)."""
    done = subprocess.run(CLI + ["--linux-sandbox-pid-namespace", "inherit", "run", "--", "sh", "-c",
                                 "echo ${EXEC_SERVER_PROCESS_ID:+marked}"],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=ENV)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"marked\n", b"")  # inherit mode's marker
    done = subprocess.run(CLI + ["--max-sessions", "0", "run", "--", "true"], capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=ENV)
    assert (done.returncode, done.stderr) == (2, b"exec-server run: --max-sessions must be at least 1\n")


@pytest.mark.parametrize("words, refused", [
    (["--listen", "ws://0.0.0.0:1", "--spool-dir", "/nonexistent", "run", "--", "true"],
     "--listen: run's embedded server has no listener"),
    (["--ws-auth", "capability-token", "run", "--", "true"], "--ws-auth: run's embedded server has no listener"),
    (["--spool-dir", "/x", "--max-sessions", "3", "run", "--url", "ws://127.0.0.1:1", "--", "true"],
     "--spool-dir, --max-sessions: a server option, for the server that --url, --via or --hosts names"),
    (["--linux-sandbox-pid-namespace", "inherit", "cp", "--url", "ws://127.0.0.1:1", "a", ":/b"],
     "--linux-sandbox-pid-namespace: a server option, for the server that --url, --via or --hosts names"),
    # typed with their default values, they were taken for options never given
    (["--listen", "ws://127.0.0.1:0", "run", "--", "true"], "--listen: run's embedded server has no listener"),
    (["--max-sessions", "256", "cp", "--url", "ws://127.0.0.1:1", "a", ":/b"],
     "--max-sessions: a server option, for the server that --url, --via or --hosts names"),
    # the WebSocket listener's alone, not counted as a listener's
    (["--initialize-timeout", "3", "--evict-idle-after", "3", "run", "--", "true"],
     "--initialize-timeout, --evict-idle-after: run's embedded server has no listener"),
])
def test_server_options_that_cannot_apply_are_usage_mistakes(words, refused):
    """They were accepted and ignored (a --listen of 0.0.0.0 without a token too)."""
    done = subprocess.run(CLI + words, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=ENV)
    assert done.returncode == 2
    assert ("exec-server %s: error: %s" % (words[words.index("run") if "run" in words else words.index("cp")],
                                           refused)).encode() in done.stderr, done.stderr


@pytest.mark.parametrize("words, refused", [
    (["--ws-auth", "capability-token", "--ws-token-file", "TOKEN"], "--ws-auth, --ws-token-file"),
    (["--tls-certfile", "/nonexistent", "--max-conn", "5"], "--tls-certfile, --max-connections"),
    (["--ping-interval", "0", "--shutdown-timeout", "1"], "--ping-interval, --shutdown-timeout"),
])
def test_websocket_options_of_a_stdio_server_are_usage_mistakes(tmp_path, words, refused):
    """``--listen stdio --ws-auth capability-token ...`` served without any auth, and said nothing (the
    reference refuses WebSocket auth there); the options a stdio server uses are still taken."""
    token = tmp_path / "token"
    token.write_text("a-token-of-32-characters-or-more-xxxxxxxx\n")
    token.chmod(0o600)
    initialize = b'{"id":1,"method":"initialize","params":{"clientName":"t"}}\n'
    words = [str(token) if word == "TOKEN" else word for word in words]
    done = subprocess.run(CLI + ["--listen", "stdio"] + words, capture_output=True, timeout=60, input=initialize,
                          env=ENV)
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode().splitlines()[-1] == (
        "exec-server: error: %s: a WebSocket listener's (--listen ws:// or wss://), not --listen stdio's" % refused)
    done = subprocess.run(CLI + ["--listen", "stdio", "--send-timeout", "5", "--max-sessions", "3"],
                          capture_output=True, timeout=60, input=initialize, env=ENV)
    assert done.returncode == 0 and done.stdout.startswith(b'{"id":1,"result":{"sessionId":'), done.stderr


@pytest.mark.parametrize("number", [signal.SIGHUP, signal.SIGINT])
def test_a_signal_ignored_at_start_stays_ignored(number):
    """``nohup exec-server run ...`` survives the hangup, a shell's background job its Ctrl-C, as local commands do
    (``run`` installed its handlers anyway and killed the remote tree)."""
    cli = subprocess.Popen(CLI + ["run", "--", "sh", "-c", "echo ready; sleep 1; echo done"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV,
                           preexec_fn=lambda: signal.signal(number, signal.SIG_IGN))
    out, err = signalled(cli, number, lambda: cli.stdout.readline() == b"ready\n" or pytest.fail("not ready"))
    assert (cli.returncode, out, err) == (0, b"done\n", b"")


@pytest.mark.parametrize("words", [["run", "--bogus", "--", "true"], ["cp", "a", "b", ":/dir/"]])
def test_an_unknown_argument_is_told_with_the_subcommands_usage(words):
    done = subprocess.run(CLI + words, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=ENV)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2 and lines[0].startswith("usage: exec-server %s " % words[0]), lines[:2]
    unknown = words[1] if words[0] == "run" else words[3]
    assert lines[-1] == "exec-server %s: error: unrecognized arguments: %s" % (words[0], unknown)


@pytest.mark.parametrize("mode", ["--group-output", "--no-group-output"])
def test_several_hosts_into_a_full_disk_end_with_one_line(two, mode):
    """Every write of the group printers, a host's last partial line or whole block included."""
    words = (["--group-output"] if mode == "--group-output" else []) + ["--", "printf", "no-newline"]
    done = shell("$CLI run %s > /dev/full" % " ".join(two + words))
    assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr
    assert done.stderr == b"exec-server run: cannot write to stdout: No space left on device; the remote command " \
                          b"was killed\n"


def test_a_closed_stderr_takes_no_message_into_stdout():
    done = shell("$CLI run -- sh -c 'echo out; echo err >&2; sleep 56.75' 2>&-")
    assert (done.returncode, done.stdout) == (1, b"out\n")


def test_a_closed_stderr_takes_no_error_line_into_stdout():
    """``print(line, file=sys.stderr)`` with stderr closed at start (None) prints to stdout."""
    done = shell("$CLI run --url ws://127.0.0.1:1 -- true 2>&-")
    assert (done.returncode, done.stdout) == (255, b"")


def _pipe_holds(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is ``fd``."""
    import array
    import fcntl
    import termios

    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


@pytest.mark.parametrize("hosts, number", [(0, signal.SIGTERM), (0, signal.SIGHUP), (0, signal.SIGINT),
                                           (2, signal.SIGTERM), (2, signal.SIGHUP)])
def test_an_ending_signal_ends_run_while_its_stdout_reader_stopped_reading(request, hosts, number):
    """``run -- yes | a reader that stopped``: run's write to stdout blocks for good.  SIGTERM, SIGHUP and a
    second SIGINT killed the remote tree but left run blocked in that write until a SIGKILL; now it ends with
    the remote status (137; 123 for several hosts)."""
    urls = request.getfixturevalue("two") if hosts else []
    marker = "59.%d" % number
    argv = ["sh", "-c", 'trap "" INT; exec yes %s' % marker]  # SIGINT ignored: only the second one ends it
    reader, writer = os.pipe()
    cli = subprocess.Popen(CLI + ["run"] + urls + ["--"] + argv, stdout=writer, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, env=ENV)
    os.close(writer)
    try:
        wait_until(lambda: len(running_descendants(os.getpid(), ["yes", marker])) == max(hosts, 1), timeout=10)
        wait_until(lambda: _pipe_holds(reader) >= 32 * 1024, timeout=10)  # full: run's write is blocked
        time.sleep(0.2)
        cli.send_signal(number)
        if number == signal.SIGINT:
            time.sleep(0.5)
            assert cli.poll() is None  # the first one only interrupts
            cli.send_signal(number)
        assert cli.wait(timeout=20) == (123 if hosts else 137)
        assert b"Traceback" not in cli.stderr.read()
    finally:
        reap(cli)
        os.close(reader)
    wait_until(lambda: not running_descendants(os.getpid(), ["yes", marker]), timeout=10)


def _written(processes) -> int:
    """Bytes the least busy of ``processes`` has written (0 once one is gone)."""
    try:
        return min(process.io_counters().write_chars for process in processes)
    except psutil.Error:
        return 0


@pytest.mark.parametrize("hosts", [1, 2])
def test_an_ending_signal_after_a_long_stall_reports_the_kill_not_the_output_never_read(hosts):
    """``run -- yes | a reader that stopped`` for long: hundreds of MiB wait, in the client's buffer (64 MiB),
    the event queue of several hosts and the server's spool, or are lost past them.  After SIGTERM run read all
    of it to reach each exit status (for several hosts past the 10 s of KILL_WAIT: 255, "did not report its
    end"), or met the lost part (255, "lost output"); the output goes nowhere now, and run ends with the kill's
    status, which ``RemoteProcess.wait`` knows without reading the output before it."""
    servers = [start_ours(ServerConfig(spool_bytes_per_process=0)) for _ in range(hosts)]  # 1 MiB retained
    urls = [word for server in servers for word in ("--url", server.url)]
    marker = "59.%d" % hosts
    reader, writer = os.pipe()
    cli = subprocess.Popen(CLI + ["run"] + urls + ["--", "yes", marker], stdout=writer, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, env=ENV)
    os.close(writer)
    try:
        wait_until(lambda: len(running_descendants(os.getpid(), ["yes", marker])) == hosts, timeout=10)
        remote = running_descendants(os.getpid(), ["yes", marker])
        # past the client's buffer, the group's queue and the retention: output was dropped and evicted
        wait_until(lambda: _written(remote) > 160 * 1024 * 1024, timeout=60)
        cli.send_signal(signal.SIGTERM)
        _out, err = cli.communicate(timeout=30)
    finally:
        reap(cli)
        os.close(reader)
        for server in servers:
            server.stop()
    if hosts == 1:
        assert (cli.returncode, err) == (137, b"")
    else:
        assert cli.returncode == 123, err
        rows = err.decode().splitlines()[2:]
        assert [row.split()[1] for row in rows] == ["137", "137"] and len(rows[0].split()) == 4, err
    assert not running_descendants(os.getpid(), ["yes", marker])


def test_an_ending_signal_handled_as_a_write_begins_leaves_it_unwritten(monkeypatch):
    """Python runs a signal's handler between bytecodes, a call's start included: one handled after the write
    looked at ``ended`` but before it named its target went unseen by both, and that write then blocked for
    good on a reader that stopped reading."""
    written = io.BytesIO()
    local = LocalOutput(written, io.BytesIO())
    target = LocalOutput.target

    def handled_there(self, is_err):
        self.end()  # the ending signal's handler (end_with) runs here
        return target(self, is_err)

    monkeypatch.setattr(LocalOutput, "target", handled_there)
    local.write(False, b"after the end\n")
    assert written.getvalue() == b""


def test_the_summary_after_an_ending_signal_does_not_wait_for_good_on_a_stalled_stderr(two):
    """``run --url A --url B -- yes 2>&1 | a reader that stopped``: SIGTERM let go of the blocked write of the
    output, and then the summary of the hosts blocked on the same full pipe, until a second signal.  Last words
    after an ending signal wait LAST_WORDS_WAIT (2 s) at most."""
    marker = "59.77"
    reader, writer = os.pipe()
    cli = subprocess.Popen(CLI + ["run"] + two + ["--", "yes", marker], stdout=writer, stderr=writer,
                           stdin=subprocess.DEVNULL, env=ENV)
    os.close(writer)
    try:
        wait_until(lambda: len(running_descendants(os.getpid(), ["yes", marker])) == 2, timeout=10)
        wait_until(lambda: _pipe_holds(reader) >= 60 * 1024, timeout=10)  # full: writes block
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 123
    finally:
        reap(cli)
        os.close(reader)
    wait_until(lambda: not running_descendants(os.getpid(), ["yes", marker]), timeout=10)


@pytest.mark.parametrize("hosts, command, status", [(0, "nonexistent-command-59", 127), (2, "exit 1", 123),
                                                    (2, "true", 0)])
def test_a_stderr_that_cannot_be_written_leaves_the_commands_status(request, hosts, command, status):
    """The one-line error or the summary of several hosts written to a full stderr raised OSError out of main,
    or failed the interpreter's last flush: run ended with Python's 120 whatever the command did."""
    urls = " ".join(request.getfixturevalue("two")) if hosts else ""
    argv = command if command.startswith("nonexistent") else "sh -c '%s'" % command
    done = shell("$CLI run %s -- %s 2>/dev/full" % (urls, argv))
    assert (done.returncode, done.stdout) == (status, b"")


def test_a_stdio_server_with_stderr_closed_keeps_its_error_out_of_the_protocols_channel():
    """``print(line, file=sys.stderr)`` with stderr closed at start prints to stdout: under ``--listen stdio``
    the client read a line that is not JSON-RPC."""
    for mistake in ("--max-sessions 0", "--max-sessions abc", "--tls-certfile x", "--bogus"):  # ours, argparse's
        done = shell("$CLI --listen stdio %s 2>&- </dev/null" % mistake)
        assert (done.returncode, done.stdout) == (2, b""), mistake


def _blocking_sigterm() -> None:  # a parent that blocks SIGTERM: the mask is inherited across exec
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])


@pytest.mark.posix
@pytest.mark.parametrize("listen", ["ws://127.0.0.1:0", "stdio"])
def test_a_server_started_with_sigterm_blocked_stops_on_it(listen):
    """The stop handler was installed but the signal stayed blocked: SIGTERM stayed pending for ever, and a
    service manager waited out its stop timeout to SIGKILL the server (leaving its process trees)."""
    child = subprocess.Popen(CLI + ["--listen", listen], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=ENV, preexec_fn=_blocking_sigterm)
    try:
        if listen == "stdio":
            child.stdin.write(b'{"id": 1, "method": "initialize", "params": {"clientName": "t"}}\n')
            child.stdin.flush()
        assert child.stdout.readline()  # the URL, or initialize's answer: serving
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    finally:
        reap(child)
        child.stdin.close()
        child.stdout.close()
