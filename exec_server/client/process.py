"""Client-side process handles: events in seq order, bounded, and waits.

Its requests are :mod:`exec_server.client.control`'s, its ``communicate``
:mod:`exec_server.client.communicate`'s (both bases of :class:`RemoteProcess`).

A :class:`RemoteProcess` publishes ``process/output``, ``process/exited`` and
``process/closed`` strictly in seq order (PROTOCOL.md 5.3), keeping at most
``max_buffered_output`` bytes of output unconsumed: past it, its consumer
reads the rest from the server's retention (:mod:`exec_server.client.buffer`).

A handle calls the server through a :class:`~exec_server.client.interfaces.Caller`
(the client); the client's endpoint and recovery feed it through
:meth:`RemoteProcess.deliver`, :meth:`RemoteProcess.deliver_event`,
:meth:`RemoteProcess.catch_up` and :meth:`RemoteProcess.fail` (the
:class:`~exec_server.client.interfaces.ProcessHandle` interface), which are
client-internal: user code never calls them.
"""

import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence

from exec_server.client.buffer import MAX_BUFFERED_OUTPUT, REFILL_MIN_READ_BYTES, REFILL_TIMEOUT, EventBuffer
from exec_server.client.communicate import ProcessCommunicate
from exec_server.client.interfaces import CallTimeout, Caller, FreshId
from exec_server.client.interfaces import deadline as _deadline
from exec_server.client.interfaces import remaining as _remaining
from exec_server.client.events import (ClosedEvent, ExitedEvent, OutputEvent, ProcessEvent,  # noqa: F401
                                       ProcessOutputGap, StdinClosedError, StdinQueueFullError,
                                       catch_up_events, event_from_notification)
from exec_server.protocol.errors import ExecServerDisconnected, ExecServerError, InternalError, RpcError


