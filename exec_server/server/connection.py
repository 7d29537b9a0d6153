"""Per-connection JSON-RPC dispatch: handshake state, validation, scheduling.

:class:`~exec_server.server.dispatcher.Dispatcher` holds what every connection shares (method table,
schemas, session registry); :class:`RpcConnection` is one connection's protocol state.  A transport
feeds it whole messages (:meth:`RpcConnection.receive`) and gives it a ``send(text)`` callable; it
never sees a socket, so the WebSocket and stdio transports share it unchanged.

Order of checks for a request (PROTOCOL.md 2-4): envelope (at most ``MAX_REQUEST_VALUES`` values), routing
(-32601), params against the JSON Schema (-32602), handshake state (-32600, kept by the connection's sans-IO
:class:`~exec_server.protocol.handshake.Handshake`), handler.  ``initialize`` and notifications run inline
on the transport's thread; other requests run on a per-connection pool of ``concurrent_requests`` threads,
so a long poll never delays other calls (PROTOCOL.md 1.5).  At most ``max_queued_requests`` more wait for a
thread, and the admitted requests hold at most ``max_message_bytes`` of messages together; past either a
request is refused with -32001 without being run, and the reader thread never blocks.
"""

import functools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from exec_server.server import handlers
from exec_server.common import telemetry
from exec_server.server.first_use import FirstUse
from exec_server.server.handlers import RequestContext
from exec_server.protocol.errors import (InternalError, InvalidRequest, MethodNotFound, ProtocolViolation, RpcError,
                                         ServerOverloaded)
from exec_server.protocol.handshake import Handshake
from exec_server.protocol.jsonrpc import (MAX_REQUEST_VALUES, EnvelopeError, ErrorResponse, Notification,
                                          Request, Response, encode, encode_reply, error_response, parse_message,
                                          utf8_size)
from exec_server.protocol.wire import RawJson, Send
from exec_server.server.process import ReadAborted, WouldWait

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from exec_server.server.fs.handles import FileHandles

log = logging.getLogger(__name__)

#: Methods that never block for long (and ``process/read`` without ``waitMs``, an ``fs/close`` that cannot
#: block) run on the connection's reader thread, saving two thread hand-offs; inline ``process/start``
#: (~1 ms a spawn) raised the fan-out rate from ~605 to ~690 processes/s.
INLINE_METHODS = frozenset({"environment/info", "environment/status", "process/write", "process/signal",
                            "process/start", "process/terminate", "process/resize", "fs/close"})

#: The methods that use a file handle and may run concurrently: bound to the open handle as they are
#: dispatched (:meth:`exec_server.server.fs.handles.FileHandles.begin`), so a later ``fs/close`` waits for them.
BLOCK_METHODS = frozenset({"fs/readBlock", "fs/writeBlock"})

#: Name prefix of the request threads (a pool per connection); they inherit
#: the daemon flag of the connection's thread but still hold interpreter exit.
REQUEST_THREAD_PREFIX = "exec-server-request"

#: ``process/read`` of spooled output with a ``maxBytes`` of at most this many bytes runs on the reader thread
#: while the result budget is free (a catch-up's 64 KiB reads: no hand-off, never queued behind long polls);
#: a larger one, or one that would wait for the budget (:class:`WouldWait`), on a request thread.
INLINE_SPOOL_READ_BYTES = 1024 * 1024

#: Marks a request abandoned without a reply (its connection went away).
_ABORTED: Any = object()
#: Marks a request run on the reader thread that would have waited: a request thread runs it.
_REQUEUED: Any = object()


def _new_file_handles(limit: int) -> "FileHandles":
    from exec_server.server.fs.handles import FileHandles
    return FileHandles(limit)


