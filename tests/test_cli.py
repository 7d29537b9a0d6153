"""The ``exec-server`` command: serve, run (embedded and --url), exit statuses, signals."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import all_gone, pid_alive, reap, running_descendants, wait_until

pytestmark = pytest.mark.posix

CLI = [sys.executable, "-m", "exec_server"]


def run_cli(*args, timeout=30, **kwargs):
    return subprocess.run(CLI + list(args), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def test_run_embedded_exit_status_and_output():
    done = run_cli("run", "--", sys.executable, "-c", "import sys; print('hello'); sys.exit(3)")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"hello\n", b"")


def test_run_separates_streams_and_reports_signals():
    done = run_cli("run", "--", "sh", "-c", "echo out; echo err >&2; kill -9 $$")
    assert (done.returncode, done.stdout, done.stderr) == (137, b"out\n", b"err\n")


def test_run_options(tmp_path):
    done = run_cli("run", "--cwd", str(tmp_path), "--env", "A=1", "--clean-env", "--", "/bin/sh", "-c", "pwd; env")
    lines = done.stdout.decode().splitlines()
    assert lines[0] == str(tmp_path)
    names = {line.split("=", 1)[0] for line in lines[1:]}
    assert "A=1" in lines and names <= {"A", "PWD", "SHLVL", "_", "OLDPWD"}  # only what sh itself adds


def test_run_tty():
    done = run_cli("run", "--tty", "--", "sh", "-c", "test -t 1 && echo tty")
    assert done.returncode == 0 and done.stdout == b"tty\r\n"


def test_run_spawn_failure():
    done = run_cli("run", "--", "no-such-program-xyz")
    assert done.returncode == 127  # as sh, ssh and docker run say "command not found"
    assert b"No such file or directory (os error 2)" in done.stderr


def test_run_without_command():
    assert run_cli("run").returncode == 2


def test_bad_env_option():
    done = run_cli("run", "--env", "novalue", "--", "true")
    assert done.returncode != 0 and b"NAME=VALUE" in done.stderr


def test_listen_refuses_non_loopback():
    done = run_cli("--listen", "ws://0.0.0.0:0")
    assert done.returncode == 2 and b"auth is required" in done.stderr


def test_listen_rejects_malformed_url():
    assert run_cli("--listen", "http://127.0.0.1:1").returncode == 2


@pytest.fixture
def listening():
    server = subprocess.Popen(CLI + ["--listen", "ws://127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    url = server.stdout.readline().decode().strip()
    yield server, url
    if server.poll() is None:
        server.kill()
    server.wait(10)
    server.stdout.close()
    server.stderr.close()


def test_listen_prints_url_and_run_uses_it(listening):
    server, url = listening
    assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
    done = run_cli("run", "--url", url, "--", "sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"out\n", b"err\n")


def test_sigterm_stops_server_and_kills_processes(listening, tmp_path):
    server, url = listening
    pid_file = tmp_path / "pid"
    runner = subprocess.Popen(CLI + ["run", "--url", url, "--reconnect-deadline", "1", "--",
                                     "sh", "-c", "sleep 300 & echo $! > %s; wait" % pid_file],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip())
        tree = wait_until(lambda: running_descendants(server.pid, ["sleep", "300"]))
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(5) == 0
        assert time.monotonic() - started < 2.5
        wait_until(lambda: all_gone(tree))
        assert runner.wait(10) == 137  # the server sent the kill's exit status before its Close frame
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(5)


@pytest.mark.parametrize("ignored", [False, True])
def test_sighup_shuts_down_in_order_unless_ignored(tmp_path, ignored):
    """A closed terminal (SIGHUP) killed the server outright: no exit reports (clients waited out their
    reconnect deadline), its spool directory left behind. Now it is a SIGTERM; under nohup it is ignored."""
    from exec_server import Client

    code = ("import signal, sys\n"
            "%s\n"
            "from exec_server.cli import main\n"
            "sys.exit(main(['--listen', 'ws://127.0.0.1:0', '--spool-dir', %r, '--retained-output-bytes', '1024']))\n"
            % ("signal.signal(signal.SIGHUP, signal.SIG_IGN)" if ignored else "", str(tmp_path)))
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        with Client.connect(url) as client:
            proc = client.start(["sh", "-c", "head -c 5000 /dev/zero; sleep 300.25"])
            tree = wait_until(lambda: running_descendants(server.pid, ["sleep", "300.25"]))
            wait_until(lambda: os.listdir(str(tmp_path)))  # the spool directory
            server.send_signal(signal.SIGHUP)
            if ignored:
                time.sleep(0.5)
                assert server.poll() is None and client.run(["true"], timeout=10).returncode == 0
                server.send_signal(signal.SIGTERM)
            assert server.wait(10) == 0
            assert proc.wait(timeout=5) == 137  # reported before the Close frame, not after a reconnect deadline
        wait_until(lambda: all_gone(tree))
        assert os.listdir(str(tmp_path)) == []
    finally:
        reap(server)


@pytest.mark.parametrize("refused", ["exec-server-stop", "exec-server-stop-accepting"])
def test_sigterm_where_no_thread_can_start_still_shuts_down_in_order(tmp_path, refused):
    """The signal handler runs the shutdown on a thread, and the shutdown stops the accept loop from
    another: where either cannot start (a task limit), the server exited 1 with a traceback (or not at
    all); it must still kill its trees and exit 0."""
    from exec_server import Client

    code = ("import sys, threading\n"
            "start = threading.Thread.start\n"
            "def refuse(thread):\n"
            "    if thread.name == %r:\n"
            "        raise RuntimeError(\"can't start new thread\")\n"
            "    start(thread)\n"
            "threading.Thread.start = refuse\n"
            "from exec_server.cli import main\n"
            "sys.exit(main(['--listen', 'ws://127.0.0.1:0']))\n" % refused)
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        with Client.connect(url) as client:
            client.start(["sleep", "300.5"])
            tree = wait_until(lambda: running_descendants(server.pid, ["sleep", "300.5"]))
            server.send_signal(signal.SIGTERM)
            assert server.wait(10) == 0
        wait_until(lambda: all_gone(tree))
        assert b"Traceback" not in server.stderr.read()
    finally:
        reap(server)


def test_ctrl_c_interrupts_the_remote_group(listening):
    server, url = listening
    runner = subprocess.Popen(CLI + ["run", "--url", url, "--", "sh", "-c", "echo ready; sleep 300"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert runner.stdout.readline() == b"ready\n"
        runner.send_signal(signal.SIGINT)
        assert runner.wait(10) == -signal.SIGINT  # 130 in a shell, which stops its script there
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(5)
        runner.stdout.close()
        runner.stderr.close()


def test_console_script_is_installed():
    import shutil
    script = shutil.which("exec-server", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert script, "exec-server console script not on PATH"
    done = subprocess.run([script, "--version"], capture_output=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith(b"exec-server ")


def test_cp_upload_download_and_remote_copy(listening, tmp_path):
    _server, url = listening
    source = tmp_path / "local.bin"
    payload = os.urandom(3 * 1024 * 1024 + 5)
    source.write_bytes(payload)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    done = run_cli("cp", "--url", url, str(source), ":%s/" % remote_dir)  # a directory: keeps the name
    assert done.returncode == 0, done.stderr
    assert (remote_dir / "local.bin").read_bytes() == payload
    assert run_cli("cp", "--url", url, ":%s/local.bin" % remote_dir, ":%s/copy.bin" % remote_dir).returncode == 0
    back = tmp_path / "back.bin"
    assert run_cli("cp", "--url", url, ":%s/copy.bin" % remote_dir, str(back)).returncode == 0
    assert back.read_bytes() == payload
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def test_cp_on_the_server_copies_into_an_existing_directory_like_cp_r(listening, tmp_path):
    """A file or a tree copied into a directory keeps its name (it failed: Is a directory (os error 21))."""
    _server, url = listening
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f.txt").write_bytes(b"deep")
    (tmp_path / "one.txt").write_bytes(b"one")
    (tmp_path / "into").mkdir()
    for source, destination in ((":%s/one.txt" % tmp_path, ":%s/into" % tmp_path),
                                (":%s/tree/" % tmp_path, ":%s/into/" % tmp_path)):
        done = run_cli("cp", "--url", url, source, destination)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "into" / "one.txt").read_bytes() == b"one"
    assert (tmp_path / "into" / "tree" / "sub" / "f.txt").read_bytes() == b"deep"
    done = run_cli("cp", "--url", url, ":%s/one.txt" % tmp_path, ":%s/new.txt" % tmp_path)  # a new name
    assert done.returncode == 0 and (tmp_path / "new.txt").read_bytes() == b"one"


def test_cp_errors(listening, tmp_path):
    _server, url = listening
    done = run_cli("cp", "--url", url, ":%s/missing" % tmp_path, str(tmp_path / "x"))
    assert done.returncode == 1 and b"No such file or directory (os error 2)" in done.stderr
    assert not (tmp_path / "x").exists()
    done = run_cli("cp", "--url", url, str(tmp_path / "a"), str(tmp_path / "b"))
    assert done.returncode == 2 and b"one side must be remote" in done.stderr  # a usage mistake


def test_sigterm_under_load_leaves_nothing(listening, tmp_path):
    import socket

    import psutil

    from conftest import Peer

    server, url = listening
    watched = psutil.Process(server.pid)
    peer = Peer(url)
    try:
        peer.initialize()
        for i in range(3):
            peer.call("process/start", {"processId": "p%d" % i,
                                        "argv": ["/bin/sh", "-c", "sleep 300 & yes > /dev/null"],
                                        "cwd": "file:///tmp", "env": {"PATH": os.environ["PATH"]}, "tty": i == 2})
        peer.send({"id": 99, "method": "process/read", "params": {"processId": "p0", "waitMs": 60000}})
        host, port = url[len("ws://"):].split(":")
        half = socket.create_connection((host, int(port)), timeout=5)  # a client mid-frame
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        half.recv(4096)
        half.sendall(b"\x81\xfe\x10\x00abcd" + b"x" * 100)  # a 4096-byte text frame, cut short
        descendants = wait_until(lambda: len(watched.children(recursive=True)) >= 6
                                 and watched.children(recursive=True))
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(5) == 0
        assert time.monotonic() - started < 2.0
        assert peer.is_disconnected() and peer.ws.close_reason == 1001
        for process in descendants:
            wait_until(lambda: not pid_alive(process.pid))
        half.close()
        assert not [m for m in peer.received if m.get("id") == 99]  # the long poll was dropped, not answered
    finally:
        peer.close()


def test_console_entry_exits_with_the_status_and_frozen_objects():
    """``python -m exec_server`` and the console script: main's status, objects frozen before exit (#17)."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen' if gc.get_freeze_count() else 'not frozen'))\n"
             "sys.argv = ['exec-server', 'run', '--', 'sh', '-c', 'echo hi; exit 4']\n"
             "from exec_server.cli import console_main\n"
             "console_main()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout, done.stderr) == (4, b"hi\nfrozen\n", b"")


