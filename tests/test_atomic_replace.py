"""The ``atomicReplace`` extension: ``fs/open {mode: replace, atomic: true}`` and ``fs/close {commit}``.

A replace that does not complete (the client killed, the connection lost, an
error in the ``with`` block) leaves the target as it was; readers never see a
partial file.  The reference ignores the members (its replace truncates at
once), so our client sends them only to a server that advertises the
extension, and falls back to the plain replace otherwise.
"""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import wait_until
from exec_server import Client, ExtensionNotSupported, ReconnectPolicy
from exec_server.client.fs import RemoteFile
from exec_server.protocol import b64
from exec_server.protocol.errors import NotFound

pytestmark = pytest.mark.posix

ORIGINAL = b"ORIGINAL CONFIG\n"
FAST = ReconnectPolicy(deadline=10.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=2.0)


def leftovers(directory) -> list:
    """Temporary files of atomic replaces in ``directory``."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def uri(path) -> str:
    return "file://" + str(path)


def open_atomic(peer, handle_id, path, data=None):
    """``fs/open`` an atomic replace of ``path`` and, with ``data``, write it as one block; the open's reply."""
    reply = peer.request("fs/open", {"handleId": handle_id, "path": uri(path), "mode": "replace", "atomic": True})
    if data is not None:
        peer.call("fs/writeBlock", {"handleId": handle_id, "offset": 0, "chunk": b64.encode(data)})
    return reply


@pytest.fixture
def peer(server, connect):
    """A raw peer, initialized, on our server."""
    ready = connect(server.url)
    ready.initialize()
    return ready


def test_the_target_changes_only_at_close(any_server, connect, tmp_path):
    """Ours: the target keeps its content until fs/close renames the new file over it.  The reference
    ignores the member and truncates at open, which is why a client must not send it unasked."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    peer = connect(any_server.url)
    peer.initialize()
    expected = {"handleId": "h1"} if any_server.is_reference else {"handleId": "h1", "atomic": True}
    assert open_atomic(peer, "h1", target)["result"] == expected
    peer.call("fs/writeBlock", {"handleId": "h1", "offset": 0, "chunk": b64.encode(b"NEW")})
    if any_server.is_reference:
        assert target.read_bytes() == b"NEW"  # written in place
        peer.call("fs/close", {"handleId": "h1"})
        return
    assert target.read_bytes() == ORIGINAL
    assert len(leftovers(tmp_path)) == 1
    assert peer.call("fs/close", {"handleId": "h1", "commit": True}) == {}
    assert target.read_bytes() == b"NEW"
    assert leftovers(tmp_path) == []


def test_discard_and_a_connection_that_ends_leave_the_target(peer, tmp_path):
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    open_atomic(peer, "h1", target, b"NEW")
    assert peer.call("fs/close", {"handleId": "h1", "commit": False}) == {}
    assert (target.read_bytes(), leftovers(tmp_path)) == (ORIGINAL, [])

    open_atomic(peer, "h2", target, b"NEW")
    peer.close()  # the handle is still open: the connection's end discards it
    wait_until(lambda: leftovers(tmp_path) == [])
    assert target.read_bytes() == ORIGINAL


def test_close_without_commit_commits_and_unknown_handles(peer, tmp_path):
    """A close without ``commit`` is the reference's: the file is put in place, an unknown id is no error.
    With ``commit: true`` an unknown id is -32004, so a client learns that nothing was replaced."""
    target = tmp_path / "new.txt"
    open_atomic(peer, "h1", target, b"data")
    assert peer.call("fs/close", {"handleId": "h1"}) == {}
    assert target.read_bytes() == b"data"
    assert peer.call("fs/close", {"handleId": "gone"}) == {}
    reply = peer.request("fs/close", {"handleId": "gone", "commit": True})
    assert reply["error"] == {"code": -32004, "message": "unknown file handle `gone`"}


def test_mode_and_symlinks_are_kept(peer, tmp_path):
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho old\n")
    script.chmod(0o751)
    link = tmp_path / "link.sh"
    link.symlink_to(script)
    open_atomic(peer, "h1", link, b"#!/bin/sh\necho new\n")
    peer.call("fs/close", {"handleId": "h1", "commit": True})
    assert os.path.islink(link) and script.read_bytes() == b"#!/bin/sh\necho new\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o751
    fresh = tmp_path / "fresh.txt"
    open_atomic(peer, "h2", fresh)
    peer.call("fs/close", {"handleId": "h2", "commit": True})
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.read_bytes() == b"" and stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("params, error", [
    ({"mode": "read", "atomic": True}, (-32602, "atomic applies to mode `replace` only")),
    ({"mode": "replace", "atomic": "yes"}, None),  # the schema: a boolean
    ({"mode": "replace", "atomic": True, "path": "DIR"}, (-32600, "path `DIR` is not a file")),
])
def test_open_errors(peer, tmp_path, params, error):
    path = str(tmp_path) if params.get("path") == "DIR" else str(tmp_path / "x")
    options = {key: value for key, value in params.items() if key != "path"}
    reply = peer.request("fs/open", dict({"handleId": "h1", "path": uri(path)}, **options))
    if error is None:
        assert reply["error"]["code"] == -32602
    else:
        assert (reply["error"]["code"], reply["error"]["message"]) == (error[0], error[1].replace("DIR", path))
    assert leftovers(tmp_path) == []


def test_client_replace_is_atomic_and_an_error_in_the_block_discards(server, tmp_path):
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    with Client.connect(server.url, timeout=5) as client:
        assert client.supports("atomicReplace")
        with pytest.raises(RuntimeError, match="local failure"):
            with client.fs.open(target, "replace") as remote:
                assert remote.atomic
                remote.write(b"partial")
                raise RuntimeError("local failure")
        assert (target.read_bytes(), leftovers(tmp_path)) == (ORIGINAL, [])
        with client.fs.open(target, "replace") as remote:
            remote.write(b"complete")
            assert target.read_bytes() == ORIGINAL
        assert target.read_bytes() == b"complete"
        with client.fs.open(target, "replace", atomic=False) as remote:  # the reference's replace
            remote.write(b"in place")
            assert target.read_bytes() == b"in place"


def test_client_uses_the_extension_only_where_advertised(any_server, tmp_path):
    """Against the reference the client falls back to the plain replace (atomic=True says why it cannot)."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    with Client.connect(any_server.url, timeout=5) as client:
        assert client.supports("atomicReplace") is not any_server.is_reference
        if any_server.is_reference:
            with pytest.raises(ExtensionNotSupported, match="atomicReplace"):
                client.fs.open(target, "replace", atomic=True)
        with client.fs.open(target, "replace") as remote:
            assert remote.atomic is not any_server.is_reference
            remote.write(b"NEW")
        assert target.read_bytes() == b"NEW"
        assert leftovers(tmp_path) == []