class RemoteProcess(ProcessCommunicate):
    """A process started through :meth:`Client.start`, like ``subprocess.Popen``.

    Events are buffered in seq order until consumed by iteration,
    :meth:`next_event` or :meth:`communicate`.  Thread-safe.

    Args:
        client: what control calls go through (the :class:`Client` that started it).
        process_id: the protocol's ``processId``.
        args: the argv, for ``subprocess.TimeoutExpired`` and ``repr``.
        max_buffered_output: bytes of output kept until consumed (None: no
            limit); past it the consumer reads the rest with ``process/read``.
        stdin_writable: it was started with a writable stdin (a pipe or a PTY).
    Raises:
        ValueError: ``max_buffered_output`` is not a positive integer or None.
    """

    def __init__(self, client: Caller, process_id: str, args: List[str],
                 max_buffered_output: Optional[int] = MAX_BUFFERED_OUTPUT, stdin_writable: bool = False):
        self.client = client
        self.stdin_writable = stdin_writable
        self._writes_lock = threading.Lock()
        self._input_lock = threading.Lock()
        self.process_id = process_id
        self.args = args
        self.sandbox_type = "none"
        self.started = False  # set by Client.start once the server answered
        self._changed = threading.Condition()
        self._buffer = EventBuffer(max_buffered_output)
        self._refilling: Optional[threading.Thread] = None  # the refill thread, while one runs
        self._failure: Optional[BaseException] = None

    # ------------------------------------------------------------- events
    def _publish(self, event: ProcessEvent) -> None:
        """Accept an event from any source (bounded by ``max_buffered_output``); none once failed."""
        with self._changed:
            if self._failure is not None:
                return  # e.g. the exit of a process terminated for a gap: its waits raise the failure
            ended = self._buffer.add(event)
            self._changed.notify_all()
        if ended:
            self._release_closed()

    def _release_closed(self) -> None:
        """``closed`` was published: a handle of the client's own id (a ``FreshId``, which no other process ever
        has) leaves its client's routing table (:meth:`_release`).  One of the caller's id stays until
        ``Client.forget`` or the client's close, and with it the id: a new start of it raises ValueError, and this
        handle's ``terminate`` can never reach a later process of that id."""
        if isinstance(self.process_id, FreshId):
            self._release()

    def _release(self) -> None:
        """``closed`` was published, or the handle closed: its client stops routing to it (nothing follows
        ``closed``), so a handle its user dropped (``start`` then ``wait``) is freed with what it kept, as a
        ``Popen`` is; a consumer still holding it takes the kept events as before."""
        forget = getattr(self.client, "forget", None)
        if forget is not None:
            forget(self)

    # ------------------------------------ client-internal (ProcessHandle)
    def deliver(self, method: str, params: Dict[str, Any]) -> None:
        """Accept one ``process/output|exited|closed`` notification.

        Client-internal: called by the client's endpoint (reader thread).
        Anything else, or a notification without an integer seq, is ignored.

        Raises:
            ValueError: a ``process/output`` whose chunk is not base64 text, or a
                ``process/exited`` whose exit code is not an integer.
        """
        event = event_from_notification(method, params)
        if event is not None:
            self._publish(event)

    def deliver_event(self, event: ProcessEvent) -> None:
        """Accept one event the endpoint made from a notification (its ``process/output`` fast path).

        Client-internal, like :meth:`deliver`, which publishes the same events.
        """
        self._publish(event)

    def catch_up(self, result: Dict[str, Any]) -> Optional[Sequence[int]]:
        """Publish what a ``process/read`` from :attr:`last_seq` returned.

        Client-internal: called by the client's recovery after a reconnect.

        Returns:
            the lost seqs if the server no longer retains some (see
            :func:`~exec_server.client.events.catch_up_events`), else None.

        Raises:
            ValueError: the result is malformed; nothing of it was published.
        """
        with self._changed:
            after, exit_seen, exit_seq = self._buffer.last_seq, self._buffer.exit_published, self._buffer.exit_seq
        events, gap = catch_up_events(result, after, exit_seen, exit_seq)
        if gap is not None:
            return gap
        for event in events:
            self._publish(event)
        code = result.get("exitCode")
        if result.get("exited") and type(code) is int:  # a budget stops a read before the exit's seq: the exit
            with self._changed:  # code is known now, as a live exited past the buffer's limit makes it known
                if self._buffer.exit_code is None and self._failure is None:
                    self._buffer.exit_code = code
                    self._changed.notify_all()
        return None

    def fail(self, error: BaseException) -> None:
        """Make every current and later wait raise ``error``, unless ``closed`` was published.

        Client-internal: called by the client's endpoint when the client
        fails or closes, and by its recovery for a gap or a lost process.
        """
        with self._changed:
            if not self._buffer.closed and self._failure is None:
                self._failure = error
            self._changed.notify_all()

    @property
    def returncode(self) -> Optional[int]:
        """The exit code once ``process/exited`` arrived (consumed or not), else None."""
        with self._changed:
            return self._buffer.exit_code

    @property
    def last_seq(self) -> int:
        """Highest seq published for this process."""
        with self._changed:
            return self._buffer.last_seq

    @property
    def done(self) -> bool:
        """True once ``closed`` was published or the process failed."""
        with self._changed:
            return self._buffer.closed or self._failure is not None

    def next_event(self, timeout: Optional[float] = None) -> Optional[ProcessEvent]:
        """The next event, or None after ``closed`` was consumed.

        Raises:
            CallTimeout: nothing arrived within ``timeout`` (a
                ``subprocess.TimeoutExpired`` and a ``TimeoutError``).
            ExecServerDisconnected: the connection was lost for good.
            ProcessOutputGap: output was lost while disconnected, or was no
                longer retained by the server when a refill read it.
        """
        deadline = _deadline(timeout)
        buffer = self._buffer
        with self._changed:
            while True:
                if buffer.events:
                    return buffer.pop()
                if buffer.closed:
                    return None
                if buffer.refill and self._refilling is None and self._failure is None:
                    self._refilling = threading.Thread(target=self._refill, name="exec-server-client-refill",
                                                       daemon=True)
                    try:
                        self._refilling.start()
                    except BaseException:  # no thread (^C, none left): a later wait tries again
                        self._refilling = None
                        raise
                self._wait_until(lambda: bool(buffer.events) or buffer.closed or (
                    buffer.refill and self._refilling is None and self._failure is None), timeout, deadline)

    def _refill(self) -> None:
        """Read what the buffer dropped from the server's retention (``process/read`` from the last seq).

        Runs on a thread of its own, started by a consumer that found the
        buffer empty and behind, so the read outlives a short wait (a poll
        with ``timeout=0`` still makes progress) and a read that times out
        (``REFILL_TIMEOUT``) is made again, smaller.  Ends once it published
        something, or nothing is left to read.  A gap, an error answer (the
        server forgot the process) or a malformed result fails the process
        (:class:`ProcessOutputGap`, ``InternalError``); a gap terminates it,
        as after a reconnect.
        """
        buffer = self._buffer
        try:
            while True:
                with self._changed:
                    if not buffer.refill or buffer.events or buffer.closed or self._failure is not None:
                        return
                    after, exit_seen, exit_seq = buffer.begin_refill(), buffer.exit_published, buffer.exit_seq
                    params = {"processId": self.process_id, "afterSeq": after, "maxBytes": buffer.refill_bytes,
                              "waitMs": 0}
                try:
                    result = self.client.call("process/read", params, timeout=REFILL_TIMEOUT)
                    events, gap = catch_up_events(result, after, exit_seen, exit_seq)
                except CallTimeout:
                    if params["maxBytes"] <= REFILL_MIN_READ_BYTES:  # the smallest read, and still no answer
                        self.fail(ExecServerDisconnected("process %s: no answer to a process/read of %d bytes "
                                                         "within %.0f s" % (self.process_id, params["maxBytes"],
                                                                            REFILL_TIMEOUT)))
                        return
                    with self._changed:
                        buffer.refill_timed_out()
                    continue
                except ExecServerError as exc:  # the client failed or closed (a forgotten handle too)
                    self.fail(exc)
                    return
                except RpcError as exc:
                    gap, events = range(after + 1, after + 2), []
                    when = "and later: process/read failed: %s" % exc.message
                except ValueError as exc:
                    self.fail(InternalError("process %s cannot be refilled: exec-server sent a %s"
                                            % (self.process_id, exc)))
                    return
                else:
                    when = buffer.refill_cause
                if gap is not None:
                    self.fail(ProcessOutputGap(self.process_id, gap, when))
                    try:
                        self.terminate(timeout=5.0)
                    except (RpcError, ExecServerError, TimeoutError):
                        pass
                    return
                with self._changed:
                    ended = self._failure is None and buffer.end_refill(events, bool(result.get("chunks")))
                    self._changed.notify_all()
                if ended:
                    self._release_closed()
        finally:
            with self._changed:
                self._refilling = None
                self._changed.notify_all()

    def _wait_until(self, ready, timeout: Optional[float], deadline: Optional[float] = None) -> None:
        """Wait (holding the condition) until ``ready()``; raise the failure or TimeoutExpired.

        ``deadline`` (``time.monotonic()``) defaults to ``timeout`` from now.
        """
        if deadline is None:
            deadline = _deadline(timeout)
        while not ready():
            if self._failure is not None:
                raise self._failure
            remaining = _remaining(deadline)
            if remaining == 0.0:
                check = getattr(self.client, "check_connection", None)
                if check is not None and timeout:  # a timed-out wait on a quiet connection probes it
                    self._changed.release()  # never call out holding the handle's lock
                    try:
                        check()
                    finally:
                        self._changed.acquire()
                raise CallTimeout(self.args, timeout)
            self._changed.wait(remaining)

    def __iter__(self) -> Iterator[ProcessEvent]:
        """Every event until (and including) ``closed``, blocking."""
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event
            if isinstance(event, ClosedEvent):
                return

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the exit; returns the exit code.

        A ``closed`` that came without ``exited`` (the reference server now
        and then sends none) is followed by one ``process/read``, whose
        result tells the exit code (PROTOCOL.md 5.4).

        Raises:
            CallTimeout: no exit within ``timeout``.
            ExecServerDisconnected, ProcessOutputGap: as for :meth:`next_event`.
            InternalError: the server reported ``closed`` without ``exited``,
                and its ``process/read`` does not tell the exit code either.
        """
        buffer = self._buffer
        with self._changed:
            self._wait_until(lambda: buffer.exit_code is not None or buffer.closed_arrived, timeout)
            if buffer.exit_code is not None:
                return buffer.exit_code
        exit_code = self._exit_code_read(self.last_seq)  # not under the lock: the reader thread takes it
        with self._changed:
            if buffer.exit_code is None and exit_code is not None:
                buffer.exit_code = exit_code
            if buffer.exit_code is None:  # closed without an exit: the server broke the notification order
                raise InternalError("exec-server closed process %s without reporting its exit" % self.process_id)
            return buffer.exit_code

    def poll(self) -> Optional[int]:
        return self.returncode

    def __enter__(self) -> "RemoteProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Kill the remote tree unless ``closed`` arrived (consumed or not), wait up to 5 s for it, stop tracking it.

        Unlike ``Popen.__exit__`` (which waits however long the child runs):
        waiting could hang, and leaving it would keep it alive on the server
        until the session expires.  A process that has exited but not closed
        left a background job holding its output: that job is killed too.
        Errors of a lost connection are ignored; if ``closed`` still has not
        come, a wait in another thread for the handle's events raises
        ``ValueError`` (its later events are no longer kept), as a read of a
        closed file does.
        """
        try:
            if not (self.done or self._buffer.closed_arrived):
                self.terminate(timeout=5.0)
                with self._changed:
                    self._wait_until(lambda: self._buffer.closed_arrived, 5.0)  # consumed or not
        except (ExecServerError, RpcError, TimeoutError, OSError):
            pass
        finally:
            self.fail(ValueError("process %s: its handle was closed before the process closed" % self.process_id))
            self._release()

    def __repr__(self) -> str:
        return "<RemoteProcess %s returncode=%r>" % (self.process_id, self.returncode)