def test_console_script_is_console_main():
    """The installed ``exec-server`` script and ``python -m exec_server`` both enter through console_main."""
    import ast
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "setup.py"), encoding="utf-8") as handle:
        assert "exec-server = exec_server.cli:console_main" in handle.read()
    with open(os.path.join(root, "exec_server", "__main__.py"), encoding="utf-8") as handle:
        calls = [node.func.id for node in ast.walk(ast.parse(handle.read())) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name)]
    assert calls == ["console_main"]


def test_run_into_a_closed_pipe_kills_the_remote_tree(listening):
    """``exec-server run -- yes | head -1``: no traceback, status 141 (128 + SIGPIPE, as a shell
    reports a local command's), and the remote ``yes`` is killed rather than left spooling."""
    server, url = listening
    runner = subprocess.Popen(CLI + ["run", "--url", url, "--", "yes"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert runner.stdout.read(2) == b"y\n"
        tree = wait_until(lambda: running_descendants(server.pid, ["yes"]))
        runner.stdout.close()  # what head does after its line
        assert runner.wait(30) == 141
        assert runner.stderr.read() == b""
        wait_until(lambda: all_gone(tree))
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(5)
        runner.stderr.close()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_run_ended_by_sigterm_or_sighup_kills_the_remote_tree(listening, number):
    """A terminal that closes (SIGHUP) or a SIGTERM ends the remote command too, not 80 s later."""
    server, url = listening
    runner = subprocess.Popen(CLI + ["run", "--url", url, "--", "sh", "-c", "echo ready; sleep 300"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert runner.stdout.readline() == b"ready\n"
        tree = wait_until(lambda: running_descendants(server.pid, ["sleep", "300"]))
        runner.send_signal(number)
        assert runner.wait(30) == 137  # the remote tree's SIGKILL, as the second Ctrl-C gives
        wait_until(lambda: all_gone(tree))
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(5)
        runner.stdout.close()
        runner.stderr.close()


def test_cp_of_a_local_directory_says_what_copies_one(listening, tmp_path):
    """The refusal named a Python API (fs.copy) to a shell user; it names the command's own form now."""
    _server, url = listening
    (tmp_path / "folder").mkdir()
    for hosts in ([url], [url, url.replace("127.0.0.1", "localhost")]):  # one host, then the group's path
        done = run_cli("cp", *[arg for host in hosts for arg in ("--url", host)], str(tmp_path / "folder"),
                       ":%s/copy" % tmp_path)
        assert done.returncode == 1 and b"cp :A :B copies a directory on the server" in done.stderr, done.stderr
        assert not (tmp_path / "copy").exists()


def test_cp_of_a_file_onto_itself_through_a_local_server_keeps_it(listening, tmp_path):
    """A file written in place (it has a second name: a rename would split the link) was emptied first, then
    read back empty through the server: ``cp :/x /x`` left 0 bytes and exit 0.  It is cut at the end now."""
    _server, url = listening
    data = os.urandom(3 * 1024 * 1024 + 5)  # more than one block
    for name in ("same", "other-name"):
        source = tmp_path / "file"
        source.write_bytes(data)
        (tmp_path / "link").unlink(missing_ok=True)
        os.link(source, tmp_path / "link")
        destination = source if name == "same" else tmp_path / "link"
        for direction in (("cp", "--url", url, ":%s" % source, str(destination)),  # download
                          ("cp", "--url", url, str(source), ":%s" % destination)):  # upload
            done = run_cli(*direction)
            assert done.returncode == 0, done.stderr
            assert source.read_bytes() == data and (tmp_path / "link").read_bytes() == data, direction
    shorter = tmp_path / "shorter"
    shorter.write_bytes(b"x" * 100)
    os.link(shorter, tmp_path / "shorter-link")  # in place, onto a longer file: cut at the new end
    (tmp_path / "longer").write_bytes(b"y" * 10)
    assert run_cli("cp", "--url", url, ":%s" % (tmp_path / "longer"), str(shorter)).returncode == 0
    assert (tmp_path / "shorter-link").read_bytes() == b"y" * 10


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_cp_names_the_local_file_a_download_could_not_write(listening, tmp_path):
    """A download's write error (ENOSPC) said "exec-server cp: No space left on device", naming no file."""
    _server, url = listening
    source = tmp_path / "data"
    source.write_bytes(b"x" * 100000)
    done = run_cli("cp", "--url", url, ":%s" % source, "/dev/full")
    assert done.returncode == 1
    assert done.stderr.decode().strip().endswith("%s (/dev/full)" % os.strerror(errno.ENOSPC)), done.stderr
    done = run_cli("cp", "--url", url, ":relative/x", str(tmp_path / "out"))  # the server's path: not ours
    assert done.returncode != 0 and str(tmp_path / "out") not in done.stderr.decode(), done.stderr
