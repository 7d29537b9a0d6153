"""Recovery of a dropped connection: ReconnectPolicy, reconnect, resume, catch-up.

One logical client outlives its connections (``codex-rs/exec-server/src/
client_recovery.rs``): when a connection drops, the client is *recovering*:
it reconnects, resumes its session with ``initialize {resumeSessionId}``
(retrying -32010 while the server finishes detaching), re-sends the reads and
writes that were in flight, and is *connected* again.  Calls made meanwhile
wait.  Other mutations that were in flight fail with
:class:`RequestOutcomeUnknown` and are never replayed, except a
``process/start`` (:func:`start_once`).  If recovery does not succeed within
the policy's deadline, or the server no longer knows the session, the client
is *failed*.  Then, on a thread of its own, every process is caught up with
``process/read`` from its last published seq: calls go on meanwhile, and a
process's events wait for its catch-up (the live ones held behind it), and
the processes take turns, so a slow link, or a server that keeps answering,
never holds the client past its deadline, nor one process the others.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from exec_server.client.endpoint import RECOVERING, Endpoint, Pending
from exec_server.client.catch_up import CATCH_UP_FIRST_READ_BYTES, CatchUp
from exec_server.client.interfaces import (TOO_LARGE_HINTS, CallTimeout, FreshId, RequestOutcomeUnknown,  # noqa: F401
                                           RequestTooLarge)
from exec_server.client.transport import KEEPALIVE_TIMEOUT, PING_INTERVAL, PROBE_TIMEOUT, Connector
from exec_server.client.transport import abort as abort_transport
from exec_server.common import telemetry
from exec_server.common.durations import check_seconds
from exec_server.protocol.errors import (ExecServerDisconnected, InvalidRequest, RpcError,
                                         SessionAlreadyAttached)
from exec_server.protocol.jsonrpc import TraceContext, utf8_size

log = logging.getLogger(__name__)

#: Methods that are safe to send again after a dropped connection: the reads, and ``process/write``, whose
#: ``writeId`` the server remembers (the last 4096 per process, PROTOCOL.md 5.5): a write applied before
#: the drop is answered ``accepted`` again and nothing is written twice.
IDEMPOTENT_METHODS = frozenset({
    "process/read", "environment/info", "environment/status", "fs/readFile", "fs/getMetadata",
    "fs/readDirectory", "fs/canonicalize", "fs/walk", "process/write",
})


def start_once(call: Callable[..., Any], params: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
    """``process/start`` with ``params`` through ``call`` (:meth:`Client.call`), exactly once across drops.

    A start whose connection dropped before the answer is sent again on the
    recovered connection with the same ``processId``: the server starts it
    then, or answers ``process <id> already exists`` (PROTOCOL.md 5.1) when
    the first one did.  For a :class:`FreshId` that counts as started (its
    result, and so its ``sandboxType``, is then unknown: ``{}``); an id the
    caller chose may have been in use before, so then the outcome stays unknown.

    Raises:
        as :meth:`Client.call`; RequestOutcomeUnknown only for a caller's id
        that the server has after a drop.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    resent = False
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return call("process/start", params, timeout=left)
        except CallTimeout:
            if not resent:
                raise
            raise CallTimeout("process/start", timeout) from None  # the time the caller gave, not what was left
        except RequestOutcomeUnknown:
            resent = True
        except InvalidRequest as exc:
            if not (resent and exc.message.endswith("already exists")):
                raise
            if isinstance(params["processId"], FreshId):
                return {}
            raise RequestOutcomeUnknown("process/start: the connection dropped before the answer, and the server "
                                        "now has a process %s: this start, or an earlier one of that id"
                                        % params["processId"]) from None


