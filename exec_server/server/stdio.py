"""stdio transport: newline-delimited JSON-RPC on stdin/stdout (PROTOCOL.md 1.4).

One compact JSON message per line each way; blank lines are ignored and
``\\r\\n`` is accepted; a line that does not parse gets -32600 with id -1 and
the server goes on.  stdout carries nothing but protocol: at start the
protocol stream takes a duplicate of fd 1 and fd 1 itself is pointed at
stderr, so a stray ``print`` can never corrupt it.

The connection ends on stdin EOF, on a protocol violation, or when the parent
process dies (its PID changes under us); every process tree the server
started is then killed and :func:`serve_stdio` returns.  At end of file the
requests read before it are answered first, for at most
:data:`EOF_ANSWER_WAIT` (a long poll still waiting then gets no answer).
The thread that reads stdin also writes replies, so a client that closed
stdin and no longer reads stdout would leave it blocked in a write, never
reading the end of file: a watchdog sees stdin's writer hang up (``poll``)
and ends the server once a write to stdout has been blocked for
:data:`HANGUP_WRITE_WAIT` seconds after it.  The dispatcher and
session code are the ones the WebSocket transport uses; only the framing
differs.
"""

import errno
import logging
import os
import sys
import threading
import time
from typing import BinaryIO, Callable, List, Optional, Union

from exec_server.common.pipes import STDIO_BUFFER_BYTES, enlarge_pipe
from exec_server.server.config import ServerConfig
from exec_server.server.dispatcher import Dispatcher
from exec_server.protocol.errors import InvalidRequest, ProtocolViolation
from exec_server.protocol.jsonrpc import UNKNOWN_ID, encode, error_response
from exec_server.protocol.wire import RawJson
from exec_server.server.sessions import SessionRegistry
from exec_server.server.signals import handle_stop_signals

log = logging.getLogger(__name__)

PARSE_ERROR_PREFIX = "failed to parse JSON-RPC message from exec-server stdio: "
#: How long requests read before stdin's end of file may take to be answered, seconds (less than the
#: client's ``CHILD_EXIT_GRACE``, after which a closing :meth:`Client.spawn` client kills the server).
EOF_ANSWER_WAIT = 1.0
#: How often the watchdog checks the parent PID and whether stdin's writer has hung up, seconds.
PARENT_CHECK_INTERVAL = 0.5
#: Once stdin's writer has hung up (the client closed it or died), how long a write to stdout may stay
#: blocked (nobody reads it) before the server ends anyway, killing its trees, seconds.
HANGUP_WRITE_WAIT = 2.0
#: At the end of serving, how long the watchdog thread has to see it and end, seconds (it wakes at once).
WATCH_END_WAIT = 1.0


