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
from typing import Any, Callable, Dict, List, Optional

from exec_server.client.endpoint import RECOVERING, Endpoint, Pending
from exec_server.client.interfaces import CallTimeout, ProcessHandle
from exec_server.client.process import ProcessOutputGap
from exec_server.client.transport import KEEPALIVE_TIMEOUT, PING_INTERVAL, PROBE_TIMEOUT, Connector
from exec_server.client.transport import abort as abort_transport
from exec_server.common.durations import check_seconds
from exec_server.protocol.errors import (ExecServerDisconnected, ExecServerError, InvalidRequest, RpcError,
                                         SessionAlreadyAttached)
from exec_server.protocol.jsonrpc import utf8_size

log = logging.getLogger(__name__)

#: Most decoded bytes one ``process/read`` of a catch-up asks for: the server
#: may hold far more than fits one message (output spooled to disk), so the
#: client reads in budgeted steps until it meets the live notifications.
CATCH_UP_READ_BYTES = 1024 * 1024
#: Decoded bytes the first catch-up read of a recovery asks for; each later
#: read is sized to the link by :func:`next_read_bytes`.
CATCH_UP_FIRST_READ_BYTES = 64 * 1024
#: Fewest decoded bytes a catch-up read asks for.  A read always returns at
#: least one whole chunk (up to 64 KiB from our server, 8 KiB from the
#: reference), so with the default 5 s the link must carry ~18 KB/s (~4.4 from the reference).
CATCH_UP_MIN_READ_BYTES = 16 * 1024
#: Share of ``ReconnectPolicy.connect_timeout`` (each read's timeout) one catch-up read aims to take.
CATCH_UP_READ_SHARE = 0.25

#: Methods that are safe to send again after a dropped connection: the reads, and ``process/write``, whose
#: ``writeId`` the server remembers (the last 4096 per process, PROTOCOL.md 5.5): a write applied before
#: the drop is answered ``accepted`` again and nothing is written twice.
IDEMPOTENT_METHODS = frozenset({
    "process/read", "environment/info", "environment/status", "fs/readFile", "fs/getMetadata",
    "fs/readDirectory", "fs/canonicalize", "fs/walk", "process/write",
})


class RequestOutcomeUnknown(ExecServerError):
    """A mutating request was sent but its connection dropped before the answer.

    The server may or may not have applied it; the client never re-sends it.
    Check the state (e.g. ``process/read``) before deciding to retry.
    """


class RequestTooLarge(ExecServerError):
    """The server closed the connection with 1009 (message too big) on this request: it was not applied.

    Sending it again fails the same way; the limit is the server's (ours:
    ``--max-message-bytes``, 128 MiB by default).  The client recovers the
    connection as after any drop.
    """


class FreshId(str):
    """A ``processId`` this client made up (random): no other start can have used it."""


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
        return min(self.max_backoff, self.initial_backoff * (2 ** attempt))


def next_read_bytes(asked: int, got: int, elapsed: float, timeout: float, full: bool) -> int:
    """The ``maxBytes`` (decoded bytes) of the next catch-up read, from how the last one went.

    Each read aims at :data:`CATCH_UP_READ_SHARE` of its ``timeout``
    (seconds): the next asks for what the link carried in that share, at
    most four times as much as this one, and more only after a ``full``
    read (one its budget cut short: the output went on).  Always within
    :data:`CATCH_UP_MIN_READ_BYTES` and :data:`CATCH_UP_READ_BYTES`.

    Args:
        asked: the last read's ``maxBytes``.
        got: decoded bytes it returned.
        elapsed: seconds it took.
        timeout: seconds each read may take.
        full: whether the budget, not the end of the output, ended it.
    """
    target = timeout * CATCH_UP_READ_SHARE
    carried = got * target / elapsed if elapsed > 0 else float("inf")  # in the share, at this read's rate
    if elapsed > target:
        size = carried
    elif full:
        size = min(asked * 4, carried)
    else:
        size = asked
    return int(max(CATCH_UP_MIN_READ_BYTES, min(CATCH_UP_READ_BYTES, size)))


#: RFC 6455's close code "message too big" (common.websocket's, which would load wsproto over stdio too).
CLOSE_MESSAGE_TOO_BIG = 1009
#: method -> what to do instead when its request is too large for the server
_TOO_LARGE_HINTS = {"fs/writeFile": " (write a large file in parts: fs.open(path, \"replace\"))",
                    "process/write": " (write stdin in smaller pieces)"}


