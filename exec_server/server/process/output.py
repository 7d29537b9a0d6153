"""A process's output log: seq numbers, retention, long polls, and the exited/closed order.

Output, exited and closed events share one sequence starting at 1
(PROTOCOL.md 5.3).  :class:`OutputLog` numbers them, keeps output within the
retention limits of PROTOCOL.md 6 (oldest chunks evicted first), answers
``process/read`` (after a seq, within a byte budget, long-polling) and
publishes ``exited`` once the exit is known and ``closed`` once both the exit
and the end of every stream are: whichever comes last publishes ``closed``.

It is a plain data structure: it knows no child process, thread, pipe or
JSON.  Each event goes, as a small value (:class:`OutputChunk`,
:class:`Exited`, :class:`Closed`), to the ``emit`` callable it was given, in
seq order and never from two threads at once; the session encodes them at
the edge (:mod:`exec_server.protocol.wire`).
"""

import base64
import collections
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, List, NamedTuple, Optional, Union

#: Output texts that mark a failure as a likely sandbox denial (PROTOCOL.md 9).
SANDBOX_DENIAL_MARKERS = (
    "operation not permitted", "permission denied", "read-only file system",
    "seccomp", "sandbox", "landlock", "failed to write file",
)
#: The exit code of a pipe child killed by SIGSYS (a seccomp denial); None on Windows.
_SIGSYS_EXIT_CODE = None if sys.platform.startswith("win") else 128 + 31


class ReadAborted(Exception):
    """A long poll was abandoned (connection gone or session taken over)."""


class OutputChunk(NamedTuple):
    """One ``process/output`` event (and a retained chunk)."""

    seq: int
    stream: str  #: ``stdout``, ``stderr`` or ``pty``
    chunk: str  #: the bytes as standard base64 text, as the protocol carries them
    size: int  #: decoded bytes


@dataclass(frozen=True)
class Exited:
    """The ``process/exited`` event."""

    seq: int
    exit_code: int
    sandbox_denied: bool


@dataclass(frozen=True)
class Closed:
    """The ``process/closed`` event: exited and every stream ended; the last event."""

    seq: int


Event = Union[OutputChunk, Exited, Closed]


@dataclass(frozen=True)
class ReadResult:
    """What a ``process/read`` returns (PROTOCOL.md 5.4), before encoding."""

    chunks: List[OutputChunk]
    next_seq: int
    exited: bool
    exit_code: Optional[int]
    closed: bool
    sandbox_denied: bool


