"""The stdio transport: JSON-RPC over a child exec-server's stdin/stdout.

Implements :class:`exec_server.client.transport.Transport` for
``Client.spawn`` (one message per line, PROTOCOL.md 1.4).
"""

import os
import select
import signal
import threading
import time
from typing import Optional

from exec_server.common.pipes import PIPE_BYTES, STDIO_BUFFER_BYTES, enlarge_pipe
from exec_server.protocol.errors import ExecServerDisconnected

#: Longest line (one message, with its end) the client reads from the child, bytes; as the
#: WebSocket transport's CLIENT_MAX_MESSAGE_BYTES.
STDIO_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: Longest piece of the child's stderr logged as one line, bytes (a child writing without newlines is not kept whole).
STDERR_LINE_BYTES = 64 * 1024
#: After a write failed because the child exited, how long a send waits for the reader to judge what the
#: child wrote before (a malformed line is the better cause than the exit), seconds.
OUTPUT_VERDICT_WAIT = 1.0
#: Longest single wait, seconds, of a send for room in a full pipe: it then checks whether the transport
#: was closed meanwhile (the kill that ends the child wakes it at once, by breaking the pipe).
CLOSED_CHECK_INTERVAL = 1.0
#: How often a read waiting for the child's output looks whether the child has exited, seconds: a
#: process it left behind (``setsid``) may hold its stdout open long after, and a closed transport's
#: reader ends within this time.
EXIT_CHECK_INTERVAL = 0.2
#: Most bytes read from the child's stdout at once.
READ_BYTES = 1024 * 1024
#: What ends the line of a message a send left cut (^C, a timeout), before the next message: "!" can
#: follow no prefix of a JSON text, so the server answers that line as malformed and applies nothing,
#: even when the cut fell just before its newline (a newline alone made it whole: the call ran).
TORN_LINE_END = b"!\n"


