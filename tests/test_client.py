"""The blocking client against ours and the reference: run, start, errors, timeouts."""

import io
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from conftest import running_descendants, wait_until, with_env
from exec_server import (Client, ClosedEvent, ExecServerDisconnected, ExitedEvent, OutputEvent, ProgramNotFound,
                         ReconnectPolicy, StdinClosedError, WorkingDirectoryNotFound)
from exec_server.protocol.errors import InternalError, InvalidParams, InvalidRequest

pytestmark = pytest.mark.posix


@pytest.fixture
def client(any_server):
    with Client.connect(any_server.url, timeout=10) as connected:
        yield connected


def test_run_captures_output_and_exit_code(client):
    done = client.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    assert done.args == ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]


def test_run_check_raises(client):
    with pytest.raises(subprocess.CalledProcessError) as caught:
        client.run(["false"], check=True, timeout=10)
    assert caught.value.returncode == 1


def test_run_input_reaches_stdin_then_eof(client):
    payload = bytes(range(256)) * 1000
    done = client.run(["cat"], input=payload, timeout=20)
    assert done.stdout == payload and done.returncode == 0


def test_run_input_on_a_pty_without_a_last_newline_ends(client, any_server):
    """On the reference (no closeStdin: ``head -c N`` reads the input), a last line without its newline stayed
    in the terminal's line discipline and the run hung until its timeout; a ^D after the input hands it on.
    arg0 there would name the fallback's shell, not the command: refused before anything starts."""
    from exec_server import ExtensionNotSupported

    done = client.run(["cat"], tty=True, input=b"l1\nl2", timeout=20)
    assert (done.returncode, done.stdout) == (0, b"l1\r\nl2l1\r\nl2")  # the terminal's echo, then cat's copy
    argv = ["/bin/sh", "-c", 'echo "$0"; cat']
    if any_server.kind == "reference":
        with pytest.raises(ExtensionNotSupported, match="arg0"):
            client.run(argv, input=b"x", arg0="named", timeout=20)
    else:
        assert client.run(argv, input=b"x", arg0="named", timeout=20).stdout == b"named\nx"


def test_a_timed_out_run_carries_the_output_it_had(client):
    """As subprocess.run's TimeoutExpired: stdout and stderr so far (bytes), to see why it hung."""
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        client.run(["/bin/sh", "-c", "echo partial; echo perr >&2; sleep 31"], timeout=5.0)
    assert (caught.value.stdout, caught.value.stderr) == (b"partial\n", b"perr\n")
    assert caught.value.timeout == 5.0


def test_run_takes_subprocess_text_mode_arguments(client):
    """capture_output=True, text=True as subprocess.run takes them: str out, newlines made \\n, str input."""
    done = client.run(["/bin/sh", "-c", r"printf 'a\r\nb\rc\n'; printf 'd\r\n' >&2"], capture_output=True,
                      text=True, timeout=10)
    assert (done.stdout, done.stderr) == ("a\nb\nc\n", "d\n")
    snowman = "h\u00e9llo \u2603"
    assert client.run(["cat"], input=snowman, universal_newlines=True, timeout=10).stdout == snowman
    latin = client.run(["printf", r"\351"], encoding="latin-1", timeout=10)
    assert latin.stdout == "\u00e9"
    assert client.run(["printf", r"\377x"], errors="replace", timeout=10).stdout == "\ufffdx"
    with pytest.raises(UnicodeDecodeError):  # strict, as subprocess
        client.run(["printf", r"\377"], text=True, timeout=10)
    with pytest.raises(subprocess.CalledProcessError) as caught:
        client.run(["/bin/sh", "-c", "echo no; exit 4"], text=True, check=True, timeout=10)
    assert (caught.value.returncode, caught.value.stdout) == (4, "no\n")