@dataclass(frozen=True)
class ReconnectPolicy:
    """How the client recovers a dropped connection (one immutable value).

    Attributes:
        deadline: seconds from the drop until recovery gives up (keep it
            below the server's detached-session TTL, 80 s by default).
        initial_backoff: seconds before the second connect attempt.
        max_backoff: cap of the doubling backoff between attempts, seconds.
        attached_retry_interval: seconds between resumes answered -32010
            (the server has not finished detaching the old connection).
        connect_timeout: seconds for one connect + handshake attempt, and
            for each catch-up read after it (more than 0).
        ping_interval: seconds without anything from the server before the
            client sends a WebSocket Ping (0: never).
        keepalive_timeout: seconds without anything from the server (no
            frame, no Pong) after which the connection is dead and recovery
            starts (0: never; must exceed ``ping_interval``).
        probe_timeout: when a call or wait times out on a connection quiet
            for a second, a Ping is sent and the connection is dead unless
            something arrives within this many seconds (0: no probe).
    """

    deadline: float = 25.0
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    attached_retry_interval: float = 0.1
    connect_timeout: float = 5.0
    ping_interval: float = PING_INTERVAL
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    probe_timeout: float = PROBE_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("deadline", "initial_backoff", "max_backoff", "attached_retry_interval", "connect_timeout",
                     "ping_interval", "keepalive_timeout", "probe_timeout"):
            check_seconds(getattr(self, name), name)
        check_seconds(self.connect_timeout, "connect_timeout", positive=True)
        if self.keepalive_timeout and self.ping_interval and self.keepalive_timeout <= self.ping_interval:
            raise ValueError("keepalive_timeout must exceed ping_interval")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return min(self.max_backoff, self.initial_backoff * 2.0 ** min(attempt, 64))  # no float overflow


#: Seconds a resumed connection must stay up after its catch-up for the backoff of the next recovery to start
#: again from ``initial_backoff`` (see :class:`Recovery`).
STABLE_AFTER = 1.0

#: RFC 6455's close code "message too big" (common.websocket's, which would load wsproto over stdio too).
CLOSE_MESSAGE_TOO_BIG = 1009


def _refused_as_too_big(transport: Any, lost: List[Pending]) -> Optional[Pending]:
    """The request a 1009 Close refused: the largest of ``lost``, the requests in flight.

    A server refuses the first message over its limit and reads no further,
    so whichever request was the culprit, the largest one in flight is over
    the limit too and was never applied.  None without a 1009 Close.
    """
    if getattr(transport, "close_code", None) != CLOSE_MESSAGE_TOO_BIG or not lost:
        return None
    return max(lost, key=lambda pending: utf8_size(pending.text))


#: How often (seconds) the recovery thread looks for a close while a connect it waits for goes on.
CONNECT_POLL_INTERVAL = 0.05


class _Connect:
    """One ``connector(timeout)`` on a thread of its own, so that the recovery keeps its deadline.

    The connector calls the user's token callable, which may block (a token
    service that stopped answering) and is bounded by nothing of ours, and
    resolves a host name (a DNS server that does not answer): run on the
    recovery thread, either held the client ``recovering`` past the policy's
    deadline, and past a ``close()``.  A transport that arrives after the
    recovery gave up on it is closed.
    """

    def __init__(self, connector: Connector, timeout: float):
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None  # the transport, or the exception the connector raised
        self._abandoned = False
        threading.Thread(target=self._run, args=(connector, timeout), name="exec-server-client-connect",
                         daemon=True).start()

    def _run(self, connector: Connector, timeout: float) -> None:
        try:
            result: Any = connector(timeout)
        except BaseException as exc:  # raised again on the recovery thread (KeyboardInterrupt too)
            result = exc
        with self._lock:
            self._result, abandoned = result, self._abandoned
            self._done.set()
        if abandoned and not isinstance(result, BaseException):
            result.close()

    def within(self, deadline: float, endpoint: Endpoint) -> Any:
        """The new transport, waited for until the monotonic ``deadline`` or the endpoint's leaving ``recovering``.

        Raises:
            ExecServerDisconnected: the connect did not end by then (it is abandoned), or as the connector.
            Exception: what else the connector raised.
        """
        while not self._done.wait(max(0.0, min(CONNECT_POLL_INTERVAL, deadline - time.monotonic()))):
            if endpoint.state != RECOVERING or time.monotonic() >= deadline:
                with self._lock:
                    if not self._done.is_set():
                        self._abandoned = True
                        raise ExecServerDisconnected("the connect (its token callable included) did not end in "
                                                     "time")
                break
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result


