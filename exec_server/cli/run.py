"""``exec-server run [--url URL | --via COMMAND] -- COMMAND ...``: run one command remotely.

Streams the remote stdout and stderr to the local ones as they arrive,
exits with the remote exit status (128 + N when a command without
``--tty`` died of signal N), and turns Ctrl-C into ``process/signal interrupt``.  Without
``--url`` or ``--via`` it embeds a server in this process (no port).
"""

import argparse
import logging
import ntpath
import os
import posixpath
import select
import signal
import sys
import threading
from typing import List, Optional

from exec_server.cli.connect import CommandError, connect, credential_options, disconnected, report
from exec_server.cli.hosts import group_urls
from exec_server.cli.options import config_from_options
from exec_server.cli.statuses import EXIT_DISCONNECTED, start_failure_status
from exec_server.cli.output import (END_SIGNALS, KILL_WAIT, LocalOutput, binary, end_with, ended_status,
                                    exit_after_close, exit_after_end, give_up_timer, handle, note_interrupt,
                                    raise_ended, remote_status, restore, say)
from exec_server.client.api import Client, ReconnectPolicy
from exec_server.client.interfaces import command_argv, command_env
from exec_server.client.buffer import DROPPED
from exec_server.client.process import ClosedEvent, ExitedEvent, OutputEvent, ProcessOutputGap, RemoteProcess
from exec_server.client.start_errors import ProgramNotFound, WorkingDirectoryNotFound
from exec_server.protocol.errors import ExecServerDisconnected, RpcError

log = logging.getLogger("exec_server")


def _parse_env(pairs: List[str]) -> dict:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError("--env wants NAME=VALUE", pair)
        env[name] = value
    try:  # the protocol carries text: bytes that are not UTF-8 (a Latin-1 file name) cannot go
        command_env(env)
    except TypeError as exc:
        raise CommandError("%s (the protocol carries UTF-8 text)" % exc) from None
    return env


def _command_argv(args: argparse.Namespace) -> List[str]:
    """The remote command of ``args`` (after ``--``), checked to be UTF-8 text (CommandError, exit 2)."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        return command_argv(argv) if argv else []
    except TypeError as exc:
        raise CommandError("%s (the protocol carries UTF-8 text)" % exc) from None


class _RawTerminal:
    """Local terminal in raw mode for ``run --tty`` (restored on exit)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = None

    @staticmethod
    def available() -> bool:
        """False where stdin is a terminal that cannot be put in raw mode (no ``termios``: Windows)."""
        try:
            if not os.isatty(sys.stdin.fileno()):
                return True
        except (AttributeError, OSError, ValueError):  # no stdin, or a closed one: nothing to put in raw mode
            return True
        try:
            import termios  # noqa: F401
        except ImportError:
            return False
        return True

    def __enter__(self) -> "_RawTerminal":
        if os.isatty(self.fd):
            import termios
            import tty

            self.saved = _again_after_eintr(termios.tcgetattr, self.fd)
            _again_after_eintr(tty.setraw, self.fd)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.saved is not None:
            import termios

            _again_after_eintr(termios.tcsetattr, self.fd, termios.TCSADRAIN, self.saved)


#: Times a terminal call interrupted by a signal (EINTR) is made again before its error is raised.
EINTR_ATTEMPTS = 10


def _again_after_eintr(call, *args):
    """``call(*args)``, made again when a signal interrupted it (termios is outside PEP 475's retries: a
    ``run --tty`` stopped in the background by SIGTTOU and continued met ``Interrupted system call``),
    at most :data:`EINTR_ATTEMPTS` times."""
    import errno
    import termios

    for attempt in range(EINTR_ATTEMPTS):
        try:
            return call(*args)
        except termios.error as exc:
            if exc.args[:1] != (errno.EINTR,) or attempt == EINTR_ATTEMPTS - 1:
                raise


def _forward_stdin(process, can_close: bool) -> None:
    """Copy local stdin to the remote one; at local end of file, close it (``closeStdin``).

    A server without the extension (the Codex reference) cannot close a
    stdin: the remote command then goes on waiting for input, and a note
    says so.
    """
    fd = sys.stdin.fileno() if sys.stdin is not None else None  # None: started with stdin closed (<&-)
    while True:
        try:
            data = os.read(fd, 65536) if fd is not None else b""
        except OSError as error:
            if isinstance(error, BlockingIOError) and os.name != "nt":  # left non-blocking by another program
                select.select([fd], [], [])  # until it has something
                continue
            # opened write-only, a terminal that is gone (EIO): its end, as ssh takes it
            say("exec-server run: cannot read stdin: %s; the remote stdin gets its end of file" % error.strerror)
            data = b""
        try:
            if not data:
                if can_close:
                    process.close_stdin()
                else:
                    say("exec-server run: the server cannot close the remote stdin (no closeStdin extension); "
                        "end the command with Ctrl-C")
                return
            process.write_all(data, None)  # waits while the server's stdin queue is full
        except (RpcError, ExecServerDisconnected, OSError, TimeoutError):
            return


