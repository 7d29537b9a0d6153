"""The blocking client at its edges: close racing starts, a with block left early, wrong data types, a silent server.

Each case was a defect a user could hit: processes that outlived
``Client.close`` until the session expired, a reader thread left waiting for
events its handle had dropped, ``write(3)`` sending three NUL bytes, and a
``run`` timeout that lost the output it had received.
"""

import base64
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import all_gone, running_descendants, start_ours, wait_until, with_env
from exec_server import CallTimeout, Client, ClosedEvent, ExecServerDisconnected, OutputEvent, ServerConfig
from exec_server.client.process import RemoteProcess

pytestmark = pytest.mark.posix


def test_close_ends_the_processes_started_while_it_runs(server):
    """Starts from other threads during close: each is refused, or its process is terminated by it."""
    argv = ["sleep", "53.25"]
    client = Client.connect(server.url, timeout=10)
    started, errors = [], []

    def starter():
        try:
            while True:
                started.append(client.start(argv))
        except Exception as error:  # the close: every later start is refused
            errors.append(error)

    threads = [threading.Thread(target=starter) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(started) >= 20, timeout=20)
    client.close()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert len(errors) == 2 and all(isinstance(error, ExecServerDisconnected) for error in errors), errors
    wait_until(lambda: not running_descendants(os.getpid(), argv), timeout=10)  # not the session's 80 s TTL
    with pytest.raises(ExecServerDisconnected, match="client is closed"):
        client.start(argv)


def test_leaving_a_with_block_kills_a_background_job_and_releases_other_readers():
    """The command exited, a background job still holds its output: the with block's end kills it, and a reader
    in another thread sees ``closed`` rather than waiting for events the handle no longer keeps."""
    running = start_ours(ServerConfig(pid_namespace="inherit"))  # where a background job outlives its shell
    try:
        with Client.connect(running.url, timeout=10) as client:
            got = []

            def reader(process):
                try:
                    for event in iter(lambda: process.next_event(timeout=30), None):
                        got.append(event)
                except Exception as error:
                    got.append(error)

            token = os.urandom(8).hex()
            with client.start(["sh", "-c", "(sleep 54; echo late) & echo early"], env={"EDGE_TOKEN": token}) as process:
                thread = threading.Thread(target=reader, args=(process,))
                thread.start()
                assert process.wait(timeout=10) == 0
                job = wait_until(lambda: with_env("EDGE_TOKEN", token), timeout=10)  # reparented: not a descendant
            thread.join(10)
            assert not thread.is_alive()
            assert [event.data for event in got if isinstance(event, OutputEvent)] == [b"early\n"]
            assert isinstance(got[-1], ClosedEvent), got
            wait_until(lambda: all_gone(job), timeout=10)
    finally:
        running.stop()


@pytest.fixture
def client(server):
    with Client.connect(server.url, timeout=10) as connected:
        yield connected


def test_data_that_is_not_bytes_like_is_refused(client, tmp_path):
    """``bytes(3)`` is three NUL bytes: an int (or a list) is a TypeError, as ``subprocess.run(input=3)`` is."""
    with client.start(["cat"], stdin=True) as process:
        with pytest.raises(TypeError, match="process data must be bytes-like, not int"):
            process.write(3)
        with pytest.raises(TypeError, match="process data must be bytes-like, not list"):
            process.write([104, 105])
        process.write(bytearray(b"a") + memoryview(b"b"))
        process.close_stdin()
        assert process.communicate(timeout=10) == (b"ab", b"")
    with pytest.raises(TypeError, match="input must be bytes-like, not int"):
        client.run(["cat"], input=4, timeout=10)
    target = tmp_path / "data"
    with pytest.raises(TypeError, match="data must be bytes-like, not int"):
        client.fs.write_file(str(target), 5)
    assert not target.exists()
    assert client.run(["cat"], input=memoryview(b"view"), timeout=10).stdout == b"view"


def test_pty_size_without_a_pty_is_refused(client):
    with pytest.raises(ValueError, match="pty_size needs tty=True"):
        client.run(["true"], pty_size=(5, 5), timeout=10)
    assert client.run(["stty", "size"], tty=True, pty_size=(5, 7), timeout=10).stdout == b"5 7\r\n"


