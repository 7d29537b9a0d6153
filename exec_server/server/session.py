"""A session: the processes of one client, and the send of the connection attached to it.

A session owns its processes (PROTOCOL.md 7); a connection attaches to one
and receives its notifications through its *send*
(:data:`~exec_server.protocol.wire.Send`).  A process hands the session its
events as values; the session encodes them here, at the edge
(:func:`encode_events`), and sends them when a connection is attached.

:meth:`Session.attach` and :meth:`Session.detach` swap the send under the
session lock, and ``detach`` only clears it for the owner that attached it,
so an old connection can never clear a newer connection's send.  When the
session ends (:meth:`Session.close`) every process group of it is killed,
and in ``inherit`` mode the background jobs its forgotten commands left
(:mod:`~exec_server.server.process.leftovers`).  The registry of all
sessions, with detach, resume and expiry, is :mod:`~exec_server.server.sessions`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from exec_server.server.config import ServerConfig
from exec_server.protocol.errors import InvalidRequest
from exec_server.protocol.wire import (Send, encode_closed_notification, encode_exited_notification,
                                       encode_output_notification)
from exec_server.server.first_use import FirstUse
from exec_server.server.scheduler import Scheduler

if TYPE_CHECKING:  # the process code loads with the first process/* request (handlers/__init__.py)
    from exec_server.server.process.leftovers import Leftovers
    from exec_server.server.process.managed import ManagedProcess
    from exec_server.server.process.output import Event, EventListener


def encode_events(process_id: str, events: Sequence[Event]) -> List[str]:
    """The notification texts of a process's events, in order (PROTOCOL.md 5.3)."""
    from exec_server.server.process.output import Exited, OutputChunk  # loaded by then: a process made them
    texts = []
    for event in events:
        kind = type(event)
        if kind is OutputChunk:
            texts.append(encode_output_notification(process_id, event[0], event[1], event[2]))
        elif kind is Exited:
            texts.append(encode_exited_notification(process_id, event.seq, event.exit_code,  # type: ignore[union-attr]
                                                    event.sandbox_denied))  # type: ignore[union-attr]
        else:
            texts.append(encode_closed_notification(process_id, event.seq))
    return texts


