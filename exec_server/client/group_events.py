"""What :meth:`Group.start` returns: per-host :class:`RemoteProcess` handles and one stream of tagged events.

Each started process gets a pump thread (a daemon: one left running by a
script that never closed its group does not hold the interpreter's exit)
that takes its events in seq order and puts them, tagged with the host, on
one queue; :meth:`GroupProcesses.events` yields them in the order they arrived.  The pumps consume the handles'
events, so use the handles for control (``write``, ``send_interrupt``,
``terminate``, ``wait``, ``returncode``), not for ``communicate``.
"""

import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from exec_server.client.interfaces import CallTimeout
from exec_server.client.interfaces import deadline as _deadline
from exec_server.client.interfaces import remaining as _remaining
from exec_server.client.process import ClosedEvent, OutputEvent, ProcessEvent, RemoteProcess

#: Seconds a pump waits for its process's next event before checking whether it should stop.
EVENT_POLL_INTERVAL = 0.25
#: Seconds :meth:`GroupProcesses.close` waits for each pump to stop (one polls every EVENT_POLL_INTERVAL; a pump
#: held longer, in a reconnect's catch-up read, is a daemon thread left to end by itself).
PUMP_STOP_WAIT = 5.0
#: Bytes of output of all hosts taken from their handles and not yet taken by :meth:`GroupProcesses.events`
#: (one event more when none is queued); past it the pumps wait, and each handle keeps at most its
#: ``max_buffered_output`` (then refills).
MAX_QUEUED_BYTES = 16 * 1024 * 1024
#: Hosts whose processes :meth:`GroupProcesses.__exit__`, ``send_interrupt`` and ``terminate`` reach at once
#: (each exit waits up to 5 s for its ``closed``).
MAX_PARALLEL_EXITS = 32

_FINISHED = object()  # a pump's last word on the queue
_ALL_FINISHED = object()  # put by the consumer that took the last _FINISHED: wakes (and ends) every other one


@dataclass(frozen=True)
class HostEvent:
    """One event of one host: ``event`` (Output/Exited/ClosedEvent), or ``error`` when the host failed.

    ``error`` is what the host raised: its connect or start error, or the
    process's failure (``ExecServerDisconnected`` once its client gave up
    recovering, ``ProcessOutputGap``).  Nothing follows a ``ClosedEvent`` or
    an error for that host.
    """

    host: str
    event: Optional[ProcessEvent] = None
    error: Optional[BaseException] = None


