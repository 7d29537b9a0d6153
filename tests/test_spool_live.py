"""Output written while a session is detached is recovered whole from the spool (live servers)."""

import base64
import os
import signal
import stat
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psutil
import pytest

from conftest import PROC_FDS, Peer, held_segments, reap, start_params, wait_until
from exec_server import Client, ReconnectPolicy
from exec_server.server.process.spool import OWNER_LOCK
from faultproxy import FaultProxy

pytestmark = [pytest.mark.posix,
              pytest.mark.skipif(not hasattr(os, "pread"), reason="the spool needs os.pread (not on Windows)")]
#: For the tests that find a server's spooled output by its descriptors (its segment files are unlinked when made).
needs_proc = pytest.mark.skipif(not PROC_FDS, reason="finds the unlinked spool segments through /proc/<pid>/fd (Linux)")

MIB = 1024 * 1024
RECORD = 64  # bytes of one numbered record: every byte's place in the stream is known
PATIENT = ReconnectPolicy(deadline=60.0, initial_backoff=0.02, max_backoff=0.2, connect_timeout=10.0)


def writer(total: int, marker) -> list:
    """argv of a child writing ``total`` bytes of numbered records to stdout, then creating ``marker``."""
    script = ("import sys\nw = sys.stdout.buffer.write\nn = %d\n"
              "for j in range(0, n, 8192):\n    w(b''.join(b'%%0%dd\\n' %% i for i in range(j, min(n, j + 8192))))\n"
              "sys.stdout.flush()\nopen(%r, 'w').close()\n") % (total // RECORD, RECORD - 1, str(marker))
    return [sys.executable, "-c", script]


def expected(total: int) -> bytes:
    return b"".join(b"%063d\n" % i for i in range(total // RECORD))


def spool_files(root) -> list:
    """The segment files named under ``root``: none, they are unlinked as soon as made."""
    return [os.path.join(d, f) for d, _, files in os.walk(str(root)) for f in files if f.endswith(".spool")]


def disk_bytes(root) -> int:
    """Bytes the files under ``root`` take on disk, as ``du`` counts them (blocks) or by size, whichever is more."""
    total = 0
    for directory, _, files in os.walk(str(root)):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            total += max(info.st_size, getattr(info, "st_blocks", 0) * 512)
    return total


def spooled(pid: int, root) -> int:
    """Bytes of spooled output process ``pid`` holds under ``root`` (in-process servers: this test's own pid)."""
    return sum(held_segments(pid, root).values())


@needs_proc
def test_client_recovers_64_mib_written_while_detached(configured_server, tmp_path):
    spool_root = tmp_path / "spool"
    spool_root.mkdir()
    running = configured_server(spool_dir=str(spool_root))
    proxy = FaultProxy(urlsplit(running.url).port)
    marker = tmp_path / "written"
    try:
        with Client.connect(proxy.url, timeout=5, reconnect=PATIENT) as client:
            process = client.start(writer(64 * MIB, marker))
            proxy.refuse(True)
            proxy.cut()
            wait_until(marker.exists, timeout=60, interval=0.05)
            assert spooled(os.getpid(), spool_root) and not spool_files(spool_root)  # past 1 MiB in memory: on disk
            proxy.refuse(False)
            stdout, _ = process.communicate(timeout=60)
            assert process.returncode == 0
            assert len(stdout) == 64 * MIB and stdout == expected(64 * MIB)  # every byte once, in order
            wait_until(lambda: client.state == "connected")
    finally:
        proxy.close()


@pytest.mark.parametrize("max_bytes", [None, 64 * 1024], ids=["null", "64KiB"])
def test_raw_resume_reads_every_chunk_once(configured_server, connect, tmp_path, max_bytes):
    running = configured_server(spool_dir=str(tmp_path))
    first = connect(running.url)
    session_id = first.initialize()["sessionId"]
    marker = tmp_path / "written"
    first.call("process/start", start_params("w", writer(64 * MIB, marker)))
    first.close()
    wait_until(marker.exists, timeout=60, interval=0.05)
    second = Peer(running.url)
    try:
        resumed = second.call("initialize", {"clientName": "again", "resumeSessionId": session_id})
        assert resumed["sessionId"] == session_id
        second.send({"method": "initialized", "params": {}})
        data, after, seqs = [], 0, []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = second.call("process/read", {"processId": "w", "afterSeq": after, "maxBytes": max_bytes},
                                 timeout=30)
            second.received.clear()
            for chunk in result["chunks"]:
                seqs.append(chunk["seq"])
                data.append(base64.b64decode(chunk["chunk"]))
            after = result["nextSeq"] - 1
            if not result["chunks"] and result["closed"]:
                break
        assert seqs == list(range(1, len(seqs) + 1))  # no hole, no duplicate
        assert result["nextSeq"] == len(seqs) + 3 and result["exitCode"] == 0  # exited, closed
        assert b"".join(data) == expected(64 * MIB)
    finally:
        second.close()


@needs_proc
def test_spool_is_deleted_when_the_closed_process_is_forgotten(configured_server, connect, tmp_path):
    running = configured_server(spool_dir=str(tmp_path), closed_process_retention=1.0,
                                retained_output_bytes=64 * 1024)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("w", ["head", "-c", str(4 * MIB), "/dev/zero"]))
    peer.wait_closed("w", timeout=30)
    [directory] = os.listdir(str(tmp_path))
    assert stat.S_IMODE(os.stat(str(tmp_path / directory)).st_mode) == 0o700
    held = held_segments(os.getpid(), tmp_path)  # the server runs in this process
    assert held and all(stat.S_IMODE(os.stat(link).st_mode) == 0o600 for link in held)
    assert sum(held.values()) == 4 * MIB and not spool_files(tmp_path)
    wait_until(lambda: not held_segments(os.getpid(), tmp_path), timeout=10)  # closed: the space is freed
    assert peer.request("process/read", {"processId": "w"})["error"]["message"] == "unknown process id w"


@needs_proc
def test_spool_is_deleted_when_the_detached_session_expires(configured_server, connect, tmp_path):
    running = configured_server(spool_dir=str(tmp_path), detached_session_ttl=1.0, retained_output_bytes=64 * 1024)
    peer = connect(running.url)
    peer.initialize()
    peer.call("process/start", start_params("w", ["sh", "-c", "head -c %d /dev/zero; sleep 60" % (4 * MIB)]))
    wait_until(lambda: spooled(os.getpid(), tmp_path) >= 3 * MIB, timeout=30)
    peer.close()
    wait_until(lambda: not held_segments(os.getpid(), tmp_path), timeout=10)


@needs_proc
def test_sigterm_removes_the_spool_directory(tmp_path):
    spool_root = tmp_path / "spool"
    spool_root.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0", "--spool-dir",
                               str(spool_root), "--retained-output-bytes", "65536"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        peer = Peer(url)
        peer.initialize()
        peer.call("process/start", start_params("w", ["sh", "-c", "head -c %d /dev/zero; sleep 60" % (4 * MIB)]))
        wait_until(lambda: spooled(server.pid, spool_root) >= 3 * MIB, timeout=30)
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
        peer.close()
        assert os.listdir(str(spool_root)) == []
    finally:
        reap(server)


@needs_proc
def test_the_spool_of_a_killed_server_is_removed_by_the_next(tmp_path):
    """SIGKILL (or the OOM killer) leaves the spool directory (its owner lock alone) behind; the next server's
    first spool removes it."""
    spool_root = tmp_path / "spool"
    spool_root.mkdir()
    argv = [sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0", "--spool-dir", str(spool_root),
            "--retained-output-bytes", "65536"]
    servers, seen = [], []
    try:
        for _ in range(2):
            server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            servers.append(server)
            peer = Peer(server.stdout.readline().decode().strip())
            peer.initialize()
            peer.call("process/start", start_params("w", ["sh", "-c", "head -c %d /dev/zero; sleep 60" % MIB]))
            seen.append(wait_until(lambda: [name for name in os.listdir(str(spool_root)) if name not in seen
                                            and held_segments(server.pid, spool_root / name)], timeout=30)[0])
            peer.close()
            if len(servers) == 1:
                server.kill()  # SIGKILL: no clean-up
                server.wait(10)
                assert os.listdir(str(spool_root)) == seen  # left behind
        wait_until(lambda: os.listdir(str(spool_root)) == seen[1:], timeout=10)  # the second server's own only
    finally:
        for server in servers:
            reap(server)


def test_a_killed_server_leaves_no_spooled_output_on_disk(tmp_path):
    """The segment files are unlinked as soon as made: SIGKILL (or the OOM killer) frees their space with the
    server's descriptors, and leaves only the spool directory and its owner lock (hundreds of MB stayed on disk
    until a later server reclaimed the directory)."""
    spool_root = tmp_path / "spool"
    spool_root.mkdir()
    total = 20000000
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0", "--spool-dir",
                               str(spool_root), "--retained-output-bytes", "65536"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    peer = None
    try:
        peer = Peer(server.stdout.readline().decode().strip())
        peer.initialize()
        peer.call("process/start", start_params("w", ["head", "-c", str(total), "/dev/zero"]))
        peer.wait_closed("w", timeout=60)  # every chunk was written through to the spool before "closed"
        held = spooled(server.pid, spool_root) if PROC_FDS else total
        named = disk_bytes(spool_root)
        os.kill(server.pid, signal.SIGKILL)  # no clean-up
        server.wait(10)
        [directory] = os.listdir(str(spool_root))  # left behind, for the next server to remove
        assert spool_files(spool_root) == [] and os.listdir(str(spool_root / directory)) == [OWNER_LOCK]
        assert disk_bytes(spool_root) < 4096
        assert held == total  # it was spooled: the server held it all on disk (df counts it) until it was killed
        assert named < 4096  # and du of the directory saw none of it meanwhile
    finally:
        if peer is not None:
            peer.close()
        reap(server)


@needs_proc
@pytest.mark.slow
def test_server_rss_stays_flat_while_a_detached_process_writes_256_mib(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0", "--spool-dir",
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        url = server.stdout.readline().decode().strip()
        rss = psutil.Process(server.pid).memory_info
        peer = Peer(url)
        peer.initialize()
        peer.call("process/start", start_params("warm", ["head", "-c", str(2 * MIB), "/dev/zero"]))
        peer.wait_closed("warm", timeout=30)
        peer.close()
        time.sleep(0.2)
        idle = rss().rss
        peer = Peer(url)
        peer.initialize()
        peer.call("process/start", start_params("w", ["head", "-c", str(256 * MIB), "/dev/zero"]))
        peer.close()  # detached while it writes
        peak = idle
        deadline = time.monotonic() + 60
        while spooled(server.pid, tmp_path) < 258 * MIB and time.monotonic() < deadline:
            peak = max(peak, rss().rss)
            time.sleep(0.02)
        peak = max(peak, rss().rss)
        assert spooled(server.pid, tmp_path) == 258 * MIB  # "warm" too
        assert peak - idle < 1 * MIB + 8 * MIB, (idle, peak)  # the in-memory budget plus a few MiB
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    finally:
        reap(server)