def test_a_close_after_the_handle_was_lost_says_nothing_was_replaced(memory_server, tmp_path):
    """Handles belong to a connection: after a drop and a resume, close() raises NotFound instead of
    reporting a replace that did not happen, and the target is as it was."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        remote = client.fs.open(target, "replace")
        remote.write(b"NEW")
        server.cut()
        # >= 2: under load a first resume can meet the session not yet detached and be retried
        wait_until(lambda: len(server.transports) >= 2 and client.state == "connected", timeout=10)
        with pytest.raises(NotFound, match="ended with the connection it was opened on"):
            remote.close()
    assert (target.read_bytes(), leftovers(tmp_path)) == (ORIGINAL, [])


def test_a_read_on_a_handle_lost_with_its_connection_says_so(memory_server, tmp_path):
    """A block read on a handle of an earlier connection names the cause (the server only knows the id is
    unknown); a handle opened after the reconnect reads, and a never-opened id gets the server's words."""
    target = tmp_path / "data.bin"
    target.write_bytes(b"0123456789")
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        assert client.connection_number == 1
        lost = client.fs.open(target)
        assert lost.read_block(0, 4) == (b"0123", False)
        server.cut()
        wait_until(lambda: len(server.transports) >= 2 and client.state == "connected", timeout=10)
        assert client.connection_number >= 2
        with pytest.raises(NotFound, match="file handle `%s` ended with the connection" % lost.handle_id):
            lost.read_block(4, 4)
        with client.fs.open(target) as fresh:
            assert fresh.read() == b"0123456789"
        with pytest.raises(NotFound) as caught:
            RemoteFile(client.fs, "never-opened", "read", False, client.connection_number).read_block(0, 1)
        assert caught.value.message == "unknown file handle `never-opened`"