class RpcConnection:
    """One connection's protocol state.

    ``receive`` is called from the transport's single reader thread (it
    alone drives :attr:`handshake`); :meth:`send` and responses may be called
    from any thread, so the transport's ``send`` must serialize whole
    messages (one send lock per connection).  ``dispatcher`` is the
    :class:`~exec_server.server.dispatcher.Dispatcher` that opened it (which
    imports this module, so it is not named in the signature).
    """

    def __init__(self, dispatcher: Any, send: Send, parse_error_prefix: str, transport: str = "websocket"):
        self.dispatcher = dispatcher
        self.transport = transport
        telemetry.connections_total.add(1, {"transport": transport})
        telemetry.connections_active.add(1, {"transport": transport})
        self.session = None
        self.handshake = Handshake()
        self.closed = False
        self._close_lock = threading.Lock()
        #: ``probe(timeout) -> alive`` of the transport, or None (set by the dispatcher).
        self.probe: Optional[Callable[[float], bool]] = None
        self._send = send
        self._prefix = parse_error_prefix
        config = dispatcher.config
        limit = config.max_open_files
        self._file_handles: "FirstUse[FileHandles]" = FirstUse(lambda: _new_file_handles(limit),
                                                               lambda handles: handles.close_all())
        self._admitted_lock = threading.Lock()
        self._admitted = 0  # pooled requests running or queued
        self._admitted_bytes = 0  # the sizes of their messages: their params stay in memory until they end
        self._admission_limit = config.concurrent_requests + config.max_queued_requests
        self._admission_bytes = config.max_message_bytes
        self._serial = config.concurrent_requests == 1
        self._pool: "Optional[ThreadPoolExecutor]" = None  # made by the first request that needs it

    @property
    def file_handles(self) -> "FileHandles":
        """This connection's file handles (PROTOCOL.md 8.4), made on first use; closed with the connection."""
        return self._file_handles.get()

    # -------------------------------------------------------------- sending
    def _write(self, *texts: str) -> None:
        if self.closed:
            return
        try:
            self._send(*texts)
        except (OSError, ConnectionError) as exc:
            log.debug("send failed: %s", exc)

    def send(self, *texts: str) -> None:
        """Write encoded notifications in order, in one write, if the connection is open.  Thread-safe.

        The :data:`~exec_server.protocol.wire.Send` an attached session is given.
        """
        self._write(*texts)

    # ------------------------------------------------------------ receiving
    def receive(self, text) -> None:
        """Handle one whole incoming message (text or UTF-8 bytes).

        Raises:
            ProtocolViolation: the transport must close the connection without
                a JSON-RPC reply (PROTOCOL.md 1.6).
        """
        received = time.monotonic()
        try:
            message = parse_message(text, MAX_REQUEST_VALUES)
        except EnvelopeError as exc:
            self._write(encode(error_response(exc.request_id, InvalidRequest(self._prefix + exc.description))))
            return
        if isinstance(message, Notification):
            self._handle_notification(message)
            return
        if isinstance(message, (Response, ErrorResponse)):
            raise ProtocolViolation("unexpected response from client")
        self._handle_request(message, received, utf8_size(text))

    def _handle_notification(self, message: Notification) -> None:
        if message.method == "initialized":
            self.handshake.receive_initialized(self._session_current())
            return
        raise ProtocolViolation("unexpected notification %s" % message.method)

    def _session_current(self) -> bool:
        return self.session is not None and self.session.is_owned_by(self)

    def _handle_request(self, request: Request, received: float, size: int) -> None:
        method = request.method
        routed = method == "initialize" or method in self.dispatcher.methods
        label = telemetry.method_label(method, routed)
        span = telemetry.ServerRequestSpan(label, request.trace, received)
        if not routed:
            self._complete(request, span, label, received, received,
                           MethodNotFound("exec-server stub does not implement `%s` yet" % method))
            return
        try:
            self.dispatcher.schemas.validate_params(method, request.params)
        except RpcError as error:
            self._complete(request, span, label, received, received, error)
            return
        if method == "initialize":
            self._run(request, self._initialize, span, label, received)
            return
        family, handler = self.dispatcher.methods[method]
        error = self.handshake.request_error(family, self._session_current())
        if error is not None:
            self._complete(request, span, label, received, received, error)
            return
        taken = None
        if method == "fs/close":  # takes its handle now (later block operations find it gone)
            try:  # fs code that fails to load is answered inline
                taken = self.file_handles.begin_close(request.params["handleId"])
            except Exception:
                taken = None
            handler = handler if taken is None else functools.partial(handler, taken=taken)
            if taken is not None and taken.closes_slowly and not self._serial:  # a thread of its own, not
                try:  # the pool's (behind long polls)
                    threading.Thread(target=self._run, args=(request, handler, span, label, received),
                                     name=REQUEST_THREAD_PREFIX + "-fs-close").start()
                    return
                except RuntimeError as exc:  # no thread can start: the handle is taken, so it closes here
                    log.warning("fs/close (%r) runs on the connection's thread: %s", request.id, exc)
                    self._run(request, handler, span, label, received)
                    return
        if (taken is None or not taken.closes_slowly) and self._runs_inline(method, request.params):
            if self._run(request, handler, span, label, received, inline=True):
                return  # else it would have waited for the result budget: a request thread runs it
        with self._admitted_lock:  # a taken handle's close is never refused: only it closes that handle
            admitted = taken is not None or (self._admitted < self._admission_limit and (
                not self._admitted or self._admitted_bytes + size <= self._admission_bytes))
            if admitted:
                self._admitted += 1
                self._admitted_bytes += size
        if not admitted:
            self._complete(request, span, label, received, received, ServerOverloaded())
            return
        handle = None
        if method in BLOCK_METHODS or method == "fs/open":  # registered in arrival order: a block operation
            try:  # is bound to its open handle (a later fs/close waits for it), or to the fs/open before it
                handle_id = request.params["handleId"]
                handle = self.file_handles.begin(handle_id) if method != "fs/open" else \
                    self.file_handles.begin_open(handle_id)
                handler = functools.partial(handler, handle=handle)
            except Exception:  # the fs code did not load (a broken install): this request fails alone
                log.exception("request %s (%r) failed", method, request.id)
                self._release(size)
                self._complete(request, span, label, received, received, InternalError("internal error"))
                return
        claim = threading.Lock()  # taken once: by the pool thread that runs the request, or by a failed submit
        try:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(max_workers=self.dispatcher.config.concurrent_requests,
                                                thread_name_prefix=REQUEST_THREAD_PREFIX)
                if self.closed:  # close() ran meanwhile and saw no pool
                    self._pool.shutdown(wait=False)
            self._pool.submit(self._run_and_release, claim, request, handler, span, label, received, handle, size)
        except RuntimeError as exc:
            # The pool is shut down (the connection is closing), or it could not start a thread (a task
            # limit, no memory for a stack): then submit raises after queueing the request, which a
            # pool thread may run later, or already does.  Whoever takes the claim first answers it.
            if not claim.acquire(blocking=False):
                return
            self._release_request(handle, size)
            if self.closed:
                span.finish(telemetry.DISCONNECTED)
                return
            log.warning("request %s (%r) refused: %s", method, request.id, exc)
            self._complete(request, span, label, received, received, ServerOverloaded())

    def _release(self, size: int) -> None:
        with self._admitted_lock:
            self._admitted -= 1
            self._admitted_bytes -= size

    def wait_requests(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no pooled request runs or waits, and no event the session has
        recorded waits to be sent as a notification (a read's answer may overtake them); True if none is left."""
        deadline = time.monotonic() + timeout
        while True:
            with self._admitted_lock:
                done = not self._admitted
            session = self.session
            if done and (session is None or not session.is_owned_by(self) or not session.delivering()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def is_idle(self) -> bool:
        """No pooled request running or queued, and no running process in the session it holds."""
        with self._admitted_lock:
            if self._admitted:
                return False
        session = self.session
        return session is None or not session.is_owned_by(self) or session.is_idle()

    def _runs_inline(self, method: str, params: Any) -> bool:
        """Whether a request cannot block, so it runs on the reader thread without a hand-off.

        Never with ``concurrent_requests`` 1, which keeps the reference's
        strictly serial order.
        """
        if self._serial:
            return False
        if method == "process/read":  # not a long poll; a spooled read if small (WouldWait: not for the budget)
            size = params.get("maxBytes")  # params are valid: an object
            return not params.get("waitMs") and ((type(size) is int and size <= INLINE_SPOOL_READ_BYTES)
                                                 or not self._reads_spool(params))
        return method in INLINE_METHODS

    def _reads_spool(self, params: Any) -> bool:
        session = self.session
        process = session.get(params.get("processId")) if session is not None else None
        after_seq = params.get("afterSeq")
        return process is not None and process.reads_spool(after_seq if isinstance(after_seq, int) else 0)

    def _initialize(self, ctx: RequestContext, params: Any) -> Any:
        """``initialize``: the handler opens the session; this connection records it and advances its handshake."""
        self.handshake.start_initialize()
        self.session, result = handlers.initialize(ctx, params)
        self.handshake.initialize_succeeded()
        return result

    def _run_and_release(self, claim: threading.Lock, request: Request, handler, span, label: str, received: float,
                         handle: Any, size: int) -> None:
        if not claim.acquire(blocking=False):
            return  # answered -32001 when its submit failed
        try:
            self._run(request, handler, span, label, received)
        finally:
            self._release_request(handle, size)

    def _release_request(self, handle: Any, size: int) -> None:
        """A pooled request ended: its admission slot and bytes, and the file handle a block operation was bound to."""
        self._release(size)
        if handle is not None:
            self.file_handles.end(handle)

    def _run(self, request: Request, handler, span, label: str, received: float, inline: bool = False) -> bool:
        """Run the handler and answer; False (no answer) if ``inline`` and it would wait (:class:`WouldWait`)."""
        started = time.monotonic()
        span.dispatched()
        dispatcher = self.dispatcher
        ctx = RequestContext(self, dispatcher, received, inline)
        try:
            outcome: Any = handler(ctx, request.params)
            failed = False
        except WouldWait:
            outcome, failed = _REQUEUED, True
        except ReadAborted:
            outcome, failed = _ABORTED, True
        except RpcError as error:
            # without its traceback: kept in ``outcome`` it would tie this frame (and the
            # request's params, megabytes for a process/write) into a cycle only the GC frees
            outcome, failed = error.with_traceback(None), True
        except Exception:
            log.exception("request %s (%r) failed", request.method, request.id)
            outcome, failed = InternalError("internal error"), True
        try:
            if outcome is _REQUEUED:
                span.requeued()
                return False
            if telemetry.metrics_enabled():  # once per request: not for a requeued attempt
                telemetry.request_queue_duration.record(started - received, {"method": label})
            if failed:
                self._complete(request, span, label, received, started, outcome)
            else:  # the result's own pieces (a file's base64) are freed before the response is written
                reply, outcome = encode_reply(Response(request.id, outcome)), None
                self._complete(request, span, label, received, started, None, reply)
        finally:
            for callback in ctx.after_response_callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("after-response hook of %s failed", request.method)
        return True

    def _complete(self, request: Request, span, label: str, received: float, started: float,
                  error: Optional[RpcError], reply: "Optional[Union[str, RawJson]]" = None) -> None:
        """Send the response (``reply``, the encoded result; ``error``'s; none for an aborted request) and record
        its span and metrics."""
        if error is _ABORTED:
            reply = None
            outcome = telemetry.DISCONNECTED
        elif error is None:
            outcome = telemetry.SUCCESS
        else:
            reply = encode(error_response(request.id, error))
            outcome = telemetry.ERROR
        if reply is not None:
            if self.closed:
                outcome = telemetry.DISCONNECTED
            self._write(reply)
        if telemetry.metrics_enabled():
            now = time.monotonic()
            attributes = {"method": label, "result": outcome}
            telemetry.requests_total.add(1, attributes)
            telemetry.request_duration.record(now - started, attributes)
            telemetry.request_total_duration.record(now - received, attributes)
        span.finish(outcome, error.code if outcome == telemetry.ERROR else None)

    # -------------------------------------------------------------- closing
    def close(self, end_session: bool = False) -> None:
        """The transport is gone: stop replies and detach the session.

        In-flight requests get no reply; their long polls wake and end.  The
        session's processes keep running for ``detached_session_ttl`` seconds
        (PROTOCOL.md 7), unless ``end_session`` (stdio's end) kills them now.
        """
        with self._close_lock:  # the transport's thread and a takeover probe may both close
            if self.closed:
                return
            self.closed = True
        session = self.session
        if session is not None and session.detach(self):
            if end_session:
                self.dispatcher.registry.close(session)
            else:
                self.dispatcher.registry.detached(session)
        if session is not None:
            session.wake_readers()
        self._file_handles.close()
        telemetry.connections_active.add(-1, {"transport": self.transport})
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.dispatcher.forget(self)