def test_stdin_takes_subprocess_constants(client, tmp_path):
    """``stdin=subprocess.PIPE`` (-1) went out as ``pipeStdin: -1`` and came back as the server's
    Invalid params; a local file cannot feed a remote process and is named before anything is sent."""
    with client.start(["cat"], stdin=subprocess.PIPE) as process:
        process.write(b"piped")
        process.close_stdin()
        assert process.communicate(timeout=10) == (b"piped", b"")
    for value in (subprocess.DEVNULL, None, False):
        assert client.run(["wc", "-c"], timeout=10, stdin=value).stdout.strip() == b"0"  # the null device
    with open(str(tmp_path / "local"), "wb") as local:
        for value in (local, local.fileno(), subprocess.STDOUT, "yes"):
            with pytest.raises(TypeError, match="^stdin must be True, False, subprocess.PIPE or subprocess.DEVNULL"):
                client.start(["cat"], stdin=value)
    assert client.run(["true"], timeout=10).returncode == 0


@pytest.mark.slow
def test_a_run_timeout_on_a_silent_server_keeps_the_output_received(monkeypatch):
    """The server stops answering (SIGSTOP) once the command's first output is in: CallTimeout has that output."""
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    publish, stopped = RemoteProcess._publish, []

    def publish_then_stop(process, event):
        publish(process, event)
        if isinstance(event, OutputEvent) and not stopped:
            stopped.append(event.data)
            os.kill(server.pid, signal.SIGSTOP)

    try:
        url = server.stdout.readline().decode().strip()
        client = Client.connect(url, timeout=10)
        monkeypatch.setattr(RemoteProcess, "_publish", publish_then_stop)
        started = time.monotonic()
        with pytest.raises(CallTimeout) as caught:
            client.run(["sh", "-c", "echo hi; sleep 55.25"], timeout=2)
        assert time.monotonic() - started < 20  # the timeout, then at most the kill's grace
        assert stopped == [b"hi\n"]
        assert (caught.value.stdout, caught.value.stderr) == (b"hi\n", b"")
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        server.wait(10)
        server.stdout.close()