class StdioConnection:
    """Serve one JSON-RPC connection over a pair of binary streams."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO, config: Optional[ServerConfig] = None):
        self.config = config or ServerConfig()
        self.registry = SessionRegistry(self.config)
        self.dispatcher = Dispatcher(self.registry, self.config)
        self._reader = reader
        self._writer = writer
        self._send_lock = threading.Lock()
        self._write_started: Optional[float] = None  # monotonic start of the write in progress, if any
        self._done = threading.Event()
        self._stop_lock = threading.Lock()
        self._rpc = self.dispatcher.open_connection(self.send_text, PARSE_ERROR_PREFIX, "stdio")

    def send_text(self, *texts: "Union[str, RawJson]") -> None:
        """Write each message as one line, all in one write (thread-safe).

        A large response in pieces (:class:`~exec_server.protocol.wire.RawJson`)
        is written piece by piece, never joined into one str or bytes.  A lone
        surrogate (a file name that is not UTF-8, echoed in an error) is
        written as ``?``, as the WebSocket transport writes it.
        """
        try:
            if len(texts) == 1 and isinstance(texts[0], RawJson):
                with self._send_lock:
                    for piece in texts[0].fragments():
                        self._write_all(piece.encode("utf-8", "replace"))
                    self._write_all(b"\n")
                return
            data = "".join(str(text) + "\n" for text in texts).encode("utf-8", "replace")
            with self._send_lock:
                self._write_all(data)
        except (OSError, ValueError) as exc:  # stdout closed (EPIPE): nobody can read an answer any more
            if not self._done.is_set():
                log.info("stdout failed (%s): the stdio connection ends", exc)
                threading.Thread(target=_exit_now, args=(self,), name="exec-server-stdout-lost", daemon=True).start()
            raise

    def _write_all(self, data: bytes) -> None:
        """Write every byte (under the send lock): a raw stream's ``write`` may take part of them (after a
        signal), or none (None) where whoever made stdout made it non-blocking and it is full: then wait
        until it drains.  :meth:`write_blocked_for` counts from its start."""
        self._write_started = time.monotonic()
        try:
            view = memoryview(data)
            while view:
                written = self._writer.write(view)
                if written is None:
                    _wait_writable(self._writer)
                    continue
                view = view[written:]
            self._writer.flush()
        finally:
            self._write_started = None

    def write_blocked_for(self) -> float:
        """Seconds the write to stdout in progress has taken so far; 0.0 when none is in progress."""
        started = self._write_started
        return 0.0 if started is None else max(0.0, time.monotonic() - started)

    def run(self) -> None:
        """Read lines until EOF or a violation, then kill every process tree."""
        limit = self.config.max_message_bytes
        try:
            while not self._done.is_set():
                line = self._reader.readline(limit + 2)
                if not line:  # end of file: answer what was read before it, for a while
                    self._rpc.wait_requests(EOF_ANSWER_WAIT)
                    break
                if not line.endswith(b"\n") and len(line) > limit:
                    self._skip_rest_of_line(limit)
                    continue
                line = line.rstrip(b"\r\n")
                if len(line) > limit:  # a whole line, over the limit by its last byte or two
                    self._refuse_too_long(limit)
                    continue
                if not line.strip():
                    continue
                try:
                    self._rpc.receive(line)
                except ProtocolViolation as violation:
                    log.warning("stdio client broke the protocol: %s", violation.reason)
                    break
        except (OSError, ValueError) as exc:
            log.debug("stdio read failed: %s", exc)
        finally:
            self.stop()

    def _skip_rest_of_line(self, limit: int) -> None:
        while True:
            chunk = self._reader.readline(STDIO_BUFFER_BYTES)
            if not chunk or chunk.endswith(b"\n"):
                break
        self._refuse_too_long(limit)

    def _refuse_too_long(self, limit: int) -> None:
        """Answer a line over ``limit`` bytes (its newline not counted) with a parse error; the line is skipped."""
        try:
            self.send_text(encode(error_response(UNKNOWN_ID, InvalidRequest(
                PARSE_ERROR_PREFIX + "message exceeds %d bytes" % limit))))
        except OSError:
            pass

    def stop(self) -> None:
        """End the connection: kill the session's process trees, stop threads."""
        with self._stop_lock:  # the reader's end and a lost stdout may stop it at once: one does the work
            if self._done.is_set():
                return
            self._done.set()
        self._rpc.close(end_session=True)
        self.registry.close_all()
        self.dispatcher.stop_fs_helpers()


def _wait_writable(stream: BinaryIO) -> None:
    """Wait up to a second until ``stream`` takes bytes again (the caller loops; the watchdog bounds it)."""
    import select

    try:
        select.select([], [stream], [], 1.0)
    except (OSError, ValueError):  # no select for it here (a Windows pipe): a short pause instead
        time.sleep(0.01)


def _exit_now(connection: StdioConnection) -> None:
    """Kill every process tree, then end the process (the reader may be blocked).

    The process ends even if the stop fails (a signal handler runs amid
    whatever the main thread was doing).
    """
    try:
        connection.stop()
    except BaseException:
        log.exception("stopping the stdio server failed")
    finally:
        logging.shutdown()
        os._exit(0)