class GroupProcesses:
    """The processes one :meth:`Group.start` started; a context manager (kills what still runs on exit).

    Attributes:
        processes: host -> :class:`RemoteProcess`, for the hosts where it started.
        errors: host -> the exception of a host that could not connect or start.
        durations: host -> seconds from its start request until ``closed``
            or failure, filled in as hosts finish.
    Thread-safe; each event goes to one consumer of :meth:`events` (two threads share them out).
    """

    def __init__(self, argv: Sequence[str], hosts: Sequence[str], processes: Dict[str, RemoteProcess],
                 errors: Dict[str, BaseException], begun: Dict[str, float]):
        self.args = list(argv)
        self.hosts = list(hosts)
        self.processes = processes
        self.errors = errors
        self.durations: Dict[str, float] = {host: 0.0 for host in errors}
        self._begun = dict(begun)
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._room = threading.Condition()  # guards _queued: output bytes on the queue
        self._queued = 0
        self._stop = threading.Event()
        self._pending = len(processes)  # pumps whose _FINISHED no consumer has taken (under _room)
        for host in hosts:
            if host in errors:
                self._queue.put(HostEvent(host, error=errors[host]))
        if not processes:
            self._queue.put(_ALL_FINISHED)
        # Daemon threads, not a concurrent.futures pool: a pool's threads are joined at the interpreter's exit,
        # which a group never closed (a script's last line) would then hold until every remote process closed.
        self._pumps = [threading.Thread(target=self._pump, args=(host, process), daemon=True,
                                        name="exec-server-group-events-%d" % index)
                       for index, (host, process) in enumerate(processes.items())]
        for pump in self._pumps:
            pump.start()

    def _pump(self, host: str, process: RemoteProcess) -> None:
        try:
            while not self._stop.is_set():
                try:
                    event = process.next_event(timeout=EVENT_POLL_INTERVAL)
                except subprocess.TimeoutExpired:
                    continue
                if event is None:
                    break
                if isinstance(event, ClosedEvent):
                    self._finish(host)
                size = len(event.data) if isinstance(event, OutputEvent) else 0
                with self._room:
                    while self._queued and self._queued + size > MAX_QUEUED_BYTES:
                        if self._stop.is_set():
                            return
                        self._room.wait(EVENT_POLL_INTERVAL)
                    self._queued += size
                self._queue.put(HostEvent(host, event))
                if isinstance(event, ClosedEvent):
                    break
        except Exception as exc:  # the process failed: lost connection, output gap
            self._finish(host)
            self._queue.put(HostEvent(host, error=exc))
        finally:
            self._queue.put(_FINISHED)

    def _finish(self, host: str) -> None:
        self.durations[host] = self.elapsed(host)

    def elapsed(self, host: str) -> float:
        """Seconds since ``host``'s start request (0.0 for a host that could not start)."""
        return time.monotonic() - self._begun.get(host, time.monotonic())

    @property
    def finished(self) -> bool:
        """True once every pump has ended (all hosts closed or failed, or :meth:`close` was called)."""
        return self._stop.is_set() or not any(pump.is_alive() for pump in self._pumps)

    def events(self, timeout: Optional[float] = None) -> Iterator[HostEvent]:
        """Every host's events, tagged, in arrival order; ends when every host closed or failed.

        Each host's events are in its own seq order, each exactly once; a
        host that could not connect or start appears as one error event
        first.

        Args:
            timeout: seconds for the whole iteration; None waits until every
                process has closed (or :meth:`close` is called).
        Raises:
            CallTimeout: not finished within ``timeout`` (a ``subprocess.TimeoutExpired`` and a
                ``TimeoutError``, as every wait of the client); the events not yet taken stay queued for the
                next call.
        """
        deadline = _deadline(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if self._pending == 0:
                    return
                try:
                    item = self._queue.get(timeout=_remaining(deadline))
                except queue.Empty:
                    raise CallTimeout(self.args, timeout) from None
            if item is _ALL_FINISHED:  # another consumer took the last pump's word: put back for the next one
                self._queue.put(item)
                return
            if item is _FINISHED:
                with self._room:
                    self._pending -= 1
                    last = self._pending == 0
                if last:  # a consumer blocked in get() would otherwise wait forever (or for its timeout)
                    self._queue.put(_ALL_FINISHED)
                continue
            if isinstance(item.event, OutputEvent):
                with self._room:
                    self._queued -= len(item.event.data)
                    self._room.notify_all()
            yield item

    def wait(self, timeout: Optional[float] = None) -> Dict[str, Union[int, BaseException]]:
        """host -> exit code, or the exception (connect/start error, ``CallTimeout``, ...).

        ``timeout`` is one deadline for all hosts.
        """
        deadline = _deadline(timeout)
        outcome: Dict[str, Union[int, BaseException]] = {}
        for host in self.hosts:
            if host in self.errors:
                outcome[host] = self.errors[host]
                continue
            try:
                outcome[host] = self.processes[host].wait(_remaining(deadline))
            except Exception as exc:
                outcome[host] = exc
        return outcome

    def _each(self, action: Callable[[RemoteProcess], Any]) -> Dict[str, Any]:
        """``action`` on every process, all hosts at once (:func:`_at_once`); host -> its result or exception."""
        return _at_once(self.processes.items(), action)

    def send_interrupt(self) -> Dict[str, Any]:
        """SIGINT to every remote process group, all hosts at once; host -> None or the exception."""
        return self._each(lambda process: process.send_interrupt())

    def terminate(self) -> Dict[str, Any]:
        """Kill every remote tree, all hosts at once; host -> True (was running), False, or the exception."""
        return self._each(lambda process: process.terminate())

    def close(self) -> None:
        """Stop the pumps (each within :data:`EVENT_POLL_INTERVAL`; waited for :data:`PUMP_STOP_WAIT` at most)
        and forget the handles that closed.

        Processes still running are not killed here and stay their client's:
        closing the :class:`Group` (or their ``Client``) terminates them.
        Call :meth:`terminate` first to end them now, or leave the ``with``
        block, which does.
        """
        self._stop_and_forget_closed()

    def _stop_and_forget_closed(self) -> List[RemoteProcess]:
        """Stop the pumps, forget the handles that are done; returns the others (one look at each)."""
        self._stop.set()
        deadline = time.monotonic() + PUMP_STOP_WAIT
        for pump in self._pumps:
            pump.join(max(0.0, deadline - time.monotonic()))  # each within EVENT_POLL_INTERVAL of the stop
        running = []
        for process in self.processes.values():
            if not process.done:
                running.append(process)
                continue
            try:
                process.client.forget(process)
            except Exception:  # a client of another kind
                pass
        return running

    def __enter__(self) -> "GroupProcesses":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Stop the pumps, then leave each handle's ``with`` block, all hosts at once.

        As :meth:`RemoteProcess.__exit__ <exec_server.client.process.RemoteProcess.__exit__>`
        does: a tree that has not closed is killed (up to 5 s per host for the
        kill and its ``closed``, the hosts in parallel), then the handle is
        forgotten.  Errors of lost connections are ignored.
        """
        running = self._stop_and_forget_closed()
        if not running:
            return
        _at_once(enumerate(running), lambda process: process.__exit__(None, None, None))  # errors: ignored

    def __repr__(self) -> str:
        return "<GroupProcesses %d started, %d failed>" % (len(self.processes), len(self.errors))


def _at_once(items: Iterable[Tuple[Any, RemoteProcess]], action: Callable[[RemoteProcess], Any]) -> Dict[Any, Any]:
    """``action`` on the process of each ``(key, process)``, up to :data:`MAX_PARALLEL_EXITS` at once, so that a
    slow or unreachable host (its call waits up to 30 s) delays no other; key -> result, or the exception raised.

    Daemon threads, joined here, not a pool: a pool's threads are joined again at the interpreter's exit, which
    a signal handler's call (Ctrl-C of ``exec-server run``) to a host that does not answer would then hold.
    """
    todo: "queue.SimpleQueue[Tuple[Any, RemoteProcess]]" = queue.SimpleQueue()
    keys = []
    for key, process in items:
        keys.append(key)
        todo.put((key, process))
    outcome: Dict[Any, Any] = {}

    def work() -> None:
        while True:
            try:
                key, process = todo.get_nowait()
            except queue.Empty:
                return
            try:
                outcome[key] = action(process)
            except Exception as exc:  # told to the caller, host by host
                outcome[key] = exc

    workers = [threading.Thread(target=work, daemon=True, name="exec-server-group-each")
               for _ in range(min(len(keys), MAX_PARALLEL_EXITS))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {key: outcome[key] for key in keys if key in outcome}


__all__: List[str] = ["GroupProcesses", "HostEvent", "EVENT_POLL_INTERVAL", "MAX_PARALLEL_EXITS"]