def _terminal_size():
    """``(rows, cols)`` of the local terminal (stdin, else stdout), or None."""
    for stream in (sys.stdin, sys.stdout):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (AttributeError, ValueError, OSError):
            continue
        if size.lines > 0 and size.columns > 0:
            return size.lines, size.columns
    return None


def run_command(args: argparse.Namespace) -> int:
    """``exec-server run``: the remote command's exit status, or one of the statuses in ``run --help``.

    Until the command has started (and run has its own handlers, which kill
    the remote trees), SIGTERM and SIGHUP end run as Ctrl-C does: a start in
    flight is terminated once answered, the connections closed (their
    processes terminated), then status 128 + N; they killed run on the spot,
    leaving a started command running until its session expired.
    """
    installed = handle(END_SIGNALS, raise_ended)
    try:
        return _run_command(args)
    except KeyboardInterrupt as ended:  # Ctrl-C, SIGTERM or SIGHUP before run had its own handlers
        return ended_status(ended, "run")
    finally:
        restore(installed)


def _run_command(args: argparse.Namespace) -> int:
    try:
        if args.cwd is not None and not (args.cwd.startswith("file:") or posixpath.isabs(args.cwd)
                                         or ntpath.isabs(args.cwd)):
            # absolute on no server's platform: refused before connecting, for one host or several
            raise CommandError("--cwd wants an absolute path on the server", args.cwd or "''")
        argv, env = _command_argv(args), _parse_env(args.env)
        urls = group_urls(args)
        if urls is not None:  # several hosts: exec_server.cli.group_run
            from exec_server.cli.group_run import run_group

            return run_group(args, urls, argv, env)
        return _run(args, argv, env)
    except CommandError as exc:
        return report("run", exc)


def _run(args: argparse.Namespace, argv: List[str], env: dict) -> int:
    if not argv:
        raise CommandError("no command given (exec-server run -- COMMAND ...)")
    if args.url and args.via:
        raise CommandError("give --url or --via, not both")
    if args.tty and not _RawTerminal.available():
        raise CommandError("--tty with a terminal needs termios (POSIX); on Windows pipe the input in")
    server = None
    try:
        if args.url is None and args.via is None:
            # The embedded server: in this process, reached through queues (no
            # listener, no WebSocket); a stdio child would need a new interpreter.
            from exec_server.cli.embedded import EmbeddedServer

            ignored = credential_options(args) + (["--reconnect-deadline"] if args.reconnect_deadline is not None
                                                  else [])
            if ignored:
                raise CommandError("%s: for a server --url or --via names; without them run embeds its server"
                                   % ", ".join(ignored))
            try:
                config = config_from_options(args)  # the server options before `run`
            except ValueError as exc:  # --max-sessions 0: a usage mistake, named as typed
                raise CommandError(str(exc)) from None
            server = EmbeddedServer(config)
            notice = None
            client = Client.open(server.connector, timeout=args.timeout, client_name="exec-server-run",
                                 reconnect=None)
        else:
            deadline = ReconnectPolicy().deadline if args.reconnect_deadline is None else args.reconnect_deadline
            client = connect(args, "exec-server-run", ReconnectPolicy(deadline=deadline) if deadline > 0 else None)
            notice = _say_recovery(deadline)
        with client:
            if args.cwd is not None:
                try:
                    client.to_uri(args.cwd)
                except ValueError:  # a remote path cannot be resolved against the local directory
                    raise CommandError("--cwd wants an absolute path on the server", args.cwd or "''") from None
            try:
                return _stream(client, argv, env, args, notice)
            except _StartFailed as failed:
                raise _start_failure(argv, args, failed.error) from None
            except ProcessOutputGap as gap:
                raise CommandError(_lost_output(gap), args.via or args.url, EXIT_DISCONNECTED) from None
            except (TimeoutError, RpcError) as exc:  # a silent server, a bad answer
                raise CommandError(str(exc), args.via or args.url, EXIT_DISCONNECTED) from None
    except ExecServerDisconnected as exc:
        raise disconnected(exc, args.via or args.url) from None
    finally:
        if server is not None:
            server.close()


def _lost_output(gap: ProcessOutputGap) -> str:
    """What a gap in the output means to a user of ``run``: a reader slower than the command fell behind by more
    than run buffers and the server retains (the protocol has no flow control), or a connection was down."""
    if gap.when != DROPPED:
        return str(gap)
    return ("output lost (seqs %s..%s): the command wrote faster than its output was read, and fell behind by more "
            "than run buffers (64 MiB) and the server retains (--retained-output-bytes, --spool-bytes-per-process); "
            "the remote command was killed" % (gap.missing[0], gap.missing[-1]))


