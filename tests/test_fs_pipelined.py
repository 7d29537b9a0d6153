"""Requests on a file handle sent right behind its fs/open, before the answer, as on a serial server.

The reference runs requests one after another, so a client may send
``fs/open``, ``fs/readBlock`` and ``fs/close`` without waiting; ours runs
an open on a request thread, and the block operations and the close wait
for it instead of finding no handle.  A slow open (a network file system
here: a sleep) makes the race certain on ours.
"""

import os
import time

import psutil
import pytest

from exec_server.protocol import b64
from exec_server.server.fs import handles

pytestmark = pytest.mark.posix


def uri(path) -> str:
    return "file://" + str(path)


@pytest.fixture
def slow_open(monkeypatch):
    """Every fs/open of our in-process server takes 0.3 s more (the other requests arrive meanwhile), the
    first of a test 0.5 s: a later open running beside it gets to the file handles first."""
    opened, calls = handles.FileHandles.open, []

    def slow(self, *args, **kwargs):
        calls.append(args)
        time.sleep(0.5 if len(calls) == 1 else 0.3)
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(handles.FileHandles, "open", slow)


def send_all(peer, requests):
    for number, (method, params) in enumerate(requests, 1):
        peer.send({"id": number, "method": method, "params": params})
    return [peer.wait_for(lambda m, n=number: m.get("id") == n) for number in range(1, len(requests) + 1)]


def test_read_and_close_sent_behind_the_open(any_server, connect, tmp_path, slow_open):
    source = tmp_path / "source.bin"
    source.write_bytes(b"0123456789")
    peer = connect(any_server.url)
    peer.initialize()
    answers = send_all(peer, [
        ("fs/open", {"handleId": "h", "path": uri(source), "mode": "read"}),
        ("fs/readBlock", {"handleId": "h", "offset": 0, "len": 4}),
        ("fs/readBlock", {"handleId": "h", "offset": 4, "len": 100}),
        ("fs/close", {"handleId": "h"}),
        ("fs/readBlock", {"handleId": "h", "offset": 0, "len": 4}),  # after the close: gone
    ])
    assert answers[0]["result"] == {"handleId": "h"}
    assert answers[1]["result"] == {"chunk": b64.encode(b"0123"), "eof": False}
    assert answers[2]["result"] == {"chunk": b64.encode(b"456789"), "eof": True}
    assert answers[3]["result"] == {}
    assert answers[4]["error"]["code"] == -32004
    if not any_server.is_reference:  # closed by the close, not left for the connection's end
        assert str(source) not in [entry.path for entry in psutil.Process().open_files()]


def test_writes_and_close_sent_behind_the_open(any_server, connect, tmp_path, slow_open):
    target = tmp_path / "target.bin"
    peer = connect(any_server.url)
    peer.initialize()
    answers = send_all(peer, [("fs/open", {"handleId": "w", "path": uri(target), "mode": "replace"})]
                       + [("fs/writeBlock", {"handleId": "w", "offset": n * 3, "chunk": b64.encode(b"abc")})
                          for n in range(3)]
                       + [("fs/close", {"handleId": "w"})])
    assert [answer.get("result") for answer in answers] == [{"handleId": "w"}, {}, {}, {}, {}]
    assert target.read_bytes() == b"abcabcabc"


def test_behind_an_open_that_fails_the_handle_is_unknown(any_server, connect, tmp_path, slow_open):
    peer = connect(any_server.url)
    peer.initialize()
    answers = send_all(peer, [
        ("fs/open", {"handleId": "m", "path": uri(tmp_path / "missing"), "mode": "read"}),
        ("fs/readBlock", {"handleId": "m", "offset": 0, "len": 4}),
        ("fs/close", {"handleId": "m"}),
    ])
    assert answers[0]["error"]["code"] == -32004
    assert answers[1]["error"] == {"code": -32004, "message": "unknown file handle `m`"}
    assert answers[2]["result"] == {}  # closing an unknown id is no error


