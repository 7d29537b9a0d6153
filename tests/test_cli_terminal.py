"""``exec-server run --stdin`` passes local end of file on; ``run --tty`` passes the local terminal size on.

The terminal tests run the CLI under a pseudo-terminal the test creates
(``pty.openpty``), sized with ``stty rows R cols C``, as its controlling
terminal; a resize is TIOCSWINSZ on that terminal, which makes the kernel
send SIGWINCH to the CLI (sent once more by the test, by PID, in case).
"""

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from test_cli import CLI, listening  # noqa: F401  (a fixture)

pytestmark = pytest.mark.posix


def pipe_cli(args, data: bytes, timeout: float = 30):
    return subprocess.run(CLI + list(args), input=data, capture_output=True, timeout=timeout)


def test_run_stdin_forwards_end_of_file_embedded():
    done = pipe_cli(["run", "--stdin", "--", "wc", "-l"], b"a\nb\n")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, b"2", b"")


def test_run_stdin_forwards_end_of_file_through_url(listening):  # noqa: F811
    _server, url = listening
    done = pipe_cli(["run", "--url", url, "--stdin", "--", "wc", "-l"], b"a\nb\n")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, b"2", b"")


def test_run_stdin_streams_large_input():
    payload = os.urandom(2 * 1024 * 1024)
    done = pipe_cli(["run", "--stdin", "--", "sha256sum"], payload)
    import hashlib
    assert done.returncode == 0 and done.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("data, expected", [(b"hello\nworld\n", b"hello"), (b"", b"")])
def test_run_tty_forwards_a_piped_stdin_and_its_end(data, expected):
    """``echo hello | run --tty -- head -1``: --stdin is always on with --tty, a pipe included (it hung: the
    remote head waited for input that never came); the end of the pipe is the terminal's end of file."""
    done = pipe_cli(["run", "--tty", "--", "head", "-1"], data)
    assert done.returncode == 0, done
    assert expected in done.stdout and b"world" not in done.stdout.replace(b"world\r\n", b"", 1)  # echo alone


@pytest.mark.reference
def test_run_stdin_against_the_reference_falls_back(tmp_path):
    """The reference cannot close a stdin: the command sees no end of file, and the CLI says so once."""
    from conftest import start_reference

    reference = start_reference(str(tmp_path))
    try:
        command = ["sh", "-c", "head -n 2; sleep 1"]  # ends without end of file; the note comes first
        done = pipe_cli(["run", "--url", reference.url, "--stdin", "--"] + command, b"a\nb\n")
        assert (done.returncode, done.stdout) == (0, b"a\nb\n")
        assert done.stderr == (b"exec-server run: the server cannot close the remote stdin (no closeStdin "
                               b"extension); end the command with Ctrl-C\n")
        done = run_under_terminal(["run", "--url", reference.url, "--tty", "--", "stty", "size"], 33, 101)
        assert done[0] == 0 and done[1].strip() == b"24 80"
    finally:
        reference.stop()


# ----------------------------------------------------------------- terminals
class Terminal:
    """The CLI running under a new pty (its controlling terminal) of the given size."""

    def __init__(self, args, rows: int, cols: int):
        self.master, slave = pty.openpty()
        subprocess.run(["stty", "rows", str(rows), "cols", str(cols)], stdin=slave, check=True, timeout=10)
        self.process = subprocess.Popen(CLI + list(args), stdin=slave, stdout=slave, stderr=slave,
                                        start_new_session=True, preexec_fn=_controlling_terminal)
        os.close(slave)
        self.output = b""

    def read_until(self, wanted: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no %r within %.0f s; got %r" % (wanted, timeout, self.output))
            if not self._read(remaining):
                raise AssertionError("terminal closed without %r; got %r" % (wanted, self.output))
        return self.output

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 0.5))
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave descriptor is closed
                return False
            if not data:
                return False
            self.output += data
        return True

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.kill(self.process.pid, signal.SIGWINCH)

    def finish(self, timeout: float = 20.0):
        try:
            status = self.process.wait(timeout)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
                pass
            return status, self.output
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            os.close(self.master)


def _controlling_terminal() -> None:  # in the child, after setsid
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_under_terminal(args, rows: int, cols: int):
    return Terminal(args, rows, cols).finish()


def test_run_tty_gets_the_local_size():
    status, output = run_under_terminal(["run", "--tty", "--", "stty", "size"], 33, 101)
    assert status == 0 and output.strip() == b"33 101"


def test_run_tty_follows_a_resize(listening):  # noqa: F811
    _server, url = listening
    script = ("trap 'stty size; exit 0' WINCH; echo ready; stty size; "
              "i=0; while [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; exit 7")
    terminal = Terminal(["run", "--url", url, "--tty", "--", "sh", "-c", script], 30, 90)
    try:
        terminal.read_until(b"30 90\r\n")
        terminal.resize(41, 132)
        terminal.read_until(b"41 132\r\n")
    finally:
        status, output = terminal.finish()
    assert status == 0, output


def test_run_tty_from_a_terminal_without_termios_is_a_usage_error():
    """A Windows console (no termios): it started the command, then ended in an ImportError traceback."""
    master, slave = pty.openpty()
    code = ("import sys; sys.modules['termios'] = None; from exec_server.cli import console_main; "
            "sys.argv = ['exec-server', 'run', '--tty', '--', 'true']; console_main()")
    try:
        done = subprocess.run([CLI[0], "-c", code], stdin=slave, capture_output=True, timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert done.returncode == 2, done
    assert done.stderr.decode().splitlines() == [
        "exec-server run: --tty with a terminal needs termios (POSIX); on Windows pipe the input in"]


def test_the_terminal_is_made_raw_and_restored_though_a_signal_interrupts_the_call(monkeypatch):
    """termios calls are outside PEP 475's retries: a ``run --tty`` stopped in the background (SIGTTOU) and
    continued met ``termios.error: (4, 'Interrupted system call')`` from ``tty.setraw``, a traceback."""
    import errno
    import tty

    from exec_server.cli import run

    master, slave = pty.openpty()
    real_setraw, real_tcsetattr, interrupted = tty.setraw, termios.tcsetattr, []

    def once_interrupted(real):
        def call(*args):
            if len(interrupted) < 2 and real not in interrupted:
                interrupted.append(real)
                raise termios.error(errno.EINTR, "Interrupted system call")
            return real(*args)
        return call

    monkeypatch.setattr(tty, "setraw", once_interrupted(real_setraw))
    monkeypatch.setattr(termios, "tcsetattr", once_interrupted(real_tcsetattr))
    try:
        before = termios.tcgetattr(slave)
        with run._RawTerminal(slave):
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # raw: no line editing
        assert termios.tcgetattr(slave) == before and len(interrupted) == 2
        monkeypatch.setattr(tty, "setraw", lambda fd: (_ for _ in ()).throw(termios.error(errno.EIO, "I/O")))
        with pytest.raises(termios.error):  # another error is raised as it came
            run._RawTerminal(slave).__enter__()
    finally:
        os.close(master)
        os.close(slave)
