"""A Ctrl-C in the middle of sending a large message does not swallow the client's next call.

A 3 MiB ``process/write`` goes out as several WebSocket frames (or one long
stdio line).  Interrupted between two of them, the next message (the kill a
^C leads to) went out as the rest of the cut one, and the server never saw
it: ``run`` hung for its grace and left the remote tree running.  Now the
WebSocket connection ends and the call goes on a resumed one; the stdio
line is ended, so the server skips it and reads the next message whole.
The cut call is not sent again by that recovery (its caller saw the ^C),
and a ^C that comes while the call waits for another thread's send (nothing
of it written) leaves the connection as it was.
"""

import os
import sys

import pytest

from conftest import running_descendants, wait_until
from exec_server import Client
from exec_server.common import websocket as websocket_common

pytestmark = pytest.mark.posix

PAYLOAD = b"x" * (3 << 20)  # ~4 MB of base64: four frames of 1 MiB


def assert_terminated(client, process):
    process.terminate(timeout=20)
    assert process.wait(timeout=20) == 137
    wait_until(lambda: not running_descendants(os.getpid(), ["sleep", "61"]), timeout=10)
    assert client.run(["echo", "still here"], timeout=20).stdout == b"still here\n"


def write_cut_by_ctrl_c(monkeypatch, process):
    """``process.write(PAYLOAD)``, interrupted (KeyboardInterrupt) after its second WebSocket frame."""
    real, big_frames = websocket_common.send_all, []

    def interrupted(sock, data, timeout=None):
        if len(data) > 512 * 1024:  # one of the large message's frames, not a server's small reply
            big_frames.append(len(data))
            if len(big_frames) == 2:
                raise KeyboardInterrupt
        return real(sock, data, timeout)

    monkeypatch.setattr(websocket_common, "send_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process.write(PAYLOAD)
    monkeypatch.setattr(websocket_common, "send_all", real)


def test_websocket_send_interrupted_between_frames(server, monkeypatch):
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["sleep", "61"], stdin=True)
        write_cut_by_ctrl_c(monkeypatch, process)
        assert_terminated(client, process)


class CutOnce:
    """A write to the child's stdin: the first large one puts part of its bytes through, then ^C."""

    def __init__(self, write):
        self.write, self.cut = write, False

    def __call__(self, view):
        if not self.cut and len(view) > 512 * 1024:
            self.cut = True
            self.write(view[:64 * 1024])  # the pipe (1 MiB, or the default 64 KiB) has room for it
            raise KeyboardInterrupt
        return self.write(view)


def test_stdio_send_interrupted_partway():
    with Client.spawn([sys.executable, "-m", "exec_server", "--listen", "stdio"], timeout=30) as client:
        process = client.start(["sleep", "61"], stdin=True)
        transport = client._endpoint._transport
        transport._write_piece = CutOnce(transport._write_piece)
        with pytest.raises(KeyboardInterrupt):
            process.write(PAYLOAD)
        process.terminate(timeout=20)
        assert process.wait(timeout=20) == 137
        assert client.run(["echo", "still here"], timeout=20).stdout == b"still here\n"


class InterruptedWait:
    """A send lock whose first ``acquire`` raises KeyboardInterrupt, as a ^C while another thread sends."""

    def __init__(self, lock):
        self.lock, self.interrupted = lock, False

    def acquire(self, *args, **kwargs):
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return self.lock.acquire(*args, **kwargs)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.lock.release()

    def __getattr__(self, name):
        return getattr(self.lock, name)


def test_websocket_interrupted_before_sending_keeps_the_connection(server):
    """Nothing of the message was written: the stream is whole, so no reconnect follows (the same connection)."""
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["cat"], stdin=True)
        transport = client._endpoint._transport
        writer = transport._writer
        writer.lock = InterruptedWait(writer.lock)
        with pytest.raises(KeyboardInterrupt):
            process.write(b"lost\n")
        assert writer.lock.interrupted
        process.write(b"kept\n")
        process.close_stdin()
        assert process.wait(timeout=20) == 0
        assert process.communicate(timeout=20)[0] == b"kept\n"
        assert client._endpoint._transport is transport and transport._dead_reason is None
        assert client._endpoint._pending == {}


def test_websocket_write_interrupted_between_frames_is_not_sent_again_after_the_reconnect(server, monkeypatch):
    """The caller saw KeyboardInterrupt: the recovery that follows does not send the cut write again."""
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["wc", "-c"], stdin=True)
        write_cut_by_ctrl_c(monkeypatch, process)
        process.write(b"kept\n")
        process.close_stdin()
        assert process.wait(timeout=20) == 0
        assert process.communicate(timeout=20)[0].split() == [b"5"]
        # nothing stays pending: the recovery's own catch-up read may still be answered right after (a CI run)
        wait_until(lambda: client._endpoint._pending == {}, timeout=10)


class CutBeforeNewline:
    """A write to the child's stdin: the first one of a line holding ``marker`` puts all of it through but its
    newline, then ^C."""

    def __init__(self, write, marker):
        self.write, self.marker, self.cut = write, marker, False

    def __call__(self, view):
        if not self.cut and self.marker in bytes(view):
            self.cut = True
            self.write(view[:-1])
            raise KeyboardInterrupt
        return self.write(view)


def test_stdio_send_cut_just_before_its_newline_is_not_applied(tmp_path):
    """A message cut with only its newline left was made whole by the next message's leading newline: the
    server applied the write whose call had raised.  Its line now ends malformed, and is answered as such."""
    target = tmp_path / "cut.txt"
    with Client.spawn([sys.executable, "-m", "exec_server", "--listen", "stdio"], timeout=30) as client:
        transport = client._endpoint._transport
        transport._write_piece = CutBeforeNewline(transport._write_piece, b"cut.txt")
        with pytest.raises(KeyboardInterrupt):
            client.fs.write_file(target, b"must not land")
        assert client.call("environment/status", timeout=10) == {"status": "ready"}
        assert client.fs.read_directory(tmp_path) == []
        client.fs.write_file(tmp_path / "after.txt", b"lands")
    assert not target.exists()
    assert (tmp_path / "after.txt").read_bytes() == b"lands"
