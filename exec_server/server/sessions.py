"""Sessions and the session registry.

A session owns its processes (PROTOCOL.md 7); a connection attaches to one
and receives its notifications through its *send*
(:data:`~exec_server.protocol.wire.Send`).  A process hands the session its
events as values; the session encodes them here, at the edge
(:func:`encode_events`), and sends them when a connection is attached.  The
registry has one lock with short critical sections (add, get, pop,
snapshot); processes are killed and notifications sent outside it.

Detach/resume: :meth:`Session.attach` and :meth:`Session.detach` swap the
send under the session lock, and ``detach`` only clears it for the owner
that attached it, so an old connection can never clear a newer connection's
send.  A detached session lives for ``detached_session_ttl`` seconds; a
resume within it reattaches it (same id, same processes), and at its end
every process group of the session is killed.  Resume and expiry both decide
under the registry lock, so exactly one of them wins.
"""

from __future__ import annotations

import logging
import threading
import time
import os
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

from exec_server.common import telemetry
from exec_server.server.config import ServerConfig
from exec_server.protocol.errors import InvalidRequest, SessionAlreadyAttached
from exec_server.protocol.wire import (Send, encode_closed_notification, encode_exited_notification,
                                       encode_output_notification)
from exec_server.server.first_use import FirstUse
from exec_server.server.scheduler import Scheduler

if TYPE_CHECKING:  # the process code loads with the first process/* request (handlers/__init__.py)
    from exec_server.server.process.managed import ManagedProcess
    from exec_server.server.process.output import Event, EventListener
    from exec_server.server.process.spool import Spool, SpoolStore

log = logging.getLogger(__name__)