def test_a_refused_connection_is_told_in_the_os_words_alone():
    """``cannot connect to URL: [Errno 111] Connection refused`` in a Group's errors and in run's reconnect
    lines, where the command's first line said ``Connection refused``: one wording now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once it is closed
    with pytest.raises(ExecServerDisconnected) as caught:
        Client.connect("ws://127.0.0.1:%d" % port, timeout=5, reconnect=None)
    assert str(caught.value) == "cannot connect to ws://127.0.0.1:%d: Connection refused" % port


def test_a_handle_dropped_after_its_process_closed_is_freed(server):
    """The client kept every handle start made until it closed, with all the output nobody consumed: a
    long-lived script that started and waited for processes as with Popen grew by their output each time."""
    import gc
    import weakref

    with Client.connect(server.url, timeout=10) as client:
        dropped = []
        for _ in range(20):
            process = client.start(["head", "-c", "100000", "/dev/zero"])
            assert process.wait(timeout=10) == 0
            dropped.append(weakref.ref(process))
        del process
        kept = client.start(["sh", "-c", "echo out; echo err >&2"])
        wait_until(lambda: kept.done, timeout=10)
        gc.collect()
        wait_until(lambda: not client._endpoint._processes, timeout=5)  # was: 21 handles, 2 MB of output
        assert all(ref() is None for ref in dropped)
        assert kept.communicate(timeout=5) == (b"out\n", b"err\n")  # what a held handle kept is still there
        assert client.run(["echo", "ok"], timeout=10).stdout == b"ok\n"


def test_a_read_wait_the_protocol_cannot_carry_is_refused_before_it_is_sent(server):
    """``read(wait=)`` of infinity raised OverflowError, NaN "cannot convert float NaN to integer", and 1e300 went
    to the server as a waitMs past a u64 (InvalidParams): each is a ValueError naming ``wait`` now."""
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["echo", "hi"])
        assert process.wait(timeout=10) == 0
        for bad in (float("inf"), float("nan"), -1.0):
            with pytest.raises(ValueError, match="^wait must be a finite number of seconds, 0 or more$"):
                process.read(wait=bad)
        with pytest.raises(ValueError, match=r"^wait must be at most 18446744073709551615 ms \(waitMs is a u64\)"):
            process.read(wait=1e300)
        result = process.read(wait=1e16)  # within the protocol's range (317 million years): answered at once
        assert base64.b64decode(result["chunks"][0]["chunk"]) == b"hi\n" and result["closed"]


def test_a_request_json_cannot_carry_is_refused_before_it_is_sent(server):
    """NaN and infinity went out as ``NaN``/``Infinity`` (not JSON), ``call(None)`` as ``"method":null``: the
    server answers such a text with id -1, which no call waits for, so the caller waited its whole timeout
    (forever with None).  Each is raised at once now, and the connection goes on."""
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["sleep", "30"], tty=True)
        begun = time.monotonic()
        for call in (lambda: process.read(0, max_bytes=float("nan"), timeout=None),
                     lambda: process.read(float("inf"), timeout=None),
                     lambda: process.resize(float("nan"), 80, timeout=None),
                     lambda: client.call("process/read", {"processId": process.process_id,
                                                          "afterSeq": float("-inf")}, timeout=None)):
            with pytest.raises(ValueError, match="JSON"):
                call()
        with pytest.raises(TypeError, match="^method must be a str, not NoneType$"):
            client.call(None, timeout=None)
        with pytest.raises(TypeError, match="^method must be a str, not int$"):
            client.notify(5)
        assert time.monotonic() - begun < 5  # was: each waited its timeout (here forever)
        assert client.run(["echo", "still"], timeout=10).stdout == b"still\n"
        process.kill()
        process.wait(timeout=10)


def test_argument_mistakes_are_named_before_anything_is_sent(server):
    """Each was a raw error of another layer: ``connect(timeout=0)`` "Operation now in progress" (a
    non-blocking connect), a list of env pairs an AttributeError, a header holding CR LF h11's
    LocalProtocolError (after the TCP connect), ``communicate(b"...")`` (``Popen.communicate``'s input)
    "'>=' not supported between bytes and float"."""
    with pytest.raises(ExecServerDisconnected, match=r"^cannot connect to ws://127\.0\.0\.1:\d+: timed out$"):
        Client.connect(server.url, timeout=0)
    for headers, error in (({"X-A": "a\r\nInjected: 1"}, ValueError), ({"Bad Name": "v"}, ValueError),
                           ({"X-A": "\u00e9"}, ValueError), ({"X-A": 5}, TypeError)):
        with pytest.raises(error, match="^header"):  # not a connect error: nothing listens there
            Client.connect("ws://127.0.0.1:1", headers=headers, timeout=5)
    with pytest.raises(TypeError, match="^timeout must be a number of seconds, not str$"):
        Client.connect(server.url, timeout="5")
    with Client.connect(server.url, timeout=10, headers={"X-Fine": "yes"}) as client:
        assert client.run(["true"], timeout=10).returncode == 0
    with Client.connect(server.url, timeout=10, headers={b"X-Bytes": b"as wsproto takes them"}) as client:
        with pytest.raises(TypeError, match="^env must be a mapping of names to values, not list$"):
            client.run(["true"], env=[("A", "B")])
        process = client.start(["cat"], stdin=True)
        with pytest.raises(TypeError, match="^timeout must be a number of seconds, not bytes$"):
            process.communicate(None, b"data")
        assert process.communicate(b"data", timeout=10) == (b"data", b"")  # Popen.communicate's input
        from decimal import Decimal
        assert client.run(["true"], timeout=Decimal("10")).returncode == 0  # a real number still is one


def test_a_stdin_writer_that_cannot_start_loses_no_write(server, monkeypatch):
    """The first write starts the stdin writer.  A thread that could not start (a task limit) failed that write
    with -32603 after it was recorded, and every later write was 'accepted' and dropped, its end of file too
    (cat waited for good); now the write is refused before anything is recorded (-32001, which the client
    sends again)."""
    real_start = threading.Thread.start
    refused = []

    def start(self):
        if self.name.endswith("-stdin") and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["cat"], stdin=True) as process:
            process.write(b"kept")
            process.close_stdin()
            assert process.communicate(timeout=10) == (b"kept", b"")
    assert refused


def test_a_pty_writer_without_a_descriptor_refuses_the_write_and_the_next_one_works(server, monkeypatch):
    """The PTY writer dups the terminal's descriptor: at EMFILE its thread died after the write was 'accepted',
    and every later write and end of file was dropped."""
    import errno as errno_module

    from exec_server.protocol.errors import InternalError
    from exec_server.server.process.managed import ManagedProcess

    real_dup = ManagedProcess._dup_master
    failures = []

    def dup_master(self):
        if not failures:
            failures.append(True)
            raise OSError(errno_module.EMFILE, os.strerror(errno_module.EMFILE))
        return real_dup(self)

    monkeypatch.setattr(ManagedProcess, "_dup_master", dup_master)
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["cat"], tty=True, stdin=True) as process:
            with pytest.raises(InternalError, match="^failed to write to process stdin: Too many open files"):
                process.write(b"first\n")
            process.write(b"again\n")
            process.close_stdin()
            out, _err = process.communicate(timeout=10)
    assert b"again" in out and b"first" not in out
