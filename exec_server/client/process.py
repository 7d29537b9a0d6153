"""Client-side process handles: events in seq order, waits, control calls.

A :class:`RemoteProcess` publishes ``process/output``, ``process/exited`` and
``process/closed`` strictly in seq order (PROTOCOL.md 5.3): an event is held
until every lower seq has been published, and one already published is
dropped as a duplicate, so live notifications and a ``process/read``
catch-up after a reconnect can arrive in any order.

A handle calls the server through a :class:`~exec_server.client.interfaces.Caller`
(the client); the client's endpoint and recovery feed it through
:meth:`RemoteProcess.deliver`, :meth:`RemoteProcess.deliver_event`,
:meth:`RemoteProcess.catch_up` and :meth:`RemoteProcess.fail` (the
:class:`~exec_server.client.interfaces.ProcessHandle` interface), which are
client-internal: user code never calls them.
"""

import collections
import io
import os
import subprocess
import threading
import time
import warnings
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence

from exec_server.client.interfaces import CallTimeout, Caller, ExtensionNotSupported, result_member
from exec_server.client.interfaces import deadline as _deadline
from exec_server.client.interfaces import remaining as _remaining
from exec_server.client.events import (ClosedEvent, ExitedEvent, OutputEvent, ProcessEvent,  # noqa: F401
                                       ProcessOutputGap, StdinClosedError, StdinQueueFullError,
                                       catch_up_events, event_from_notification)
from exec_server.protocol import b64
from exec_server.protocol.errors import ExecServerError, InternalError, RpcError


