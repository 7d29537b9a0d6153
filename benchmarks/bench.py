"""Benchmark (not a test): the headline figures and what users feel, ours and the reference.

    python benchmarks/bench.py [--reference PATH] [--rounds 3] [--out results.json]

Starts each server as a subprocess on a free loopback port, speaks raw
JSON-RPC over a wsproto WebSocket (so the client's own cost stays small) and
reports per server:

- ``connect_init_p50_ms``: TCP connect + upgrade + ``initialize`` response;
- ``spawn_rt_p50_ms`` / ``p95``: ``process/start`` of ``true`` sent until its
  start response, ``process/exited`` and ``process/closed`` have all arrived;
- ``stream_64mib_mibps``: ``head -c 64MiB /dev/zero``, 64 MiB divided by the
  time from start sent to ``closed`` received (every byte counted, seqs
  checked gapless);
- ``fanout_procs_per_s``: 8 connections on 8 threads each start 25 ``echo``
  processes at once; 200 divided by the time until every one has closed
  with the right output;
- ``rss_idle_mib`` / ``rss_stream_peak_mib``: the server's RSS (psutil)
  before the runs and its peak while streaming (sampled every 10 ms);
- ``catchup_mibps``: after ``head -c 4MiB /dev/zero`` closed, its retained
  output (1 MiB on the reference; all 4 MiB on ours, 3 of them from the
  spool on disk) read back from ``afterSeq`` 0 with ``maxBytes`` 65536 per
  ``process/read``, bytes read divided by the time the reads took;
- ``catchup_read_wall_us`` / ``catchup_read_server_cpu_us`` /
  ``catchup_read_client_cpu_us``: per ``process/read`` of that loop (40 more
  read-backs), its wall time and the CPU the server and this client spent;
  the loop is serial, so wall ~ server CPU + client CPU;
- ``detached_recovered_mib`` / ``detached_catchup_mibps`` /
  ``detached_write_rss_peak_mib`` / ``detached_write_rss_idle_mib``: a
  session starts ``head -c 256MiB /dev/zero`` (``--detached-mib``) and its
  connection is closed at once; while the detached process writes, the
  server's RSS is sampled (peak, and idle just before); once ``head`` has
  been reaped a new connection resumes the session and reads from
  ``afterSeq`` 0 in 1 MiB ``process/read`` steps (the client's) until a read returns no
  chunks: the MiB those reads returned (the reference retains 1 MiB),
  ``detached_lost_mib`` (what they did not return: the seqs skipped before
  the first chunk) and MiB/s of the reads;
- ``catchup_all_mibps`` / ``catchup_all_mib``, ``client_mibps``,
  ``client_stdio_mibps``, ``startup_ms``, ``stdio_init_ms`` and
  ``run_true_ms``: see
  :mod:`user_figures` (``run_true_ms`` is ours alone).

Medians over ``--rounds`` runs alternate between the servers.  The reference
is found with ``--reference``, ``EXEC_SERVER_REFERENCE`` or
``../shared/reference/install-codex.sh``; without it only ours is measured.
Only 127.0.0.1 is contacted; every server is stopped by PID at the end.
"""

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Tuple

import psutil

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from server_process import OURS, running_server  # noqa: E402
import user_figures  # noqa: E402

STREAM_BYTES = 64 * 1024 * 1024


