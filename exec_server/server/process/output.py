"""A process's output log: seq numbers, retention, long polls, and the exited/closed order.

Output, exited and closed events share one sequence starting at 1
(PROTOCOL.md 5.3).  :class:`OutputLog` numbers them, keeps output within the
retention limits of PROTOCOL.md 6 (oldest chunks evicted first), answers
``process/read`` (after a seq, within a byte budget, long-polling) and
publishes ``exited`` once the exit is known and ``closed`` once both the exit
and the end of every stream are: whichever comes last publishes ``closed``.

Past the in-memory retention, output is also written through to a
:class:`~exec_server.server.process.spool.Spool` (when the log was given a
way to get one): from the first eviction on, every chunk goes to disk as it
arrives, memory keeps the newest, and a read serves older seqs from disk with
the same seq and chunk boundaries.

It is a plain data structure: it knows no child process, thread, pipe or
JSON.  Each event goes, as a small value (:class:`OutputChunk`,
:class:`Exited`, :class:`Closed`), to the ``emit`` callable it was given, in
seq order and never from two threads at once; the session encodes them at
the edge (:mod:`exec_server.protocol.wire`).
"""

import collections
import sys
import threading
import time
from typing import Callable, Deque, List, NamedTuple, Optional, Union

from exec_server.protocol import b64
from exec_server.server.process.spool import Spool

#: Output texts that mark a failure as a likely sandbox denial (PROTOCOL.md 9).
SANDBOX_DENIAL_MARKERS = (
    "operation not permitted", "permission denied", "read-only file system",
    "seccomp", "sandbox", "landlock", "failed to write file",
)
#: The exit code of a pipe child killed by SIGSYS (a seccomp denial); None on Windows.
_SIGSYS_EXIT_CODE = None if sys.platform.startswith("win") else 128 + 31


class OutputChunk(NamedTuple):
    """One ``process/output`` event (and a retained chunk)."""

    seq: int
    stream: str  #: ``stdout``, ``stderr`` or ``pty``
    chunk: str  #: the bytes as standard base64 text, as the protocol carries them
    size: int  #: decoded bytes


class Exited(NamedTuple):
    """The ``process/exited`` event."""

    seq: int
    exit_code: int
    sandbox_denied: bool


class Closed(NamedTuple):
    """The ``process/closed`` event: exited and every stream ended; the last event."""

    seq: int


Event = Union[OutputChunk, Exited, Closed]
#: Takes a process's events (one or more, in seq order) to deliver in one write.
EventListener = Callable[[List[Event]], None]