def _refused_as_too_big(transport: Any, lost: List[Pending]) -> Optional[Pending]:
    """The request a 1009 Close refused: the largest of ``lost``, the requests in flight.

    A server refuses the first message over its limit and reads no further,
    so whichever request was the culprit, the largest one in flight is over
    the limit too and was never applied.  None without a 1009 Close.
    """
    if getattr(transport, "close_code", None) != CLOSE_MESSAGE_TOO_BIG or not lost:
        return None
    return max(lost, key=lambda pending: utf8_size(pending.text))


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
                    "was not applied%s" % (pending.method, utf8_size(pending.text), _TOO_LARGE_HINTS.get(
                        pending.method, ""))))
            elif not pending.recoverable:  # a catch-up read of this connection: the next recovery reads again
                self._endpoint.abandon(pending, ExecServerDisconnected("the connection dropped"))
            elif pending.method not in IDEMPOTENT_METHODS:
                self._endpoint.abandon(pending, RequestOutcomeUnknown(
                    "%s: the connection dropped before the answer; it may or may not have been applied"
                    % pending.method))
        log.info("exec-server connection lost; recovering session %s", self._session_id)
        threading.Thread(target=self._recover_or_fail, name="exec-server-client-recovery", daemon=True).start()

    def _recover_or_fail(self) -> None:
        """:meth:`_recover`, and if it raises, the client fails instead of staying ``recovering``."""
        try:
            self._recover()
        except Exception as exc:  # a defect: say so, and release every waiter with its cause
            log.exception("exec-server client recovery failed")
            self._endpoint.fail(ExecServerDisconnected("exec-server connection lost; recovery failed: %r" % exc))

    def _recover(self) -> None:
        endpoint, policy = self._endpoint, self._policy
        deadline = time.monotonic() + policy.deadline
        attempt = 0
        last_error: Optional[BaseException] = None
        while True:
            if endpoint.state != RECOVERING:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                endpoint.fail(ExecServerDisconnected(
                    "exec-server connection lost and not recovered within %.1f s: %s" % (policy.deadline, last_error)))
                return
            try:
                transport = self._connector(min(policy.connect_timeout, remaining))
            except ExecServerDisconnected as exc:
                last_error = exc
                attempt = self._back_off(attempt, deadline)
                continue
            try:
                generation = endpoint.attach(transport)
            except ExecServerDisconnected:
                return  # closed while connecting: attach closed the new transport
            try:
                endpoint.call_on(generation, "initialize",
                                 {"clientName": self._client_name, "resumeSessionId": self._session_id},
                                 min(policy.connect_timeout, max(0.01, deadline - time.monotonic())))
                endpoint.notify_on(generation, "initialized", {})
            except SessionAlreadyAttached as exc:
                last_error = exc
                transport.close()
                time.sleep(policy.attached_retry_interval)
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
        """:meth:`_catch_up` after the recovery, on a thread of its own: calls go on meanwhile.

        If the connection drops, the next recovery's catch-up reads on from each process's last seq.
        """
        try:
            if self._catch_up(generation):
                self._read_bytes = CATCH_UP_FIRST_READ_BYTES  # the link may differ at the next recovery
        except Exception as exc:  # a defect: say so, and release every waiter with its cause
            log.exception("exec-server client catch-up failed")
            self._endpoint.fail(ExecServerDisconnected("exec-server catch-up after a reconnect failed: %r" % exc))

    def _back_off(self, attempt: int, deadline: float) -> int:
        """Sleep the policy's backoff after failed attempt ``attempt`` (not past ``deadline``); the next attempt."""
        time.sleep(min(self._policy.backoff(attempt), max(0.0, deadline - time.monotonic())))
        return attempt + 1

    def _catch_up(self, generation: int) -> bool:
        """Read every open process from its last published seq on ``generation``; False if that connection dropped.

        The processes take turns, one read each, so one with much missed
        output (or a server that keeps answering for it) does not hold up
        the others.  Each is read until a read returns no chunks or what it
        returned joined the live notifications held meanwhile (the session
        was resumed before the first read, so everything after a read's
        snapshot also arrives live; duplicates are dropped).  The reads are
        sized to the link (:func:`next_read_bytes`), and each must end within
        ``connect_timeout``: one that does not is made again a quarter as
        large (the call's timeout also has the connection probed, so a dead
        one ends and recovers); past :data:`CATCH_UP_MIN_READ_BYTES` without
        an answer, that process fails (``ExecServerDisconnected``), as a
        refill read does.
        """
        pending = list(self._endpoint.open_processes())
        while pending:
            for process in list(pending):
                step = self._catch_up_step(generation, process)
                if step is None:
                    return False
                if not step:
                    pending.remove(process)
        return True

    def _catch_up_step(self, generation: int, process: ProcessHandle) -> Optional[bool]:
        """One catch-up read of ``process``: True if another should follow, False if it is caught up (or
        failed), None if the connection dropped."""
        endpoint, timeout = self._endpoint, self._policy.connect_timeout
        before, asked = process.last_seq, self._read_bytes
        params = {"processId": process.process_id, "afterSeq": before, "maxBytes": asked, "waitMs": 0}
        started = time.monotonic()
        try:
            result = endpoint.call_on(generation, "process/read", params, timeout)
        except ExecServerDisconnected:
            return None
        except TimeoutError:
            if asked <= CATCH_UP_MIN_READ_BYTES:  # the smallest read, and still no answer
                process.fail(ExecServerDisconnected("process %s: no answer to a process/read of %d bytes within "
                                                    "%.0f s after reconnecting" % (process.process_id, asked, timeout)))
                return False
            self._read_bytes = max(CATCH_UP_MIN_READ_BYTES, asked // 4)
            return True
        except RpcError as exc:
            if process.started:  # else its start is not answered yet: the server may not know it
                process.fail(ExecServerDisconnected("process %s is gone after reconnecting: %s"
                                                    % (process.process_id, exc.message)))
            return False
        try:
            missing = process.catch_up(result)
        except ValueError as exc:  # the server's answer cannot be published: like a gap
            failure: Optional[BaseException] = ExecServerDisconnected(
                "process %s cannot be recovered: exec-server sent a %s" % (process.process_id, exc))
        else:
            failure = ProcessOutputGap(process.process_id, missing) if missing else None
        if failure is not None:
            process.fail(failure)
            try:
                endpoint.call("process/terminate", {"processId": process.process_id}, timeout)
            except (ExecServerError, TimeoutError, RpcError):
                pass
            return False
        chunks = result.get("chunks")
        sizes = [len(chunk.get("chunk") or "") * 3 // 4 for chunk in chunks or ()]  # decoded, about
        got = sum(sizes)
        full = bool(sizes) and got + max(sizes) > asked  # a chunk like these would have passed the budget
        self._read_bytes = next_read_bytes(asked, got, time.monotonic() - started, timeout, full)
        # nothing new (a server repeating itself ends it too), or it joined the live notifications
        return not (not chunks or process.done or process.last_seq > chunks[-1]["seq"] or process.last_seq <= before)
