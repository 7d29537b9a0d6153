"""The output spool and OutputLog's disk-backed retention, without a child process."""

import base64
import errno
import logging
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

from conftest import PROC_FDS, held_segments, wait_until
from exec_server.server.config import ServerConfig
from exec_server.server.process.output import OutputChunk, OutputLog
from exec_server.server.process.spool import OWNER_LOCK, SPOOL_PREFIX, SpoolStore
from exec_server.server.sessions import SessionRegistry

pytestmark = pytest.mark.skipif(not hasattr(os, "pread"), reason="the spool needs os.pread (not on Windows)")

KIB = 1024


def make_store(tmp_path, per_process=1 << 20, total=1 << 30, chunks=1 << 20, write=os.write):
    return SpoolStore(str(tmp_path), per_process, total, chunks, write)


def spool_files(store):
    """The segment files named in the spool directory: none, they are unlinked as soon as made."""
    names = os.listdir(store.path) if store.path and os.path.isdir(store.path) else []
    return sorted(name for name in names if name.endswith(".spool"))


def segments(spool):
    """``spool``'s segment files, as (fd, os.fstat) pairs: their descriptors are all that keeps them."""
    return [(segment.fd, os.fstat(segment.fd)) for segment in spool._segments]


def payload(seq: int, size: int) -> bytes:
    return (b"%08d:" % seq * (size // 9 + 1))[:size]


def test_index_reads_back_every_chunk_with_its_seq_stream_and_bounds(tmp_path):
    store = make_store(tmp_path)
    spool = store.spool("p")
    sizes = [1, 7, 300, 4096, 65536, 13, 2]
    for seq, size in enumerate(sizes, start=1):
        assert spool.append(seq, ("stdout", "stderr", "pty")[seq % 3], payload(seq, size))
    got = spool.read(0, 100, None)
    assert [(s, st, bytes(v)) for s, st, v in got] == [
        (seq, ("stdout", "stderr", "pty")[seq % 3], payload(seq, size)) for seq, size in enumerate(sizes, start=1)]
    assert [s for s, _, _ in spool.read(2, 6, None)] == [3, 4, 5]
    # PROTOCOL.md 5.4 budget: the first always, stop before passing the budget.
    assert [s for s, _, _ in spool.read(3, 100, 1)] == [4]
    assert [s for s, _, _ in spool.read(0, 100, 308)] == [1, 2, 3]
    assert spool.read(3, 100, 1, at_least_one=False) == []
    assert spool.first_after(4) == 5 and spool.first_after(7) is None
    assert store.used == sum(sizes) == spool.disk_bytes
    assert [info.st_size for _, info in segments(spool)] == [sum(sizes)] and spool_files(store) == []
    spool.discard()
    assert store.used == 0 and spool._segments == []
    store.close()


def test_directory_is_private_and_files_are_owner_only(tmp_path):
    store = make_store(tmp_path)
    spool = store.spool("p")
    spool.append(1, "stdout", b"secret")
    assert os.path.dirname(store.path) == str(tmp_path)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    [(fd, info)] = segments(spool)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_size == 6
    assert info.st_nlink == 0 and os.listdir(store.path) == [OWNER_LOCK]  # unlinked: nothing left by a kill
    assert os.pread(fd, 6, 0) == b"secret"
    spool.discard()
    store.close()
    assert not os.path.exists(store.path)


def test_per_process_budget_evicts_oldest_segments_first(tmp_path):
    store = make_store(tmp_path, per_process=512 * KIB)  # eight 64 KiB segments
    spool = store.spool("p")
    for seq in range(1, 101):
        assert spool.append(seq, "stdout", payload(seq, 16 * KIB))
    assert spool.disk_bytes <= 512 * KIB and store.used == spool.disk_bytes
    assert spool.disk_bytes >= 512 * KIB - 64 * KIB
    kept = spool.read(0, 1000, None)
    seqs = [s for s, _, _ in kept]
    assert seqs == list(range(seqs[0], 101)) and seqs[0] > 1
    assert all(bytes(v) == payload(s, 16 * KIB) for s, _, v in kept)
    held = segments(spool)
    assert len(held) <= 8 and sum(info.st_size for _, info in held) == spool.disk_bytes
    assert all(info.st_nlink == 0 for _, info in held) and spool_files(store) == []
    spool.discard()
    store.close()


@pytest.mark.skipif(not PROC_FDS, reason="finds the unlinked segments through /proc/self/fd (Linux)")
def test_evicted_and_discarded_segments_are_closed_so_their_space_is_freed(tmp_path):
    store = make_store(tmp_path, per_process=512 * KIB)  # eight 64 KiB segments
    spool = store.spool("p")
    for seq in range(1, 101):  # 25 segments made, the oldest closed as it is evicted
        assert spool.append(seq, "stdout", payload(seq, 16 * KIB))
    held = held_segments(os.getpid(), store.path)
    assert len(held) == len(spool._segments) <= 8 and sum(held.values()) == spool.disk_bytes
    assert os.listdir(store.path) == [OWNER_LOCK]
    spool.discard()
    assert held_segments(os.getpid(), store.path) == {}
    store.close()


def test_a_segment_that_cannot_be_unlinked_is_closed_and_stops_the_spool(tmp_path, monkeypatch, caplog):
    store = make_store(tmp_path, per_process=512 * KIB)  # 64 KiB segments: 16 chunks of 4 KiB each
    spool = store.spool("p")
    for seq in range(1, 17):
        assert spool.append(seq, "stdout", payload(seq, 4 * KIB))
    opened, closed = [], []
    real_open, real_close = os.open, os.close

    def recording_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        opened.append((path, fd))
        return fd

    def recording_close(fd):
        closed.append(fd)
        real_close(fd)

    def failing_unlink(path, *args, **kwargs):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "close", recording_close)
    monkeypatch.setattr(os, "unlink", failing_unlink)
    with caplog.at_level(logging.WARNING, logger="exec_server.server.process.spool"):
        assert not spool.append(17, "stdout", payload(17, 4 * KIB))  # a second segment: made, not unlinked
        assert not spool.append(18, "stdout", b"x")  # stopped for good
    monkeypatch.undo()
    [(path, fd)] = opened
    assert closed == [fd] and os.path.exists(path)  # not leaked; the name is removed with the directory
    assert spool.stopped and len(caplog.records) == 1
    assert "writing failed: %s" % os.strerror(errno.EBUSY) in caplog.records[0].getMessage()
    assert [s for s, _, _ in spool.read(0, 100, None)] == list(range(1, 17))  # what it held stays readable
    assert store.used == 64 * KIB == spool.disk_bytes
    spool.discard()
    assert store.used == 0
    store.close()
    assert not os.path.exists(store.path)


def test_chunk_limit_evicts_oldest_segments(tmp_path):
    store = make_store(tmp_path, chunks=80)
    spool = store.spool("p")
    for seq in range(1, 1001):
        spool.append(seq, "stdout", b"x")
    assert 70 <= len(spool) <= 80
    assert [s for s, _, _ in spool.read(0, 2000, None)][-1] == 1000
    spool.discard()
    store.close()


def test_total_budget_is_shared_and_a_full_spool_warns_once(tmp_path, caplog):
    store = make_store(tmp_path, per_process=1 << 20, total=100 * KIB)
    first, second = store.spool("first"), store.spool("second")
    assert first.append(1, "stdout", b"a" * 60 * KIB)
    with caplog.at_level(logging.WARNING, logger="exec_server.server.process.spool"):
        assert not second.append(1, "stdout", b"b" * 60 * KIB)
        assert not second.append(2, "stdout", b"b")  # stopped for good, no second warning
    assert len(caplog.records) == 1 and "spool_bytes_total" in caplog.records[0].getMessage()
    assert second.stopped and len(second) == 0
    first.discard()
    assert store.used == 0
    store.close()


def make_log(store, retained=4 * KIB, events=None, max_read_bytes=None, max_read_chunks=None):
    sink = [] if events is None else events
    log = OutputLog(2, retained, 1000, sink.append, spool=lambda: store.spool("p"), max_read_bytes=max_read_bytes,
                    max_read_chunks=max_read_chunks)
    return log, sink


def chunks_of(result):
    return [(c.seq, c.stream, base64.b64decode(c.chunk)) for c in result.chunks]


def test_output_log_serves_spilled_output_with_the_live_boundaries(tmp_path):
    store = make_store(tmp_path)
    log, events = make_log(store)
    for i in range(200):
        log.output("stderr" if i % 5 == 0 else "stdout", payload(i, 100 + i))
    log.stream_ended()
    log.stream_ended()
    log.exit(0)
    live = [(e.seq, e.stream, base64.b64decode(e.chunk)) for e in events if type(e) is OutputChunk]
    whole = log.read(0)
    assert chunks_of(whole) == live and whole.next_seq == 203 and whole.closed
    for budget in (1, 1000, 64 * KIB):  # budgeted steps cover the same chunks, once each, in order
        got, after = [], 0
        while True:
            step = log.read(after, budget)
            if not step.chunks:
                break
            got += chunks_of(step)
            after = step.next_seq - 1
        assert got == live and step.next_seq == 203
    assert chunks_of(log.read(150)) == live[150:]
    log.discard_spool()
    assert spool_files(store) == [] and store.used == 0
    store.close()


def test_max_read_bytes_caps_a_null_budget_and_moves_next_seq(tmp_path):
    store = make_store(tmp_path)
    log, _ = make_log(store, max_read_bytes=10 * KIB)
    for i in range(50):
        log.output("stdout", payload(i, KIB))
    result = log.read(0)
    assert [c.seq for c in result.chunks] == list(range(1, 11)) and result.next_seq == 11
    tail = log.read(40)
    assert [c.seq for c in tail.chunks] == list(range(41, 51)) and tail.next_seq == 51
    log.discard_spool()
    store.close()


def test_max_read_chunks_caps_a_read_of_small_chunks_and_what_it_reserves(tmp_path):
    """A read of ~1M one-byte chunks reserved 3 bytes per byte (~3 MB) and built ~430 MB of objects."""
    store = make_store(tmp_path)
    log, _ = make_log(store, retained=2 * KIB, max_read_chunks=300)
    for i in range(5000):  # spooled past the first 2 KiB, then retained in memory (1000 chunks at most)
        log.output("stdout", b"%d" % (i % 10))
    reserved = []
    got, after, reads = b"", 0, 0
    while True:
        step = log.read(after, None, reserve=lambda size, chunks: reserved.append((size, chunks)))
        if not step.chunks:
            break
        assert len(step.chunks) <= 300 and step.next_seq == step.chunks[-1].seq + 1
        got += b"".join(base64.b64decode(c.chunk) for c in step.chunks)
        after, reads = step.next_seq - 1, reads + 1
    assert got == b"".join(b"%d" % (i % 10) for i in range(5000)) and reads == 17
    assert reserved[0][0] >= 5000 and reserved[0][1] == 300  # every byte may come, in at most 300 chunks
    for size, chunks in reserved:
        assert chunks <= 300 and chunks <= size
    whole = log.read(4800)  # from memory alone: the same cap
    assert len(whole.chunks) == 200
    assert len(log.read(3000).chunks) == 300
    log.discard_spool()
    store.close()


def test_write_error_degrades_to_memory_with_every_notification(tmp_path, caplog):
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    store = make_store(tmp_path, write=failing_write)
    log, events = make_log(store, retained=2 * KIB)
    with caplog.at_level(logging.WARNING, logger="exec_server.server.process.spool"):
        for i in range(100):
            log.output("stdout", payload(i, 100))
    assert [e.seq for e in events] == list(range(1, 101))  # not one notification lost
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    got = chunks_of(log.read(0))
    # The spool kept seqs 1..10; memory the newest 2 KiB; a client sees the gap between as eviction.
    assert [s for s, _, _ in got[:10]] == list(range(1, 11))
    assert [s for s, _, _ in got[10:]] == list(range(81, 101))
    assert all(data == payload(s - 1, 100) for s, _, data in got)
    log.discard_spool()
    store.close()


def test_a_spool_file_cut_short_is_a_gap_not_a_read_that_spins_forever(tmp_path):
    """A segment truncated behind the server's back made every read from there loop (CPU, log flood) unanswered."""
    store = make_store(tmp_path, per_process=512 * KIB)  # 64 KiB segments: 16 chunks of 4 KiB each
    log, _ = make_log(store, retained=2 * KIB)
    for i in range(100):
        log.output("stdout", payload(i, 4 * KIB))
    fds = [fd for fd, _ in segments(log._spool)]
    os.ftruncate(fds[0], 1000)  # seq 1 and the rest of the first segment are gone
    os.ftruncate(fds[2], 5 * 4 * KIB + 100)  # the third segment keeps its first five chunks whole
    got = []

    def read_all():
        after = 0
        while True:
            step = log.read(after, 10 * KIB)
            if not step.chunks:
                return
            got.extend(chunks_of(step))
            after = step.next_seq - 1

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "process/read never returned"
    seqs = [seq for seq, _, _ in got]
    assert seqs == list(range(17, 38)) + list(range(49, 101))  # seqs 1-16 and 38-48 lost: a gap the client sees
    assert all(data == payload(seq - 1, 4 * KIB) for seq, _, data in got)
    assert [seq for seq, _, _ in chunks_of(log.read(0))][:3] == [17, 18, 19]
    log.discard_spool()
    assert store.used == 0
    store.close()


def test_a_spool_file_that_cannot_be_read_is_a_gap_not_an_internal_error(tmp_path, monkeypatch, caplog):
    """A read error (EIO: the disk failed) went up to the request as an internal error, every time the client
    asked again; that segment's chunks are now lost as if cut, and the rest is served."""
    store = make_store(tmp_path, per_process=512 * KIB)  # 64 KiB segments: 16 chunks of 4 KiB each
    log, _ = make_log(store, retained=2 * KIB)
    for i in range(40):
        log.output("stdout", payload(i, 4 * KIB))
    broken_inode = segments(log._spool)[1][1].st_ino
    real_pread = os.pread

    def failing_pread(fd, size, offset):
        if os.fstat(fd).st_ino == broken_inode:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", failing_pread)
    got, after = [], 0
    for _ in range(100):
        step = log.read(after, 20 * KIB)
        if not step.chunks:
            break
        got.extend(chunks_of(step))
        after = step.next_seq - 1
    seqs = [seq for seq, _, _ in got]
    assert seqs == list(range(1, 17)) + list(range(33, 41))  # the second segment's seqs 17-32 are lost
    assert all(data == payload(seq - 1, 4 * KIB) for seq, _, data in got)
    assert "cannot be read (Input/output error): the output it held from there is lost" in caplog.text
    monkeypatch.undo()
    log.discard_spool()
    assert store.used == 0
    store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"),
                    reason="mounting a tmpfs needs root on Linux")