def test_run_input_of_the_other_mode_is_refused_before_anything_starts(client, tmp_path):
    marker = tmp_path / "started"
    for kwargs, expected in (({"input": "text"}, "input must be bytes in binary mode, not str"),
                             ({"input": b"bytes", "text": True}, "input must be str in text mode, not bytes")):
        with pytest.raises(TypeError, match=expected):
            client.run(["touch", str(marker)], timeout=10, **kwargs)
    assert not marker.exists()


def test_run_without_capture_passes_output_on_as_it_comes(client, capsysbinary):
    """capture_output=False: as subprocess.run without capture, the output goes to our stdout and stderr."""
    done = client.run(["/bin/sh", "-c", "printf 'out\\377\\n'; echo err >&2; exit 2"], capture_output=False,
                      timeout=10)
    assert (done.returncode, done.stdout, done.stderr) == (2, None, None)
    out, err = capsysbinary.readouterr()
    assert (out, err) == (b"out\xff\n", b"err\n")


def test_run_without_capture_writes_text_to_a_text_only_stream(client, monkeypatch):
    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stdout", replaced)
    client.run(["printf", r"a\377"], capture_output=False, timeout=10)
    assert replaced.getvalue() == "a\ufffd"


def test_run_timeout_kills_the_remote_tree(client, tmp_path):
    pid_file = tmp_path / "pid"
    token = os.urandom(8).hex()  # every process of the tree carries it, whatever PID namespace it is in
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        client.run(["/bin/sh", "-c", "sleep 300 & echo $! > %s; wait" % pid_file], timeout=5.0,
                   env={"TREE_TOKEN": token})
    assert caught.value.timeout == 5.0
    assert pid_file.read_text().strip()  # the background job had started
    wait_until(lambda: not with_env("TREE_TOKEN", token))


def test_run_with_path_cwd_and_env(client, tmp_path):
    done = client.run(["/bin/sh", "-c", 'pwd; echo "$GREETING"'], cwd=pathlib.Path(tmp_path),
                      env={"GREETING": "hello"}, timeout=10)
    assert done.stdout == ("%s\nhello\n" % tmp_path).encode()


def test_closing_the_client_ends_the_processes_it_left_running(any_server):
    """As the end of an ssh session: not left to the server's detached-session TTL (80 s)."""
    server_pid = any_server.pid or os.getpid()
    with Client.connect(any_server.url, timeout=10) as client:
        client.start(["sleep", "52"])
        finished = client.start(["true"])
        assert finished.wait(timeout=10) == 0
        wait_until(lambda: running_descendants(server_pid, ["sleep", "52"]), timeout=10)
    wait_until(lambda: not running_descendants(server_pid, ["sleep", "52"]), timeout=10)
    assert client.state == "closed"


def test_write_all_to_a_child_that_does_not_read_names_its_own_timeout(server):
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["sleep", "30"], stdin=True) as process:
            with pytest.raises(subprocess.TimeoutExpired) as caught:
                process.write_all(b"x" * (20 << 20), 2.0)  # the server's stdin queue fills: it stays full
            assert (caught.value.cmd, caught.value.timeout) == (["sleep", "30"], 2.0)  # not process/write's 0 s
            with pytest.raises(TypeError, match="process data must be bytes, not str"):
                process.write("text")


def test_start_write_iterate_terminate(client):
    proc = client.start(["cat"], stdin=True)
    proc.write(b"hi\n")
    event = proc.next_event(timeout=5)
    assert event == OutputEvent(1, "stdout", b"hi\n")
    assert proc.terminate() is True
    assert proc.wait(timeout=5) == 137
    rest = list(proc)
    assert isinstance(rest[0], ExitedEvent) and isinstance(rest[-1], ClosedEvent)
    assert proc.returncode == 137


def test_tty_process(client):
    done = client.run(["/bin/sh", "-c", "test -t 1 && echo tty"], tty=True, timeout=10)
    assert done.stdout == b"tty\r\n" and done.stderr == b""


def test_interrupt(client):
    proc = client.start(["sleep", "30"])
    proc.send_interrupt()
    assert proc.wait(timeout=15) == 130


