"""The client's JSON-RPC endpoint: pending calls, call/notify, notification routing.

An :class:`Endpoint` speaks over one transport at a time.  Each transport it
is given gets a new *generation* number and a reader thread
(:mod:`~exec_server.client.reader`) whose messages it routes: responses to the
waiting calls (a malformed answer fails its call with ``InternalError``) and
``process/*`` notifications to the registered process handles (by
``processId``); anything from an older generation is ignored.  When a
transport ends, the endpoint either hands the loss to its ``on_lost``
handler (the client's recovery, set once a session exists) or fails.

States (:attr:`Endpoint.state`): ``connected``, ``recovering`` (calls wait),
``failed`` (every waiting and later call raises the failure) and ``closed``.
Every public method is thread-safe, and no handle is called under the lock.
"""

import itertools
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Union

from exec_server.client.events import output_event_from_text
from exec_server.client.interfaces import CallTimeout, LostHandler, Pending, ProcessHandle, check_request_size  # noqa
from exec_server.client.interfaces import deadline as _deadline, remaining as _remaining
from exec_server.client.reader import closing_finalizer, read_transport
from exec_server.client.transport import Transport, abort as abort_transport, send_within
from exec_server.common import telemetry
from exec_server.protocol.errors import ExecServerDisconnected, InternalError, ServerOverloaded, error_from_dict
from exec_server.protocol.jsonrpc import (EnvelopeError, ErrorResponse, Notification, Request, Response,
                                          TraceContext, answer_id, encode, parse_message)

#: Pauses, in seconds, before each resend of a request the server refused
#: as overloaded (-32001); after the last, the error is raised.
OVERLOAD_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)

CONNECTED, RECOVERING, FAILED, CLOSED = "connected", "recovering", "failed", "closed"


