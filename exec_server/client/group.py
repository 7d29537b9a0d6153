"""Many servers from one script: :class:`Group`, one :class:`Client` per host, driven at once.

The shape users know from Fabric's ``ThreadingGroup`` and parallel-ssh, on
this protocol: every host keeps the single client's reconnect and resume
behaviour on its own, and one host's failure is that host's result, never
the others'.

    with Group(["ws://box1:8765", "ws://box2:8765"], token=token) as group:
        result = group.run(["uname", "-a"], timeout=30)      # host -> CompletedProcess or exception
        for host, done in result.succeeded.items(): print(host, done.stdout)
        with group.start(["make", "test"]) as running:        # per-host RemoteProcess handles
            for tagged in running.events():                   # HostEvent(host, event, error), arrival order
                ...
        group.fs.put("./app.conf", "/etc/app.conf")           # the same file everywhere

Work on the hosts (connecting, ``run``, ``start`` requests, file
operations) goes through one ``concurrent.futures.ThreadPoolExecutor`` of
``max_workers`` threads, so at most that many hosts are busy at once;
the rest wait their turn.  Every method is thread-safe.
"""

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from exec_server.client.api import Client
from exec_server.client.interfaces import command_argv
from exec_server.client.interfaces import seconds as _seconds
from exec_server.client.group_events import GroupProcesses, HostEvent  # noqa: F401
from exec_server.client.recovery import ReconnectPolicy
from exec_server.protocol.errors import ExecServerDisconnected

#: Hosts worked on at once (connects, runs, file operations), by default.
DEFAULT_MAX_WORKERS = 32

Token = Union[str, Callable[[], str], None]
#: A host as given: a URL, a ``(url, token)`` pair, or an already-connected Client.
HostSpec = Union[str, Tuple[str, Token], Client]
T = TypeVar("T")


class GroupResult(Dict[str, Any]):
    """host -> that host's result (a value, or the exception it raised), in the group's host order.

    A host *failed* when its result is an exception, or a
    ``subprocess.CompletedProcess`` with a non-zero ``returncode``.

    Attributes:
        durations: host -> seconds its work took (0.0 for a host that never
            connected).
    """

    def __init__(self) -> None:
        super().__init__()
        self.durations: Dict[str, float] = {}

    @staticmethod
    def is_failure(value: Any) -> bool:
        if isinstance(value, BaseException):
            return True
        return isinstance(value, subprocess.CompletedProcess) and value.returncode != 0

    @property
    def succeeded(self) -> Dict[str, Any]:
        return {host: value for host, value in self.items() if not self.is_failure(value)}

    @property
    def failed(self) -> Dict[str, Any]:
        return {host: value for host, value in self.items() if self.is_failure(value)}

    @property
    def ok(self) -> bool:
        """True when no host failed."""
        return not self.failed


class GroupError(Exception):
    """Raised by ``check=True`` when at least one host failed; ``result`` holds every host's result."""

    def __init__(self, result: GroupResult):
        failed = result.failed
        parts = []
        for host, value in failed.items():
            if isinstance(value, subprocess.CompletedProcess):
                parts.append("%s (exit %d)" % (host, value.returncode))
            else:
                parts.append("%s (%s: %s)" % (host, type(value).__name__, value))
        super().__init__("%d of %d hosts failed: %s" % (len(failed), len(result), ", ".join(parts)))
        self.result = result