def test_write_without_stdin_raises(client):
    proc = client.start(["sleep", "30"])
    with pytest.raises(StdinClosedError):
        proc.write(b"x")
    proc.terminate()
    proc.wait(timeout=5)


def test_communicate_sends_input_then_end_of_file_as_popen_does(client, any_server):
    """``communicate()`` took no input and left stdin open (``Popen.communicate`` writes ``input``, then closes
    stdin): ``cat`` never ended.  Against the reference, which cannot close a stdin, input is refused before
    anything is written (a reader would wait for an end of file that cannot come)."""
    from exec_server import ExtensionNotSupported

    payload = os.urandom(3 << 20)
    with client.start(["cat"], stdin=True) as process:
        if any_server.kind == "reference":
            with pytest.raises(ExtensionNotSupported, match="closeStdin"):
                process.communicate(payload, timeout=30)
            with pytest.raises(subprocess.TimeoutExpired):  # stdin stays open: cat goes on
                process.communicate(timeout=0.5)
            assert process.returncode is None
            return
        assert process.communicate(payload, timeout=30) == (payload, b"")
        assert process.returncode == 0 and process.stdin_writable is False
    with client.start(["cat"], stdin=True) as process:
        assert process.communicate(timeout=30) == (b"", b"")  # no input: stdin is closed all the same
    with client.start(["sh", "-c", "echo hi"], tty=True) as process:
        out, _ = process.communicate(b"", timeout=30)  # a PTY takes its end of file (^D) and gives output
        assert out == b"hi\r\n"


def test_communicate_after_a_timeout_writes_what_was_left(server):
    """A timeout while the input is written (the child not reading yet, the server's 8 MiB stdin queue full)
    keeps the rest: the next call writes it, and the child gets every byte once, then its end of file."""
    payload = os.urandom(12 << 20)
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["sh", "-c", "sleep 2; exec cat"], stdin=True) as process:
            with pytest.raises(subprocess.TimeoutExpired):
                process.communicate(payload, timeout=1.0)
            with pytest.raises(ValueError, match="^Cannot send input after starting communication$"):
                process.communicate(b"more", timeout=30)
            out, err = process.communicate(timeout=60)
            assert (len(out), out == payload, err, process.returncode) == (len(payload), True, b"", 0)


def test_communicate_sends_a_piece_whose_answer_was_lost_once(server):
    """A piece written whose answer never came (the call timed out) is sent again by the next call with the
    same ``writeId``: the server writes it once, and ``cat`` gives back the input exactly."""
    from exec_server.client.interfaces import CallTimeout

    payload = os.urandom(3 << 20)
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["cat"], stdin=True) as process:
            real, sent = process.write, []

            def answer_lost_once(data, timeout=30.0, **options):
                real(data, timeout, **options)
                sent.append(options["write_id"])
                if len(sent) == 2:
                    raise CallTimeout(process.args, timeout)

            process.write = answer_lost_once
            with pytest.raises(subprocess.TimeoutExpired):
                process.communicate(payload, timeout=30)
            out, _ = process.communicate(timeout=30)
    assert len(sent) == 4 and sent[1] == sent[2]  # the second piece, sent again with its id (the last closes)
    assert (len(out), out == payload) == (len(payload), True)


def test_communicate_closes_stdin_after_the_writes_of_another_thread(server):
    """Feeding stdin from a thread and collecting with communicate(): the end of file that communicate sends
    came before the thread's pieces (they failed with StdinClosedError, and cat's output was empty)."""
    from conftest import wait_until

    payload = os.urandom(8 << 20)
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["sh", "-c", "sleep 0.5; exec cat"], stdin=True) as process:
            failed = []

            def feed():
                try:
                    process.write_all(payload, 60)
                except Exception as exc:  # noqa: B902 - what the thread met is the test's outcome
                    failed.append(exc)

            feeder = threading.Thread(target=feed)
            feeder.start()
            wait_until(lambda: process._writes_in_flight, timeout=10)
            out, err = process.communicate(timeout=60)
            feeder.join(60)
    assert failed == [] and (len(out), out == payload, err) == (len(payload), True, b"")