class Recovery:
    """Recovers one session's endpoint; installed as its ``on_lost`` handler once the session exists.

    Args:
        endpoint: the client's endpoint.
        policy: deadline and backoff.
        connector: opens a new transport (``connector(timeout_seconds)``).
        client_name: sent as ``clientName`` with the resume.
        session_id: the session to resume.
    """

    def __init__(self, endpoint: Endpoint, policy: ReconnectPolicy, connector: Connector, client_name: str,
                 session_id: str):
        self._endpoint = endpoint
        self._policy = policy
        self._connector = connector
        self._client_name = client_name
        self._session_id = session_id
        self._read_bytes = CATCH_UP_FIRST_READ_BYTES  # the next catch-up read's maxBytes
        # One outage spans every drop until a resumed connection has worked: answered a call after the resume
        # or carried output.  A server that accepts each resume and drops again before that (at the catch-up's
        # first read) gets the deadline of one recovery, not a fresh one per drop (a hot reconnect loop without
        # end); the outage's clock stands still while such a connection is up.  The backoff goes on growing
        # until a resumed connection has caught up and stayed up STABLE_AFTER s.
        self._lock = threading.Lock()  # the fields below: the reader, recovery and catch-up threads use them
        self._outage_deadline: Optional[float] = None  # None: no outage yet
        self._attempt = 0  # the next attempt's number in the outage (its backoff)
        self._resumed: Optional[Tuple[int, float, int, Dict[str, int]]] = None  # generation, when, answers, seqs
        self._caught_up_at: Optional[float] = None

    def connection_lost(self, generation: int, lost: List[Pending]) -> None:
        """Fail the mutations that were in flight, then recover on a thread of its own.

        Called by the endpoint, on the reader thread of the transport that
        ended, after it entered ``recovering``.
        """
        refused = _refused_as_too_big(self._endpoint.transport, lost)
        for pending in lost:
            if pending is refused:
                self._endpoint.abandon(pending, RequestTooLarge(
                    "%s: the server closed the connection with 1009 (message too big) on this %d-byte request; it "
                    "was not applied%s" % (pending.method, utf8_size(pending.text), TOO_LARGE_HINTS.get(
                        pending.method, ""))))
            elif not pending.recoverable:  # a catch-up read of this connection: the next recovery reads again
                self._endpoint.abandon(pending, ExecServerDisconnected("the connection dropped"))
            elif pending.method not in IDEMPOTENT_METHODS:
                self._endpoint.abandon(pending, RequestOutcomeUnknown(
                    "%s: the connection dropped before the answer; it may or may not have been applied"
                    % pending.method))
        self._outage_begins()
        log.info("exec-server connection lost; recovering session %s", self._session_id)
        threading.Thread(target=self._recover_or_fail, name="exec-server-client-recovery", daemon=True).start()

    def _outage_begins(self) -> None:
        """The deadline and backoff of the recovery this drop starts: a new outage's, or the last one's going on
        (see ``__init__``).  On the reader thread of the connection that dropped."""
        processes = self._endpoint.open_processes()
        with self._lock:
            now, resumed, caught_up_at = time.monotonic(), self._resumed, self._caught_up_at
            self._resumed = self._caught_up_at = None
            if self._outage_deadline is None or resumed is None:  # the first drop (or no resume: cannot be)
                self._outage_deadline, self._attempt = now + self._policy.deadline, 0
                return
            _generation, resumed_at, answers, seqs = resumed
            worked = self._endpoint.answers > answers or any(
                process.last_seq > seqs.get(process.process_id, process.last_seq) for process in processes)
            if caught_up_at is not None and now - caught_up_at >= STABLE_AFTER:
                self._outage_deadline, self._attempt = now + self._policy.deadline, 0
            elif worked:  # a new outage, whose backoff goes on from the last one's
                self._outage_deadline = now + self._policy.deadline
            else:  # the same outage: its clock stood still while the connection was up
                self._outage_deadline += now - resumed_at

    def _recover_or_fail(self) -> None:
        """:meth:`_recover`, and if it raises, the client fails instead of staying ``recovering``."""
        try:
            self._recover()
        except Exception as exc:  # a defect: say so, and release every waiter with its cause
            log.exception("exec-server client recovery failed")
            self._endpoint.fail(ExecServerDisconnected("exec-server connection lost; recovery failed: %r" % exc))

    def _recover(self) -> None:
        endpoint, policy = self._endpoint, self._policy
        with self._lock:
            deadline, attempt = self._outage_deadline or time.monotonic() + policy.deadline, self._attempt
        last_error: Optional[BaseException] = None
        if attempt:  # a drop soon after a resume: the backoff (and maybe the outage) goes on
            last_error = ExecServerDisconnected("the session was resumed, but the connection dropped again")
            self._pause(min(policy.backoff(attempt - 1), max(0.0, deadline - time.monotonic())))
        while True:
            if endpoint.state != RECOVERING:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                endpoint.fail(ExecServerDisconnected(
                    "exec-server connection lost and not recovered within %.1f s: %s" % (policy.deadline, last_error)))
                return
            try:
                connect = _Connect(self._connector, min(policy.connect_timeout, remaining))
                transport = connect.within(deadline, endpoint)
            except ExecServerDisconnected as exc:
                last_error = exc
                attempt = self._back_off(attempt, deadline)
                continue
            try:
                generation = endpoint.attach(transport)
            except ExecServerDisconnected:
                return  # closed while connecting: attach closed the new transport
            try:
                with telemetry.client_call("initialize") as carrier:
                    result = endpoint.call_on(generation, "initialize",
                                              {"clientName": self._client_name, "resumeSessionId": self._session_id},
                                              min(policy.connect_timeout, max(0.01, deadline - time.monotonic())),
                                              trace=TraceContext.of(carrier))
                resumed = result.get("sessionId") if isinstance(result, dict) else None
                if resumed != self._session_id:  # a new session (or none): it owns none of our processes
                    raise InvalidRequest("the server answered the resume of session %s with session %r"
                                         % (self._session_id, resumed))
                endpoint.notify_on(generation, "initialized", {})
            except SessionAlreadyAttached as exc:
                last_error = exc
                transport.close()
                self._pause(policy.attached_retry_interval)
                continue
            except InvalidRequest as exc:
                transport.close()
                endpoint.fail(ExecServerDisconnected("exec-server session cannot be resumed: %s" % exc.message))
                return
            except (ExecServerDisconnected, TimeoutError, RpcError) as exc:
                last_error = exc
                if isinstance(exc, TimeoutError):
                    abort_transport(transport)  # a silent server gets no closing handshake
                else:
                    transport.close()
                attempt = self._back_off(attempt, deadline)
                continue
            with self._lock:  # before the state is connected: a drop from then on finds them
                self._attempt = attempt + 1  # the backoff of the next attempt, if this outage goes on
                self._resumed = (generation, time.monotonic(), endpoint.answers,
                                 {process.process_id: process.last_seq for process in endpoint.open_processes()})
            if not endpoint.resend_in_flight(generation) or not endpoint.recovered(generation):
                transport.close()  # the new connection dropped too: another round, after the backoff
                last_error = ExecServerDisconnected("the resumed connection dropped")
                attempt = self._back_off(attempt, deadline)
                continue
            log.info("exec-server session %s recovered", self._session_id)
            threading.Thread(target=self._catch_up_in_background, args=(generation,),
                             name="exec-server-client-catch-up", daemon=True).start()
            return

    def _catch_up_in_background(self, generation: int) -> None:
        """The :class:`~exec_server.client.catch_up.CatchUp` after the recovery, on a thread of its own.

        If the connection drops, the next recovery's catch-up reads on from each process's last seq.
        """
        catch_up = CatchUp(self._endpoint, generation, self._read_bytes, self._policy.connect_timeout,
                           self._policy.probe_timeout)
        try:
            done = catch_up.run()
            # where the next recovery's reads start: the first size again once this one is done (the link may
            # differ then); else what this one learned of the link
            self._read_bytes = CATCH_UP_FIRST_READ_BYTES if done else catch_up.read_bytes
            with self._lock:
                if done and self._resumed is not None and self._resumed[0] == generation:  # not dropped since
                    self._caught_up_at = time.monotonic()
        except Exception as exc:  # a defect: say so, and release every waiter with its cause
            log.exception("exec-server client catch-up failed")
            self._endpoint.fail(ExecServerDisconnected("exec-server catch-up after a reconnect failed: %r" % exc))

    def _back_off(self, attempt: int, deadline: float) -> int:
        """Wait the policy's backoff after failed attempt ``attempt`` (not past ``deadline``); the next attempt."""
        self._pause(min(self._policy.backoff(attempt), max(0.0, deadline - time.monotonic())))
        return attempt + 1

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts, or less: a ``close()`` (or a failure) ends the wait at once."""
        try:
            self._endpoint.wait_usable(time.monotonic() + seconds, "reconnect")
        except (CallTimeout, ExecServerDisconnected):  # still recovering, or ended: the loop's state check decides
            pass
