"""The session registry: every session of a server, with detach, resume and expiry.

The registry has one lock with short critical sections (add, get, pop,
snapshot); processes are killed and notifications sent outside it.  A
session itself (its processes and attached send) is
:class:`~exec_server.server.session.Session`.

A detached session lives for ``detached_session_ttl`` seconds; a resume
within it reattaches it (same id, same processes), and at its end every
process group of the session is killed.  Resume and expiry both decide
under the registry lock, so exactly one of them wins.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from exec_server.common import telemetry
from exec_server.server.config import ServerConfig
from exec_server.protocol.errors import InvalidRequest, SessionAlreadyAttached
from exec_server.protocol.wire import Send
from exec_server.server.first_use import FirstUse
from exec_server.server.scheduler import Scheduler
from exec_server.server.session import Session

if TYPE_CHECKING:  # the process code loads with the first process/* request (handlers/__init__.py)
    from exec_server.server.process.managed import ManagedProcess
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
        self._expiry: Dict[str, _Expiry] = {}  # detached sessions' pending expiries, in the order they detached

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

        At ``max_sessions``, a detached session with no running process is
        dropped to make room (as if its TTL had ended; a resume of it then
        answers ``unknown session id``): one that keeps no process at all
        if there is one (its client can lose nothing), else the one whose
        processes' output and status its client may still want to read;
        each time the one detached longest.

        Raises:
            InvalidRequest: ``max_sessions`` sessions exist and each is
                attached or has a running process.
        """
        session = Session(random_uuid(), self.config, self.scheduler)
        session.span_context = telemetry.current_span_context()
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
        """The detached session to drop: one that keeps no process first (nothing its client could still
        read), else one whose processes have all ended; each the one detached longest."""
        for keeps_nothing in (True, False):
            for session_id in self._expiry:  # in the order the sessions detached
                candidate = self._sessions[session_id]
                if not (candidate.is_empty() if keeps_nothing else candidate.is_idle()):
                    continue
                if candidate.mark_closed_if_detached():
                    del self._sessions[session_id]
                    self._expiry.pop(session_id).cancel()
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
            expiry = self._expiry.pop(session_id, None) if attached else None
        if not attached:
            probe = getattr(holder, "probe", None)
            if probe_timeout > 0 and probe is not None and not probe(probe_timeout):
                return self.resume(session_id, owner, send)  # the silent holder is gone now
            raise SessionAlreadyAttached("session %s is already attached to another connection" % session_id)
        if expiry is not None:
            expiry.cancel()
        session.span_context = telemetry.current_span_context()
        log.info("session resumed", extra=telemetry.log_fields(session.span_context))
        return session

    def detached(self, session: Session) -> None:
        """The session's connection ended: start its TTL (PROTOCOL.md 7).

        Nothing if a resume has attached it again meanwhile (the connection
        detaches the session, then calls this); a pending expiry of an
        earlier detach is replaced, so only the latest one's timer can end it.
        """
        expiry = _Expiry()
        with self._lock:
            if self._sessions.get(session.session_id) is not session or session.holder() is not None:
                return
            earlier = self._expiry.pop(session.session_id, None)
            self._expiry[session.session_id] = expiry
        if earlier is not None:
            earlier.cancel()
        expiry.start(self.scheduler.call_later(self.config.detached_session_ttl,
                                               lambda: self._expire(session, expiry)))
        log.info("session detached", extra=telemetry.log_fields(session.span_context))

    def _expire(self, session: Session, expiry: "_Expiry") -> None:
        with self._lock:
            if self._expiry.get(session.session_id) is not expiry:
                return  # resumed, dropped or detached again since this timer was set
            if self._sessions.get(session.session_id) is not session:
                return
            if not session.mark_closed_if_detached():
                return
            del self._sessions[session.session_id]
            del self._expiry[session.session_id]
        log.info("session expired",
                 extra=telemetry.log_fields(session.span_context, processes=len(session.processes())))
        session.close()

    def close(self, session: Session) -> None:
        """Remove the session and kill its processes."""
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]
            expiry = self._expiry.pop(session.session_id, None)
        if expiry is not None:
            expiry.cancel()
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
            process.kill_tree(scan_marked=False)
            killed.append(process)
        markers = [process.marker for process in killed if process.marker is not None]
        if markers:  # inherit mode's marked jobs, all in one scan (one per process took ~6 s for 1000)
            from exec_server.server.process.marked import kill_marked

            kill_marked(*markers)
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


class _Expiry:
    """A detached session's pending expiry: its timer, which :meth:`cancel` stops even before it is set."""

    __slots__ = ("_timer", "_cancelled", "_lock")

    def __init__(self) -> None:
        self._timer: Any = None
        self._cancelled = False
        self._lock = threading.Lock()

    def start(self, timer: Any) -> None:
        """The timer is scheduled: keep it, or cancel it at once if the expiry was cancelled meanwhile."""
        with self._lock:
            self._timer = timer
            cancelled = self._cancelled
        if cancelled:
            timer.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            timer = self._timer
        if timer is not None:
            timer.cancel()