def test_other_not_found_errors_of_a_handle_keep_the_servers_words(memory_server, tmp_path):
    """Only an unknown handle is blamed on the lost connection: an atomic close whose directory went
    away meanwhile still says what the server said (on the connection it was opened on, or a later one)."""
    target = tmp_path / "sub" / "app.conf"
    target.parent.mkdir()
    server = memory_server()
    with Client.open(server.connector, timeout=5, reconnect=FAST) as client:
        remote = client.fs.open(target, "replace")
        remote.write(b"NEW")
        remote._connection = 0  # as if opened before a reconnect
        for leftover in leftovers(target.parent):
            os.remove(os.path.join(str(target.parent), leftover))
        os.rmdir(str(target.parent))
        with pytest.raises(NotFound) as caught:
            remote.close()
        assert "ended with the connection" not in caught.value.message


def test_a_killed_cp_upload_leaves_the_remote_file_as_it_was(server, tmp_path):
    """SIGKILL of ``exec-server cp`` part-way through an upload: the remote file keeps its content and
    the server removes the partial file when the connection ends."""
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    target = remote_dir / "app.conf"
    target.write_bytes(ORIGINAL)
    local = tmp_path / "big.bin"
    with open(local, "wb") as handle:
        handle.truncate(256 << 20)  # sparse: 256 MiB of zeros to send in 1 MiB blocks
    cp = subprocess.Popen([sys.executable, "-m", "exec_server", "cp", "--url", server.url, str(local),
                           ":" + str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(os.path.getsize(remote_dir / name) > 0 for name in leftovers(remote_dir)),
                   timeout=30)
        os.kill(cp.pid, signal.SIGKILL)
    finally:
        cp.kill()
        cp.wait(10)
    wait_until(lambda: leftovers(remote_dir) == [], timeout=30)
    assert target.read_bytes() == ORIGINAL


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "in-place"])
def test_a_pipelined_close_waits_for_the_writes_sent_before_it(peer, tmp_path, atomic):
    """Writes run on request threads and fs/close on the reader: the close still comes after them."""
    target = tmp_path / "big.bin"
    blocks = [bytes([n]) * (1 << 20) for n in range(4)]
    params = {"handleId": "h1", "path": uri(target), "mode": "replace"}
    peer.call("fs/open", dict(params, atomic=True) if atomic else params)
    for n, block in enumerate(blocks):  # sent back to back, no answer awaited
        peer.send({"id": 100 + n, "method": "fs/writeBlock",
                   "params": {"handleId": "h1", "offset": n << 20, "chunk": b64.encode(block)}})
    peer.send({"id": 200, "method": "fs/close", "params": {"handleId": "h1"}})
    for request_id in (100, 101, 102, 103, 200):
        assert peer.wait_for(lambda m: m.get("id") == request_id) == {"id": request_id, "result": {}}
    assert target.read_bytes() == b"".join(blocks)


