"""A Ctrl-C in the middle of sending a large message does not swallow the client's next call.

A 3 MiB ``process/write`` goes out as several WebSocket frames (or one long
stdio line).  Interrupted between two of them, the next message (the kill a
^C leads to) went out as the rest of the cut one, and the server never saw
it: ``run`` hung for its grace and left the remote tree running.  Now the
WebSocket connection ends and the call goes on a resumed one; the stdio
line is ended, so the server skips it and reads the next message whole.
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


def test_websocket_send_interrupted_between_frames(server, monkeypatch):
    with Client.connect(server.url, timeout=10) as client:
        process = client.start(["sleep", "61"], stdin=True)
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
        assert_terminated(client, process)


class CutOnce:
    """The child's stdin: the first large write puts half of its bytes through, then ^C."""

    def __init__(self, pipe):
        self.pipe, self.cut = pipe, False

    def write(self, data):
        if not self.cut and len(data) > 512 * 1024:
            self.cut = True
            self.pipe.write(data[:len(data) // 2])
            self.pipe.flush()
            raise KeyboardInterrupt
        return self.pipe.write(data)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def test_stdio_send_interrupted_partway():
    with Client.spawn([sys.executable, "-m", "exec_server", "--listen", "stdio"], timeout=30) as client:
        process = client.start(["sleep", "61"], stdin=True)
        transport = client._endpoint._transport
        transport._child.stdin = CutOnce(transport._child.stdin)
        with pytest.raises(KeyboardInterrupt):
            process.write(PAYLOAD)
        process.terminate(timeout=20)
        assert process.wait(timeout=20) == 137
        assert client.run(["echo", "still here"], timeout=20).stdout == b"still here\n"