def test_communicate_takes_the_output_while_it_writes_the_input(tmp_path):
    """All the input was written before any output was read, waiting while the server's stdin queue was full:
    with a handle keeping 1 MiB and a server keeping 5 MiB (4 MiB spooled), cat's output of 16 MiB overflowed
    both and communicate raised ProcessOutputGap.  The output is now taken between pieces and while the queue
    is full, so a child that answers as it reads is paced by its input.  (No protocol flow control: a child
    writing faster than its input comes still depends on the retention.)  A timeout while the input is written
    carries the output so far, as subprocess's."""
    from conftest import start_ours, wait_until
    from exec_server.server.config import ServerConfig

    running = start_ours(ServerConfig(spool_bytes_per_process=4 << 20, max_stdin_queue_bytes=256 << 10))
    payload = os.urandom(16 << 20)
    try:
        with Client.connect(running.url, timeout=10) as client:
            with client.start(["cat"], stdin=True, max_buffered_output=1 << 20) as process:
                assert process.communicate(payload, timeout=60) == (payload, b"")
            with client.start(["sh", "-c", "echo started; sleep 2; exec cat"], stdin=True) as process:
                wait_until(lambda: process.last_seq >= 1, timeout=30)  # "started" is in, not yet taken
                with pytest.raises(subprocess.TimeoutExpired) as caught:
                    process.communicate(b"x" * (20 << 20), timeout=1.5)  # the stdin queue fills
                assert caught.value.stdout == b"started\n"
                process.communicate(b"", timeout=60)  # empty input after a first call: no ValueError (Popen)
    finally:
        running.stop()


def test_communicate_input_mistakes_are_named_before_anything_is_sent(server):
    with Client.connect(server.url, timeout=10) as client:
        with client.start(["sleep", "30"]) as process:
            with pytest.raises(StdinClosedError, match="has no writable stdin .start it with stdin=True.$"):
                process.communicate(b"x", timeout=5)
            with pytest.raises(TypeError, match="^input must be bytes, not str"):
                process.communicate("text", timeout=5)
            with pytest.raises(TypeError, match="^input must be bytes-like, not int$"):
                process.communicate(5)  # Popen's order: (input, timeout)
            with pytest.raises(subprocess.TimeoutExpired):  # nothing was written: no input, no stdin to close
                process.communicate(timeout=0.2)


def test_communicate_of_two_threads_at_once_loses_no_input_unsaid(server):
    """Two threads calling communicate at once both passed the "first call?" check (``supports`` is asked in
    between): the later one's input was dropped, or its end of file went first, and it returned (b'', b'')
    with no error.  Now the first call sets the input, a later call with input is the ValueError, and the
    child reads exactly the input that was accepted."""
    with Client.connect(server.url, timeout=10) as client:
        asked = client.supports
        client.supports = lambda name: (time.sleep(0.1), asked(name))[1]  # both threads inside at once
        for first, second in ((b"A" * 1000, b"B" * 3000), (None, b"C" * 2000)):
            with client.start(["wc", "-c"], stdin=True) as process:
                outcomes = {}

                def call(name, data):
                    try:
                        outcomes[name] = process.communicate(data, timeout=30)
                    except ValueError as exc:
                        outcomes[name] = exc

                threads = [threading.Thread(target=call, args=("first", first)),
                           threading.Thread(target=call, args=("second", second))]
                threads[0].start()
                time.sleep(0.02)
                threads[1].start()
                for thread in threads:
                    thread.join(60)
                counted = len(first or b"")
                assert isinstance(outcomes["second"], ValueError), outcomes
                assert outcomes["first"] == (b"%d\n" % counted, b"") and process.returncode == 0


