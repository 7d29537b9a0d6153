"""The stdio transport: JSON-RPC over a child exec-server's stdin/stdout.

Implements :class:`exec_server.client.transport.Transport` for
``Client.spawn`` (one message per line, PROTOCOL.md 1.4).
"""

import signal
import threading
from typing import Optional

from exec_server.common.pipes import STDIO_BUFFER_BYTES, enlarge_pipe
from exec_server.protocol.errors import ExecServerDisconnected

#: Longest line (one message, with its end) the client reads from the child, bytes; as the
#: WebSocket transport's CLIENT_MAX_MESSAGE_BYTES.
STDIO_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: After a write failed because the child exited, how long a send waits for the reader to judge what the
#: child wrote before (a malformed line is the better cause than the exit), seconds.
OUTPUT_VERDICT_WAIT = 1.0


class StdioTransport:
    """JSON-RPC over a child's stdin/stdout, one message per line.

    The child is an exec-server started with ``--listen stdio`` (directly, or
    through ``ssh``).  Its stderr is drained to logging (logger
    ``exec_server.child``) so it can never block on a full pipe.  ``close``
    closes the child's stdin (the server then kills its process trees and
    exits), waits up to ``CHILD_EXIT_GRACE`` seconds, then kills the child's
    tree.
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
        self._send_lock = threading.Lock()
        self._closed = False  # no more sends
        self._torn = False  # a send was interrupted (^C) partway: its line is not ended
        self._output_judged = threading.Event()  # the reader met the end of the child's output, or a bad line
        self._killed_for: Optional[str] = None  # why :meth:`kill` ended the child, if it did
        self._finished = False  # resources released
        self._log = logging.getLogger("exec_server.child")
        self._stdout = self._child.stdout
        for pipe in (self._child.stdin, self._stdout):
            enlarge_pipe(pipe.fileno())
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="exec-server-child-stderr",
                                               daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        stream = self._child.stderr
        try:
            for line in iter(stream.readline, b""):
                self._log.info("%s", line.rstrip().decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def send(self, text: str) -> None:
        data = text.encode("utf-8") + b"\n"
        with self._send_lock:
            if self._closed:  # the reader may have seen the child's end first: say how it ended
                if self._killed_for is not None:
                    raise ExecServerDisconnected(self._killed_for)
                status = self._child.poll()
                if status is not None:
                    raise ExecServerDisconnected(_ended(status))
                raise ExecServerDisconnected("exec-server child is closed")
            if self._torn:  # the last message was cut (^C): its line ends here, a malformed one the
                data = b"\n" + data  # server answers with an error and skips, and this one is whole
            try:
                self._torn = True
                self._child.stdin.write(data)
                self._child.stdin.flush()
                self._torn = False
                return
            except (OSError, ValueError) as exc:
                error = exc
        status = self._exit_status(2.0)
        if status is None:
            raise ExecServerDisconnected("cannot write to the exec-server child: %s" % error) from error
        # `--via false`: not a broken pipe to a user, an exited command; `--via "echo garbage"`: what it
        # wrote before it exited says more, once the reader has judged it (outside the lock kill() takes)
        self._output_judged.wait(OUTPUT_VERDICT_WAIT)
        if self._killed_for is not None:
            raise ExecServerDisconnected(self._killed_for) from None
        raise ExecServerDisconnected(_ended(status)) from None

    def _exit_status(self, timeout: float):
        """The child's exit status once it has exited within ``timeout`` seconds, else None."""
        import subprocess

        try:
            return self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def receive(self) -> bytes:
        """The next non-empty line, without its end.

        Raises:
            ExecServerDisconnected: the child closed its output, or sent a
                line longer than :data:`STDIO_MAX_MESSAGE_BYTES` (the client
                then fails and :meth:`close` ends the child).
        """
        while True:
            try:
                line = self._stdout.readline(STDIO_MAX_MESSAGE_BYTES + 1)
            except (OSError, ValueError):
                line = b""
            if len(line) > STDIO_MAX_MESSAGE_BYTES:
                raise ExecServerDisconnected("exec-server child sent a message over %d bytes"
                                             % STDIO_MAX_MESSAGE_BYTES)
            if not line:
                self._output_judged.set()
                status = self._exit_status(2.0)
                if status is not None:
                    raise ExecServerDisconnected(_ended(status))
                # it runs on without output: ended now, not CHILD_EXIT_GRACE later (without the send lock,
                # which a write to a child that stopped reading holds until the kill breaks the pipe)
                from exec_server.common.tree import kill_tree

                kill_tree(self.pid)
                raise ExecServerDisconnected("exec-server child closed its output")
            line = line.rstrip(b"\r\n")
            if line.strip():
                return line

    def close(self) -> None:
        """End the child: close its stdin, wait briefly, then kill its tree."""
        import subprocess

        from exec_server.common.tree import kill_tree

        with self._send_lock:
            if self._finished:
                return
            self._finished = True
            self._closed = True
            try:
                self._child.stdin.close()
            except OSError:
                pass
        try:
            self._child.wait(self.CHILD_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            kill_tree(self.pid)
            try:
                self._child.wait(self.CHILD_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                pass
        for stream in (self._stdout,):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr_thread.join(self.CHILD_EXIT_GRACE)

    def abort(self) -> None:
        """The child stopped answering: kill its tree now (no ``CHILD_EXIT_GRACE`` wait), then :meth:`close`."""
        self.kill()
        self.close()

    def ping(self) -> None:
        """No keepalive on a pipe: a no-op (the child's exit ends :meth:`receive`)."""

    def kill(self, reason: Optional[str] = None) -> None:
        """Kill the child's tree at once (used when it misbehaves); a later send raises ``reason``, if given."""
        from exec_server.common.tree import kill_tree

        with self._send_lock:
            self._closed = True
            if self._killed_for is None:
                self._killed_for = reason
        self._output_judged.set()
        kill_tree(self.pid)
        try:
            self._child.wait(self.CHILD_EXIT_GRACE)
        except Exception:
            pass


def _ended(status: int) -> str:
    """How the exec-server child ended, from its ``Popen.returncode`` (negative: killed by that signal)."""
    if status >= 0:
        return "the exec-server child exited with status %d" % status
    try:
        name = " (%s)" % signal.Signals(-status).name
    except ValueError:
        name = ""
    return "the exec-server child was killed by signal %d%s" % (-status, name)
