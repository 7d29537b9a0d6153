"""The control calls of a :class:`~exec_server.client.process.RemoteProcess`: stdin, signals, kill, raw reads.

:class:`ProcessControl` is the half of a ``RemoteProcess`` that sends
requests about its process (``process/write``, ``process/resize``,
``process/signal``, ``process/terminate``, ``process/read``); the other
half, in :mod:`exec_server.client.process`, receives its events.
"""

import contextlib
import os
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from exec_server.client.buffer import EXIT_READ_TIMEOUT
from exec_server.client.events import StdinClosedError, StdinQueueFullError
from exec_server.client.interfaces import (CallTimeout, Caller, ExtensionNotSupported, FreshId, RequestOutcomeUnknown,
                                           as_bytes, result_member)
from exec_server.client.interfaces import deadline as _deadline
from exec_server.client.interfaces import remaining as _remaining
from exec_server.common.durations import check_seconds
from exec_server.protocol import b64
from exec_server.protocol.errors import ExecServerError, InternalError, RpcError
from exec_server.protocol.jsonrpc import utf8_size
from exec_server.protocol.wire import dumps

#: Bytes of a ``process/write`` request besides its chunk's base64 and its processId (the id, the member
#: names, a ``writeId``, ``closeStdin``, a ``trace`` context with a ``tracestate`` of up to 512 characters):
#: what :meth:`ProcessControl.write_all` leaves.
WRITE_REQUEST_OVERHEAD = 1024
#: Seconds a ``start`` of the client's own id that timed out or was interrupted waits for the answer of the
#: ``process/terminate`` it sends for what it may have started (:func:`terminate_unknown_start`).
UNKNOWN_START_KILL_WAIT = 5.0
#: The longest ``process/read`` wait: ``waitMs`` is a u64 (PROTOCOL.md 5.4).
MAX_WAIT_MS = 2 ** 64 - 1


def terminate_open(call: Callable[..., Any], open_processes: Callable[[], Sequence[Any]], wait: float) -> None:
    """``process/terminate`` each handle ``open_processes()`` lists, for ``wait`` seconds in all (``Client.close``).

    A handle whose ``process/start`` is still in flight (``started`` False)
    is waited for, then terminated: a terminate sent first could reach the
    server before the start, which would then run unhindered.  The caller
    makes sure no new start begins meanwhile.  Errors (a process gone
    already, the connection lost, the time used up) are ignored: best effort.
    """
    deadline = _deadline(wait)
    sent = set()  # process ids terminated already
    while _remaining(deadline) != 0.0:
        handles = [handle for handle in open_processes() if handle.process_id not in sent]
        if not handles:
            return
        ready = [handle for handle in handles if handle.started]
        for handle in ready:
            sent.add(handle.process_id)
            try:
                call("process/terminate", {"processId": handle.process_id}, timeout=_remaining(deadline))
            except Exception:
                pass
        if not ready:
            time.sleep(min(0.01, _remaining(deadline) or 0.01))  # starts in flight: until answered or failed


def terminate_unknown_start(call: Callable[..., Any], process_id: str, error: BaseException) -> None:
    """After the ``process/start`` of ``process_id`` raised ``error``: terminate what it may have started.

    For a start the client gave its own id (a ``FreshId``, which no other
    process has) that timed out or was interrupted (^C): it may have reached
    the server, or reach it yet, and as ``Popen`` leaves no child when it
    raises, ``process/terminate`` is sent for it (:func:`terminate_answered`)
    for :data:`UNKNOWN_START_KILL_WAIT` s at most; past that the process, if
    it runs, is left to the session's end.  Nothing for any other error
    (nothing started, or the client ended), nor for an id of the caller's (an
    older process may hold it).
    """
    if not (isinstance(process_id, FreshId) and process_id.terminate_on_failure):
        return
    if not isinstance(error, CallTimeout) and isinstance(error, Exception):
        return
    terminate_answered(call, process_id, _deadline(UNKNOWN_START_KILL_WAIT))


def terminate_answered(call: Callable[..., Any], process_id: str, deadline: Optional[float]) -> None:
    """Send ``process/terminate`` for ``process_id`` until answered or ``deadline`` (``time.monotonic()``) passes.

    It is sent even when no time is left (then not waited for).  One lost in
    a drop (``RequestOutcomeUnknown``: it may never have arrived) is sent
    again once the client recovered, within the deadline.  Any other error
    ends it: best effort, as the callers (a start that failed:
    :func:`terminate_unknown_start`, ``Client.run``) have nothing better to do.
    """
    while True:
        try:
            call("process/terminate", {"processId": process_id}, timeout=_remaining(deadline))
            return
        except RequestOutcomeUnknown:  # dropped before its answer (it may never have arrived): again, recovered
            if _remaining(deadline) == 0.0:
                return
        except Exception:
            return