def test_a_timeout_while_the_input_is_written_tells_the_output_already_here(server):
    """A second communicate that timed out in its first piece said stdout=b'' though the first call's output
    was buffered (Popen's TimeoutExpired carries all the output so far)."""
    from conftest import wait_until

    with Client.connect(server.url, timeout=10) as client:
        with client.start(["sh", "-c", "echo a; sleep 2; exec cat >/dev/null"], stdin=True) as process:
            wait_until(lambda: process.last_seq >= 1, timeout=30)
            with pytest.raises(subprocess.TimeoutExpired) as caught:
                process.communicate(b"x" * (30 << 20), timeout=0.5)  # the server's stdin queue fills
            assert caught.value.stdout == b"a\n"
            with pytest.raises(subprocess.TimeoutExpired) as caught:
                process.communicate(timeout=0)  # the rest of the input, not one piece of it in time
            assert caught.value.stdout == b"a\n"
            assert process.communicate(timeout=60) == (b"a\n", b"")


def test_run_refuses_input_with_stdin_as_subprocess_does(client):
    """``run(input=..., stdin=False)`` silently used a pipe and fed the input; subprocess.run refuses it."""
    for stdin in (False, True, subprocess.DEVNULL):
        with pytest.raises(ValueError, match="^stdin and input arguments may not both be used.$"):
            client.run(["cat"], input=b"x", stdin=stdin, timeout=10)


def test_typed_errors(client):
    with pytest.raises(InternalError) as caught:
        client.start(["no-such-program-xyz"])
    assert caught.value.code == -32603 and caught.value.message.endswith("(os error 2)")
    with pytest.raises(InvalidRequest):
        client.call("process/read", {"processId": "ghost"})
    with pytest.raises(InvalidParams):
        client.call("process/read", {})


def test_read_returns_retained_output(client):
    proc = client.start(["/bin/sh", "-c", "echo a; echo b >&2"])
    proc.communicate(timeout=10)
    result = proc.read()
    assert result["closed"] and result["exitCode"] == 0 and len(result["chunks"]) == 2


def test_a_start_names_the_missing_program_or_working_directory(client, tmp_path):
    """Both servers answer -32603 "No such file or directory (os error 2)" for a missing program and a missing
    working directory alike; the client tells which, as InternalError subclasses keeping the server's text."""
    with pytest.raises(ProgramNotFound) as missing:
        client.start(["no-such-program-xyz"])
    assert isinstance(missing.value, InternalError) and "(os error 2)" in missing.value.message
    assert missing.value.program == "no-such-program-xyz" and "program not found: no-such-program-xyz" in str(
        missing.value)
    with pytest.raises(WorkingDirectoryNotFound) as gone:
        client.start(["true"], cwd=tmp_path / "gone")
    assert gone.value.path == str(tmp_path / "gone") and not gone.value.exists
    assert "working directory not found: %s" % (tmp_path / "gone") in str(gone.value)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WorkingDirectoryNotFound) as file:
        client.start(["true"], cwd=tmp_path / "file")
    assert file.value.exists and "is not a directory" in str(file.value)
    with pytest.raises(ProgramNotFound):  # the working directory is there: the program is what is missing
        client.start(["no-such-program-xyz"], cwd=tmp_path)
    assert client.run(["true"], cwd=tmp_path, timeout=20).returncode == 0


def test_call_timeout(client):
    proc = client.start(["sleep", "30"])
    with pytest.raises(TimeoutError):
        client.call("process/read", {"processId": proc.process_id, "waitMs": 5000}, timeout=0.2)
    proc.terminate()
    proc.wait(timeout=5)


def test_client_calls_from_many_threads(client):
    results = []

    def work(i):
        results.append(client.run(["echo", str(i)], timeout=20).stdout)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == sorted(b"%d\n" % i for i in range(10))


def test_connect_failure_is_typed():
    with pytest.raises(ExecServerDisconnected):
        Client.connect("ws://127.0.0.1:1", timeout=2)


