"""The local ends of ``run``: writing the remote output, what a failed write ends with, the ending signals.

Local stdout or stderr may be a pipe whose reader left (``run ... | head
-1``), closed (``>&-``: Python then has no ``sys.stdout``) or full (``>
/dev/full``).  The remote command's output can no longer go anywhere, so
``run`` kills the remote tree and ends as a local command would: 141 (128 +
SIGPIPE) for a closed pipe, as a shell reports it, else
:data:`EXIT_OUTPUT_FAILED` with one line on stderr, as ``cat`` does.
"""

import errno
import os
import select
import signal
import sys
import threading
import time
from typing import Any, BinaryIO, Callable, Iterable, List, Optional, TextIO, Tuple

from exec_server.cli.statuses import EXIT_DISCONNECTED
from exec_server.protocol.errors import ExecServerDisconnected, InternalError

#: Exit status when local stdout or stderr is a closed pipe (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 128 + 13
#: Exit status when local stdout or stderr cannot be written otherwise (closed, full, an I/O error).
EXIT_OUTPUT_FAILED = 1
#: Signals that end ``run`` after killing the remote trees (as SIGINT twice does): the terminal closed, a stop.
END_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
#: Seconds the server has to report a command's end after the kill of an ending signal (and to kill a tree
#: whose local output failed): a silent server, or a tree its kill cannot end, then fails the command.
KILL_WAIT = 10.0
#: Seconds ``run``'s last words on stderr (the summary of several hosts, a one-line error) may wait, after an
#: ending signal, for a reader that stopped reading (``run ... 2>&1 | a stalled reader``); then they are dropped.
LAST_WORDS_WAIT = 2.0

_ending: List[bool] = []  # not empty once an ending signal was handled (end_with): last words are bounded
_interrupted: List[bool] = []  # not empty once a SIGINT reached a command (note_interrupt)


class Ended(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``signum``) where a command has no handler of its own: it ends as Ctrl-C does
    (its ``with`` blocks and ``finally`` clauses run), with status 128 + N (:func:`ended_status`)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_ended(signum: int, frame: Any) -> None:
    """A handler of :data:`END_SIGNALS` (install it with :func:`handle`): raises :class:`Ended`."""
    raise Ended(signum)


def note_interrupt() -> None:
    """A SIGINT (Ctrl-C) reached the command: a status of 130 then ends the process by SIGINT
    (:func:`end_by_sigint`)."""
    _interrupted.append(True)


def interrupted() -> bool:
    """Whether :func:`note_interrupt` was called."""
    return bool(_interrupted)


def end_by_sigint() -> None:
    """End the interpreter by SIGINT once a command that a Ctrl-C interrupted has cleaned up (the remote trees,
    the temporary files): a shell waiting for it then stops its script or loop there (bash's
    wait-and-cooperative-exit: a status of 130 alone says the program handled the Ctrl-C, and the script goes
    on).  Raises the ``KeyboardInterrupt`` that nothing catches, with ``sys.excepthook`` quiet for it: the
    interpreter ends as for any program that Ctrl-C stopped, its exit handlers (``atexit``: telemetry's
    export) first, then by SIGINT (Python 3.8 and later, POSIX); the shell still reports 130.

    Raises:
        KeyboardInterrupt: always.
    """
    previous = sys.excepthook

    def quiet(kind, value, traceback) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            previous(kind, value, traceback)

    sys.excepthook = quiet
    raise KeyboardInterrupt


def ended_status(ended: KeyboardInterrupt, command: str) -> int:
    """One line on stderr; returns 128 + N: ``exec-server COMMAND: ended by signal N`` for an :class:`Ended`,
    ``exec-server COMMAND: interrupted`` and 130 for a Ctrl-C (a plain ``KeyboardInterrupt``, noted:
    :func:`note_interrupt`)."""
    if not isinstance(ended, Ended):
        note_interrupt()
        say("exec-server %s: interrupted" % command)
        return 128 + signal.SIGINT
    say("exec-server %s: ended by signal %d" % (command, ended.signum))
    return 128 + ended.signum