class ProcessControl:
    """Requests about one remote process; a base of :class:`~exec_server.client.process.RemoteProcess`.

    Attributes (set by the subclass):
        client: what the calls go through (the :class:`Client` that started it).
        process_id: the protocol's ``processId``.
        args: the argv, for ``subprocess.TimeoutExpired``.
        stdin_writable: True while the process's stdin can be written: started with ``stdin=True`` or
            ``tty=True``, and not closed (or found closed) through this handle.
    """

    client: Caller
    process_id: str
    args: List[str]
    stdin_writable = False  # True while its stdin can be written (started with one, not closed through the handle)
    _writes_in_flight = 0  # write() and write_all() calls under way (communicate's end of file waits for them)
    _writes_lock = threading.Lock()  # (RemoteProcess gives each handle its own)

    def write(self, data: bytes, timeout: Optional[float] = 30.0, *, close_stdin: bool = False,
              write_id: Optional[str] = None) -> None:
        """Write bytes to the child's stdin or PTY (``process/write``).

        Args:
            data: the bytes (may be empty).
            timeout: seconds to wait for the answer.
            close_stdin: then close stdin after them (see :meth:`close_stdin`).
            write_id: the ``writeId`` (default: a new random one); the same id sent again (a write whose
                answer never came) is written once by the server (PROTOCOL.md 5.5).
        Raises:
            TypeError: ``data`` is text or not bytes-like (an int, a list).
            StdinClosedError: the process has no writable stdin, or it was closed.
            ProcessLookupError: the server does not know the process.
            StdinQueueFullError: the server's stdin queue for the process is
                full (the child is not reading); nothing was queued.
            RequestTooLarge: ``data`` (as base64) is over the server's message
                limit; nothing was written (:meth:`write_all` writes in pieces).
            InternalError: the process has exited (``failed to write to process stdin``),
                or the server's answer is malformed.
            ExtensionNotSupported: ``close_stdin`` and the server lacks ``closeStdin``.
            CallTimeout: no answer within ``timeout`` (a reconnect included).

        A write whose connection drops before the answer is sent again after
        the reconnect with the same ``writeId``, which the server remembers
        (PROTOCOL.md 5.5): the bytes reach the child once.
        """
        if isinstance(data, str):
            raise TypeError("process data must be bytes, not str: encode it (text.encode())")
        with self._writing():
            self._write(data, timeout, close_stdin, write_id)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Counts a write under way in :attr:`_writes_in_flight`."""
        with self._writes_lock:
            self._writes_in_flight += 1
        try:
            yield
        finally:
            with self._writes_lock:
                self._writes_in_flight -= 1

    def _write(self, data: bytes, timeout: Optional[float], close_stdin: bool, write_id: Optional[str]) -> None:
        chunk = b64.encode(as_bytes(data, "process data"))
        params = {"processId": self.process_id, "chunk": chunk, "writeId": write_id or os.urandom(16).hex()}
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
        if close_stdin or status == "stdinClosed":
            self.stdin_writable = False
        if status == "stdinClosed":
            raise StdinClosedError("process %s has no writable stdin" % self.process_id)
        if status == "unknownProcess":
            raise ProcessLookupError("unknown process id %s" % self.process_id)

    def write_all(self, data: bytes, timeout: Optional[float] = 30.0, *, close_stdin: bool = False,
                  piece: int = 1 << 20) -> None:
        """Write ``data`` in pieces of ``piece`` bytes, waiting while the server's stdin queue is full.

        A piece is made smaller when its request would be over the server's
        advertised message limit (:attr:`Client.max_request_bytes`).

        Like ``socket.sendall``: a :class:`StdinQueueFullError` (the child is
        not reading yet) is retried every 50 ms until ``timeout`` seconds have
        passed in all.  ``close_stdin`` closes stdin after the last piece.

        Raises:
            CallTimeout: not all written within ``timeout``.
            StdinClosedError, InternalError, ExtensionNotSupported: as for :meth:`write`.
        """
        if isinstance(data, str):
            raise TypeError("process data must be bytes, not str: encode it (text.encode())")
        self._write_pieces(memoryview(as_bytes(data, "process data")), _deadline(timeout), timeout, close_stdin, piece,
                           os.urandom(16).hex())

    def _write_pieces(self, data: memoryview, deadline: Optional[float], timeout: Optional[float], close_stdin: bool,
                      piece: int, ids: str, offset: int = 0, written: Optional[Callable[[int], None]] = None,
                      idle: Optional[Callable[[], None]] = None) -> None:
        """:meth:`write_all`'s loop from ``offset``; ``written(offset)`` is told after each piece, ``idle()``
        called while the server's stdin queue is full.  A piece's ``writeId`` is ``ids`` and its offset: one
        sent again after a timeout (its answer lost) is written once."""
        with self._writing():
            self._pieces(data, deadline, timeout, close_stdin, piece, ids, offset, written, idle)

    def _pieces(self, data: memoryview, deadline: Optional[float], timeout: Optional[float], close_stdin: bool,
                piece: int, ids: str, offset: int, written: Optional[Callable[[int], None]],
                idle: Optional[Callable[[], None]]) -> None:
        limit = self.client.max_request_bytes
        if limit is not None:  # each piece's base64 (4 characters for 3 bytes) and its request within the limit
            piece = max(1, min(piece, (limit - WRITE_REQUEST_OVERHEAD - utf8_size(dumps(self.process_id))) // 4 * 3))
        while True:
            chunk = data[offset:offset + piece]
            close = close_stdin and offset + len(chunk) == len(data)
            if not (chunk or close):
                return
            try:
                self.write(chunk, timeout=_remaining(deadline), close_stdin=close, write_id="%s:%d" % (ids, offset))
            except StdinQueueFullError:
                if _remaining(deadline) == 0.0:
                    raise CallTimeout(self.args, timeout) from None
                if idle is not None:
                    idle()
                time.sleep(min(0.05, _remaining(deadline) or 0.05))
                continue
            except CallTimeout:  # a piece's call got what was left: the whole write timed out
                raise CallTimeout(self.args, timeout) from None
            offset += len(chunk)
            if written is not None:
                written(offset)
            if close:
                return

    def close_stdin(self, timeout: Optional[float] = 30.0) -> None:
        """End of file on the child's stdin, after every byte already written (our extension).

        ``process/write`` with ``closeStdin: true``: a pipe is closed; a PTY
        gets its EOF character (^D, README.rst "Protocol extensions").  A
        stdin already closed, or never writable, is left as it is.

        Raises:
            ExtensionNotSupported: the server does not advertise
                ``closeStdin`` (the Codex reference cannot close a stdin).
            ProcessLookupError, CallTimeout: as for :meth:`write`.
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

    def _exit_code_read(self, after_seq: int) -> Optional[int]:
        """The exit code a ``process/read`` of the closed process tells (within ``EXIT_READ_TIMEOUT`` s), or None."""
        try:
            result = self.client.call("process/read", {"processId": self.process_id, "afterSeq": after_seq,
                                                       "maxBytes": 0, "waitMs": 0}, timeout=EXIT_READ_TIMEOUT)
            code = result.get("exitCode") if result.get("exited") is True else None
        except (RpcError, ExecServerError, TimeoutError, AttributeError):
            return None
        return code if isinstance(code, int) and not isinstance(code, bool) else None

    def read(self, after_seq: int = 0, max_bytes: Optional[int] = None, wait: float = 0.0,
             timeout: Optional[float] = None, *, wait_ms: Optional[int] = None) -> Dict[str, Any]:
        """The raw ``process/read`` result: output after ``after_seq``, at most ``max_bytes``.

        ``wait`` is the seconds the server may wait for something new (long
        poll; PROTOCOL.md 5.4's ``waitMs``, a u64 of milliseconds); ``timeout``
        the seconds for the answer (default ``wait`` + 30; CallTimeout past
        it).  ``wait_ms`` (milliseconds) is deprecated.

        Raises:
            ValueError: ``wait`` is NaN, infinite, negative or past ``waitMs``'s range.
        """
        if wait_ms is not None:
            warnings.warn("RemoteProcess.read(wait_ms=) is deprecated; use wait= (seconds)",
                          DeprecationWarning, stacklevel=2)
            wait = wait_ms / 1000.0
        wait_ms = int(round(check_seconds(wait, "wait", longest=float("inf")) * 1000))  # not a setting: its range
        if wait_ms > MAX_WAIT_MS:
            raise ValueError("wait must be at most %d ms (waitMs is a u64), not %r s" % (MAX_WAIT_MS, wait))
        params = {"processId": self.process_id, "afterSeq": after_seq, "maxBytes": max_bytes, "waitMs": wait_ms}
        if timeout is None:
            timeout = wait + 30.0
        return self.client.call("process/read", params, timeout=timeout)