def test_where_a_rename_would_change_the_file_it_is_written_in_place(peer, tmp_path):
    """A hard link (a rename would split it): in place.  A name of 250 bytes is replaced atomically (its
    temporary file's name keeps only the first characters: it was too long, and the write went in place)."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    other = tmp_path / "other-name"
    os.link(target, other)
    assert open_atomic(peer, "h1", target, b"NEW")["result"] == {"handleId": "h1", "atomic": False}
    assert other.read_bytes() == b"NEW" + ORIGINAL[3:]  # written through at once, over the old bytes ...
    peer.call("fs/close", {"handleId": "h1"})  # ... and cut at the close
    assert os.path.samefile(target, other) and target.read_bytes() == b"NEW"
    long_name = tmp_path / ("n" * 250)
    assert open_atomic(peer, "h2", long_name, b"data")["result"]["atomic"] is True
    peer.call("fs/close", {"handleId": "h2"})
    assert long_name.read_bytes() == b"data" and leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="gives a file to another user")
def test_owner_group_and_set_id_bits_are_kept(peer, tmp_path):
    """A root server replacing another user's file: the file stays that user's (never a set-user-ID root
    file), with its group and mode."""
    target = tmp_path / "tool"
    target.write_bytes(b"old")
    os.chown(target, 65534, 65534)
    target.chmod(0o4750)
    open_atomic(peer, "h1", target, b"new")
    peer.call("fs/close", {"handleId": "h1", "commit": True})
    info = target.stat()
    assert (target.read_bytes(), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        b"new", 65534, 65534, 0o4750)


def test_a_target_the_rename_cannot_replace_gets_the_content_in_place(peer, tmp_path, monkeypatch):
    """A bind-mounted file refuses the rename (EBUSY): the new content is copied into it at close."""
    from exec_server.server.fs import atomic

    def refuse(source, destination):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
    monkeypatch.setattr(atomic.os, "replace", refuse)
    target = tmp_path / "hosts"
    target.write_bytes(ORIGINAL)
    open_atomic(peer, "h1", target, b"NEW")
    assert target.read_bytes() == ORIGINAL
    assert peer.call("fs/close", {"handleId": "h1", "commit": True}) == {}
    assert (target.read_bytes(), leftovers(tmp_path)) == (b"NEW", [])


def test_a_slow_close_holds_up_no_other_request(peer, tmp_path, monkeypatch):
    """An atomic close's commit (its fsync takes 2 s here) runs on a request thread: the connection answers
    its other requests meanwhile.  What was sent after the close sees it done: a block write finds the handle
    gone, an fs/open of the same id waits for the commit and reads the new content."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    open_atomic(peer, "h1", target, b"NEW")
    real_fsync = os.fsync
    committed = threading.Event()  # the commit's fsync waits for it: the status must come before

    def slow_fsync(fd):
        committed.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)  # the server runs in this process
    peer.send({"id": 200, "method": "fs/close", "params": {"handleId": "h1", "commit": True}})
    peer.send({"id": 201, "method": "fs/writeBlock",
               "params": {"handleId": "h1", "offset": 0, "chunk": b64.encode(b"LATE")}})
    peer.send({"id": 202, "method": "fs/open", "params": {"handleId": "h1", "path": uri(target), "mode": "read"}})
    peer.send({"id": 203, "method": "environment/status", "params": {}})
    try:
        assert peer.wait_for(lambda m: m.get("id") == 203) == {"id": 203, "result": {"status": "ready"}}
    finally:
        committed.set()  # answered during the commit, not after it
    late = peer.wait_for(lambda m: m.get("id") == 201)
    assert late["error"]["code"] == -32004 and "unknown file handle" in late["error"]["message"]
    assert peer.wait_for(lambda m: m.get("id") == 200, timeout=15) == {"id": 200, "result": {}}
    assert peer.wait_for(lambda m: m.get("id") == 202, timeout=15) == {"id": 202, "result": {"handleId": "h1"}}
    monkeypatch.setattr(os, "fsync", real_fsync)
    block = peer.call("fs/readBlock", {"handleId": "h1", "offset": 0, "len": 64})
    assert b64.decode(block["chunk"]) == b"NEW"
    assert peer.call("fs/close", {"handleId": "h1"}) == {}
    assert (target.read_bytes(), leftovers(tmp_path)) == (b"NEW", [])