class RawClient:
    def __init__(self, url: str, timeout: float = 10.0):
        host, port = url[len("ws://"):].rstrip("/").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=host, target="/")))
        self.pending = []
        self.parts = []
        while not any(isinstance(e, AcceptConnection) for e in self._events()):
            pass
        self.next_id = 0

    def _events(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
        return events

    def send(self, message: dict) -> None:
        self.sock.sendall(self.ws.send(Message(data=json.dumps(message))))

    def messages(self):
        """Yield decoded messages forever (blocking)."""
        while True:
            while self.pending:
                yield self.pending.pop(0)
            for event in self._events():
                if isinstance(event, TextMessage):
                    self.parts.append(event.data)
                    if event.message_finished:
                        self.pending.append(json.loads("".join(self.parts)))
                        self.parts = []
                elif isinstance(event, CloseConnection):
                    raise ConnectionError("closed")

    def call(self, method: str, params: dict) -> dict:
        self.next_id += 1
        request_id = self.next_id
        self.send({"id": request_id, "method": method, "params": params})
        for message in self.messages():
            if message.get("id") == request_id:
                return message

    def initialize(self) -> None:
        self.call("initialize", {"clientName": "bench"})
        self.send({"method": "initialized", "params": {}})

    def close(self) -> None:
        try:
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        except Exception:
            pass
        self.sock.close()


def start_params(process_id: str, argv) -> dict:
    return {"processId": process_id, "argv": argv, "cwd": "file:///tmp", "env": {"PATH": "/usr/bin:/bin"},
            "tty": False, "pipeStdin": False, "arg0": None}


def measure_connect(url: str, count: int = 30) -> float:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client = RawClient(url)
        client.initialize()
        samples.append((time.perf_counter() - started) * 1000)
        client.close()
    return statistics.median(samples)


def measure_spawn(url: str, count: int, tag: str):
    client = RawClient(url)
    client.initialize()
    samples = []
    for i in range(count + 5):
        process_id = "spawn-%s-%d" % (tag, i)
        started = time.perf_counter()
        client.send({"id": 10_000 + i, "method": "process/start", "params": start_params(process_id, ["true"])})
        seen = set()
        for message in client.messages():
            if message.get("id") == 10_000 + i:
                seen.add("ack")
            elif message.get("params", {}).get("processId") == process_id:
                seen.add(message["method"])
            if seen >= {"ack", "process/exited", "process/closed"}:
                break
        if i >= 5:
            samples.append((time.perf_counter() - started) * 1000)
    client.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def measure_stream(url: str, tag: str) -> float:
    client = RawClient(url)
    client.initialize()
    process_id = "stream-" + tag
    started = time.perf_counter()
    client.send({"id": 1, "method": "process/start",
                 "params": start_params(process_id, ["head", "-c", str(STREAM_BYTES), "/dev/zero"])})
    total = 0
    seqs, output_seqs = [], []
    for message in client.messages():
        params = message.get("params") or {}
        if params.get("processId") != process_id:
            continue
        seqs.append(params["seq"])
        if message["method"] == "process/output":
            total += len(base64.b64decode(params["chunk"]))
            output_seqs.append(params["seq"])
        elif message["method"] == "process/closed":
            break
    elapsed = time.perf_counter() - started
    client.close()
    # every byte, in seq order: anything else is a failed run
    if total != STREAM_BYTES or any(later <= before for before, later in zip(output_seqs, output_seqs[1:])):
        raise RuntimeError("stream incomplete: %d bytes, seqs %d" % (total, len(seqs)))
    missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
    if missing or seqs != sorted(seqs):  # the reference now and then sends no process/exited (1 run in ~20)
        print("%s: stream: seqs out of order or missing (%s); the last: %s" % (tag, missing, seqs[-4:]),
              file=sys.stderr)
    return STREAM_BYTES / (1024 * 1024) / elapsed


def measure_fanout(url: str, tag: str, connections: int = 8, per_connection: int = 25) -> float:
    clients = []
    for _ in range(connections):
        client = RawClient(url)
        client.initialize()
        clients.append(client)
    barrier = threading.Barrier(connections + 1)
    failures = []

    def work(index: int, client: RawClient) -> None:
        barrier.wait(30)
        expected = {}
        for j in range(per_connection):
            process_id = "fan-%s-%d-%d" % (tag, index, j)
            expected[process_id] = ("fan %d %d\n" % (index, j)).encode()
            client.send({"id": j + 1, "method": "process/start",
                         "params": start_params(process_id, ["echo", "fan", str(index), str(j)])})
        output = {process_id: b"" for process_id in expected}
        open_ids = set(expected)
        for message in client.messages():
            params = message.get("params") or {}
            if message.get("method") == "process/output":
                output[params["processId"]] += base64.b64decode(params["chunk"])
            elif message.get("method") == "process/closed":
                open_ids.discard(params["processId"])
                if not open_ids:
                    break
        if output != expected:
            failures.append(index)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    started = time.perf_counter()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    if failures or any(thread.is_alive() for thread in threads):
        raise RuntimeError("fan-out incomplete on connections %s" % failures)
    return connections * per_connection / elapsed


def _read_back(client: RawClient, process_id: str, max_bytes: int) -> Tuple[int, int]:
    """Read a closed process's retained output from afterSeq 0; (bytes, process/read calls)."""
    after, total, reads = 0, 0, 0
    while True:
        result = client.call("process/read", {"processId": process_id, "afterSeq": after,
                                              "maxBytes": max_bytes, "waitMs": 0})["result"]
        reads += 1
        if not result["chunks"]:
            return total, reads
        total += sum(len(base64.b64decode(chunk["chunk"])) for chunk in result["chunks"])
        after = result["nextSeq"] - 1


def _closed_output(url: str, process_id: str, size: int) -> RawClient:
    """A new connection on which ``head -c SIZE /dev/zero`` ran as ``process_id`` and has closed."""
    client = RawClient(url)
    client.initialize()
    client.send({"id": 1, "method": "process/start",
                 "params": start_params(process_id, ["head", "-c", str(size), "/dev/zero"])})
    for message in client.messages():
        if message.get("method") == "process/closed" and message["params"]["processId"] == process_id:
            return client


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure_catchup(url: str, tag: str, server: psutil.Process, size: int = 4 * 1024 * 1024,
                    max_bytes: int = 65536, split_passes: int = 40) -> Dict[str, float]:
    """Catch-up MiB/s of one read-back, then where a read's time goes.

    The read-back is a strictly serial loop (each request waits for the
    previous response), so its wall time is the client's CPU plus the
    server's CPU per read.  ``split_passes`` more read-backs measure both:
    the server's user+system CPU (psutil, 10 ms ticks, hence many passes) and
    this thread's CPU, each per ``process/read`` in microseconds.
    """
    process_id = "catchup-" + tag
    client = _closed_output(url, process_id, size)
    started = time.perf_counter()
    total, _reads = _read_back(client, process_id, max_bytes)
    elapsed = time.perf_counter() - started
    server_before, client_before, wall_before = _cpu_seconds(server), time.thread_time(), time.perf_counter()
    reads = sum(_read_back(client, process_id, max_bytes)[1] for _ in range(split_passes))
    server_cpu, client_cpu = _cpu_seconds(server) - server_before, time.thread_time() - client_before
    wall = time.perf_counter() - wall_before
    client.close()
    return {"catchup_mibps": total / (1024 * 1024) / elapsed,
            "catchup_read_wall_us": wall / reads * 1e6,
            "catchup_read_server_cpu_us": server_cpu / reads * 1e6,
            "catchup_read_client_cpu_us": client_cpu / reads * 1e6}


def measure_catchup_all(url: str, tag: str, size: int = 4 * 1024 * 1024) -> Dict[str, float]:
    """``catchup_all_mibps`` / ``catchup_all_mib`` (see :mod:`user_figures`)."""
    process_id = "catchup-all-" + tag
    client = _closed_output(url, process_id, size)
    started = time.perf_counter()
    total = user_figures.catchup_all(client, process_id)
    elapsed = time.perf_counter() - started
    client.close()
    return {"catchup_all_mibps": total / 2 ** 20 / elapsed, "catchup_all_mib": total / 2 ** 20}


def measure_detached_catchup(url: str, tag: str, server: psutil.Process, size_mib: int,
                             max_bytes: int = 1024 * 1024) -> Dict[str, float]:
    """Output written while detached, recovered after a resume (see the module docstring)."""
    client = RawClient(url)
    session_id = client.call("initialize", {"clientName": "bench"})["result"]["sessionId"]
    client.send({"method": "initialized", "params": {}})
    process_id = "detached-" + tag
    idle = server.memory_info().rss / 2 ** 20
    with PeakRss(server.pid) as rss:
        argv = ["head", "-c", "%dM" % size_mib, "/dev/zero"]
        answer = client.call("process/start", start_params(process_id, argv))
        client.close()
        if "result" not in answer:
            raise RuntimeError("start failed: %r" % answer)
        deadline = time.monotonic() + 300
        while any(child.name() == "head" for child in server.children()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the last pipe buffer drained
    client = RawClient(url)
    client.call("initialize", {"clientName": "bench", "resumeSessionId": session_id})
    client.send({"method": "initialized", "params": {}})
    after, total = 0, 0
    started = time.perf_counter()
    while True:
        result = client.call("process/read", {"processId": process_id, "afterSeq": after, "maxBytes": max_bytes,
                                              "waitMs": 0})["result"]
        if not result["chunks"]:
            break
        total += sum(len(base64.b64decode(chunk["chunk"])) for chunk in result["chunks"])
        after = result["nextSeq"] - 1
    elapsed = time.perf_counter() - started
    client.close()
    return {"detached_recovered_mib": total / 2 ** 20, "detached_lost_mib": size_mib - total / 2 ** 20,
            "detached_catchup_mibps": total / 2 ** 20 / elapsed,
            "detached_write_rss_idle_mib": idle, "detached_write_rss_peak_mib": rss.peak_mib}


class PeakRss:
    """Samples a process's RSS every 10 ms while the block runs; ``peak_mib`` after."""

    def __init__(self, pid: int):
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak_mib = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._process.memory_info().rss / 2 ** 20)
            self._stop.wait(0.01)

    def __enter__(self) -> "PeakRss":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5)