class ReadResult(NamedTuple):
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
        spool: called once, at the first eviction, for the spool that takes
            the output from then on (None from it, or no callable: memory only).
        max_read_bytes: most decoded bytes one read returns whatever its
            ``max_bytes`` (None: no limit).
        max_read_chunks: most chunks one read returns (None: no limit).
    """

    def __init__(self, streams: int, retained_bytes: int, retained_chunks: int, emit: Callable[[Event], None],
                 sandboxed: bool = False, spool: Optional[Callable[[], Optional[Spool]]] = None,
                 max_read_bytes: Optional[int] = None, max_read_chunks: Optional[int] = None):
        self._emit = emit
        self._spool_factory = spool
        self._spool: Optional[Spool] = None
        self._max_read_bytes = max_read_bytes
        self._max_read_chunks = max_read_chunks
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
        chunk = b64.encode(data)
        with self._publish_lock:
            seq = self._next_seq  # only publishers change it, under the publish lock
            spool = self._spool
            if spool is not None:  # written through before it can be evicted from memory
                spool.append(seq, stream, data)
            with self._changed:
                self._next_seq = seq + 1
                event = OutputChunk(seq, stream, chunk, len(data))
                self._retain(event)
                self._changed.notify_all()
            self._emit(event)

    def _retain(self, event: OutputChunk) -> None:
        chunks = self._chunks
        chunks.append(event)
        self._retained_bytes += event.size
        if self._spool is None and self._spool_factory is not None and (
                self._retained_bytes > self._retained_limit or len(chunks) > self._chunks_limit):
            self._start_spool()
        while chunks and (self._retained_bytes > self._retained_limit or len(chunks) > self._chunks_limit):
            self._retained_bytes -= chunks.popleft().size

    def _start_spool(self) -> None:
        """The first eviction: write every retained chunk to a new spool, which takes all later output."""
        factory, self._spool_factory = self._spool_factory, None
        spool = factory() if factory is not None else None
        if spool is None:
            return
        self._spool = spool
        for event in self._chunks:
            if not spool.append(event.seq, event.stream, b64.decode_trusted(event.chunk)):
                break

    def discard_spool(self) -> None:
        """Delete the spooled output (the process is forgotten or its session ended); memory stays."""
        with self._changed:
            self._spool_factory = None
            spool = self._spool
        if spool is not None:
            spool.discard()

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
        text = b"".join(b64.decode_trusted(c.chunk) for c in self._chunks).decode("utf-8", "replace").lower()
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
             aborted: Callable[[], Optional[Exception]] = lambda: None,
             reserve: Callable[[int, int], None] = lambda size, chunks: None) -> ReadResult:
        """Retained output after ``after_seq``, waiting up to ``wait`` seconds for some (PROTOCOL.md 5.4).

        Returns at once if there is output after ``after_seq``, the process
        has closed, or it has exited with events after ``after_seq``.

        Args:
            after_seq: return output events with a greater seq.
            max_bytes: decoded-byte budget (at least one chunk is returned),
                or None for no limit; with a budget ``next_seq`` follows the
                last chunk returned.  ``max_read_bytes`` caps either, and
                ``max_read_chunks`` the chunks; a read they stop also ends
                ``next_seq`` after its last chunk.
            wait: long-poll limit in seconds.
            aborted: called (under the log's lock) before each look; a
                returned exception is raised.
            reserve: called (outside the lock) with the most bytes and chunks
                the read may return (within the budgets, or less when less is
                kept) before it reads spooled output from disk (the server's
                result budget, :mod:`~exec_server.server.budget`).
        Raises:
            whatever ``aborted`` returns, e.g. :class:`~exec_server.server.process.ReadAborted`;
            whatever ``reserve`` raises.
        """
        deadline = time.monotonic() + wait
        budget = max_bytes
        if self._max_read_bytes is not None and (budget is None or budget > self._max_read_bytes):
            budget = self._max_read_bytes
        with self._changed:
            while True:
                error = aborted()
                if error is not None:
                    raise error
                if self._spooled_after_locked(after_seq) is not None:
                    available, count = self._spool.extent_after(after_seq)  # type: ignore[union-attr]
                    available, count = available + self._retained_bytes, count + len(self._chunks)
                    break
                result = self._read_locked(after_seq, max_bytes, budget)
                if result.chunks or result.closed or (result.exited and after_seq < self._next_seq - 1):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self._changed.wait(min(remaining, 3600.0))  # any u64 waitMs: no timeout overflow
        size = available if budget is None else min(budget, available)  # what this read may return, at most
        limit = self._max_read_chunks
        reserve(size, min(count, size, count if limit is None else limit))  # each chunk holds a byte at least
        return self._read_spooled(after_seq, max_bytes, budget)

    def reads_spool(self, after_seq: int) -> bool:
        """Whether a read after ``after_seq`` starts on disk (its result may be large: not for a reader thread)."""
        with self._changed:
            return self._spooled_after_locked(after_seq) is not None

    def _spooled_after_locked(self, after_seq: int) -> Optional[int]:
        """The seq of the first chunk after ``after_seq`` that only the spool still holds, or None."""
        spool = self._spool
        if spool is None:
            return None
        seq = spool.first_after(after_seq)
        if seq is None or (self._chunks and seq >= self._chunks[0][0]):
            return None
        return seq

    def _read_spooled(self, after_seq: int, max_bytes: Optional[int], budget: Optional[int]) -> ReadResult:
        """A read that starts on disk: spooled ranges (read outside the lock), then memory."""
        spool = self._spool
        assert spool is not None
        chunks: List[OutputChunk] = []
        total = 0
        while True:
            position = chunks[-1][0] if chunks else after_seq
            with self._changed:
                if self._spooled_after_locked(position) is None:
                    return self._read_locked(position, max_bytes, budget, chunks, total)
                before = self._chunks[0][0] if self._chunks else self._next_seq
            remaining = None if budget is None else budget - total
            room = None if self._max_read_chunks is None else self._max_read_chunks - len(chunks)
            if chunks and ((remaining is not None and remaining <= 0) or room == 0):
                break
            spooled = spool.read(position, before, remaining, at_least_one=not chunks, max_chunks=room)
            if not spooled:
                if chunks:
                    break  # the budget stops it, or the rest was evicted meanwhile
                continue  # evicted meanwhile: look again
            encode = b64.encode
            for seq, stream, view in spooled:
                chunks.append(OutputChunk(seq, stream, encode(view), len(view)))
                total += len(view)
        with self._changed:  # stopped by the budget: nextSeq follows the last chunk
            return ReadResult(chunks, chunks[-1][0] + 1, self._exited, self._exit_code, self._closed,
                              self._sandbox_denied_locked() if self._exited else False)

    def _read_locked(self, after_seq: int, max_bytes: Optional[int], budget: Optional[int],
                     chunks: Optional[List[OutputChunk]] = None, total: int = 0) -> ReadResult:
        """Retained chunks in memory after ``after_seq``, appended to ``chunks`` (read from disk) within ``budget``."""
        if chunks is None:
            chunks = []
        limited = False
        last_seq = chunks[-1][0] if chunks else None
        for event in self._chunks:
            seq = event[0]
            if seq <= after_seq:
                continue
            size = event[3]
            if chunks and ((budget is not None and (total + size > budget or total >= budget))
                           or len(chunks) == self._max_read_chunks):
                limited = True
                break
            chunks.append(event)
            total += size
            last_seq = seq
        bounded = max_bytes is not None or limited
        next_seq = last_seq + 1 if bounded and last_seq is not None else self._next_seq
        return ReadResult(chunks, next_seq, self._exited, self._exit_code, self._closed,
                          self._sandbox_denied_locked() if self._exited else False)
