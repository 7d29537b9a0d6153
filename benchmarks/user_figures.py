"""The figures a user meets every day, for :mod:`bench` (ours and the reference).

Each function returns a dict of figures; ``None`` where a figure does not
apply to a server (``exec-server run`` is ours alone).

- ``startup_ms``: launch of ``--listen ws://127.0.0.1:PORT`` until
  ``GET /readyz`` answers 200, polled every 5 ms (as ``startup_ms`` of
  ``../shared/bench``), median of ``count`` launches;
- ``stdio_init_ms``: launch of ``--listen stdio`` until the response to
  ``initialize`` has been read (what ``Client.spawn`` and ``ssh host
  exec-server --listen stdio`` wait for), median of ``count``;
- ``run_true_ms``: wall time of ``exec-server run -- true`` (embedded server),
  median of ``count``;
- ``client_mibps``: MiB/s of stdout that our :class:`exec_server.Client`
  receives from ``Client.run(["head", "-c", "256M", "/dev/zero"])`` on the
  given server (every byte counted), median of ``reps``;
  ``client_stdio_mibps`` the same through ``Client.spawn`` of the server's
  ``--listen stdio`` (what ``ssh host exec-server --listen stdio`` gives);
- ``catchup_all_mibps``: after ``head -c 4MiB /dev/zero`` closed, its retained
  output read from ``afterSeq`` 0 with ``process/read`` ``maxBytes: null``
  until a read returns no chunks (the way the Codex client recovers after a
  reconnect), MiB/s of the loop, median of ``reps``; ``catchup_all_mib`` the
  MiB read back (the reference retains 1 MiB).

Only 127.0.0.1 is contacted; every process started is stopped by PID.
"""

import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

from server_process import stop  # noqa: E402 (benchmarks/ is on sys.path)

MiB = 1024 * 1024
#: Longest wait for one launch to become ready, seconds.
READY_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _readyz(port: int) -> Optional[int]:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/readyz")
        status = connection.getresponse().status
        connection.close()
        return status
    except OSError:
        return None


def startup_ms(serve: List[str], env: Optional[Dict[str, str]], count: int = 10) -> float:
    """Median ms from launch to the first ``/readyz`` 200; ``serve`` ends with ``--listen``."""
    samples = []
    for _ in range(count):
        port = _free_port()
        started = time.perf_counter()
        process = subprocess.Popen(serve + ["ws://127.0.0.1:%d" % port], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = started + READY_TIMEOUT
            while _readyz(port) != 200:
                if time.perf_counter() > deadline or process.poll() is not None:
                    raise RuntimeError("not ready: %r" % serve)
                time.sleep(0.005)
            samples.append((time.perf_counter() - started) * 1000)
        finally:
            stop(process)
    return statistics.median(samples)


def stdio_init_ms(serve: List[str], env: Optional[Dict[str, str]], count: int = 10) -> float:
    """Median ms from launch of ``serve + ["stdio"]`` to the ``initialize`` response line."""
    samples = []
    request = json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "bench"}}).encode() + b"\n"
    for _ in range(count):
        started = time.perf_counter()
        process = subprocess.Popen(serve + ["stdio"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        try:
            process.stdin.write(request)
            process.stdin.flush()
            line = process.stdout.readline()
            elapsed = (time.perf_counter() - started) * 1000
            if json.loads(line).get("id") != 1:
                raise RuntimeError("no initialize response: %r" % line[:200])
            samples.append(elapsed)
        finally:
            process.stdin.close()
            stop(process)
            process.stdout.close()
    return statistics.median(samples)


def run_true_ms(count: int = 10) -> float:
    """Median wall ms of ``exec-server run -- true`` (the installed console script)."""
    script = shutil.which("exec-server", path=os.path.dirname(sys.executable)) or shutil.which("exec-server")
    if script is None:
        raise RuntimeError("the exec-server console script is not installed")
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        done = subprocess.run([script, "run", "--", "true"], stdin=subprocess.DEVNULL, timeout=READY_TIMEOUT)
        samples.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            raise RuntimeError("exec-server run -- true exited %d" % done.returncode)
    return statistics.median(samples)


def client_mibps(url: str, reps: int = 3, size_mib: int = 256) -> float:
    """Median MiB/s of ``Client.run(head -c SIZE)`` stdout through our client, over WebSocket."""
    from exec_server import Client

    with Client.connect(url, client_name="bench") as client:
        return _run_mibps(client, reps, size_mib)


def client_stdio_mibps(serve: List[str], env: Optional[Dict[str, str]], reps: int = 3,
                       size_mib: int = 256) -> float:
    """As :func:`client_mibps`, through ``Client.spawn(serve + ["stdio"])``."""
    from exec_server import Client

    with Client.spawn(serve + ["stdio"], env=env, timeout=READY_TIMEOUT, client_name="bench") as client:
        return _run_mibps(client, reps, size_mib)


def _run_mibps(client, reps: int, size_mib: int) -> float:
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        done = client.run(["head", "-c", "%dM" % size_mib, "/dev/zero"], cwd="/tmp", timeout=120)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or len(done.stdout) != size_mib * MiB:
            raise RuntimeError("run returned %d bytes, status %d" % (len(done.stdout), done.returncode))
        samples.append(size_mib / elapsed)
    return statistics.median(samples)


def catchup_all(client, process_id: str) -> int:
    """Read a closed process's retained output from afterSeq 0 with ``maxBytes: null``; bytes read.

    ``client`` is a ``bench.RawClient`` (the raw JSON-RPC client of the bench).
    """
    after, total = 0, 0
    for _ in range(100_000):
        result = client.call("process/read", {"processId": process_id, "afterSeq": after, "maxBytes": None,
                                              "waitMs": 0})["result"]
        if not result["chunks"]:
            return total
        total += sum(len(base64.b64decode(chunk["chunk"])) for chunk in result["chunks"])
        if result["nextSeq"] - 1 <= after:
            raise RuntimeError("process/read did not advance")
        after = result["nextSeq"] - 1
    raise RuntimeError("catch-up did not end")