def _watch_parent(connection: StdioConnection, parent: int, parent_alive: Callable[[], bool],
                  hung_up: Callable[[], bool]) -> None:
    """End the server when its parent dies, or when stdin's writer has hung up while stdout stays blocked.

    The checks are made by the caller: this daemon thread imports nothing (an import still running when the
    interpreter exits crashed it: CPython 3.12 freed the import lock under it, SIGSEGV).
    """
    while not connection._done.wait(PARENT_CHECK_INTERVAL):
        if not parent_alive():
            log.warning("parent process %d is gone; stopping", parent)
            _exit_now(connection)
        if connection.write_blocked_for() > HANGUP_WRITE_WAIT and hung_up():
            log.warning("stdin was closed and stdout has not been read for %.1f s; stopping", HANGUP_WRITE_WAIT)
            _exit_now(connection)


def _parent_check(parent: int) -> Callable[[], bool]:
    """A ``check()`` that is True while the process ``parent`` (this one's parent at start) lives.

    POSIX: an orphan is given another parent, so ``os.getppid()`` changes.
    Windows never does that: there the parent's creation time is read again
    (psutil, loaded by this watchdog thread, not at start-up), so a PID
    reused by another process does not pass for the parent.
    """
    if not sys.platform.startswith("win"):
        return lambda: os.getppid() == parent
    import psutil

    def created() -> Optional[float]:
        """The parent's creation time; None once it is gone; 0.0 where it cannot be read (access denied)."""
        try:
            return psutil.Process(parent).create_time()
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return 0.0 if psutil.pid_exists(parent) else None

    born = created()
    return lambda: born is not None and created() == born


def _hangup_check(fd: int):
    """A ``check()`` that is True once the writer of ``fd`` (a pipe, a socket, a terminal) has hung up.

    ``poll`` without asking for input: only the hang-up (or an error) is
    reported, and nothing is read.  A socket's half close is seen only
    where ``POLLRDHUP`` exists (Linux; elsewhere it reads as input).  Always
    False where ``poll`` is missing (Windows) and for a regular file (a file
    has no writer to lose).
    """
    import select

    if not hasattr(select, "poll"):
        return lambda: False
    poller = select.poll()
    poller.register(fd, getattr(select, "POLLRDHUP", 0))  # a socket's peer that shut its writing side
    return lambda: bool(poller.poll(0))


def closed_channels() -> List[str]:
    """Which of the protocol's channels were closed when this process started: ``"stdin"``, ``"stdout"``."""
    return [name for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)) if stream is None]


def serve_stdio(config: Optional[ServerConfig] = None) -> int:
    """Serve on this process's stdin/stdout until EOF; returns the exit status 0.

    Raises:
        OSError: EBADF, stdin or stdout was closed when the process started (:func:`closed_channels`).
    """
    closed = closed_channels()
    if closed:
        raise OSError(errno.EBADF, "%s closed" % " and ".join(closed))
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout.flush()
    _stray_output_to_stderr()
    protocol_in = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    for stream in (protocol_in, protocol_out):
        enlarge_pipe(stream.fileno())  # whoever made the pipes (a client other than ours, ssh)
    connection = StdioConnection(_BufferedLines(protocol_in), protocol_out, config)
    parent = os.getppid()
    watch = threading.Thread(target=_watch_parent, name="exec-server-parent-watch", daemon=True,
                             args=(connection, parent, _parent_check(parent), _hangup_check(protocol_in.fileno())))
    watch.start()
    if threading.current_thread() is threading.main_thread():
        handle_stop_signals(lambda _signum, _frame: _exit_now(connection))
    connection.run()
    watch.join(WATCH_END_WAIT)  # stopped (run ends with stop): no thread of ours runs at interpreter exit
    return 0


def _stray_output_to_stderr() -> None:
    """Point descriptor 1 at stderr's, or at the null device when stderr was closed at start (``2>&-``)."""
    if sys.stderr is not None:
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.stdout.fileno())
    finally:
        os.close(null)


class _BufferedLines:
    """``readline(limit)`` over an unbuffered binary stream, via io.BufferedReader."""

    def __init__(self, raw: BinaryIO):
        import io

        self._buffered = io.BufferedReader(raw, buffer_size=STDIO_BUFFER_BYTES)

    def readline(self, limit: int = -1) -> bytes:
        return self._buffered.readline(limit)