class Endpoint:
    """Requests and responses over the current transport; see the module docstring."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._state_changed = threading.Condition(self._lock)
        self._pending: Dict[Any, Pending] = {}
        self._processes: Dict[str, ProcessHandle] = {}
        self._state = CONNECTED
        self._failure: Optional[ExecServerDisconnected] = None
        self._transport: Optional[Transport] = None
        self.generation = 0  # the current transport's number: 1, 2, ... (read without the lock)
        self.answers = 0  # calls answered so far, on any transport (a recovery asks whether a new one works)
        self._readers: List[threading.Thread] = []  # the current transport's, and any still ending
        self._finalizer: Optional[weakref.finalize] = None  # closes the current transport with the endpoint
        self._lost_generations: set = set()
        #: Who takes over when the transport ends (None: the endpoint fails).
        self.on_lost: Optional[LostHandler] = None
        #: The server's advertised ``maxMessageBytes`` (None: not advertised); a larger request is not sent.
        self.max_request_bytes: Optional[int] = None

    # ---------------------------------------------------------- transports
    def attach(self, transport: Transport) -> int:
        """Make ``transport`` the current one and start its reader; returns its generation.

        Raises:
            ExecServerDisconnected: the endpoint has already been closed or has
                failed; ``transport`` is closed.
        """
        # The reader holds the endpoint weakly: an unreferenced client is collected (its stdio child ended by finalize)
        with self._lock:
            ended = self._state in (FAILED, CLOSED)
            if not ended:
                self.generation += 1
                generation = self.generation
                self._transport = transport
                reader = threading.Thread(target=read_transport, args=(weakref.ref(self), transport, generation),
                                          name="exec-server-client-reader-%d" % generation, daemon=True)
                reader.start()  # before close() can see it in _readers and join it
                self._readers = [alive for alive in self._readers if alive.is_alive()] + [reader]
        if ended:  # closed (or failed) while this connection was being opened: it is not used
            transport.close()
            raise ExecServerDisconnected("client is closed" if self._state == CLOSED else str(self._failure))
        if self._finalizer is not None:
            self._finalizer.detach()  # one per reconnect kept every ended transport until the client's end
        self._finalizer = closing_finalizer(self, transport)
        return generation

    @property
    def transport(self) -> Optional[Transport]:
        """The current transport (None before the first)."""
        with self._lock:
            return self._transport

    def _route(self, text: Union[str, bytes], generation: int) -> None:
        if generation != self.generation:
            return  # a late event of an older connection
        output = output_event_from_text(text)  # the hot path: process/output without the JSON parser
        if output is not None:
            with self._lock:
                process = self._processes.get(output[0])
            if process is not None:
                process.deliver_event(output[1])
            return
        try:
            message = parse_message(text)  # EnvelopeError: the peer is broken, see read_transport
        except EnvelopeError as exc:  # an answer to a waiting call fails that call only
            request_id = answer_id(text)
            pending = None if request_id is None else self._take(request_id, generation)
            if pending is None:
                raise
            pending.error = InternalError("exec-server sent a malformed answer: %s" % exc.description)
            pending.event.set()
            return
        if isinstance(message, (Response, ErrorResponse)):
            pending = self._take(message.id, generation)
            if pending is None:
                return
            if isinstance(message, ErrorResponse):
                pending.error = error_from_dict(message.error)
            else:
                pending.result = message.result
            pending.event.set()
        elif isinstance(message, Notification):
            params = message.params if isinstance(message.params, dict) else {}
            process_id = params.get("processId")
            if isinstance(process_id, str):
                with self._lock:
                    process = self._processes.get(process_id)
                if process is not None:
                    try:
                        process.deliver(message.method, params)
                    except ValueError as exc:  # e.g. a chunk that is not base64: the peer is broken
                        raise EnvelopeError("invalid %s: %s" % (message.method, exc)) from None

    def _take(self, request_id: Any, generation: int) -> Optional[Pending]:
        """Remove and return the call ``request_id`` waiting on ``generation``; None if there is none."""
        with self._lock:
            pending = self._pending.get(request_id)
            if pending is not None and pending.generation == generation:
                self.answers += 1
                return self._pending.pop(request_id)
        return None

    def _connection_lost(self, generation: int, reason: str) -> None:
        dropped: List[Pending] = []
        with self._lock:
            self._lost_generations.add(generation)
            if generation != self.generation or self._state in (CLOSED, FAILED):
                return  # an old connection
            recovering = self._state == RECOVERING
            if recovering:  # the recovery's new connection dropped too: its own calls fail now
                dropped = [p for p in self._pending.values() if p.generation == generation and not p.recoverable]
                for pending in dropped:
                    del self._pending[pending.id]
            handler = self.on_lost
            if handler is not None and not recovering:
                self._state = RECOVERING
                self._state_changed.notify_all()
            lost = [p for p in self._pending.values() if p.generation == generation]
        if recovering:  # the resume and catch-up calls raise at once instead of at their timeout
            for pending in dropped:
                pending.error = ExecServerDisconnected(reason)
                pending.event.set()
        elif handler is None:
            self.fail(ExecServerDisconnected(reason))
        else:
            handler(generation, lost)

    def suspect(self) -> None:
        """A call or wait timed out: let the current transport check its peer (non-blocking).

        A transport that finds its peer silent ends, and the recovery runs.
        """
        check = getattr(self.transport, "suspect", None)
        if check is not None:
            check()

    # --------------------------------------------------------------- states
    @property
    def state(self) -> str:
        """``connected``, ``recovering``, ``failed`` or ``closed``."""
        with self._lock:
            return self._state

    def recovered(self, generation: int) -> bool:
        """Leave ``recovering`` for ``connected`` on ``generation``.

        Returns:
            False if that transport has already ended (the recovery goes on).
        """
        with self._lock:
            if generation in self._lost_generations:
                return False
            if self._state == RECOVERING and generation == self.generation:
                self._state = CONNECTED
                self._state_changed.notify_all()
        return True

    def abandon(self, pending: Pending, error: BaseException) -> None:
        """Stop waiting for ``pending``'s answer: its caller raises ``error``."""
        with self._lock:
            if self._pending.get(pending.id) is pending:
                del self._pending[pending.id]
        pending.error = error
        pending.event.set()

    def fail(self, error: ExecServerDisconnected) -> None:
        """Enter ``failed``: every waiting and later call and every process wait raises ``error``."""
        self._end(FAILED, error)

    def _end(self, state: str, error: ExecServerDisconnected, abort: bool = False) -> bool:
        """Enter FAILED or CLOSED: fail every waiter and handle, close (or ``abort``) the transport.

        Returns False if the endpoint had already ended.
        """
        with self._lock:
            if self._state in (FAILED, CLOSED) and not (state == CLOSED and self._state == FAILED):
                return False
            self._state = state
            if state == FAILED:
                self._failure = error
            pending = list(self._pending.values())
            self._pending.clear()
            processes = list(self._processes.values())
            transport = self._transport
            self._state_changed.notify_all()
        for item in pending:
            item.error = error
            item.event.set()
        for process in processes:
            process.fail(error)
        if transport is not None and abort:
            abort_transport(transport)
        elif transport is not None:
            transport.close()
        return True

    def close(self, join_timeout: float = 5.0, abort: bool = False) -> None:
        """Enter ``closed`` (no recovery follows) and join the reader threads (``join_timeout`` s each).

        ``abort``: the server stopped answering; end the connection without
        waiting for its part of a closing handshake.
        """
        if not self._end(CLOSED, ExecServerDisconnected("client is closed"), abort):
            return
        for reader in self._readers:
            if reader is not threading.current_thread():
                reader.join(join_timeout)

    def wait_usable(self, deadline: Optional[float], method: str, timeout: Optional[float] = None) -> int:
        """Wait out a recovery until the monotonic ``deadline``; returns the current generation.

        Raises:
            CallTimeout: still recovering at the deadline.
            ExecServerDisconnected: failed or closed.
        """
        with self._lock:
            while self._state == RECOVERING:
                remaining = _remaining(deadline)
                if remaining == 0.0:
                    raise CallTimeout(method, timeout)
                self._state_changed.wait(remaining)
            if self._state == FAILED:
                raise self._failure  # type: ignore[misc]
            if self._state == CLOSED:
                raise ExecServerDisconnected("client is closed")
            return self.generation

    # ---------------------------------------------------------------- calls
    def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request and wait for its result, waiting out a recovery; see :meth:`Client.call`."""
        deadline = _deadline(timeout)
        with telemetry.client_call(method) as carrier:  # its span, and counted
            trace = TraceContext.of(carrier)
            overload_delays = iter(OVERLOAD_RETRY_DELAYS)
            while True:
                generation = self.wait_usable(deadline, method, timeout)
                try:
                    return self.call_on(generation, method, params, _remaining(deadline), recoverable=True,
                                        trace=trace)
                except _SendFailed:
                    if _remaining(deadline) == 0.0:
                        raise CallTimeout(method, timeout) from None
                    continue  # not sent: wait for the recovery and try again
                except CallTimeout:
                    raise CallTimeout(method, timeout) from None  # the caller's timeout, not what was left
                except ServerOverloaded:
                    delay = next(overload_delays, None)
                    remaining = _remaining(deadline)
                    if delay is None or (remaining is not None and remaining <= delay):
                        raise
                    time.sleep(delay)  # refused before it ran: sending it again is safe

    def call_on(self, generation: int, method: str, params: Any, timeout: Optional[float],
                recoverable: bool = False, trace: Optional[TraceContext] = None) -> Any:
        """Send a request on transport ``generation`` only; ``timeout`` s for the send and the answer together.

        Raises:
            ExecServerDisconnected: that transport is gone.
            _SendFailed: (``recoverable`` only) not sent; wait for the recovery and retry.
            CallTimeout, RpcError, RequestTooLarge: as for :meth:`call`; CallTimeout also when the
                transport could not send it in time (a stdio child that stopped reading).
        """
        deadline = _deadline(timeout)
        request_id = next(self._ids)
        text = encode(Request(request_id, method, params, trace))
        check_request_size(method, text, self.max_request_bytes)
        pending = Pending(request_id, method, text, generation, recoverable)
        with self._lock:
            if generation != self.generation or self._transport is None:
                if recoverable:
                    raise _SendFailed()
                raise ExecServerDisconnected("connection replaced")
            self._pending[request_id] = pending
            transport = self._transport
        try:
            send_within(transport, text, timeout)
        except BaseException as error:  # a ^C too: its caller gives up on it, so no recovery sends it again
            with self._lock:
                self._pending.pop(request_id, None)
            if isinstance(error, TimeoutError):  # not sent in time: the transport keeps its stream whole
                raise CallTimeout(method, timeout) from None
            if recoverable and self.on_lost is not None and isinstance(error, ExecServerDisconnected):
                # sendall failed, so the server cannot hold the whole message: safe to send again
                with self._lock:
                    if self._state == CONNECTED and generation == self.generation:
                        self._state_changed.wait(0.05)
                raise _SendFailed() from None
            raise
        answered = False
        try:
            answered = pending.event.wait(_remaining(deadline))
        finally:  # unanswered in time, or a ^C: its caller gives up on it, so no recovery sends it again
            if not answered:
                with self._lock:
                    self._pending.pop(request_id, None)
        if not answered:
            self.suspect()
            raise CallTimeout(method, timeout)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def notify_on(self, generation: int, method: str, params: Any) -> None:
        """Send a notification on transport ``generation`` only.  Raises ExecServerDisconnected."""
        with self._lock:
            transport = self._transport if generation == self.generation else None
        if transport is None:
            raise ExecServerDisconnected("connection replaced")
        transport.send(encode(Notification(method, params)))

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification on the current transport, waiting out a recovery."""
        self.notify_on(self.wait_usable(None, method), method, params)

    def resend_in_flight(self, generation: int) -> bool:
        """Send every call still waiting from an older transport again, on ``generation``.

        Only reads are still waiting then (the recovery abandoned the rest).
        Returns False if the transport dropped meanwhile.
        """
        with self._lock:
            retry = [p for p in self._pending.values() if p.generation != generation]
            for pending in retry:
                pending.generation = generation
            transport = self._transport
        for pending in retry:
            try:
                transport.send(pending.text)
            except ExecServerDisconnected:
                return False
        return True

    def add_process(self, process: ProcessHandle) -> None:
        """Route notifications for ``process.process_id`` to ``process``.

        Raises:
            ValueError: the id is already registered.
        """
        with self._lock:
            if process.process_id in self._processes:
                raise ValueError("process id %r is already used by this client" % process.process_id)
            self._processes[process.process_id] = process

    def remove_process(self, process_id: str, handle: Optional[ProcessHandle] = None) -> None:
        """Stop routing notifications for ``process_id`` (no error if unknown); only to ``handle``, if given."""
        with self._lock:
            if handle is None or self._processes.get(process_id) is handle:
                self._processes.pop(process_id, None)

    def open_processes(self) -> List[ProcessHandle]:
        """The registered handles that are not done yet (a snapshot; ``done`` asked outside the lock)."""
        with self._lock:
            processes = list(self._processes.values())
        return [p for p in processes if not p.done]


class _SendFailed(Exception):
    """Internal: a request could not be sent on the current transport."""