def find_reference(explicit):
    if explicit:
        return explicit
    if os.environ.get("EXEC_SERVER_REFERENCE"):
        return os.environ["EXEC_SERVER_REFERENCE"]
    installer = os.path.join(HERE, "..", "..", "shared", "reference", "install-codex.sh")
    if os.path.isfile(installer):
        done = subprocess.run(["bash", installer], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def run_once(name, command, env, spawn_count, detached_mib=256):
    with running_server(command=command, env=env) as (process, url):
        time.sleep(0.5)
        rss_idle = psutil.Process(process.pid).memory_info().rss / 2 ** 20
        connect = measure_connect(url)
        spawn_p50, spawn_p95 = measure_spawn(url, spawn_count, name)
        with PeakRss(process.pid) as rss:
            stream = measure_stream(url, name)
        fanout = statistics.median(measure_fanout(url, "%s-%d" % (name, rep)) for rep in range(3))
        server = psutil.Process(process.pid)
        catchups = [measure_catchup(url, "%s-%d" % (name, rep), server) for rep in range(5)]
        catchups_all = [measure_catchup_all(url, "%s-%d" % (name, rep)) for rep in range(5)]
        client = user_figures.client_mibps(url)
        detached = measure_detached_catchup(url, name, server, detached_mib) if detached_mib else {}
    figures = {"connect_init_p50_ms": connect, "spawn_rt_p50_ms": spawn_p50, "spawn_rt_p95_ms": spawn_p95,
               "stream_64mib_mibps": stream, "fanout_procs_per_s": fanout, "rss_idle_mib": rss_idle,
               "rss_stream_peak_mib": rss.peak_mib}
    for metric in catchups[0]:
        figures[metric] = statistics.median(c[metric] for c in catchups)
    for metric in catchups_all[0]:
        figures[metric] = statistics.median(c[metric] for c in catchups_all)
    figures["client_mibps"] = client
    figures.update(detached)
    listen = command.index("--listen")
    serve = command[:listen] + command[listen + 2:] + ["--listen"]  # the URL is added per launch
    # The detached scenario leaves hundreds of MiB of dirty pages (the spool, deleted or not): let the
    # kernel write them back now, not while the start-up figures are being timed.
    os.sync()
    time.sleep(1.0)
    figures["startup_ms"] = user_figures.startup_ms(serve, env)
    figures["stdio_init_ms"] = user_figures.stdio_init_ms(serve, env)
    figures["client_stdio_mibps"] = user_figures.client_stdio_mibps(serve, env)
    figures["run_true_ms"] = user_figures.run_true_ms() if name == "ours" else None
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", help="path of the codex binary")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spawns", type=int, default=100)
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--ours-arg", action="append", default=[],
                        help="an extra argument for our server (repeatable), e.g. "
                             "--ours-arg=--linux-sandbox-pid-namespace=inherit")
    parser.add_argument("--detached-mib", type=int, default=256,
                        help="MiB written while detached, then caught up (0 skips it)")
    args = parser.parse_args()
    servers = {"ours": (OURS + args.ours_arg, None)}
    reference = find_reference(args.reference)
    home = tempfile.mkdtemp()
    if reference:
        servers = {"reference": ([reference, "exec-server", "--listen", "ws://127.0.0.1:0"],
                                 dict(os.environ, CODEX_HOME=home)), **servers}
    runs = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, (command, env) in servers.items():
            runs[name].append(run_once(name, command, env, args.spawns, args.detached_mib))
    summary = {name: {metric: (round(statistics.median(r[metric] for r in results), 3)
                               if results[0][metric] is not None else None) for metric in results[0]}
               for name, results in runs.items()}
    with open(args.out, "w") as handle:
        json.dump({"summary": summary, "runs": runs}, handle, indent=2)
    metrics = list(next(iter(summary.values())))
    both = "reference" in summary and "ours" in summary
    print("%-22s" % "metric" + "".join("%14s" % name for name in summary) + ("%14s" % "ours/ref" if both else ""))

    def cell(value) -> str:
        return "%14s" % "n/a" if value is None else "%14.2f" % value

    for metric in metrics:
        ratio = ""
        if both and summary["ours"][metric] is not None and summary["reference"][metric] is not None:
            ratio = "%14.3f" % (summary["ours"][metric] / summary["reference"][metric])
        print("%-22s" % metric + "".join(cell(summary[name][metric]) for name in summary) + ratio)
    print("(medians of %d rounds; JSON in %s)" % (args.rounds, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