class Group:
    """One :class:`Client` per host, connected concurrently (at most ``max_workers`` at once).

    Args:
        hosts: a sequence of host specs, or a mapping name -> host spec
            (the names become the result keys).  A spec is a URL, a
            ``(url, token)`` pair, or an already-connected :class:`Client`
            (the group owns it from then on and closes it).  In a sequence,
            a URL or pair is keyed by its URL and the N-th Client by
            ``client-N``.
        max_workers: hosts worked on at once (:data:`DEFAULT_MAX_WORKERS`, 32).
        timeout: seconds for each connect and ``initialize``.
        token: the bearer token (or a callable returning one) of every URL
            given without its own.
        ssl_context, client_name, reconnect: as for :meth:`Client.connect`;
            each host recovers a dropped connection on its own.
    A host that cannot connect keeps its exception (:attr:`errors`), which
    becomes its result in every later operation.
    Raises:
        ValueError: no hosts, a name given twice, ``max_workers`` < 1, or
            ``timeout`` negative or NaN (once: not each host's connect error).
        TypeError: a host that is not a URL (str), a ``(url, token)`` pair
            or a Client; ``max_workers`` not an int.
    """

    def __init__(self, hosts: Union[Sequence[HostSpec], Mapping[str, HostSpec]], *,
                 max_workers: int = DEFAULT_MAX_WORKERS, timeout: Optional[float] = 10.0, token: Token = None,
                 ssl_context=None, client_name: str = "exec-server-group",
                 reconnect: Optional[ReconnectPolicy] = ReconnectPolicy()):
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError("max_workers must be an int, not %r" % (max_workers,))
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        _seconds(timeout)  # an argument mistake is the caller's, not each host's connect error
        specs = _named(hosts)
        self.hosts: List[str] = list(specs)
        self.max_workers = max_workers
        self.clients: Dict[str, Client] = {}
        self.errors: Dict[str, BaseException] = {}
        self._lock = threading.Lock()
        self._running: List[GroupProcesses] = []
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="exec-server-group")

        def connect(spec: HostSpec) -> Client:
            if isinstance(spec, Client):
                return spec
            url, host_token = spec if isinstance(spec, tuple) else (spec, token)
            return Client.connect(url, timeout=timeout, client_name=client_name, reconnect=reconnect,
                                  token=host_token, ssl_context=ssl_context)

        connected = self._connect_each(specs, connect)
        for host in self.hosts:
            if isinstance(connected[host], BaseException):
                self.errors[host] = connected[host]
            else:
                self.clients[host] = connected[host]

    def _connect_each(self, specs: Dict[str, HostSpec], connect: Callable[[HostSpec], Client]) -> Dict[str, Any]:
        """host -> its Client or connect error; ``max_workers`` connects at once, each on a daemon thread.

        Not on the pool: its threads are joined at the interpreter's exit, so
        a Ctrl-C (or SIGTERM) while connecting waited for every connect in
        flight, up to ``timeout`` for a silent host.  Interrupted, the group
        closes what connected; a connect that ends later closes its client.
        """
        slots = threading.BoundedSemaphore(self.max_workers)
        done = threading.Condition()
        results: Dict[str, Any] = {}

        def work(host: str, spec: HostSpec) -> None:
            try:
                value, _taken = _timed(connect, spec)
            finally:
                slots.release()
            with done:
                orphan = self._closed
                if not orphan:
                    results[host] = value
                    done.notify_all()
            if orphan and isinstance(value, Client):
                value.close()

        try:
            for index, (host, spec) in enumerate(specs.items()):
                slots.acquire()
                threading.Thread(target=work, args=(host, spec), daemon=True,
                                 name="exec-server-group-connect-%d" % index).start()
            with done:
                while len(results) < len(specs):
                    done.wait()
        except BaseException:  # e.g. KeyboardInterrupt: close what did connect; the rest when it does
            with done:
                self._closed = True
                clients = [value for value in results.values() if isinstance(value, Client)]
            for client in clients:
                client.close()
            self.close()
            raise
        return results

    # ------------------------------------------------------------- general
    def map(self, function: Callable[[str, Client], T]) -> GroupResult:
        """``function(host, client)`` on every connected host, at most ``max_workers`` at once.

        Returns:
            a :class:`GroupResult`: host -> the return value or the exception
            it raised (a host that never connected gets its connect error).
        Raises:
            ExecServerDisconnected: the group is closed.
        """
        if self._closed:
            raise ExecServerDisconnected("the group is closed")
        futures = {host: self._pool.submit(_timed, function, host, client) for host, client in self.clients.items()}
        result = GroupResult()
        for host in self.hosts:
            if host in self.errors:
                result[host], result.durations[host] = self.errors[host], 0.0
            else:
                result[host], result.durations[host] = futures[host].result()
        return result

    def run(self, argv: Sequence[str], *, timeout: Optional[float] = None, input: Optional[bytes] = None,
            check: bool = False, **start_options: Any) -> GroupResult:
        """:meth:`Client.run` on every host; host -> ``subprocess.CompletedProcess`` or exception.

        Args:
            argv, input, start_options: as for :meth:`Client.run`.
            timeout: seconds per host, counted from when that host's command
                starts; on expiry its remote tree is killed and its result is
                :class:`CallTimeout` (a ``subprocess.TimeoutExpired``).
            check: raise :class:`GroupError` (carrying every result) when a
                host failed; otherwise failures are results, never raised.
        Raises:
            ValueError: ``timeout`` is negative or NaN, or ``argv`` is empty (once, before any host runs
                anything).
            TypeError: an ``argv`` item that :meth:`Client.run` refuses (likewise).
        """
        argv = command_argv(argv)  # a lone string is the program alone, as for Client.run
        _seconds(timeout)  # an argument mistake is the caller's, not each host's result
        result = self.map(lambda host, client: client.run(argv, timeout=timeout, input=input, **start_options))
        if check and not result.ok:
            raise GroupError(result)
        return result

    def start(self, argv: Sequence[str], **start_options: Any) -> GroupProcesses:
        """:meth:`Client.start` on every host; a :class:`GroupProcesses` of handles and tagged events.

        A host that could not connect or start gets its exception in
        ``errors`` (and as the first event of that host).
        Raises:
            ValueError, TypeError: ``argv`` as for :meth:`run` (once, before any host starts anything).
        """
        argv = command_argv(argv)
        begun: Dict[str, float] = {}

        def start(host: str, client: Client):
            begun[host] = time.monotonic()
            return client.start(argv, **start_options)

        started = self.map(start)
        processes = {host: value for host, value in started.items() if not isinstance(value, BaseException)}
        errors = {host: value for host, value in started.items() if isinstance(value, BaseException)}
        running = GroupProcesses(argv, self.hosts, processes, errors, begun)
        with self._lock:
            self._running = [r for r in self._running if not r.finished] + [running]
        return running

    @property
    def fs(self):
        """File operations on every host (:class:`~exec_server.client.group_fs.GroupFileSystem`)."""
        from exec_server.client.group_fs import GroupFileSystem

        return GroupFileSystem(self)

    def __getitem__(self, host: str) -> Client:
        """The client of ``host``; raises its connect error if it never connected."""
        if host in self.errors:
            raise self.errors[host]
        return self.clients[host]

    def __len__(self) -> int:
        return len(self.hosts)

    def close(self) -> None:
        """Stop event pumps, close every client, shut the worker threads down (bounded by their waits)."""
        with self._lock:
            self._closed, running, self._running = True, self._running, []
        for group_processes in running:
            group_processes.close()
        for client in list(self.clients.values()):
            client.close()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<Group %d hosts, %d connected>" % (len(self.hosts), len(self.clients))