class Session:
    """Processes of one client session, and the send of its attached connection.

    Thread-safe; the lock guards the process table and the attachment only.
    """

    def __init__(self, session_id: str, config: ServerConfig, scheduler: Scheduler):
        self.session_id = session_id
        #: the span of the ``initialize`` that opened or last resumed it, for the log records of its detach and
        #: expiry (``telemetry.current_span_context``)
        self.span_context: Any = None
        self._config = config
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._processes: Dict[str, ManagedProcess] = {}
        self._reserved: Dict[str, None] = {}
        self._send: Optional[Send] = None
        self._owner: Optional[object] = None
        self._closed = False
        self._leftovers: FirstUse[Leftovers] = FirstUse(_new_leftovers, lambda leftovers: leftovers.close())

    # ------------------------------------------------------------ attachment
    def attach(self, owner: object, send: Send) -> None:
        """Send this session's notifications through ``send`` of connection ``owner``."""
        with self._lock:
            self._owner = owner
            self._send = send

    def attach_if_free(self, owner: object, send: Send) -> bool:
        """Attach unless another connection holds the session; True if attached."""
        with self._lock:
            if self._owner is not None or self._closed:
                return False
            self._owner = owner
            self._send = send
            return True

    def detach(self, owner: object) -> bool:
        """Clear the send if ``owner`` still holds the session; True if it did."""
        with self._lock:
            if self._owner is not owner:
                return False
            self._owner = None
            self._send = None
            return True

    def mark_closed_if_detached(self) -> bool:
        """Close the session to resumes if no connection holds it; True if closed."""
        with self._lock:
            if self._owner is not None:
                return False
            self._closed = True
            return True

    def holder(self) -> Optional[object]:
        """The connection holding the session, or None while detached."""
        with self._lock:
            return self._owner

    def is_owned_by(self, owner: object) -> bool:
        with self._lock:
            return self._owner is owner

    def listener(self, process_id: str) -> EventListener:
        """The listener of process ``process_id``'s events: encodes them and sends them in one write.

        Events are dropped while no connection is attached (``process/read``
        still finds the retained output).  Thread-safe.
        """
        lock = self._lock

        def deliver(events: List[Event]) -> None:
            with lock:
                send = self._send
            if send is not None:
                send(*encode_events(process_id, events))

        return deliver

    # ------------------------------------------------------------- processes
    def reserve(self, process_id: str) -> None:
        """Claim a process id before spawning.

        At the session's process limit (``max_processes_per_session``) the
        process that closed longest ago is forgotten to make room, as its
        retention would later (a loop of short commands met the limit after
        1024 of them within ``closed_process_retention``).

        Raises:
            InvalidRequest: ``process <id> already exists``, or the limit is
                reached by processes that have not closed.
        """
        with self._lock:
            if self._closed:
                raise InvalidRequest("session is closed")
            if process_id in self._processes or process_id in self._reserved:
                raise InvalidRequest("process %s already exists" % process_id)
            oldest = None
            if len(self._processes) + len(self._reserved) >= self._config.max_processes_per_session:
                closed = [process for process in self._processes.values() if process.closed_at is not None]
                if not closed:
                    raise InvalidRequest(
                        "too many processes in this session (limit %d)" % self._config.max_processes_per_session)
                oldest = min(closed, key=lambda process: process.closed_at)
                del self._processes[oldest.process_id]  # here: two starts at once never both take its room
            self._reserved[process_id] = None
        if oldest is not None:
            self._release(oldest)

    def unreserve(self, process_id: str) -> None:
        with self._lock:
            self._reserved.pop(process_id, None)

    def add(self, process: ManagedProcess) -> None:
        with self._lock:
            self._reserved.pop(process.process_id, None)
            self._processes[process.process_id] = process
            closed = self._closed
        if closed:  # the session ended while this process was spawning
            process.kill_tree()

    def get(self, process_id: str) -> Optional[ManagedProcess]:
        with self._lock:
            return self._processes.get(process_id)

    def require(self, process_id: str) -> ManagedProcess:
        """The process, or -32600 ``unknown process id <id>``."""
        process = self.get(process_id)
        if process is None:
            raise InvalidRequest("unknown process id %s" % process_id)
        return process

    def processes(self) -> List[ManagedProcess]:
        with self._lock:
            return list(self._processes.values())

    def is_idle(self) -> bool:
        """True if no process of the session is running or being started."""
        with self._lock:  # a process's own lock is taken outside the session's
            if self._reserved:
                return False
            processes = list(self._processes.values())
        return all(process.closed for process in processes)

    def delivering(self) -> bool:
        """True while a process's recorded events still wait to be sent as notifications."""
        with self._lock:
            processes = list(self._processes.values())
        return any(process.has_held_events() for process in processes)

    def is_empty(self) -> bool:
        """True if the session keeps no process (none started, or every one forgotten): nothing to read."""
        with self._lock:
            return not self._reserved and not self._processes

    def process_closed(self, process: ManagedProcess) -> None:
        """Keep a closed process readable for ``closed_process_retention`` seconds."""
        self._scheduler.call_later(self._config.closed_process_retention, lambda: self._forget(process))

    def _forget(self, process: ManagedProcess) -> None:
        with self._lock:
            forgotten = self._processes.get(process.process_id) is process and not self._closed
            if forgotten:
                del self._processes[process.process_id]
        if forgotten:
            self._release(process)
        else:
            process.discard_output()

    def _release(self, process: ManagedProcess) -> None:
        """What a forgotten process still holds: its marker joins the session's leftovers, its output goes."""
        try:
            if process.marker is not None:  # its background jobs still die with the session
                self._leftovers.get().add(process.marker)
        finally:
            process.discard_output()  # its spool file goes whatever happened above

    def wake_readers(self) -> None:
        for process in self.processes():
            process.wake()

    def close(self) -> List[ManagedProcess]:
        """Mark closed and kill every process group, and the background jobs of forgotten commands; returns
        the processes still listed."""
        with self._lock:
            self._closed = True
            self._send = None
            self._owner = None
            processes = list(self._processes.values())
        if processes:
            from exec_server.server.process.managed import kill_trees

            kill_trees(processes)  # their marked jobs found in one scan, not one per process
        self._leftovers.close()
        for process in processes:
            process.discard_output()
            process.wake()
        return processes


def _new_leftovers() -> Leftovers:
    from exec_server.server.process.leftovers import Leftovers  # loaded with the first process's forget
    return Leftovers()
