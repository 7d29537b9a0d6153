"""Shared fixtures: live servers (ours and the reference), a raw JSON-RPC peer, child reaping."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence

import psutil
import pytest
import simple_websocket

from exec_server import make_server
from exec_server.server.config import ServerConfig
from exec_server.server.process import guardian
from exec_server.protocol.schemas import SchemaSet

REFERENCE_DEFAULT = os.path.expanduser(
    "~/.cache/codex-reference/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex")
SCHEMAS = SchemaSet.load()


def _children_get_default_signals() -> None:
    """A run under ``nohup`` (SIGHUP ignored) or as a background job of a shell without job control (SIGINT
    ignored) would pass those dispositions on to every process the tests start, and the tests that send them
    expect the default reactions.  An ignored signal stays ignored across exec, a handled one does not: a
    handler that does nothing keeps this process ignoring it, and gives every child the default."""
    for name in ("SIGINT", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_IGN:
            signal.signal(number, lambda _number, _frame: None)


_children_get_default_signals()


def reference_binary() -> Optional[str]:
    path = os.environ.get("EXEC_SERVER_REFERENCE") or REFERENCE_DEFAULT
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` on the monotonic clock until truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        time.sleep(interval)


#: /proc/<pid>/fd lists a process's descriptors (Linux): the only place an unlinked spool segment shows.
PROC_FDS = os.path.isdir("/proc/self/fd")


def held_segments(pid: int, directory) -> Dict[str, int]:
    """The spool segment files under ``directory`` that process ``pid`` holds open: {its /proc fd link: bytes}.

    A segment is unlinked as soon as it is made, so only the descriptor shows it: its /proc/<pid>/fd link reads
    ``<path> (deleted)`` (psutil's ``open_files()`` does not list deleted files reliably).  Linux only (``PROC_FDS``).
    """
    prefix = os.path.realpath(str(directory)) + os.sep
    fd_dir = "/proc/%d/fd" % pid
    held = {}
    for name in os.listdir(fd_dir):
        link = os.path.join(fd_dir, name)
        try:
            target = os.readlink(link)
            if target.startswith(prefix) and target.endswith(".spool (deleted)"):
                held[link] = os.stat(link).st_size
        except OSError:  # closed meanwhile
            continue
    return held


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leftover_children():
    """Fail a test that leaves a child process of ours running (and reap it)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def leftovers() -> List[psutil.Process]:
        keep = before | {guardian.running_pid()}  # the guardian lives as long as this process
        return [p for p in me.children(recursive=True)
                if p.pid not in keep and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    deadline = time.monotonic() + 5.0
    left = leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = leftovers()
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    assert not left, "processes left running: %s" % [(p.pid, p.cmdline()) for p in left]


class RunningServer:
    def __init__(self, kind: str, url: str, stop: Callable[[], None], pid: Optional[int] = None, server=None):
        self.kind = kind
        self.url = url
        self.stop = stop
        self.pid = pid
        self.server = server  # ours, in this process: the ExecServer

    @property
    def is_reference(self) -> bool:
        return self.kind == "reference"


def start_ours(config: Optional[ServerConfig] = None, auth=None) -> RunningServer:
    server = make_server("ws://127.0.0.1:0", config, auth).start()
    return RunningServer("ours", server.url, server.shutdown, server=server)


def start_reference(tmp_dir: str, extra_args: Sequence[str] = ()) -> RunningServer:
    binary = reference_binary()
    if binary is None:
        if os.environ.get("EXEC_SERVER_REQUIRE_REFERENCE") == "1":
            pytest.fail("EXEC_SERVER_REQUIRE_REFERENCE=1 but no reference binary (EXEC_SERVER_REFERENCE)")
        pytest.skip("reference server not installed (set EXEC_SERVER_REFERENCE)")
    home = tempfile.mkdtemp(dir=tmp_dir)
    log = open(os.path.join(tmp_dir, "reference.log"), "wb")
    process = subprocess.Popen([binary, "exec-server", "--listen", "ws://127.0.0.1:0", *extra_args],
                               stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                               env={**os.environ, "CODEX_HOME": home})
    line = process.stdout.readline().decode().strip()
    if not line.startswith("ws://"):
        process.kill()
        process.wait(5)
        pytest.fail("reference server did not start: %r" % line)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        process.stdout.close()
        log.close()

    return RunningServer("reference", line, stop, process.pid)


@pytest.fixture
def server():
    """Our server on a free loopback port."""
    running = start_ours()
    yield running
    running.stop()


@pytest.fixture(params=["ours", pytest.param("reference", marks=pytest.mark.reference)])
def any_server(request, tmp_path_factory):
    """Ours and the Codex reference, one after the other (interop)."""
    running = start_ours() if request.param == "ours" else start_reference(str(tmp_path_factory.mktemp("reference")))
    yield running
    running.stop()


@pytest.fixture(params=["ours", pytest.param("reference", marks=pytest.mark.reference)])
def any_server_inherit(request, tmp_path_factory):
    """Ours in ``--linux-sandbox-pid-namespace inherit`` mode and the reference: for scenarios that
    read host PIDs from the child or let a background job outlive the command, which the reference
    does for unsandboxed processes and our default ``isolate`` mode does not (README)."""
    running = (start_ours(ServerConfig(pid_namespace="inherit")) if request.param == "ours"
               else start_reference(str(tmp_path_factory.mktemp("reference"))))
    yield running
    running.stop()


def running_descendants(pid: int, argv: Sequence[str]) -> List[psutil.Process]:
    """Living descendants of ``pid`` whose command line is ``argv``: the host's view, whatever PID
    namespace they run in (a child's own ``$!`` is a namespace PID under ``isolate``)."""
    found = []
    try:
        candidates = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return found
    for process in candidates:
        try:
            if process.cmdline() == list(argv) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def with_env(name: str, value: str) -> List[psutil.Process]:
    """Living processes whose environment has ``name=value`` (found on the host, any PID namespace)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(name) == value and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def reap(process: subprocess.Popen) -> None:
    """Kill ``process`` (by its PID) if it still runs, wait for it (10 s at most) and close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def all_gone(processes: Sequence[psutil.Process]) -> bool:
    """True when none of ``processes`` runs any more (psutil checks identity, not just the PID)."""
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.Error:
            continue
    return True


@pytest.fixture
def configured_server():
    """``configured_server(**ServerConfig fields)`` -> our server with those settings; all stopped at teardown."""
    servers = []

    def factory(**settings):
        running = start_ours(ServerConfig(**settings))
        servers.append(running)
        return running

    yield factory
    for running in servers:
        running.stop()


@pytest.fixture
def memory_server():
    """``memory_server(**ServerConfig fields)`` -> a :class:`memory_pair.MemoryServer` (no sockets).

    Connect a real client with ``Client.open(server.connector, ...)``; every
    server is closed at teardown.
    """
    from memory_pair import MemoryServer

    servers = []

    def factory(**settings):
        server = MemoryServer(ServerConfig(**settings))
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


class Peer:
    """A raw JSON-RPC peer over WebSocket that keeps every message it receives."""

    def __init__(self, url: str):
        self.ws = simple_websocket.Client.connect(url + "/")
        self.received: List[Dict[str, Any]] = []
        self._next_id = 1000

    def send(self, message) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def recv(self, timeout: float = 5.0) -> Optional[Dict[str, Any]]:
        text = self.ws.receive(timeout)
        if text is None:
            return None
        message = json.loads(text)
        self.received.append(message)
        return message

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 10.0) -> Dict[str, Any]:
        for message in self.received:
            if predicate(message):
                return message
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching message within %.1f s; got %r" % (timeout, self.received[-5:]))
            message = self.recv(remaining)
            if message is not None and predicate(message):
                return message

    def request(self, method: str, params: Any = None, timeout: float = 10.0, **extra) -> Dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        message = {"id": request_id, "method": method, **extra}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self.wait_for(lambda m: m.get("id") == request_id and "method" not in m, timeout)

    def call(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        reply = self.request(method, params, timeout)
        assert "result" in reply, reply
        name = method + ".result.json"
        if SCHEMAS.has(name):
            SCHEMAS.validate(name, reply["result"])
        return reply["result"]

    def initialize(self, name: str = "tests") -> Dict[str, Any]:
        result = self.call("initialize", {"clientName": name})
        self.send({"method": "initialized", "params": {}})
        return result

    def notifications(self, process_id: str) -> List[Dict[str, Any]]:
        return [m for m in self.received if m.get("method", "").startswith("process/")
                and "id" not in m and m["params"].get("processId") == process_id]

    def wait_closed(self, process_id: str, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Every notification of the process once ``closed`` and all lower seqs arrived.

        (The reference sometimes delivers ``closed`` before the last output.)
        """
        closed = self.wait_for(lambda m: m.get("method") == "process/closed"
                               and m["params"]["processId"] == process_id, timeout)
        wanted = list(range(1, closed["params"]["seq"] + 1))
        deadline = time.monotonic() + timeout
        while sorted(m["params"]["seq"] for m in self.notifications(process_id)) != wanted:
            if time.monotonic() >= deadline:
                break
            self.recv(0.1)
        return self.notifications(process_id)

    def is_disconnected(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.ws.receive(0.05) is None and not self.ws.connected:
                    return True
            except simple_websocket.ConnectionClosed:
                return True
        return False

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


@pytest.fixture
def connect():
    """``connect(url)`` -> a :class:`Peer`; all closed at teardown."""
    peers: List[Peer] = []

    def factory(url: str) -> Peer:
        peer = Peer(url)
        peers.append(peer)
        return peer

    yield factory
    for peer in peers:
        peer.close()


def start_params(process_id: str, argv: List[str], **extra) -> Dict[str, Any]:
    params = {"processId": process_id, "argv": argv, "cwd": "file:///tmp",
              "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, "tty": False}
    params.update(extra)
    return params


def http_request(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send raw HTTP bytes to 127.0.0.1:port and return everything answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
            if _response_complete(b"".join(chunks)):
                break
    return b"".join(chunks)


def _response_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.startswith(b"HTTP/1.1 101"):
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


PYTHON = sys.executable


# ------------------------------------------------------------------ TLS (tests/test_tls*.py)
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a CA nobody trusts, as PEM files."""
    import trustme

    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("client@example.test")
    stranger = other_ca.issue_cert("client@example.test")
    files = types.SimpleNamespace(ca=folder / "ca.pem", server_cert=folder / "server.pem",
                                  server_key=folder / "server.key", client=folder / "client.pem",
                                  stranger=folder / "stranger.pem", ca_obj=ca, client_obj=client,
                                  stranger_obj=stranger, other_ca_obj=other_ca)
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.private_key_and_cert_chain_pem.write_to_path(str(files.client))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(files.stranger))
    return files


@pytest.fixture
def tls_server(pki):
    """``tls_server(client_ca=None, **ServerConfig fields)`` -> a started ``wss://`` server (pki's certificate)."""
    from exec_server.server.tls import server_context

    servers = []

    def factory(client_ca=None, **settings):
        context = server_context(str(pki.server_cert), str(pki.server_key), client_ca and str(client_ca))
        server = make_server("wss://127.0.0.1:0", ServerConfig(**settings), ssl_context=context).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.shutdown()


def sandbox_writing(folder) -> Dict[str, Any]:
    """A FileSystemSandboxContext that may read everything and write ``folder``."""
    from fs_helper.uris import path_to_uri

    entries = [{"path": {"type": "path", "path": "file:///"}, "access": "read"},
               {"path": {"type": "path", "path": path_to_uri(str(folder))}, "access": "write"}]
    return {"permissions": {"type": "managed", "network": "enabled",
                            "file_system": {"type": "restricted", "entries": entries}},
            "windowsSandboxLevel": "disabled"}