def give_up_timer(handles: Iterable[Any]) -> threading.Timer:
    """A daemon timer, to start at an ending signal's kill: :data:`KILL_WAIT` s later it fails each of
    ``handles`` (:class:`~exec_server.client.process.RemoteProcess`) not closed yet, so that ``run`` ends
    (255, one line) though the server never reports the end.  Cancel it when the command has ended."""
    error = ExecServerDisconnected("the remote command did not report its end within %g s of the kill" % KILL_WAIT)
    timer = threading.Timer(KILL_WAIT, lambda: [handle.fail(error) for handle in handles])
    timer.daemon = True
    return timer


def remote_status(exit_code: Optional[int]) -> Tuple[int, str]:
    """``run``'s exit status for the remote command's ``exit_code`` (None: closed without ``exited``), and what
    went wrong ('' if nothing): :data:`EXIT_DISCONNECTED` for no status or an unknown one (-1), 255 for a code
    past 255."""
    if exit_code is None:  # closed without exited: the server broke the protocol
        return EXIT_DISCONNECTED, "the server reported the command's end without its exit status"
    if exit_code < 0:  # exitCode null (or -1: a status the server could not read)
        return EXIT_DISCONNECTED, "the command ended with an unknown exit status (%d)" % exit_code
    return min(exit_code, 255), ""


def exit_after_close(process: Any) -> Optional[int]:
    """The exit code of a ``process`` (a ``RemoteProcess``) closed without ``exited``, from
    ``RemoteProcess.wait``'s ``process/read`` (the reference now and then sends no ``exited``); None if that
    does not tell it either."""
    try:
        return process.wait(timeout=0)
    except Exception:  # InternalError: the read did not tell it; the connection is gone; ...
        return None


def exit_after_end(process: Any) -> Optional[int]:
    """The exit code of a ``process`` (a ``RemoteProcess``) killed by an ending signal, its output no longer read.

    ``RemoteProcess.wait`` tells it as soon as ``exited`` arrives, even
    behind output not consumed: the output still buffered, spooled on the
    server or not yet sent (hundreds of MiB of a fast writer whose local
    reader stopped) is never read.  Bounded by the ``give_up`` timer of
    :func:`end_with`, which fails the handle.  None: closed without an exit
    status the server would tell.

    Raises:
        ExecServerDisconnected, ProcessOutputGap: as ``RemoteProcess.wait``.
    """
    try:
        return process.wait()
    except InternalError:  # closed without exited, and the read after it did not tell the code either
        return None


def end_with(kill: Callable[[], Any], local: "LocalOutput", give_up: threading.Timer) -> None:
    """From an ending signal's handler: ``kill`` on a thread of its own (its errors ignored: the end is
    waited for), the local output let go (:meth:`LocalOutput.end`), and ``give_up`` started, once."""
    def quietly() -> None:
        try:
            kill()
        except Exception:
            pass

    threading.Thread(target=quietly, daemon=True).start()
    _ending.append(True)
    local.end()  # a local reader that stopped reading holds the end back no more
    if give_up.ident is None:
        give_up.start()


def say(text: str) -> None:
    """Write ``text`` and a newline to stderr (nothing if it was closed at start): ``run``'s last words.

    A stderr that cannot be written (full, a closed pipe) is pointed at the
    null device; the exit status is the command's still.

    After an ending signal, within :data:`LAST_WORDS_WAIT` s at most, on
    POSIX: a stderr whose reader stopped reading drops what does not fit
    (pieces of ``select.PIPE_BUF`` bytes, each written once ``poll`` says it
    fits), where a plain write would hold ``run`` for good.
    """
    err = sys.stderr
    if err is None:
        return
    if not _ending or not hasattr(select, "poll"):
        try:
            print(text, file=err, flush=True)
        except (OSError, ValueError):  # full, a pipe whose reader left: the exit status tells what happened
            discard(binary(err))  # and the interpreter's last flush fails no more (which makes the status 120)
        return
    try:
        err.flush()
        fd = err.fileno()
    except (OSError, ValueError):
        discard(binary(err))
        return
    data = (text + "\n").encode(getattr(err, "encoding", None) or "utf-8", "backslashreplace")
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + LAST_WORDS_WAIT
    try:
        while data and poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            data = data[os.write(fd, data[:select.PIPE_BUF]):]
    except OSError:  # a closed pipe, a full disk: the status says it
        discard(binary(err))


