"""A managed process's stdin: idempotent writes, a bounded queue, one writer thread, end of file.

``process/write`` (PROTOCOL.md 5.5) accepts bytes at once; they wait in a
queue that one thread per process writes to the child's stdin pipe or PTY
master, so a child that does not read blocks that thread, never a
connection.  The queue holds at most ``max_stdin_queue_bytes`` (README
"Limits"); ``writeId``\\ s make a resent write a no-op.
"""

import collections
import logging
import os
import queue
import threading
import time
from typing import IO, Any, Callable, Optional

from exec_server.protocol.errors import InternalError, ServerOverloaded, os_error_message

log = logging.getLogger(__name__)

#: ``writeId``\ s remembered per process for idempotent writes (PROTOCOL.md 5.5).
REMEMBERED_WRITE_IDS = 4096
#: A ``writeId`` longer than this (characters) is remembered by its SHA-256 digest, so the 4096 ids
#: of a process take at most ~0.5 MB whatever their length (a UUID, as the Codex client sends, is 36).
WRITE_ID_KEPT_CHARS = 64

#: Seconds :meth:`StdinWriter.release` flushes a closed PTY's input for its writer to end.
RELEASE_WAIT = 2.0
#: Seconds :meth:`StdinWriter.release` waits for an idle writer to end before it flushes.
RELEASE_JOIN = 0.05
#: Most bytes one write to a PTY takes, so a released writer stops after at most this many.
PTY_WRITE_BYTES = 4096

#: Queued after the bytes of a ``closeStdin`` write: end of file for the child.
_CLOSE_STDIN: Any = object()


def _remembered(write_id: str) -> str:
    if len(write_id) <= WRITE_ID_KEPT_CHARS:
        return write_id
    import hashlib  # only for an unusually long id
    return "sha256:" + hashlib.sha256(write_id.encode("utf-8", "surrogatepass")).hexdigest()