def test_real_enospc_on_a_small_tmpfs():
    """The mount point is not under pytest's temporary directories: a run killed before the umount would
    leave the tmpfs mounted there, and every later run's removal of old directories fails (EBUSY)."""
    mount = pathlib.Path(tempfile.mkdtemp(prefix="exec-server-enospc-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, timeout=10)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.decode(errors="replace").strip())
    try:
        store = make_store(mount, per_process=1 << 30)
        log, events = make_log(store, retained=64 * KIB)
        for i in range(100):  # 1.6 MiB into a 256 KiB file system
            log.output("stdout", payload(i, 16 * KIB))
        assert len(events) == 100
        got = chunks_of(log.read(0))
        seqs = [s for s, _, _ in got]
        assert seqs[0] == 1 and seqs[-1] == 100 and 0 < len(seqs) < 100
        assert all(data == payload(s - 1, 16 * KIB) for s, _, data in got)
        log.discard_spool()
        store.close()
        assert os.listdir(str(mount)) == []
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=10).returncode == 0:
            mount.rmdir()


def test_registry_owns_the_store_and_removes_it_at_close(tmp_path):
    registry = SessionRegistry(ServerConfig(spool_dir=str(tmp_path)))
    spool = registry.spool_for("p")()
    spool.append(1, "stdout", b"x")
    path = registry.spool_store.path
    assert os.listdir(path) == [OWNER_LOCK] and registry.spool_store.used == 1 and len(segments(spool)) == 1
    registry.close_all()
    assert not os.path.exists(path) and os.listdir(str(tmp_path)) == []


def test_spool_off_keeps_memory_retention_only(tmp_path):
    store = make_store(tmp_path, per_process=0)
    log, _ = make_log(store, retained=1 * KIB)
    for i in range(10):
        log.output("stdout", payload(i, 512))
    assert [c.seq for c in log.read(0).chunks] == [9, 10]
    assert store.path is None


def test_a_dead_servers_spool_directory_is_reclaimed_and_a_live_ones_kept(tmp_path):
    """The first spool a store makes removes the directories whose owner lock is free (their server was
    killed); a live store's directory, and one without an owner lock, stay."""
    live = make_store(tmp_path)
    live.spool("p").append(1, "stdout", b"live")
    # Built under another name and renamed into place: the live store's own scan (on its thread) may be
    # running and must not see a half-made directory.
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / OWNER_LOCK).write_bytes(b"")
    (staging / "00000001.spool").write_bytes(b"x" * 1000)
    stale = tmp_path / (SPOOL_PREFIX + "killed")
    staging.rename(stale)
    unknown = tmp_path / (SPOOL_PREFIX + "no-lock")
    unknown.mkdir()
    elsewhere = tmp_path / "exec-server-other"
    elsewhere.mkdir()
    store = make_store(tmp_path)
    store.spool("q").append(1, "stdout", b"new")
    wait_until(lambda: not stale.exists())  # on a thread of its own, off the output path
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(live.path), os.path.basename(store.path),
                                                   unknown.name, elsewhere.name])
    store.close()
    live.close()
    assert sorted(os.listdir(tmp_path)) == sorted([unknown.name, elsewhere.name])