def binary(stream: Optional[TextIO]) -> Optional[BinaryIO]:
    """The binary buffer of ``sys.stdout`` or ``sys.stderr``; None when the descriptor was closed at start."""
    return getattr(stream, "buffer", None)


def write_all(target: Optional[BinaryIO], data: bytes) -> None:
    """Write and flush ``data``.

    Raises:
        OSError: the write failed; EBADF when ``target`` is None (closed).
    """
    if target is None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    target.write(data)
    target.flush()


class LocalOutput:
    """Local stdout and stderr as the remote output's ends, which an ending signal lets go of.

    A local reader that stopped reading (a full pipe, a consumer stopped
    with ^Z) blocks a write for good, and SIGTERM, SIGHUP or a second SIGINT
    must still end ``run``.  :meth:`end`, called by that signal's handler,
    points the descriptor being written at the null device (the interrupted
    write goes on there and returns: Python retries a write a signal
    interrupted, PEP 475) and drops every later chunk; the remote exit still
    comes, and is ``run``'s status.
    """

    def __init__(self, out: Optional[BinaryIO], err: Optional[BinaryIO]) -> None:
        """``out``, ``err``: the binary local stdout and stderr (:func:`binary`; None: closed)."""
        self.out, self.err = out, err
        self.ended = False
        self._writing: Optional[BinaryIO] = None

    def target(self, is_err: bool) -> Optional[BinaryIO]:
        """Local stderr or stdout."""
        return self.err if is_err else self.out

    def write(self, is_err: bool, data: bytes) -> None:
        """:func:`write_all` of ``data`` to stderr or stdout; nothing once :meth:`end` was called.

        Raises:
            OSError: as :func:`write_all`.
        """
        # Named as being written before the look at ``ended``: an ending signal handled anywhere from here on
        # either lets this write go (``end``) or is seen by the look, never blocks it for good.
        target = self._writing = self.target(is_err)
        try:
            if not self.ended:
                write_all(target, data)
        finally:
            self._writing = None

    def failed(self, is_err: bool, error: OSError, command: str = "run") -> int:
        """:func:`output_failed` for a failed write of stderr or stdout: the exit status, after its one line."""
        return output_failed(error, self.target(is_err), "stderr" if is_err else "stdout", command)

    def end(self) -> None:
        """From an ending signal's handler: the write in progress returns, and later ones write nothing."""
        self.ended = True
        if self._writing is not None:
            discard(self._writing)


def discard(target: Optional[BinaryIO]) -> None:
    """Point ``target``'s descriptor at the null device (what is written to it from now on goes nowhere)."""
    try:
        if target is not None:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, target.fileno())
            finally:
                os.close(null)
    except (OSError, ValueError):
        pass


def output_failed(error: OSError, target: Optional[BinaryIO], name: str = "stdout", command: str = "run") -> int:
    """The exit status for a failed write of ``target`` (local ``name``: ``stdout`` or ``stderr``, see the module's
    text); one line on stderr says why, unless a pipe closed or stderr itself is gone.

    The descriptor is pointed at the null device, so that the interpreter's
    last flush at exit fails no more.
    """
    discard(target)
    if isinstance(error, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    if name != "stderr":  # say: nothing when stderr is closed or fails too (the status says it)
        say("exec-server %s: cannot write to %s: %s; the remote command was killed" % (
            command, name, error.strerror or error))
    return EXIT_OUTPUT_FAILED


def handle(numbers: Iterable[int], handler: Callable[[int, Any], None]) -> List[Tuple[int, Any]]:
    """Install ``handler`` for each signal of ``numbers`` that was not ignored; returns what :func:`restore` needs.

    A signal ignored when the command started stays ignored, as a local
    command keeps it: ``nohup`` ignores SIGHUP, a shell's background job
    SIGINT (so a Ctrl-C meant for the script does not reach the remote).
    """
    installed = []
    for number in numbers:
        if signal.getsignal(number) is not signal.SIG_IGN:
            installed.append((number, signal.signal(number, handler)))
    return installed


def restore(installed: List[Tuple[int, Any]]) -> None:
    """Put back the handlers :func:`handle` replaced."""
    for number, previous in installed:
        signal.signal(number, previous if previous is not None else signal.SIG_DFL)