def test_server_going_away_reports_the_kill_then_fails_calls():
    """A server shut down reports its processes killed (137) to waiters; the session died with it, so
    the client fails once its recovery deadline passes."""
    from conftest import start_ours

    running = start_ours()
    client = Client.connect(running.url, timeout=5, reconnect=ReconnectPolicy(deadline=1.0))
    proc = client.start(["sleep", "30"])
    results = []
    thread = threading.Thread(target=lambda: results.append(proc.wait(timeout=20)))
    thread.start()
    time.sleep(0.1)
    running.stop()
    thread.join(10)
    assert results == [137]
    with pytest.raises(ExecServerDisconnected):
        client.call("environment/status", timeout=5)
    assert client.state == "failed"
    client.close()


def test_without_reconnect_a_drop_fails_at_once():
    from conftest import start_ours

    running = start_ours()
    client = Client.connect(running.url, timeout=5, reconnect=None)
    running.stop()
    wait_until(lambda: client.state == "failed")
    with pytest.raises(ExecServerDisconnected):
        client.call("environment/status", timeout=5)
    client.close()


def test_websocket_transport_pings_and_closes_cleanly(server):
    client = Client.connect(server.url, timeout=10)
    client._transport.ping()  # the server answers with a Pong, which the reader ignores
    assert client.call("environment/status", timeout=5) == {"status": "ready"}
    client.close()
    with pytest.raises(ExecServerDisconnected):
        client.call("environment/status", timeout=5)


def test_fs_paths_may_be_bytes_as_in_os(server, tmp_path):
    """A bytes path was an internal TypeError; bytes that are not UTF-8 name the file they name."""
    odd = os.path.join(os.fsencode(str(tmp_path)), b"\xff.txt")
    with Client.connect(server.url, timeout=5) as client:
        client.fs.write_file(odd, b"data")
        assert client.fs.read_file(odd) == b"data"
    with open(odd, "rb") as handle:
        assert handle.read() == b"data"


def test_env_takes_text_or_utf8_bytes_like_argv(server):
    """A value holding bytes that are not UTF-8 was a raw UnicodeEncodeError at the send, bytes a raw
    TypeError from the JSON encoder."""
    with Client.connect(server.url, timeout=5) as client:
        done = client.run(["sh", "-c", 'printf "%s %s" "$A" "$B"'], env={"A": "\u00e9", b"B": b"b\xc3\xa9"},
                          timeout=10)
        assert done.stdout == "\u00e9 b\u00e9".encode()
        with pytest.raises(TypeError, match="^env value .* is not UTF-8$"):
            client.run(["true"], env={"A": os.fsdecode(b"\xff")}, timeout=10)
        with pytest.raises(TypeError, match="^env name .* is not UTF-8$"):
            client.run(["true"], env={b"\xff": "x"}, timeout=10)
        with pytest.raises(TypeError, match="^env values must be str, bytes or path-like, not int$"):
            client.run(["true"], env={"A": 1}, timeout=10)
        assert client.run(["true"], timeout=10).returncode == 0  # the client is still usable


def test_argv_follows_subprocess_conventions(server, tmp_path):
    """A lone str is the program (not its characters); path-like and UTF-8 bytes items are accepted."""
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello \"$@\"\n")
    script.chmod(0o755)
    with Client.connect(server.url, timeout=5) as client:
        assert client.run("true", timeout=10).returncode == 0
        assert client.run(script, timeout=10).stdout == b"hello\n"
        done = client.run([script, b"b\xc3\xa9", "x"], timeout=10)
        assert (done.args, done.stdout) == ([str(script), "b\u00e9", "x"], "hello b\u00e9 x\n".encode())
        with pytest.raises(TypeError, match="not UTF-8"):
            client.run([b"\xff"], timeout=10)
        with pytest.raises(TypeError, match="not UTF-8"):  # the same, decoded: it was a UnicodeEncodeError
            client.run(["ls", os.fsdecode(b"\xff")], timeout=10)
        with pytest.raises(TypeError, match="not int"):
            client.start(["echo", 1])
        with pytest.raises(ValueError, match="must not be empty"):
            client.start([])
