"""Our protocol extensions (README.rst, "Protocol extensions"), ours and against the Codex reference.

``closeStdin`` on ``process/write`` and ``ptySize`` on ``process/start``
plus ``process/resize``, advertised in the ``initialize`` result's
``extensions``.  The reference ignores unknown members (PROTOCOL.md 2.1), so
a client must send them only when the server advertises them: these tests
show what each server does with them.
"""

import os
import pytest

from conftest import SCHEMAS, start_params, wait_until
from exec_server import Client, ExtensionNotSupported
from exec_server.protocol import b64

pytestmark = pytest.mark.posix


def _output(peer, process_id):
    notes = peer.wait_closed(process_id)
    return b"".join(b64.decode(m["params"]["chunk"]) for m in sorted(notes, key=lambda m: m["params"]["seq"])
                    if m["method"] == "process/output")


def test_initialize_advertises_extensions(any_server, connect):
    result = connect(any_server.url).initialize()
    SCHEMAS.validate("initialize.result.json", result)
    if any_server.is_reference:
        assert "extensions" not in result
    else:
        assert result["extensions"] == {"closeStdin": True, "ptySize": True, "atomicReplace": True,
                                        "maxMessageBytes": 128 * 1024 * 1024}


def test_close_stdin_member(any_server, connect):
    """Ours closes the pipe after the chunk; the reference accepts the write and ignores the member."""
    peer = connect(any_server.url)
    peer.initialize()
    peer.call("process/start", start_params("wc", ["wc", "-c"], pipeStdin=True))
    write = {"processId": "wc", "chunk": b64.encode(b"abc"), "writeId": "w1", "closeStdin": True}
    assert peer.call("process/write", write) == {"status": "accepted"}
    if any_server.is_reference:
        with pytest.raises(AssertionError):  # stdin stays open: wc never ends
            peer.wait_for(lambda m: m.get("method") == "process/exited", timeout=1.0)
        peer.call("process/terminate", {"processId": "wc"})
        peer.wait_closed("wc")
        return
    assert _output(peer, "wc").strip() == b"3"
    assert peer.call("process/write", write) == {"status": "accepted"}  # the same writeId: idempotent
    again = dict(write, writeId="w2", chunk="")
    assert peer.call("process/write", again) == {"status": "stdinClosed"}  # closed already


def test_close_stdin_then_writes_answer_stdin_closed(server, connect):
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("cat", ["sh", "-c", "cat; sleep 5"], pipeStdin=True))
    close = {"processId": "cat", "chunk": b64.encode(b"x\n"), "writeId": "w1", "closeStdin": True}
    assert peer.call("process/write", close)["status"] == "accepted"
    peer.wait_for(lambda m: m.get("method") == "process/output")
    assert peer.call("process/write", {"processId": "cat", "chunk": "", "writeId": "w2"})["status"] == "stdinClosed"
    assert peer.call("process/write", close)["status"] == "accepted"
    peer.call("process/terminate", {"processId": "cat"})
    peer.wait_closed("cat")


def test_close_stdin_on_a_pty_sends_eof_after_an_unfinished_line(server, connect):
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("t", ["sh", "-c", "stty -echo; echo ready; wc -c"], tty=True))
    peer.wait_for(lambda m: m.get("method") == "process/output")
    peer.call("process/write", {"processId": "t", "chunk": b64.encode(b"ab\ncd"), "writeId": "w", "closeStdin": True})
    assert _output(peer, "t").split() == [b"ready", b"5"]


def test_close_stdin_after_exit_is_accepted(server, connect):
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("t", ["true"], pipeStdin=True))
    peer.wait_closed("t")
    close = {"processId": "t", "chunk": "", "writeId": "w", "closeStdin": True}
    assert peer.call("process/write", close) == {"status": "accepted"}  # nothing left to close
    reply = peer.request("process/write", {"processId": "t", "chunk": "eA==", "writeId": "w2"})
    assert reply["error"] == {"code": -32603, "message": "failed to write to process stdin"}