def _named(hosts: Union[Sequence[HostSpec], Mapping[str, HostSpec]]) -> Dict[str, HostSpec]:
    """name -> spec, in the order given."""
    if isinstance(hosts, (str, bytes)):
        raise TypeError("hosts must be a list of URLs (or pairs, or clients), or a mapping, not one string")
    if isinstance(hosts, Mapping):
        items = [(str(name), spec) for name, spec in hosts.items()]
    else:
        items = []
        for index, spec in enumerate(hosts):
            if isinstance(spec, Client):
                items.append(("client-%d" % index, spec))
            elif isinstance(spec, tuple):
                items.append((spec[0] if spec else repr(spec), spec))
            else:
                items.append((spec, spec))
    if not items:
        raise ValueError("a group needs at least one host")
    named: Dict[str, HostSpec] = {}
    for name, spec in items:
        if name in named:
            raise ValueError("host %s given twice" % name)
        if isinstance(spec, tuple) and len(spec) != 2:
            raise ValueError("a host pair is (url, token), got %r" % (spec,))
        url = spec[0] if isinstance(spec, tuple) else spec
        if not isinstance(spec, Client) and not isinstance(url, str):
            raise TypeError("a host is a URL (str), a (url, token) pair or a Client, not %r" % (spec,))
        named[name] = spec
    return named


def _timed(function: Callable[..., T], *args: Any) -> Tuple[Union[T, Exception], float]:
    """(the return value or the Exception raised, seconds taken)."""
    begin = time.monotonic()
    try:
        value: Union[T, Exception] = function(*args)
    except Exception as exc:
        value = exc
    return value, time.monotonic() - begin


__all__ = ["Group", "GroupResult", "GroupError", "GroupProcesses", "HostEvent", "DEFAULT_MAX_WORKERS"]