def test_a_second_close_of_a_handle_being_closed_finds_it_gone(peer, tmp_path, monkeypatch):
    """Two closes of one handle, back to back, while the first commits: the second is a close of an unknown
    id (with commit: -32004), whichever thread runs first; the first one's commit stands."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    open_atomic(peer, "h1", target, b"NEW")
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.5), real_fsync(fd)))
    peer.send({"id": 300, "method": "fs/close", "params": {"handleId": "h1", "commit": False}})
    peer.send({"id": 301, "method": "fs/close", "params": {"handleId": "h1", "commit": True}})
    second = peer.wait_for(lambda m: m.get("id") == 301)
    assert second["error"]["code"] == -32004
    assert peer.wait_for(lambda m: m.get("id") == 300) == {"id": 300, "result": {}}
    assert (target.read_bytes(), leftovers(tmp_path)) == (ORIGINAL, [])


def test_a_dropped_connection_closes_no_handle_under_a_running_write(server, connect, tmp_path, monkeypatch):
    """The connection ends while a block write runs (1 s here): its handle is closed when the write is done,
    not under it (the descriptor could be another file's by then); the atomic replace is discarded."""
    from exec_server.server.fs import handles

    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    peer = connect(server.url)
    peer.initialize()
    open_atomic(peer, "h1", target)
    real_pwrite = handles.os.pwrite
    outcomes, running = [], threading.Event()

    def slow_pwrite(fd, data, offset):
        running.set()
        time.sleep(1.0)
        try:
            written = real_pwrite(fd, data, offset)
        except OSError as exc:
            outcomes.append(exc.errno)
            raise
        outcomes.append(written)
        return written

    monkeypatch.setattr(handles.os, "pwrite", slow_pwrite)
    chunk = b64.encode(b"x" * 4096)
    peer.send({"id": 400, "method": "fs/writeBlock", "params": {"handleId": "h1", "offset": 0, "chunk": chunk}})
    assert running.wait(10)  # the write is running
    assert len(leftovers(tmp_path)) == 1
    peer.close()
    wait_until(lambda: outcomes, timeout=10)
    assert outcomes == [4096]  # written whole: the descriptor was still its file's
    wait_until(lambda: leftovers(tmp_path) == [], timeout=10)
    assert target.read_bytes() == ORIGINAL


def test_an_open_waiting_for_a_close_leaves_nothing_when_the_connection_drops(server, connect, tmp_path, monkeypatch):
    """An fs/open of the id a slow close still holds waits for that close; the connection ends meanwhile: the
    open adds no handle after the connection's handles were closed (no descriptor, no temporary file left)."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    peer = connect(server.url)
    peer.initialize()
    open_atomic(peer, "h1", target, b"NEW")
    real_fsync = os.fsync
    syncing = threading.Event()
    monkeypatch.setattr(os, "fsync", lambda fd: (syncing.set(), time.sleep(1.0), real_fsync(fd)))
    before = set(os.listdir("/proc/self/fd"))
    peer.send({"id": 500, "method": "fs/close", "params": {"handleId": "h1", "commit": True}})
    reopen = {"handleId": "h1", "path": uri(target), "mode": "replace", "atomic": True}
    peer.send({"id": 501, "method": "fs/open", "params": reopen})
    assert syncing.wait(10)  # the close is in its fsync, the open waits for it
    peer.close()

    def into_tmp_path() -> list:
        found = []
        for fd in set(os.listdir("/proc/self/fd")) - before:
            try:
                found.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:
                pass
        return [path for path in found if path.startswith(str(tmp_path))]

    wait_until(lambda: leftovers(tmp_path) == [] and into_tmp_path() == [], timeout=10)
    time.sleep(1.5)  # the open has long had its turn
    assert (leftovers(tmp_path), into_tmp_path(), target.read_bytes()) == ([], [], b"NEW")


def test_a_slow_close_is_not_queued_behind_long_polls(configured_server, connect, tmp_path, monkeypatch):
    """Both request threads are in long polls: an atomic close (a 0.5 s fsync) is answered in its own time."""
    running = configured_server(concurrent_requests=2)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", {"processId": "s", "argv": ["sleep", "5"], "cwd": uri(tmp_path), "env": {},
                                "tty": False})
    target = tmp_path / "app.conf"
    open_atomic(peer, "h1", target, b"NEW")
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.5), real_fsync(fd)))
    for request_id in (601, 602):
        peer.send({"id": request_id, "method": "process/read",
                   "params": {"processId": "s", "afterSeq": 0, "waitMs": 4000}})
    time.sleep(0.3)  # both threads wait in their polls
    started = time.monotonic()
    peer.send({"id": 603, "method": "fs/close", "params": {"handleId": "h1", "commit": True}})
    assert peer.wait_for(lambda m: m.get("id") == 603, timeout=10) == {"id": 603, "result": {}}
    assert time.monotonic() - started < 2.5 and target.read_bytes() == b"NEW"
    peer.call("process/terminate", {"processId": "s"})


def test_a_close_that_gives_up_waiting_closes_nothing_under_a_running_write(peer, tmp_path, monkeypatch):
    """A block write outlasts the close's wait (CLOSE_BLOCKS_WAIT, 0.3 s here): the close answers, the
    descriptor stays the write's until it ends (a file opened meanwhile never gets its bytes), and an atomic
    replace whose writes did not end is discarded with an error, the target unchanged."""
    from exec_server.server.fs import handles

    monkeypatch.setattr(handles, "CLOSE_BLOCKS_WAIT", 0.3)
    real_pwrite = handles.os.pwrite
    monkeypatch.setattr(handles.os, "pwrite",
                        lambda fd, data, offset: (time.sleep(1.0), real_pwrite(fd, data, offset))[1])
    first, second = tmp_path / "first", tmp_path / "second"
    peer.call("fs/open", {"handleId": "h1", "path": uri(first), "mode": "replace"})
    peer.send({"id": 700, "method": "fs/writeBlock",
               "params": {"handleId": "h1", "offset": 0, "chunk": b64.encode(b"FOR-FIRST")}})
    peer.send({"id": 701, "method": "fs/close", "params": {"handleId": "h1"}})
    peer.send({"id": 702, "method": "fs/open", "params": {"handleId": "h1", "path": uri(second), "mode": "replace"}})
    for request_id in (700, 701):
        assert peer.wait_for(lambda m: m.get("id") == request_id) == {"id": request_id, "result": {}}
    assert peer.wait_for(lambda m: m.get("id") == 702) == {"id": 702, "result": {"handleId": "h1"}}
    assert (first.read_bytes(), second.read_bytes()) == (b"FOR-FIRST", b"")
    peer.call("fs/close", {"handleId": "h1"})
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    open_atomic(peer, "h2", target)
    peer.send({"id": 710, "method": "fs/writeBlock",
               "params": {"handleId": "h2", "offset": 0, "chunk": b64.encode(b"NEW")}})
    reply = peer.request("fs/close", {"handleId": "h2", "commit": True})
    assert reply["error"]["code"] == -32603 and "discarded" in reply["error"]["message"]
    assert peer.wait_for(lambda m: m.get("id") == 710) == {"id": 710, "result": {}}
    wait_until(lambda: leftovers(tmp_path) == [], timeout=10)
    assert target.read_bytes() == ORIGINAL


def test_fs_close_with_fs_code_that_cannot_load_fails_alone(server, connect, monkeypatch):
    """A broken install (the fs code does not import): fs/close gets -32603 like the other fs methods, and the
    connection keeps serving."""
    from exec_server.server import connection

    def broken(limit):
        raise ImportError("the fs code is missing")

    monkeypatch.setattr(connection, "_new_file_handles", broken)
    peer = connect(server.url)
    peer.initialize()
    reply = peer.request("fs/close", {"handleId": "h1"})
    assert reply["error"] == {"code": -32603, "message": "internal error"}
    assert peer.call("environment/status", {}) == {"status": "ready"}


def test_a_close_sent_just_before_the_end_of_a_stdio_session_still_replaces(tmp_path):
    """stdio: open (atomic), write, then fs/close and end of file at once.  The close arrived before the end,
    so the replace happens, as it did when closes ran on the reader thread; no temporary file is left."""
    target = tmp_path / "app.conf"
    target.write_bytes(ORIGINAL)
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "stdio"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        def send(message) -> None:
            server.stdin.write((json.dumps(message) + "\n").encode())
            server.stdin.flush()

        def answer(request_id) -> dict:
            while True:
                message = json.loads(server.stdout.readline())
                if message.get("id") == request_id:
                    return message

        send({"id": 0, "method": "initialize", "params": {"clientName": "t"}})
        answer(0)
        send({"method": "initialized"})
        send({"id": 1, "method": "fs/open", "params": {"handleId": "h", "path": uri(target), "mode": "replace",
                                                       "atomic": True}})
        assert answer(1)["result"]["atomic"] is True
        send({"id": 2, "method": "fs/writeBlock", "params": {"handleId": "h", "offset": 0,
                                                             "chunk": b64.encode(b"NEW\n")}})
        assert answer(2) == {"id": 2, "result": {}}
        send({"id": 3, "method": "fs/close", "params": {"handleId": "h", "commit": True}})
        server.stdin.close()
        server.stdout.read()
        assert server.wait(20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        server.stdout.close()
    assert (target.read_bytes(), leftovers(tmp_path)) == (b"NEW\n", [])


def test_a_handle_id_reused_after_a_close_gave_up_is_a_new_handle(peer, tmp_path, monkeypatch):
    """Block operations are counted per handle: after a close gave up on a write still running (CLOSE_BLOCKS_WAIT,
    0.3 s here), a new handle of the same id neither waits for that write nor fails its own commit."""
    from exec_server.server.fs import handles

    monkeypatch.setattr(handles, "CLOSE_BLOCKS_WAIT", 0.3)
    real_pwrite = handles.os.pwrite
    first_write, hung = [True], threading.Event()

    def pwrite(fd, data, offset):
        if first_write[0]:
            first_write[0] = False
            hung.wait(30)  # a write on a hung file system, say: until the new handle is done
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(handles.os, "pwrite", pwrite)
    old, new = tmp_path / "old", tmp_path / "new"
    open_atomic(peer, "h1", old)
    peer.send({"id": 800, "method": "fs/writeBlock",
               "params": {"handleId": "h1", "offset": 0, "chunk": b64.encode(b"OLD")}})
    reply = peer.request("fs/close", {"handleId": "h1"})
    assert reply["error"]["code"] == -32603
    try:
        open_atomic(peer, "h1", new, b"NEW")  # neither waits for the hung write (Peer's 10 s) nor fails
        assert peer.call("fs/close", {"handleId": "h1", "commit": True}) == {}
    finally:
        hung.set()
    assert new.read_bytes() == b"NEW"
    assert peer.wait_for(lambda m: m.get("id") == 800, timeout=10) == {"id": 800, "result": {}}
    wait_until(lambda: leftovers(tmp_path) == [], timeout=10)
    assert not old.exists()


@pytest.mark.parametrize("concurrent", [1, 4], ids=["serial", "pooled"])
def test_block_requests_after_a_close_check_their_own_params_first(configured_server, connect, tmp_path,
                                                                   monkeypatch, concurrent):
    """Sent after an fs/close of their handle, a zero-length block read or write gets the length error, as after
    any close (and from the reference), and a valid one -32004; in strictly serial mode too, and at once: the
    close does not wait for requests sent after it."""
    from exec_server.server.fs import handles

    monkeypatch.setattr(handles, "CLOSE_BLOCKS_WAIT", 5.0)
    running = configured_server(concurrent_requests=concurrent)
    peer = connect(running.url)
    peer.initialize()
    target = tmp_path / "app.conf"
    open_atomic(peer, "h1", target, b"NEW")
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.3), real_fsync(fd)))
    started = time.monotonic()
    peer.send({"id": 900, "method": "fs/close", "params": {"handleId": "h1", "commit": True}})
    peer.send({"id": 901, "method": "fs/writeBlock", "params": {"handleId": "h1", "offset": 0, "chunk": ""}})
    peer.send({"id": 902, "method": "fs/readBlock", "params": {"handleId": "h1", "offset": 0, "len": 0}})
    peer.send({"id": 903, "method": "fs/writeBlock",
               "params": {"handleId": "h1", "offset": 0, "chunk": b64.encode(b"LATE")}})
    assert peer.wait_for(lambda m: m.get("id") == 900) == {"id": 900, "result": {}}
    for request_id in (901, 902):
        error = peer.wait_for(lambda m: m.get("id") == request_id)["error"]
        assert error["code"] == -32600 and "block length must be between 1 and 1048576" in error["message"]
    assert peer.wait_for(lambda m: m.get("id") == 903)["error"]["code"] == -32004
    assert time.monotonic() - started < 3.0
    assert target.read_bytes() == b"NEW"


def test_serially_a_write_sent_after_a_close_finds_the_handle_gone(configured_server, connect, tmp_path, monkeypatch):
    """concurrent_requests 1: the close waits in the queue behind a long poll while a write of its (plain)
    handle arrives; the close still took the handle as it arrived, so the write is -32004 and writes nothing,
    and the close does not wait for it."""
    from exec_server.server.fs import handles

    monkeypatch.setattr(handles, "CLOSE_BLOCKS_WAIT", 5.0)
    running = configured_server(concurrent_requests=1)
    peer = connect(running.url)
    peer.initialize()
    target = tmp_path / "plain"
    peer.call("fs/open", {"handleId": "h1", "path": uri(target), "mode": "replace"})
    peer.call("process/start", {"processId": "s", "argv": ["sleep", "5"], "cwd": uri(tmp_path), "env": {},
                                "tty": False})
    peer.send({"id": 950, "method": "process/read", "params": {"processId": "s", "afterSeq": 0, "waitMs": 500}})
    started = time.monotonic()
    peer.send({"id": 951, "method": "fs/close", "params": {"handleId": "h1"}})
    peer.send({"id": 952, "method": "fs/writeBlock",
               "params": {"handleId": "h1", "offset": 0, "chunk": b64.encode(b"LATE")}})
    assert peer.wait_for(lambda m: m.get("id") == 951) == {"id": 951, "result": {}}
    assert peer.wait_for(lambda m: m.get("id") == 952)["error"]["code"] == -32004
    assert time.monotonic() - started < 3.0 and target.read_bytes() == b""
    peer.call("process/terminate", {"processId": "s"})


def test_a_handle_made_without_its_connection_number_never_rewords_the_servers_error():
    """Only FileSystem.open knows on which connection a handle was opened; one made by hand (connection None)
    must not claim that a reconnect ended it."""
    from types import SimpleNamespace

    from exec_server.client.fs import RemoteFile
    from exec_server.protocol.errors import NotFound

    def call(method, params):
        raise NotFound("unknown file handle `h1`")

    fs = SimpleNamespace(_call=call, _client=SimpleNamespace(connection_number=3))
    with pytest.raises(NotFound) as caught:
        RemoteFile(fs, "h1", "read").read_block(0, 10)
    assert caught.value.message == "unknown file handle `h1`"
    with pytest.raises(NotFound) as caught:
        RemoteFile(fs, "h1", "read", connection=2).read_block(0, 10)
    assert caught.value.message.startswith("file handle `h1` ended with the connection it was opened on")


def test_what_the_target_became_during_the_write_is_what_the_close_keeps(server, tmp_path):
    """The mode, owner and group were read at the open: a chmod made while an upload ran was undone at its
    close (0600 came back 0644), and a hard link added meanwhile was split (the new name kept the old
    content).  The close looks at the target again."""
    target = tmp_path / "file"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    with Client.connect(server.url, timeout=10) as client:
        with client.fs.open(target, "replace", atomic=True) as f:
            assert f.atomic
            f.write(b"new")
            os.chmod(target, 0o600)  # tightened while the upload runs
        assert (target.read_bytes(), stat.S_IMODE(os.stat(target).st_mode)) == (b"new", 0o600)
        with client.fs.open(target, "replace", atomic=True) as f:
            f.write(b"newer")
            os.link(target, tmp_path / "link")  # a second name since the open: a rename would split it
        assert (tmp_path / "link").read_bytes() == target.read_bytes() == b"newer"
        assert os.stat(target).st_ino == os.stat(tmp_path / "link").st_ino
        assert leftovers(tmp_path) == []


def test_an_atomic_replace_written_in_place_is_cut_at_its_close_not_emptied_at_its_open(server, tmp_path):
    """A target with a second name is written in place (``"atomic": false``): it was emptied at the open, so
    an upload of the file onto itself read back nothing.  Written over and cut at the furthest write at the
    close now; the reference's ``replace`` (no ``atomic``) still empties the file at the open."""
    target = tmp_path / "file"
    target.write_bytes(b"0123456789")
    os.link(target, tmp_path / "link")
    with Client.connect(server.url, timeout=10) as client:
        with client.fs.open(target, "replace", atomic=True) as f:
            assert not f.atomic  # in place: a rename would split the link
            assert target.read_bytes() == b"0123456789"  # not emptied by the open
            f.write(b"abc")
        assert target.read_bytes() == (tmp_path / "link").read_bytes() == b"abc"  # cut at the close
        with client.fs.open(target, "replace", atomic=False) as f:
            assert target.read_bytes() == b""  # the reference's replace
            f.write(b"xy")
        assert (tmp_path / "link").read_bytes() == b"xy"


def test_an_in_place_handle_left_by_its_connection_is_cut_at_what_was_written(server, connect, tmp_path):
    """Not emptied at the open, an in-place handle that its connection's end closed kept the old tail behind
    what was written (a file of the old size, new bytes in front); it is cut there as its close cuts it."""
    target = tmp_path / "file"
    target.write_bytes(b"A" * 100)
    os.link(target, tmp_path / "link")
    peer = connect(server.url)
    peer.initialize()
    assert open_atomic(peer, "h1", target, b"B" * 10)["result"]["atomic"] is False
    peer.close()  # no fs/close: the connection's end closes the handle
    wait_until(lambda: target.read_bytes() == b"B" * 10, timeout=10)


def test_a_target_that_became_a_symlink_is_replaced_by_name_never_written_through(peer, tmp_path):
    """The close looks at the target again: through lstat, so a symlink put there meanwhile (to a file with
    a second name, which would be copied into in place) is replaced as a name, its target untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    os.link(victim, tmp_path / "victim-link")
    target = tmp_path / "file"
    target.write_bytes(b"old")
    assert open_atomic(peer, "h1", target, b"NEW")["result"]["atomic"] is True
    target.unlink()
    target.symlink_to(victim)
    peer.call("fs/close", {"handleId": "h1"})
    assert victim.read_bytes() == b"victim" and not target.is_symlink() and target.read_bytes() == b"NEW"