class StdinWriter:
    """The queue and writer thread of one child's stdin.  Thread-safe.

    Args:
        process_id: for log lines.
        thread_name: the writer thread's name.
        limit: ``max_stdin_queue_bytes``, bytes.
        ended: True once the child has exited (a write then fails).
        pipe: the child's stdin pipe, or None with a PTY.
        pty_master: a descriptor of the writer's own on the PTY master (a duplicate, which the
            writer closes), or None once the PTY is closed: the process's own descriptor may be
            closed, and its number reused by another file, while a write waits.
        pty_eof: ``pty_eof(fd, count)`` writes the PTY's EOF character ``count`` times on ``fd``.
    """

    def __init__(self, process_id: str, thread_name: str, limit: int, ended: Callable[[], bool],
                 pipe: Optional[IO[bytes]], pty_master: Callable[[], Optional[int]],
                 pty_eof: Callable[[int, int], None]):
        self._process_id = process_id
        self._thread_name = thread_name
        self._limit = limit
        self._ended = ended
        self._pipe = pipe
        self._pty_master = pty_master
        self._pty_eof = pty_eof
        self._lock = threading.Lock()  # guards the write ids and the queue
        self._write_ids: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._queue: "Optional[queue.Queue[Optional[bytes]]]" = None
        self._closing = False  # a closeStdin write was accepted
        self._queued = 0  # bytes accepted and not yet written or dropped
        self._thread: Optional[threading.Thread] = None  # the writer, once the first write came
        self._released = False  # the PTY's terminal closed: the writer stops between pieces

    def write(self, data: bytes, write_id: str, close: bool = False) -> str:
        """Queue ``data``, then end of file if ``close``; see :meth:`ManagedProcess.write`.

        Returns:
            ``"stdinClosed"`` after a close, else ``"accepted"`` (also for a
            ``write_id`` already accepted: nothing is written again).
        Raises:
            InternalError: ``failed to write to process stdin`` (the child has
                exited), or ``stdin queue is full ...`` (``data.reason`` ``stdinQueueFull``).
        """
        key = _remembered(write_id)
        with self._lock:
            if key in self._write_ids:
                return "accepted"
            if self._closing:
                return "stdinClosed"
            if self._ended():
                if close and not data:
                    return "accepted"  # nothing left to close
                raise InternalError("failed to write to process stdin")
            if self._queued and self._queued + len(data) > self._limit:
                raise InternalError("stdin queue is full: %d bytes wait for the process to read them (limit %d)"
                                    % (self._queued, self._limit),
                                    data={"reason": "stdinQueueFull", "queuedBytes": self._queued,
                                          "limitBytes": self._limit})
            if self._queue is None:
                self._start_writer()  # before anything is recorded: a write it refuses can be sent again
            self._queued += len(data)
            self._write_ids[key] = None
            if len(self._write_ids) > REMEMBERED_WRITE_IDS:
                self._write_ids.popitem(last=False)
            if data:
                self._queue.put(data)
            if close:
                self._closing = True
                self._queue.put(_CLOSE_STDIN)
        return "accepted"

    def _start_writer(self) -> None:
        """The writer thread and its descriptor, at the first write (held lock).  Raises, with nothing started:
        InternalError with the OS error when the PTY's descriptor cannot be had (EMFILE) or the terminal is
        closed; ServerOverloaded (-32001) when no thread can start.  (A writer that failed there left every
        later write 'accepted' and dropped, its end of file too.)"""
        try:
            fd = self._pipe.fileno() if self._pipe is not None else self._pty_master()
        except OSError as exc:
            raise InternalError("failed to write to process stdin: %s" % os_error_message(exc)) from None
        if fd is None:  # the PTY is closed already
            raise InternalError("failed to write to process stdin")
        pending: "queue.Queue[Optional[bytes]]" = queue.Queue()
        thread = threading.Thread(target=self._feed, args=(pending, fd), name=self._thread_name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # a task limit, no memory for a stack
            if self._pipe is None:
                os.close(fd)
            raise ServerOverloaded("no thread to write to the process's stdin: %s" % exc) from None
        self._queue, self._thread = pending, thread

    def stop(self) -> None:
        """The child exited: end the writer thread once it is unblocked (or close the unused pipe)."""
        with self._lock:
            pending = self._queue
            if pending is None and self._pipe is not None:
                self._close_pipe()
        if pending is not None:
            pending.put(None)

    def release(self, terminal: Optional[str]) -> None:
        """The PTY's every terminal descriptor is closed: nothing queued can be read any more.

        The queue is emptied and the writer told to end.  A child in raw
        mode that exited with input queued left the writer blocked in a
        write for good (a thread and a descriptor); one still in a write
        then has the terminal's input flushed until it ends (PTY writes are
        at most :data:`PTY_WRITE_BYTES`), for at most :data:`RELEASE_WAIT`
        seconds, on a thread of its own.  ``terminal`` is opened here, while
        the caller's master keeps the path this PTY's (None: a terminal
        without a path; a writer in a write then stays in it).
        """
        self._released = True
        pending, thread = self._queue, self._thread
        if pending is None or thread is None:
            return
        dropped = 0
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                break
            dropped += len(item) if isinstance(item, bytes) else 0
        with self._lock:
            self._queued -= dropped
        pending.put(None)
        thread.join(RELEASE_JOIN)  # an idle writer ends at once
        if not thread.is_alive() or terminal is None:
            return
        try:
            fd = os.open(terminal, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return
        threading.Thread(target=_flush_until_ended, args=(fd, thread), name=self._thread_name + "-release",
                         daemon=True).start()

    def _close_pipe(self) -> None:
        try:
            self._pipe.close()  # type: ignore[union-attr]
        except OSError:
            pass

    def _feed(self, pending: "queue.Queue[Optional[bytes]]", fd: int) -> None:
        broken = False
        line_open = False  # the last byte written to a PTY did not end a line
        while True:
            data = pending.get()
            if data is None:
                break
            if data is _CLOSE_STDIN:
                if self._pipe is None and not broken:  # EOF twice after an unfinished line
                    self._pty_eof(fd, 2 if line_open else 1)
                break
            view = memoryview(data)
            piece = PTY_WRITE_BYTES if self._pipe is None else len(view)
            while view and not broken and not self._released:
                try:
                    view = view[os.write(fd, view[:piece]):]
                except InterruptedError:
                    continue
                except OSError as exc:
                    log.debug("stdin of process %r: %s", self._process_id, exc)
                    broken = True
            line_open = data[-1:] not in (b"\n", b"\r")
            with self._lock:
                self._queued -= len(data)
        if self._pipe is not None:
            self._close_pipe()
        else:
            os.close(fd)


def _flush_until_ended(fd: int, writer: threading.Thread) -> None:
    """Flush the input of terminal ``fd`` (the writer's bytes, which nobody can read) until ``writer`` ends,
    at most :data:`RELEASE_WAIT` seconds; then close ``fd``."""
    import termios

    try:
        deadline = time.monotonic() + RELEASE_WAIT
        while writer.is_alive() and time.monotonic() < deadline:
            termios.tcflush(fd, termios.TCIFLUSH)
            writer.join(0.005)
    except OSError:
        pass
    finally:
        os.close(fd)