class _RecoveryNotice(logging.Handler):
    """One stderr line when the connection is lost and one when it is back (the client's recovery log),
    while the command runs: once it has closed (a server that shut down reports it, then hangs up),
    ``run`` ends without reconnecting, and says nothing of it."""

    #: The command's process, once started.
    process: Optional[RemoteProcess] = None

    def __init__(self, deadline: float):
        super().__init__(logging.INFO)
        self.deadline = deadline

    def emit(self, record: logging.LogRecord) -> None:
        if self.process is not None and self.process.done:
            return
        text = "connection lost; reconnecting for up to %g s" % self.deadline
        if record.getMessage().endswith("recovered"):
            text = "reconnected; the command goes on"
        say("exec-server run: %s" % text)  # not print: with stderr closed at start it writes to stdout


def _say_recovery(deadline: float) -> Optional[_RecoveryNotice]:
    """A dropped connection is not silent: ``run`` says so while it reconnects (ssh would have failed)."""
    recovery = logging.getLogger("exec_server.client.recovery")
    if deadline > 0 and not recovery.isEnabledFor(logging.INFO):
        notice = _RecoveryNotice(deadline)
        recovery.addHandler(notice)
        recovery.setLevel(logging.INFO)
        recovery.propagate = False
        return notice
    return None


def _start_failure(argv: List[str], args: argparse.Namespace, error: RpcError) -> CommandError:
    """Name what is missing when the server could not start the command (exit 127, 126 or 125)."""
    status = start_failure_status(error)
    if isinstance(error, WorkingDirectoryNotFound):
        return CommandError("%s: %s" % (error.what, error.message), args.cwd, status)
    if isinstance(error, ProgramNotFound):
        return CommandError("command not found: %s" % error.message, argv[0], status)
    return CommandError("cannot start the command: %s" % error.message, argv[0], status)


def _stream(client: Client, argv: List[str], env: dict, args: argparse.Namespace,
            notice: Optional[_RecoveryNotice] = None) -> int:
    forward = args.stdin or args.tty  # a pipe too, as the help says; a closed stdin is its end of file at once
    # The local terminal's size at start and on each SIGWINCH (our ptySize
    # extension); the Codex reference keeps every PTY at 24x80.
    follow_size = args.tty and client.supports("ptySize") and hasattr(signal, "SIGWINCH")
    try:
        process = client.start(argv, cwd=args.cwd, env=env, inherit_env=not args.clean_env, tty=args.tty,
                               stdin=bool(forward), pty_size=_terminal_size() if follow_size else None)
    except RpcError as exc:  # the server refused the start; later RpcErrors are no start failure
        raise _StartFailed(exc) from None
    if notice is not None:
        notice.process = process
    interrupts = []
    local = LocalOutput(binary(sys.stdout), binary(sys.stderr))

    give_up = give_up_timer([process])  # started by an ending signal's kill

    def on_interrupt(signum, frame):
        note_interrupt()
        interrupts.append(signum)
        if len(interrupts) == 1:
            threading.Thread(target=_quietly, args=(process.send_interrupt,), daemon=True).start()
        else:
            end_with(process.terminate, local, give_up)

    def on_resize(signum, frame):
        size = _terminal_size()
        if size is not None:
            threading.Thread(target=_quietly, args=(lambda: process.resize(*size),), daemon=True).start()

    def on_hangup(signum, frame):  # SIGTERM, SIGHUP (the terminal closed): the remote tree ends with us
        end_with(process.terminate, local, give_up)

    installed = handle([signal.SIGINT], on_interrupt) + handle(END_SIGNALS, on_hangup)
    if follow_size:
        installed += handle([signal.SIGWINCH], on_resize)
    exit_code = None
    try:
        with _RawTerminal(sys.stdin.fileno()) if args.tty and sys.stdin is not None else _NullContext():
            if forward:
                threading.Thread(target=_forward_stdin, args=(process, client.supports("closeStdin")),
                                 daemon=True).start()
            try:
                for event in process:
                    if local.ended:
                        break
                    if isinstance(event, OutputEvent):
                        is_err = event.stream == "stderr"
                        try:
                            local.write(is_err, event.data)
                        except OSError as error:  # `| head -1`, `>&-`, `> /dev/full`: the tree is killed
                            _quietly(lambda: process.kill(timeout=KILL_WAIT))
                            return local.failed(is_err, error)
                    elif isinstance(event, ExitedEvent):
                        exit_code = event.exit_code
                    elif isinstance(event, ClosedEvent):
                        break
            except (ProcessOutputGap, ExecServerDisconnected):  # output lost or not read in time: the status counts
                if not local.ended:
                    raise
            waited = local.ended
            if waited:  # an ending signal: the output goes nowhere now, only the exit status counts
                exit_code = exit_after_end(process)
    finally:
        restore(installed)
        give_up.cancel()
    status, wrong = remote_status(exit_code if exit_code is not None or waited else exit_after_close(process))
    if wrong:
        raise CommandError(wrong, args.via or args.url, status)
    return status


class _StartFailed(Exception):
    """The server answered the ``process/start`` with an error (``error``)."""

    def __init__(self, error: RpcError):
        super().__init__(error)
        self.error = error


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None


def _quietly(action) -> None:
    try:
        action()
    except Exception as exc:  # the process may be gone already
        log.debug("interrupt failed: %s", exc)