def random_uuid() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())``: a session id, as the reference's.

    Written out because the ``uuid`` module imports ``platform``, whose nine
    regular expressions cost a cold start 2-5 ms (#17).
    """
    text = "%032x" % ((int.from_bytes(os.urandom(16), "big") & ~(0xF000 << 64 | 0xC000 << 48))
                      | 0x4000 << 64 | 0x8000 << 48)  # version 4, RFC 4122 variant
    return "%s-%s-%s-%s-%s" % (text[:8], text[8:12], text[12:16], text[16:20], text[20:])


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
        self._config = config
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._processes: Dict[str, ManagedProcess] = {}
        self._reserved: Dict[str, None] = {}
        self._send: Optional[Send] = None
        self._owner: Optional[object] = None
        self._closed = False

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

        Raises:
            InvalidRequest: ``process <id> already exists``, or the session's
                process limit (``max_processes_per_session``) is reached.
        """
        with self._lock:
            if self._closed:
                raise InvalidRequest("session is closed")
            if process_id in self._processes or process_id in self._reserved:
                raise InvalidRequest("process %s already exists" % process_id)
            if len(self._processes) + len(self._reserved) >= self._config.max_processes_per_session:
                raise InvalidRequest(
                    "too many processes in this session (limit %d)" % self._config.max_processes_per_session)
            self._reserved[process_id] = None

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

    def process_closed(self, process: ManagedProcess) -> None:
        """Keep a closed process readable for ``closed_process_retention`` seconds."""
        self._scheduler.call_later(self._config.closed_process_retention, lambda: self._forget(process))

    def _forget(self, process: ManagedProcess) -> None:
        with self._lock:
            if self._processes.get(process.process_id) is process:
                del self._processes[process.process_id]
        process.discard_output()

    def wake_readers(self) -> None:
        for process in self.processes():
            process.wake()

    def close(self) -> List[ManagedProcess]:
        """Mark closed and kill every process group; returns the processes."""
        with self._lock:
            self._closed = True
            self._send = None
            self._owner = None
            processes = list(self._processes.values())
        for process in processes:
            process.kill_tree()
        for process in processes:
            process.discard_output()
            process.wake()
        return processes


def _new_spool_store(config: ServerConfig) -> SpoolStore:
    """The registry's spool store; its module (with the output code) loads with the first process (#17)."""
    from exec_server.server.process.spool import SpoolStore
    return SpoolStore(config.spool_dir, config.spool_bytes_per_process, config.spool_bytes_total,
                      config.spool_chunks_per_process)


class SessionRegistry:
    """All sessions of a server, under one lock.  Thread-safe.

    Lock order: the registry lock may be held while taking a session's lock,
    never the other way round.
    """

    def __init__(self, config: ServerConfig, scheduler: Optional[Scheduler] = None,
                 spool_store: Optional[SpoolStore] = None):
        self.config = config
        self.scheduler = scheduler or Scheduler()
        self._spool_store: FirstUse[SpoolStore] = FirstUse(lambda: _new_spool_store(config),
                                                           lambda store: store.close(), spool_store)
        self._lock = threading.Lock()
        self._sessions: Dict[str, Session] = {}
        self._expiry: Dict[str, object] = {}

    @property
    def spool_store(self) -> SpoolStore:
        """The output spool of every process of the server (its directory and shared budget), made on first use."""
        return self._spool_store.get()

    def spool_for(self, process_id: str) -> Callable[[], Optional[Spool]]:
        """What gives process ``process_id`` its spool, made when its output first passes memory."""
        store = self._spool_store
        return lambda: store.get().spool("process %s" % process_id)

    def create(self) -> Session:
        """A new session with a UUID4 id.

        At ``max_sessions``, the detached session that has waited longest
        with no running process is dropped to make room (as if its TTL had
        ended; a resume of it then answers ``unknown session id``).

        Raises:
            InvalidRequest: ``max_sessions`` sessions exist and each is
                attached or has a running process.
        """
        session = Session(random_uuid(), self.config, self.scheduler)
        evicted = None
        with self._lock:
            if len(self._sessions) >= self.config.max_sessions:
                evicted = self._evict_idle_detached_locked()
                if evicted is None:
                    raise InvalidRequest(
                        "too many sessions on this exec-server (limit %d)" % self.config.max_sessions)
            self._sessions[session.session_id] = session
        if evicted is not None:
            log.info("idle detached session dropped for a new one", extra=telemetry.log_fields())
            evicted.close()
        return session

    def _evict_idle_detached_locked(self) -> Optional[Session]:
        for session_id in self._expiry:  # in the order the sessions detached
            candidate = self._sessions[session_id]
            if candidate.is_idle() and candidate.mark_closed_if_detached():
                del self._sessions[session_id]
                timer = self._expiry.pop(session_id)
                if hasattr(timer, "cancel"):
                    timer.cancel()
                return candidate
        return None

    def get(self, session_id: str) -> Optional[Session]:
        with self._lock:
            return self._sessions.get(session_id)

    def snapshot(self) -> List[Session]:
        with self._lock:
            return list(self._sessions.values())

    def resume(self, session_id: str, owner: object, send: Send, probe_timeout: float = 0.0) -> Session:
        """Reattach a detached session to ``owner`` (``initialize {resumeSessionId}``).

        When another connection holds the session and ``probe_timeout`` is
        set, that connection is probed (its ``probe(timeout)``, outside the
        lock; at most ``probe_timeout`` seconds on the caller's thread): one
        that stays silent is closed, which detaches the session, and the
        resume goes on.

        Raises:
            InvalidRequest: ``unknown session id <id>`` (unknown, expired or empty).
            SessionAlreadyAttached: another, live, connection holds the session (-32010).
        """
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise InvalidRequest("unknown session id %s" % session_id)
            attached = session.attach_if_free(owner, send)
            holder = None if attached else session.holder()
            timer = self._expiry.pop(session_id, None) if attached else None
        if not attached:
            probe = getattr(holder, "probe", None)
            if probe_timeout > 0 and probe is not None and not probe(probe_timeout):
                return self.resume(session_id, owner, send)  # the silent holder is gone now
            raise SessionAlreadyAttached("session %s is already attached to another connection" % session_id)
        if hasattr(timer, "cancel"):  # not the placeholder detached() stores while it schedules the timer
            timer.cancel()
        log.info("session resumed", extra=telemetry.log_fields())
        return session

    def detached(self, session: Session) -> None:
        """The session's connection ended: start its TTL (PROTOCOL.md 7)."""
        token = object()
        with self._lock:
            if self._sessions.get(session.session_id) is not session:
                return
            self._expiry[session.session_id] = token
        timer = self.scheduler.call_later(self.config.detached_session_ttl,
                                          lambda: self._expire(session, token))
        with self._lock:
            if self._expiry.get(session.session_id) is token:
                self._expiry[session.session_id] = timer
            else:
                timer.cancel()
        log.info("session detached", extra=telemetry.log_fields())

    def _expire(self, session: Session, token: object) -> None:
        with self._lock:
            current = self._expiry.get(session.session_id)
            if current is None or self._sessions.get(session.session_id) is not session:
                return
            if not session.mark_closed_if_detached():
                return
            del self._sessions[session.session_id]
            del self._expiry[session.session_id]
        log.info("session expired", extra=telemetry.log_fields(processes=len(session.processes())))
        session.close()

    def close(self, session: Session) -> None:
        """Remove the session and kill its processes."""
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]
            timer = self._expiry.pop(session.session_id, None)
        if hasattr(timer, "cancel"):
            timer.cancel()
        session.close()

    def kill_all(self, join_timeout: float) -> None:
        """Kill the trees of every session, sessions kept, and wait until each killed process's ``exited``
        and ``closed`` are published (to its attached client, if any): ``join_timeout`` s in all, kills
        included (the trees not reached by then are left to :meth:`close_all`)."""
        deadline = time.monotonic() + join_timeout
        killed = []
        for process in [process for session in self.snapshot() for process in session.processes()]:
            if time.monotonic() >= deadline:
                break
            process.kill_tree()
            killed.append(process)
        for process in killed:
            process.join(max(0.0, deadline - time.monotonic()))

    def close_all(self, join_timeout: float = 2.0) -> None:
        """Close every session (every tree killed), then wait up to ``join_timeout`` s in all for their threads."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        processes: List[ManagedProcess] = []
        for session in sessions:
            processes.extend(session.close())
        deadline = time.monotonic() + join_timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        self.scheduler.stop(max(0.0, deadline - time.monotonic()))
        self._spool_store.close()