class OutputLog:
    """The event sequence and retained output of one process.  Thread-safe.

    Args:
        streams: how many streams must end before ``closed`` (2 for pipes, 1
            for a PTY).
        retained_bytes: most decoded bytes of output kept for reads.
        retained_chunks: most output chunks kept for reads.
        emit: called with each event, in seq order, one call at a time (under
            the log's publish lock: it must not call back into the log's
            publishing methods, and should be quick).
        sandboxed: the process runs confined, so a failing exit is checked
            for signs of a sandbox denial.
    """

    def __init__(self, streams: int, retained_bytes: int, retained_chunks: int, emit: Callable[[Event], None],
                 sandboxed: bool = False):
        self._emit = emit
        self._retained_limit = retained_bytes
        self._chunks_limit = retained_chunks
        self._sandboxed = sandboxed
        self._publish_lock = threading.Lock()  # held from numbering an event until it is emitted
        self._changed = threading.Condition(threading.Lock())  # guards the state below; wakes long polls
        self._next_seq = 1
        self._chunks: Deque[OutputChunk] = collections.deque()
        self._retained_bytes = 0
        self._open_streams = streams
        self._exit_code: Optional[int] = None
        self._exited = False
        self._closed = False

    # ------------------------------------------------------------- publishing
    def output(self, stream: str, data: bytes) -> None:
        """Number, retain and emit a chunk read from ``stream``."""
        chunk = base64.b64encode(data).decode("ascii")
        with self._publish_lock:
            with self._changed:
                seq = self._next_seq
                self._next_seq = seq + 1
                event = OutputChunk(seq, stream, chunk, len(data))
                self._retain(event)
                self._changed.notify_all()
            self._emit(event)

    def _retain(self, event: OutputChunk) -> None:
        chunks = self._chunks
        chunks.append(event)
        self._retained_bytes += event.size
        while chunks and (self._retained_bytes > self._retained_limit or len(chunks) > self._chunks_limit):
            self._retained_bytes -= chunks.popleft().size

    def stream_ended(self) -> None:
        """A stream reached EOF; emits ``closed`` if it was the last and the exit is known."""
        with self._publish_lock:
            with self._changed:
                self._open_streams -= 1
                self._changed.notify_all()
                close_now = self._open_streams == 0 and self._exited and not self._closed
            if close_now:
                self._publish_closed()

    def exit(self, exit_code: int) -> None:
        """Emit ``exited`` with ``exit_code``, then ``closed`` if every stream has ended."""
        with self._publish_lock:
            with self._changed:
                seq = self._next_seq
                self._next_seq = seq + 1
                self._exit_code = exit_code
                self._exited = True
                denied = self._sandbox_denied_locked()
                close_now = self._open_streams == 0 and not self._closed
                self._changed.notify_all()
            self._emit(Exited(seq, exit_code, denied))
            if close_now:
                self._publish_closed()

    def _publish_closed(self) -> None:
        """Emit ``closed`` (the caller holds the publish lock)."""
        with self._changed:
            seq = self._next_seq
            self._next_seq = seq + 1
            self._closed = True
            self._changed.notify_all()
        self._emit(Closed(seq))

    def _sandbox_denied_locked(self) -> bool:
        if not self._sandboxed or not self._exit_code:
            return False
        text = b"".join(base64.b64decode(c.chunk) for c in self._chunks).decode("utf-8", "replace").lower()
        if any(marker in text for marker in SANDBOX_DENIAL_MARKERS):
            return True
        return self._exit_code == _SIGSYS_EXIT_CODE

    # ------------------------------------------------------------------ state
    @property
    def exit_code(self) -> Optional[int]:
        with self._changed:
            return self._exit_code

    @property
    def exited(self) -> bool:
        with self._changed:
            return self._exited

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    def wait_streams_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every stream has ended; True if they have."""
        with self._changed:
            return self._changed.wait_for(lambda: self._open_streams == 0, timeout=timeout)

    def wake(self) -> None:
        """Wake every long poll so it re-checks its abort test."""
        with self._changed:
            self._changed.notify_all()

    # ---------------------------------------------------------------- reading
    def read(self, after_seq: int = 0, max_bytes: Optional[int] = None, wait: float = 0.0,
             aborted: Callable[[], Optional[Exception]] = lambda: None) -> ReadResult:
        """Retained output after ``after_seq``, waiting up to ``wait`` seconds for some (PROTOCOL.md 5.4).

        Returns at once if there is output after ``after_seq``, the process
        has closed, or it has exited with events after ``after_seq``.

        Args:
            after_seq: return output events with a greater seq.
            max_bytes: decoded-byte budget (at least one chunk is returned),
                or None for no limit; with a budget ``next_seq`` follows the
                last chunk returned.
            wait: long-poll limit in seconds.
            aborted: called (under the log's lock) before each look; a
                returned exception is raised.
        Raises:
            whatever ``aborted`` returns, e.g. :class:`ReadAborted`.
        """
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                error = aborted()
                if error is not None:
                    raise error
                result = self._read_locked(after_seq, max_bytes)
                if result.chunks or result.closed or (result.exited and after_seq < self._next_seq - 1):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self._changed.wait(min(remaining, 3600.0))  # any u64 waitMs: no timeout overflow

    def _read_locked(self, after_seq: int, max_bytes: Optional[int]) -> ReadResult:
        chunks: List[OutputChunk] = []
        total = 0
        last_seq = None
        for event in self._chunks:
            seq = event[0]
            if seq <= after_seq:
                continue
            size = event[3]
            if max_bytes is not None and chunks and (total + size > max_bytes or total >= max_bytes):
                break
            chunks.append(event)
            total += size
            last_seq = seq
        next_seq = last_seq + 1 if max_bytes is not None and last_seq is not None else self._next_seq
        return ReadResult(chunks, next_seq, self._exited, self._exit_code, self._closed,
                          self._sandbox_denied_locked() if self._exited else False)