class RemoteProcess:
    """A process started through :meth:`Client.start`, like ``subprocess.Popen``.

    Events are buffered in seq order until consumed by iteration,
    :meth:`next_event` or :meth:`communicate`.  Thread-safe.

    Args:
        client: what control calls go through (the :class:`Client` that started it).
        process_id: the protocol's ``processId``.
        args: the argv, for ``subprocess.TimeoutExpired`` and ``repr``.
    """

    def __init__(self, client: Caller, process_id: str, args: List[str]):
        self.client = client
        self.process_id = process_id
        self.args = args
        self.sandbox_type = "none"
        self._changed = threading.Condition()
        self._events: Deque[ProcessEvent] = collections.deque()
        self._held: Dict[int, ProcessEvent] = {}
        self._last_seq = 0
        self._exit_code: Optional[int] = None
        self._closed = False
        self._failure: Optional[BaseException] = None

    # ------------------------------------------------------------- events
    def _publish(self, event: ProcessEvent) -> None:
        """Accept an event from any source; publish everything now contiguous."""
        with self._changed:
            if event.seq <= self._last_seq or self._closed:
                return  # a duplicate
            self._held[event.seq] = event
            while self._last_seq + 1 in self._held:
                ready = self._held.pop(self._last_seq + 1)
                self._last_seq = ready.seq
                self._events.append(ready)
                if isinstance(ready, ExitedEvent):
                    self._exit_code = ready.exit_code
                elif isinstance(ready, ClosedEvent):
                    self._closed = True
                    self._held.clear()
            self._changed.notify_all()

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
            after = self._last_seq
            exit_seen = self._exit_code is not None
        events, gap = catch_up_events(result, after, exit_seen)
        if gap is not None:
            return gap
        for event in events:
            self._publish(event)
        return None

    def fail(self, error: BaseException) -> None:
        """Make every current and later wait raise ``error``, unless ``closed`` was published.

        Client-internal: called by the client's endpoint when the client
        fails or closes, and by its recovery for a gap or a lost process.
        """
        with self._changed:
            if not self._closed and self._failure is None:
                self._failure = error
            self._changed.notify_all()

    @property
    def returncode(self) -> Optional[int]:
        """The exit code once ``process/exited`` was published, else None."""
        with self._changed:
            return self._exit_code

    @property
    def last_seq(self) -> int:
        """Highest seq published for this process."""
        with self._changed:
            return self._last_seq

    @property
    def done(self) -> bool:
        """True once ``closed`` was published or the process failed."""
        with self._changed:
            return self._closed or self._failure is not None

    def next_event(self, timeout: Optional[float] = None) -> Optional[ProcessEvent]:
        """The next event, or None after ``closed`` was consumed.

        Raises:
            CallTimeout: nothing arrived within ``timeout`` (a
                ``subprocess.TimeoutExpired`` and a ``TimeoutError``).
            ExecServerDisconnected: the connection was lost for good.
            ProcessOutputGap: output was lost while disconnected.
        """
        with self._changed:
            self._wait_until(lambda: bool(self._events) or self._closed, timeout)
            return self._events.popleft() if self._events else None

    def _wait_until(self, ready, timeout: Optional[float]) -> None:
        """Wait (holding the condition) until ``ready()``; raise the failure or TimeoutExpired."""
        deadline = _deadline(timeout)
        while not ready():
            if self._failure is not None:
                raise self._failure
            remaining = _remaining(deadline)
            if remaining == 0.0:
                check = getattr(self.client, "check_connection", None)
                if check is not None and timeout:  # a timed-out wait on a quiet connection probes it
                    check()
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

    def communicate(self, timeout: Optional[float] = None):
        """Collect output until ``closed``; returns ``(stdout, stderr)`` bytes.

        A PTY's output counts as stdout.

        Raises:
            CallTimeout: not closed within ``timeout`` (the output so far
                stays buffered).
            ExecServerDisconnected, ProcessOutputGap: as for :meth:`next_event`.
        """
        deadline = _deadline(timeout)
        # Written as events arrive, and BytesIO.getvalue() hands its buffer over without
        # copying it: no join of every chunk after the last one came.
        out, err = io.BytesIO(), io.BytesIO()
        consumed: List[ProcessEvent] = []
        try:
            while True:
                event = self.next_event(_remaining(deadline))
                if event is None:
                    break
                consumed.append(event)
                if isinstance(event, OutputEvent):
                    (err if event.stream == "stderr" else out).write(event.data)
                elif isinstance(event, ClosedEvent):
                    break
        except subprocess.TimeoutExpired:
            with self._changed:
                self._events.extendleft(reversed(consumed))
            raise
        return out.getvalue(), err.getvalue()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the exit; returns the exit code.

        Raises:
            CallTimeout: no exit within ``timeout``.
            ExecServerDisconnected, ProcessOutputGap: as for :meth:`next_event`.
            InternalError: the server reported ``closed`` without ``exited``.
        """
        with self._changed:
            self._wait_until(lambda: self._exit_code is not None or self._closed, timeout)
            if self._exit_code is None:  # closed without an exit: the server broke the notification order
                raise InternalError("exec-server closed process %s without reporting its exit" % self.process_id)
            return self._exit_code

    def poll(self) -> Optional[int]:
        return self.returncode

    # ------------------------------------------------------------ control
    def write(self, data: bytes, timeout: Optional[float] = 30.0, *, close_stdin: bool = False) -> None:
        """Write bytes to the child's stdin or PTY (``process/write``).

        Args:
            data: the bytes (may be empty).
            timeout: seconds to wait for the answer.
            close_stdin: then close stdin after them (see :meth:`close_stdin`).
        Raises:
            StdinClosedError: the process has no writable stdin, or it was closed.
            ProcessLookupError: the server does not know the process.
            StdinQueueFullError: the server's stdin queue for the process is
                full (the child is not reading); nothing was queued.
            InternalError: the process has exited (``failed to write to process stdin``),
                or the server's answer is malformed.
            ExtensionNotSupported: ``close_stdin`` and the server lacks ``closeStdin``.
            RequestOutcomeUnknown: the connection dropped before the answer;
                the bytes may or may not have been written (never re-sent).
            CallTimeout: no answer within ``timeout``.
        """
        params = {"processId": self.process_id, "chunk": b64.encode(bytes(data)), "writeId": os.urandom(16).hex()}
        if close_stdin:
            if not self.client.supports("closeStdin"):
                raise ExtensionNotSupported("closeStdin", "closing a remote stdin")
            params["closeStdin"] = True
        try:
            status = result_member(self.client.call("process/write", params, timeout=timeout), "status", str,
                                   "process/write")
        except InternalError as exc:
            if isinstance(exc.data, dict) and exc.data.get("reason") == "stdinQueueFull":
                raise StdinQueueFullError(exc.message, exc.data) from None
            raise
        if status == "stdinClosed":
            raise StdinClosedError("process %s has no writable stdin" % self.process_id)
        if status == "unknownProcess":
            raise ProcessLookupError("unknown process id %s" % self.process_id)

    def write_all(self, data: bytes, timeout: Optional[float] = 30.0, *, close_stdin: bool = False,
                  piece: int = 1 << 20) -> None:
        """Write ``data`` in pieces of ``piece`` bytes, waiting while the server's stdin queue is full.

        Like ``socket.sendall``: a :class:`StdinQueueFullError` (the child is
        not reading yet) is retried every 50 ms until ``timeout`` seconds have
        passed in all.  ``close_stdin`` closes stdin after the last piece.

        Raises:
            CallTimeout: not all written within ``timeout``.
            StdinClosedError, InternalError, ExtensionNotSupported: as for :meth:`write`.
        """
        deadline = _deadline(timeout)
        pieces = [data[i:i + piece] for i in range(0, len(data), piece)] or [b""]
        for index, chunk in enumerate(pieces):
            close = close_stdin and index == len(pieces) - 1
            while chunk or close:
                try:
                    self.write(chunk, timeout=_remaining(deadline), close_stdin=close)
                    break
                except StdinQueueFullError:
                    if _remaining(deadline) == 0.0:
                        raise CallTimeout(self.args, timeout) from None
                    time.sleep(min(0.05, _remaining(deadline) or 0.05))

    def close_stdin(self, timeout: Optional[float] = 30.0) -> None:
        """End of file on the child's stdin, after every byte already written (our extension).

        ``process/write`` with ``closeStdin: true``: a pipe is closed; a PTY
        gets its EOF character (^D, README.rst "Protocol extensions").  A
        stdin already closed, or never writable, is left as it is.

        Raises:
            ExtensionNotSupported: the server does not advertise
                ``closeStdin`` (the Codex reference cannot close a stdin).
            ProcessLookupError, RequestOutcomeUnknown, CallTimeout: as for :meth:`write`.
        """
        try:
            self.write(b"", timeout, close_stdin=True)
        except StdinClosedError:
            pass

    def resize(self, rows: int, cols: int, timeout: Optional[float] = 30.0) -> None:
        """Set the window size of the child's PTY (``process/resize``, our extension); it gets SIGWINCH.

        Raises:
            ExtensionNotSupported: the server does not advertise ``ptySize``.
            InvalidParams: the process has no PTY, or a size outside 1..65535.
            InvalidRequest: the server does not know the process.
            CallTimeout: no answer within ``timeout``.
        """
        if not self.client.supports("ptySize"):
            raise ExtensionNotSupported("ptySize", "resizing a remote terminal")
        self.client.call("process/resize", {"processId": self.process_id, "rows": rows, "cols": cols},
                         timeout=timeout)

    def signal(self, name: str = "interrupt", timeout: Optional[float] = 30.0) -> None:
        """Send a protocol signal (``interrupt`` is the only one; PROTOCOL.md 5.6)."""
        self.client.call("process/signal", {"processId": self.process_id, "signal": name}, timeout=timeout)

    def send_interrupt(self, timeout: Optional[float] = 30.0) -> None:
        """SIGINT to the remote process group (``process/signal interrupt``)."""
        self.signal("interrupt", timeout=timeout)

    def terminate(self, timeout: Optional[float] = 30.0) -> bool:
        """Kill the remote process tree at once (``process/terminate``; SIGKILL).

        Returns:
            True if the process was running and a kill was issued.

        Raises:
            InternalError: the server's answer is malformed.
        """
        return result_member(self.client.call("process/terminate", {"processId": self.process_id}, timeout=timeout),
                             "running", bool, "process/terminate")

    kill = terminate

    def read(self, after_seq: int = 0, max_bytes: Optional[int] = None, wait: float = 0.0,
             timeout: Optional[float] = None, *, wait_ms: Optional[int] = None) -> Dict[str, Any]:
        """The raw ``process/read`` result: output after ``after_seq``, at most ``max_bytes``.

        ``wait`` is the seconds the server may wait for something new (long
        poll); ``timeout`` the seconds for the answer (default ``wait`` + 30;
        CallTimeout past it).  ``wait_ms`` (milliseconds) is deprecated.
        """
        if wait_ms is not None:
            warnings.warn("RemoteProcess.read(wait_ms=) is deprecated; use wait= (seconds)",
                          DeprecationWarning, stacklevel=2)
            wait = wait_ms / 1000.0
        if wait < 0:
            raise ValueError("wait must not be negative")
        params = {"processId": self.process_id, "afterSeq": after_seq, "maxBytes": max_bytes,
                  "waitMs": int(round(wait * 1000))}
        if timeout is None:
            timeout = wait + 30.0
        return self.client.call("process/read", params, timeout=timeout)

    def __enter__(self) -> "RemoteProcess":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Kill the remote tree if it is still running, wait up to 5 s for its exit, stop tracking it.

        Unlike ``Popen.__exit__`` (which waits however long the child runs):
        waiting could hang, and leaving it would keep it alive on the server
        until the session expires.  Errors of a lost connection are ignored.
        """
        try:
            if self.returncode is None and not self.done:
                self.terminate(timeout=5.0)
                self.wait(timeout=5.0)
        except (ExecServerError, RpcError, TimeoutError, OSError):
            pass
        finally:
            forget = getattr(self.client, "forget", None)
            if forget is not None:
                forget(self)

    def __repr__(self) -> str:
        return "<RemoteProcess %s returncode=%r>" % (self.process_id, self.returncode)