class StdioTransport:
    """JSON-RPC over a child's stdin/stdout, one message per line.

    The child is an exec-server started with ``--listen stdio`` (directly, or
    through ``ssh``).  Its stderr is drained to logging (logger
    ``exec_server.child``) so it can never block on a full pipe.  ``close``
    closes the child's stdin (the server then kills its process trees and
    exits), waits up to ``CHILD_EXIT_GRACE`` seconds, then kills the child's
    tree.

    Writes to the child's stdin are non-blocking, bounded by the
    :meth:`send_within` timeout (on Windows, where a pipe cannot be polled,
    a write blocks until the child takes it or ends).  A message cut by its
    timeout ends the child, as a WebSocket send cut by its ``write_timeout``
    ends that connection: nothing can follow half a line.

    The child's output is read with ``os.read`` and split into lines here;
    its end is the end of the pipe or the child's exit with nothing left to
    read (looked at every ``EXIT_CHECK_INTERVAL`` s: a process the child left
    behind may hold the pipe open, and write to it).
    """

    #: Seconds a child may take to exit after its stdin closed.
    CHILD_EXIT_GRACE = 2.0

    def __init__(self, argv, env=None, cwd=None):
        import logging
        import subprocess
        import sys

        from exec_server.common.tree import CREATE_NEW_PROCESS_GROUP

        options = {"creationflags": CREATE_NEW_PROCESS_GROUP} if sys.platform.startswith("win") \
            else {"start_new_session": True}
        try:
            self._child = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, env=env, cwd=cwd, bufsize=STDIO_BUFFER_BYTES,
                                           **options)
        except OSError as exc:
            raise ExecServerDisconnected("cannot start %s: %s" % (argv[0], exc)) from exc
        self.pid = self._child.pid
        self._send_lock = threading.Lock()  # held for each whole message written
        self._close_lock = threading.Lock()  # one close()
        self._closed = False  # no more sends
        self._torn = False  # a send was interrupted (^C) partway: its line is not ended
        self._output_judged = threading.Event()  # the reader met the end of the child's output, or a bad line
        self._killed_for: Optional[str] = None  # why :meth:`kill` ended the child, if it did
        self._finished = False  # resources released
        self._exited_before_close: Optional[int] = None  # the child's exit status if it had ended by itself
        self._log = logging.getLogger("exec_server.child")
        self._stdout = self._child.stdout  # read with os.read, by receive alone: its buffer stays empty
        for pipe in (self._child.stdin, self._stdout):
            enlarge_pipe(pipe.fileno())
        self._stdout_fd = self._stdout.fileno()
        self._pending = bytearray()  # what was read of the child's output and not yet returned
        self._start = 0  # where the next line begins in _pending
        self._scan = 0  # where the search for its end goes on (the bytes before hold no newline)
        self._child_exited = False  # the reader saw the child exit: it reads what is left without waiting
        self._left_after_exit = PIPE_BYTES  # most the child can have left in the pipe when its exit is seen
        self._exit_check_at = 0.0  # monotonic time of the reader's next look at the child
        self._read_lock = threading.Lock()  # held by receive while it reads; close() closes stdout under it
        self._output_poller = None  # a wait for output that can look at the child (None: Windows, blocking reads)
        if hasattr(select, "poll"):
            self._output_poller = select.poll()
            self._output_poller.register(self._stdout_fd, select.POLLIN)
            os.set_blocking(self._stdout_fd, False)
        self._stdin_fd = self._child.stdin.fileno()  # written with os.write: the file object's buffer stays empty
        self._poller = None  # a wait for room in the pipe (None: Windows, blocking writes)
        if hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(self._stdin_fd, select.POLLOUT)
            os.set_blocking(self._stdin_fd, False)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="exec-server-child-stderr",
                                               daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        stream = self._child.stderr
        try:
            for line in iter(lambda: stream.readline(STDERR_LINE_BYTES), b""):  # a line without end: in pieces
                self._log.info("%s", line.rstrip().decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def send(self, text: str) -> None:
        """:meth:`send_within` without a timeout."""
        self.send_within(text, None)

    def send_within(self, text: str, timeout: Optional[float]) -> None:
        """Write ``text`` as one line to the child's stdin within ``timeout`` seconds (None: no limit).

        The wait for another thread's message to go out first counts.  When
        the child does not take the line in time (it stopped reading, or the
        link is slow) the connection stays: a line cut partway is ended by
        ``TORN_LINE_END`` before the next message, so the server answers it
        as one malformed line (with id -1, which no call waits for) and reads
        the next one whole, as after a send interrupted by ^C.

        Raises:
            TimeoutError: not written within ``timeout`` s (see above).
            ExecServerDisconnected: the child has ended or was killed, or the
                transport was closed.
        """
        data = text.encode("utf-8") + b"\n"
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._send_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("another message to the exec-server child was still being written after %.3f s"
                               % timeout)
        try:
            if self._closed:  # the reader may have seen the child's end first: say how it ended
                if self._killed_for is not None:
                    raise ExecServerDisconnected(self._killed_for)
                status = self._child.poll()
                if status is not None:
                    raise ExecServerDisconnected(_ended(status))
                raise ExecServerDisconnected("exec-server child is closed")
            prefix = len(TORN_LINE_END) if self._torn else 0
            if prefix:  # the last message was cut (^C, a timeout): its line ends here, a malformed one the
                data = TORN_LINE_END + data  # server answers with an error and skips, and this one is whole
            try:
                self._torn = True  # until the write says otherwise (a ^C may land inside it)
                written = self._write(data, deadline)
                # torn: the old line still unended, or this one begun and not ended
                self._torn = written < prefix or prefix < written < len(data)
                if written == len(data):
                    return
                error = None
            except (OSError, ValueError) as exc:
                error = exc
        finally:
            if self._finished:  # closed meanwhile, while this send held the lock the close waits for
                try:
                    self._child.stdin.close()
                except (OSError, ValueError):
                    pass
            self._send_lock.release()
        if error is None:
            if written <= prefix:
                raise TimeoutError("the exec-server child took nothing of a message in %.3f s" % timeout)
            raise TimeoutError("the exec-server child took %d of a message's %d bytes in %.3f s; the rest is dropped"
                               % (written - prefix, len(data) - prefix, timeout))
        if self._finished and self._killed_for is None and self._exited_before_close is None:
            raise ExecServerDisconnected("exec-server child is closed") from None  # close() broke the write
        status = self._exit_status(2.0)
        if status is None:
            raise ExecServerDisconnected("cannot write to the exec-server child: %s" % error) from error
        # `--via false`: not a broken pipe to a user, an exited command; `--via "echo garbage"`: what it
        # wrote before it exited says more, once the reader has judged it (outside the lock kill() takes)
        self._output_judged.wait(OUTPUT_VERDICT_WAIT)
        if self._killed_for is not None:
            raise ExecServerDisconnected(self._killed_for) from None
        raise ExecServerDisconnected(_ended(status)) from None

    def _write(self, data: bytes, deadline: Optional[float]) -> int:
        """Write ``data`` to the child's stdin by the monotonic ``deadline`` (None: none); the bytes written.

        Fewer than ``len(data)``: the deadline passed with the pipe full.

        Raises:
            OSError: the pipe broke (the child ended), or the transport was
                closed while the pipe stayed full.
        """
        view, written = memoryview(data), 0
        while written < len(data):
            try:
                written += self._write_piece(view[written:])
                continue
            except BlockingIOError:
                pass
            if self._closed:
                raise BrokenPipeError("the transport was closed")
            wait = CLOSED_CHECK_INTERVAL if deadline is None else min(deadline - time.monotonic(),
                                                                      CLOSED_CHECK_INTERVAL)
            if wait <= 0:
                return written
            self._poller.poll(int(wait * 1000) + 1)  # room, a broken pipe (POLLERR), or the time
        return written

    def _write_piece(self, view: memoryview) -> int:
        """One write to the child's stdin: the bytes it took (BlockingIOError: none, the pipe is full)."""
        return os.write(self._stdin_fd, view)

    def _exit_status(self, timeout: float):
        """The child's exit status once it has exited within ``timeout`` seconds, else None."""
        import subprocess

        try:
            return self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def receive(self) -> bytes:
        """The next non-empty line, without its end; call from one thread only.

        Raises:
            ExecServerDisconnected: the child closed its output, or exited
                (while a process it left behind holds its stdout: seen within
                ``EXIT_CHECK_INTERVAL`` s), or sent a line longer than
                :data:`STDIO_MAX_MESSAGE_BYTES` (the client then fails and
                :meth:`close` ends the child), or the transport was closed.
        """
        while True:
            with self._read_lock:
                try:
                    line = self._next_line()
                except ExecServerDisconnected:  # too long: do not keep up to the limit's bytes with the client
                    self._pending, self._start, self._scan = bytearray(), 0, 0
                    raise
            if line is None:
                self._output_judged.set()
                status = self._exit_status(2.0)
                if self._killed_for is not None:  # a malformed line, or a send cut by its timeout
                    raise ExecServerDisconnected(self._killed_for)
                if status is not None:
                    raise ExecServerDisconnected(_ended(status))
                # it runs on without output: ended now, not CHILD_EXIT_GRACE later
                from exec_server.common.tree import kill_tree

                kill_tree(self.pid)
                raise ExecServerDisconnected("exec-server child closed its output")
            line = line.rstrip(b"\r")
            if line.strip():
                return line

    def _next_line(self) -> Optional[bytes]:
        """The next line of the child's output without its newline (the last may have none); None at its end.

        The end is the end of the pipe, or the child's exit with nothing
        left to read, or :meth:`close`.

        Raises:
            ExecServerDisconnected: a line over :data:`STDIO_MAX_MESSAGE_BYTES`.
        """
        pending = self._pending
        while True:
            end = pending.find(b"\n", self._scan)
            if end >= 0:
                if end + 1 - self._start > STDIO_MAX_MESSAGE_BYTES:
                    raise _too_long()
                view = memoryview(pending)
                try:
                    line = view[self._start:end].tobytes()
                finally:
                    view.release()
                self._start = self._scan = end + 1
                return line
            if len(pending) - self._start > STDIO_MAX_MESSAGE_BYTES:  # == : the line may end at EOF
                raise _too_long()
            del pending[:self._start]  # only the start of a line is left: moved once, before more is read
            self._start, self._scan = 0, len(pending)
            data = self._read()
            if not data:  # the end: a last line without its newline, but none cut by close()
                line = b"" if self._finished else bytes(pending)
                pending.clear()
                self._scan = 0
                return line or None
            pending += data

    def _read(self) -> bytes:
        """The next bytes of the child's output; empty at its end (see :meth:`_next_line`)."""
        while not self._finished:  # close() was not called
            exited = self._child_exited
            if not exited and time.monotonic() >= self._exit_check_at:  # also while a leftover process writes
                self._exit_check_at = time.monotonic() + EXIT_CHECK_INTERVAL
                exited = self._child_exited = self._child.poll() is not None  # before the read that decides:
            if exited and self._left_after_exit <= 0:
                return b""  # a pipe's worth read since: what goes on is a leftover process's writing
            try:  # all it wrote is in the pipe by now
                data = os.read(self._stdout_fd, READ_BYTES)
                if exited:
                    self._left_after_exit -= len(data)
                return data
            except BlockingIOError:
                if exited:
                    return b""  # exited, and what it wrote is read: the rest is a leftover process's
            except (OSError, ValueError):
                return b""
            self._output_poller.poll(int(EXIT_CHECK_INTERVAL * 1000))
        return b""

    def close(self) -> None:
        """End the child: close its stdin, wait briefly, then kill its tree; bounded, from any thread.

        A send still writing after ``CHILD_EXIT_GRACE`` s (to a child that
        stopped reading) is not waited for: the child's tree is killed, which
        breaks the pipe under that send (it raises ExecServerDisconnected).
        """
        from exec_server.common.tree import kill_tree

        with self._close_lock:
            if self._finished:
                return
            self._exited_before_close = self._child.poll()  # a send then says how it ended, not "closed"
            self._finished = True
        self._closed = True  # a send waiting for the lock raises; one writing raises once it waits for room
        if not self._close_stdin() or self._exit_status(self.CHILD_EXIT_GRACE) is None:
            kill_tree(self.pid)
            self._exit_status(self.CHILD_EXIT_GRACE)
            self._close_stdin()
        # a reader ends within EXIT_CHECK_INTERVAL s (Windows: at the end of the pipe, which the kill brings)
        if self._read_lock.acquire(timeout=self.CHILD_EXIT_GRACE):
            try:
                self._pending, self._start, self._scan = bytearray(), 0, 0
                self._stdout.close()
            except OSError:
                pass
            finally:
                self._read_lock.release()
        self._stderr_thread.join(self.CHILD_EXIT_GRACE)

    def _close_stdin(self) -> bool:
        """Close the child's stdin once no send writes to it (up to ``CHILD_EXIT_GRACE`` s); False if one still does."""
        if not self._send_lock.acquire(timeout=self.CHILD_EXIT_GRACE):
            return False
        try:
            self._child.stdin.close()
        except OSError:
            pass
        finally:
            self._send_lock.release()
        return True

    def abort(self) -> None:
        """The child stopped answering: kill its tree now (no ``CHILD_EXIT_GRACE`` wait), then :meth:`close`."""
        self.kill()
        self.close()

    def ping(self) -> None:
        """No keepalive on a pipe: a no-op (the child's exit ends :meth:`receive`)."""

    def kill(self, reason: Optional[str] = None) -> None:
        """Kill the child's tree at once (used when it misbehaves); a later send raises ``reason``, if given."""
        from exec_server.common.tree import kill_tree

        if self._killed_for is None:  # not under the send lock: a send to a child that stopped reading holds it
            self._killed_for = reason
        self._closed = True
        self._output_judged.set()
        kill_tree(self.pid)  # a write blocked on the pipe fails (EPIPE) and reports ``reason``
        self._exit_status(self.CHILD_EXIT_GRACE)


def _too_long() -> ExecServerDisconnected:
    return ExecServerDisconnected("exec-server child sent a message over %d bytes" % STDIO_MAX_MESSAGE_BYTES)


def _ended(status: int) -> str:
    """How the exec-server child ended, from its ``Popen.returncode`` (negative: killed by that signal)."""
    if status >= 0:
        return "the exec-server child exited with status %d" % status
    try:
        name = " (%s)" % signal.Signals(-status).name
    except ValueError:
        name = ""
    return "the exec-server child was killed by signal %d%s" % (-status, name)