def test_close_stdin_schema(server, connect):
    peer = connect(server.url)
    peer.initialize()
    peer.call("process/start", start_params("c", ["cat"], pipeStdin=True))
    reply = peer.request("process/write", {"processId": "c", "chunk": "", "writeId": "w", "closeStdin": "yes"})
    assert reply["error"]["code"] == -32602 and reply["error"]["data"] == {"path": "$.closeStdin"}
    assert "expected a boolean" in reply["error"]["message"]
    peer.call("process/terminate", {"processId": "c"})


def test_pty_size_member(any_server, connect):
    """Ours starts the PTY at ``ptySize``; the reference ignores the member (24x80)."""
    peer = connect(any_server.url)
    peer.initialize()
    peer.call("process/start", start_params("s", ["stty", "size"], tty=True, ptySize={"rows": 33, "cols": 101}))
    assert _output(peer, "s") == (b"24 80\r\n" if any_server.is_reference else b"33 101\r\n")


def test_resize_method(any_server, connect):
    """Ours resizes and the child gets SIGWINCH; the reference does not route ``process/resize`` (-32601)."""
    peer = connect(any_server.url)
    peer.initialize()
    script = "trap 'stty size; exit 0' WINCH; echo ready; i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done"
    peer.call("process/start", start_params("r", ["sh", "-c", script], tty=True))
    peer.wait_for(lambda m: m.get("method") == "process/output")
    reply = peer.request("process/resize", {"processId": "r", "rows": 40, "cols": 120})
    if any_server.is_reference:
        assert reply["error"]["code"] == -32601
        peer.call("process/terminate", {"processId": "r"})
        peer.wait_closed("r")
        return
    assert reply["result"] == {}
    SCHEMAS.validate("process/resize.result.json", reply["result"])
    assert _output(peer, "r").endswith(b"40 120\r\n")


def test_resize_errors(server, connect):
    peer = connect(server.url)
    peer.initialize()
    assert peer.request("process/resize", {"processId": "none", "rows": 1, "cols": 1})["error"] == {
        "code": -32600, "message": "unknown process id none"}
    peer.call("process/start", start_params("p", ["sleep", "5"]))
    error = peer.request("process/resize", {"processId": "p", "rows": 10, "cols": 10})["error"]
    assert error["code"] == -32602 and "has no terminal" in error["message"]
    error = peer.request("process/resize", {"processId": "p", "rows": 0, "cols": 10})["error"]
    assert error == {"code": -32602, "message": "invalid value: integer `0`, expected 1 to 65535",
                     "data": {"path": "$.rows"}}
    error = peer.request("process/resize", {"processId": "p", "rows": 10})["error"]
    assert error["code"] == -32602 and error["message"] == "missing field `cols`"
    peer.call("process/terminate", {"processId": "p"})
    # a float is no u16 (it reached the terminal ioctl and failed there: -32603 and a traceback)
    pty = start_params("t", ["true"], tty=True, ptySize={"rows": 30.0, "cols": 80})
    for method, params, path in (("process/resize", {"processId": "p", "rows": 30.0, "cols": 80}, "$.rows"),
                                 ("process/start", pty, "$.ptySize.rows")):
        error = peer.request(method, params)["error"]
        assert error["code"] == -32602 and error["data"] == {"path": path}, error


# ------------------------------------------------------------------ the client
def test_client_close_stdin_and_run_input(any_server):
    with Client.connect(any_server.url) as client:
        done = client.run(["wc", "-l"], input=b"a\nb\n", timeout=10)
        assert (done.returncode, done.stdout.strip()) == (0, b"2")
        process = client.start(["cat"], stdin=True)
        with process:
            process.write(b"hi")
            if any_server.is_reference:
                assert not client.supports("closeStdin")
                with pytest.raises(ExtensionNotSupported) as caught:
                    process.close_stdin()
                assert caught.value.extension == "closeStdin" and isinstance(caught.value, NotImplementedError)
            else:
                process.close_stdin()
                process.close_stdin()  # already closed: nothing happens
                assert process.communicate(timeout=10) == (b"hi", b"")