def test_an_open_that_fails_early_releases_what_waits_for_it(server, connect, tmp_path, monkeypatch):
    """An fs/open that never runs (here: it fails before opening) still ends the wait of those behind it."""
    def broken(self, *args, **kwargs):
        raise OSError("no descriptors left")

    monkeypatch.setattr(handles.FileHandles, "_open_locked", broken)
    peer = connect(server.url)
    peer.initialize()
    started = time.monotonic()
    answers = send_all(peer, [
        ("fs/open", {"handleId": "x", "path": uri(tmp_path / "f"), "mode": "replace"}),
        ("fs/writeBlock", {"handleId": "x", "offset": 0, "chunk": b64.encode(b"abc")}),
        ("fs/close", {"handleId": "x"}),
    ])
    assert time.monotonic() - started < handles.OPEN_WAIT / 2  # not the wait's limit
    assert answers[0]["error"]["code"] == -32603
    assert answers[1]["error"]["code"] == -32004 and answers[2]["result"] == {}
    assert not os.path.exists(str(tmp_path / "f"))


def test_open_close_open_close_of_one_id_back_to_back(any_server, connect, tmp_path, slow_open):
    """Two closes of one id under way at once: each takes its own open's handle (the second close's
    bookkeeping overwrote the first's, and its end failed), and every descriptor is closed."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    peer = connect(any_server.url)
    peer.initialize()
    answers = send_all(peer, [
        ("fs/open", {"handleId": "h", "path": uri(first), "mode": "replace"}),
        ("fs/writeBlock", {"handleId": "h", "offset": 0, "chunk": b64.encode(b"one")}),
        ("fs/close", {"handleId": "h"}),
        ("fs/open", {"handleId": "h", "path": uri(second), "mode": "replace"}),
        ("fs/writeBlock", {"handleId": "h", "offset": 0, "chunk": b64.encode(b"two")}),
        ("fs/close", {"handleId": "h"}),
    ])
    assert [answer.get("result") for answer in answers] == [{"handleId": "h"}, {}, {}, {"handleId": "h"}, {}, {}]
    assert (first.read_bytes(), second.read_bytes()) == (b"one", b"two")
    if not any_server.is_reference:
        open_paths = [entry.path for entry in psutil.Process().open_files()]
        assert str(first) not in open_paths and str(second) not in open_paths


@pytest.mark.parametrize("first_opens", [True, False], ids=["first-opens", "first-fails"])
def test_two_opens_of_one_id_then_a_read_and_a_close(any_server, connect, tmp_path, slow_open, first_opens):
    """As in order: the read and the close use the handle of the first open that succeeds (they used the
    last open, a duplicate that fails, and the close closed nothing: the file stayed open)."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    if first_opens:
        first.write_bytes(b"01234")
    second.write_bytes(b"abcde")
    peer = connect(any_server.url)
    peer.initialize()
    answers = send_all(peer, [
        ("fs/open", {"handleId": "d", "path": uri(first), "mode": "read"}),
        ("fs/open", {"handleId": "d", "path": uri(second), "mode": "read"}),
        ("fs/readBlock", {"handleId": "d", "offset": 0, "len": 5}),
        ("fs/close", {"handleId": "d"}),
        ("fs/readBlock", {"handleId": "d", "offset": 0, "len": 5}),
    ])
    if first_opens:
        assert answers[0]["result"] == {"handleId": "d"} and answers[1]["error"]["code"] == -32600
    else:
        assert answers[0]["error"]["code"] == -32004 and answers[1]["result"] == {"handleId": "d"}
    assert answers[2]["result"]["chunk"] == b64.encode(b"01234" if first_opens else b"abcde")
    assert answers[3]["result"] == {} and answers[4]["error"]["code"] == -32004
    if not any_server.is_reference:
        open_paths = [entry.path for entry in psutil.Process().open_files()]
        assert str(first) not in open_paths and str(second) not in open_paths