def test_client_run_input_needs_no_shell_against_ours(server):
    """No argv rewriting: the child sees exactly its argv, and input may be large."""
    payload = os.urandom(3 * 1024 * 1024 + 7)
    with Client.connect(server.url) as client:
        done = client.run(["sh", "-c", 'echo "$0 $#" >&2; cat', "name"], input=payload, timeout=30)
        assert (done.returncode, done.stderr, done.stdout) == (0, b"name 0\n", payload)
        assert client.run(["cat"], input=b"", timeout=10).stdout == b""
        assert client.run(["true"], input=b"x" * 100000, timeout=10).returncode == 0  # never read: no error


def test_client_pty_size_and_resize(any_server):
    with Client.connect(any_server.url) as client:
        done = client.run(["stty", "size"], tty=True, pty_size=(33, 101), timeout=10)
        assert done.stdout == (b"24 80\r\n" if any_server.is_reference else b"33 101\r\n")
        process = client.start(["sleep", "5"], tty=True)
        with process:
            if any_server.is_reference:
                with pytest.raises(ExtensionNotSupported):
                    process.resize(40, 120)
            else:
                process.resize(40, 120)
        assert process.returncode is not None


def test_a_raw_terminal_that_closed_with_input_queued_releases_its_writer(server, tmp_path):
    """A child in raw mode that exited without reading its input left the stdin writer blocked for good on the
    PTY (a thread and a descriptor per process).  The child exits once the input is written (it slept 0.5 s,
    which a loaded machine's writes outlasted: a write to the exited child then failed)."""
    import threading

    def writers():
        return [t for t in threading.enumerate() if t.name.startswith("process-") and t.name.endswith("-stdin")]

    written = tmp_path / "written"
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["/bin/sh", "-c", "stty raw -echo; i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do "
                                "sleep 0.05; i=$((i+1)); done" % written], tty=True, stdin=True)
        for _ in range(120):  # 7.5 MiB, near the default queue limit: far more than a terminal's input holds
            process.write(b"x" * 65536, timeout=10)
        written.touch()
        assert process.wait(timeout=40) == 0
        process.communicate(timeout=20)  # closed: every descriptor of the terminal is closed
        wait_until(lambda: not writers(), timeout=10)


def test_a_terminal_written_to_closes_without_waiting_for_its_writer(server, monkeypatch):
    """The release of a PTY's stdin writer flushed the terminal for 2 s even when the writer was idle, and
    every process/exited and process/closed of a terminal process written to came 2 s late."""
    from exec_server.server.process import stdin

    flushed = []
    monkeypatch.setattr(stdin, "_flush_until_ended", lambda fd, writer: (flushed.append(fd), os.close(fd)))
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["/bin/sh", "-c", "read x; echo got $x"], tty=True, stdin=True)
        process.write(b"hello\n", timeout=10)
        stdout, _ = process.communicate(timeout=20)
    assert b"got hello" in stdout and process.returncode == 0
    assert flushed == []  # the idle writer ended when told to: nothing to flush


def test_a_terminal_without_a_path_still_starts(server, monkeypatch):
    """os.ttyname fails where /dev/pts is another devpts instance (some containers): every tty start failed."""
    from exec_server.server.process import spawn

    def no_name(fd):
        raise OSError(19, "No such device")

    monkeypatch.setattr(spawn.os, "ttyname", no_name)
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["/bin/sh", "-c", "read x; echo got $x"], tty=True, stdin=True)
        process.write(b"hello\n", timeout=10)
        stdout, _ = process.communicate(timeout=20)
    assert b"got hello" in stdout and process.returncode == 0
