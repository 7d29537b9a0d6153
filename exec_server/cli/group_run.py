"""``exec-server run --url A --url B ... -- COMMAND`` (or ``--hosts FILE``): one command on several hosts.

Each output line is printed as it completes, prefixed with its host
(``[127.0.0.1:8765] line``; stderr lines to stderr), as ``pssh -i`` and
Ansible ad-hoc commands do; with ``--group-output`` each host's output is
one block, printed when that host ends.  A summary (host, exit status,
seconds, what went wrong) follows on stderr.  The exit status is 0 when
every host's command exited 0, else :data:`~exec_server.cli.statuses.EXIT_SOME_HOSTS_FAILED`.
Ctrl-C interrupts every remote command; a second Ctrl-C kills them, and so do
SIGTERM and SIGHUP.  A local stdout or stderr that cannot be written (a
closed pipe, ``>&-``, a full disk) kills them too (:mod:`exec_server.cli.output`).
"""

import argparse
import signal
import sys
import threading
from typing import Dict, Iterator, List, Set, Tuple

from exec_server.cli.connect import CommandError, disconnected
from exec_server.cli.hosts import labels, open_group
from exec_server.cli.statuses import EXIT_DISCONNECTED, EXIT_SOME_HOSTS_FAILED, start_failure_status
from exec_server.cli.output import (END_SIGNALS, LocalOutput, binary, end_with, exit_after_close, exit_after_end,
                                    give_up_timer, handle, interrupted, note_interrupt, remote_status, restore, say)
from exec_server.client.group_events import GroupProcesses
from exec_server.client.process import ClosedEvent, ExitedEvent, OutputEvent, ProcessOutputGap
from exec_server.client.recovery import ReconnectPolicy
from exec_server.client.start_errors import ProgramNotFound, WorkingDirectoryNotFound
from exec_server.protocol.errors import ExecServerDisconnected, RpcError


class _WriteFailed(Exception):
    """A printer's write failed: ``error``, on ``local`` stderr (``is_err``) or stdout."""

    def __init__(self, error: OSError, local: LocalOutput, is_err: bool):
        super().__init__(error)
        self.error, self.local, self.is_err = error, local, is_err


def _emit(local: LocalOutput, is_err: bool, data: bytes) -> None:
    try:
        local.write(is_err, data)
    except OSError as error:
        raise _WriteFailed(error, local, is_err) from None


#: Bytes of one output line that ``run`` on several hosts holds before it prints them as a line of their own:
#: a longer line is printed in pieces of this size, each prefixed with its host and ended by a newline.
MAX_LINE_BYTES = 64 * 1024


class LinePrinter:
    """Whole lines as they complete, each prefixed with ``[HOST] ``; a host's last partial line at its end.

    A line over :data:`MAX_LINE_BYTES` is printed in pieces of that size, so
    memory stays bounded and each chunk is scanned once.
    """

    def __init__(self, local: LocalOutput):
        self.local = local
        self.partial: Dict[Tuple[str, bool], bytearray] = {}
        self.cut: Set[Tuple[str, bool]] = set()  # a long line's last piece printed; its newline not seen yet

    def output(self, host: str, stream: str, data: bytes) -> None:
        key = (host, stream == "stderr")
        pending = self.partial.setdefault(key, bytearray())
        if key in self.cut and data:
            self.cut.discard(key)
            ending = 2 if data[:2] == b"\r\n" else 1 if data[:1] == b"\n" else 0
            if not pending and ending:
                data = data[ending:]  # ends the line whose last piece was printed: no empty line for it
        searched = len(pending)
        pending += data
        end = pending.rfind(b"\n", searched)
        lines = pending[:end].split(b"\n") if end >= 0 else []
        del pending[:end + 1]
        whole = len(pending) - len(pending) % MAX_LINE_BYTES
        if whole:
            lines.append(pending[:whole])
            del pending[:whole]
            if not pending:
                self.cut.add(key)
        if lines:
            self._write(key, b"".join(lines_with(host, lines)))

    def finish(self, host: str) -> None:
        for is_err in (False, True):
            rest = self.partial.pop((host, is_err), b"")
            if rest:
                self._write((host, is_err), b"".join(lines_with(host, [rest])))

    def _write(self, key: Tuple[str, bool], data: bytes) -> None:
        _emit(self.local, key[1], data)


class BlockPrinter:
    """Each host's output as one block (``=== HOST ===`` then its bytes) when the host ends."""

    def __init__(self, local: LocalOutput):
        self.local = local
        self.kept: Dict[Tuple[str, bool], List[bytes]] = {}

    def output(self, host: str, stream: str, data: bytes) -> None:
        self.kept.setdefault((host, stream == "stderr"), []).append(data)

    def finish(self, host: str) -> None:
        for is_err in (False, True):
            data = b"".join(self.kept.pop((host, is_err), []))
            if data or not is_err:
                ending = b"" if not data or data.endswith(b"\n") else b"\n"
                _emit(self.local, is_err, b"=== " + host.encode() + b" ===\n" + data + ending)


def lines_with(host: str, lines: List[bytes]) -> Iterator[bytes]:
    """Each line prefixed with ``[HOST] `` and ended by a newline; one over :data:`MAX_LINE_BYTES` in pieces."""
    prefix = b"[" + host.encode() + b"] "
    for line in lines:
        for start in range(0, max(len(line), 1), MAX_LINE_BYTES):
            yield prefix + line[start:start + MAX_LINE_BYTES] + b"\n"


def run_group(args: argparse.Namespace, urls: List[str], argv: List[str], env: dict) -> int:
    """Run ``args.argv`` on every host; 0 when all exited 0, else EXIT_SOME_HOSTS_FAILED (130 after a Ctrl-C).

    Raises:
        CommandError: a usage mistake (no command, unreadable token file).
    """
    if not argv:
        raise CommandError("no command given (exec-server run --url A --url B -- COMMAND ...)")
    deadline = ReconnectPolicy().deadline if args.reconnect_deadline is None else args.reconnect_deadline
    reconnect = ReconnectPolicy(deadline=deadline) if deadline > 0 else None
    by_label = labels(urls)
    with open_group(args, urls, "exec-server-run", reconnect) as group:
        with group.start(argv, cwd=args.cwd, env=env, inherit_env=not args.clean_env) as running:
            try:
                statuses = _follow(running, by_label, BlockPrinter if args.group_output else LinePrinter)
            except _WriteFailed as failed:  # `| head -1`, `>&-`, `> /dev/full`: as for one host (trees killed)
                return failed.local.failed(failed.is_err, failed.error)
    _summary(running, statuses)
    if all(status == 0 for status, _note in statuses.values()):
        return 0
    return 128 + signal.SIGINT if interrupted() else EXIT_SOME_HOSTS_FAILED  # Ctrl-C: 130, the script stops


def _follow(running: GroupProcesses, by_label: Dict[str, str], printer_class) -> Dict[str, Tuple[int, str]]:
    """Print every event; host -> (exit status, what went wrong or '')."""
    local = LocalOutput(binary(sys.stdout), binary(sys.stderr))
    printer = printer_class(local)
    statuses: Dict[str, Tuple[int, str]] = {}
    exits: Dict[str, int] = {}
    interrupts = []

    give_up = give_up_timer(list(running.processes.values()))  # started by an ending signal's kill

    def on_interrupt(signum, frame):
        note_interrupt()
        interrupts.append(signum)
        if len(interrupts) == 1:
            threading.Thread(target=running.send_interrupt, daemon=True).start()
        else:
            end_with(running.terminate, local, give_up)

    def on_hangup(signum, frame):  # SIGTERM, SIGHUP (the terminal closed): the remote trees end with us
        end_with(running.terminate, local, give_up)

    installed = handle([signal.SIGINT], on_interrupt) + handle(END_SIGNALS, on_hangup)
    try:
        for tagged in running.events():
            host, event = tagged.host, tagged.event
            if local.ended:  # an ending signal: the output goes nowhere now, only the exit statuses count
                break
            if tagged.error is not None:
                statuses[host] = _failure(tagged.error, by_label[host], host in running.errors)
                if host in running.processes:  # lost mid-run: what it printed so far
                    printer.finish(host)
            elif isinstance(event, OutputEvent):
                printer.output(host, event.stream, event.data)
            elif isinstance(event, ExitedEvent):
                exits[host] = event.exit_code
            elif isinstance(event, ClosedEvent):
                code = exits.get(host)
                statuses[host] = remote_status(code if code is not None else exit_after_close(running.processes[host]))
                printer.finish(host)
        if local.ended:
            _statuses_after_end(running, by_label, statuses)
    except _WriteFailed:  # any write, a host's last line or block included
        running.terminate()
        raise
    finally:
        restore(installed)
        give_up.cancel()
    return statuses


def _statuses_after_end(running: GroupProcesses, by_label: Dict[str, str],
                        statuses: Dict[str, Tuple[int, str]]) -> None:
    """Each host without a status yet, from its exit code (:func:`exit_after_end`: its output is not read)."""
    running.close()  # no more output is read (nor refilled); the handles stay, and so do their exit codes
    for host, error in running.errors.items():
        statuses.setdefault(host, _failure(error, by_label[host], True))
    for host, process in running.processes.items():
        if host not in statuses:
            running.durations.setdefault(host, running.elapsed(host))
            try:
                statuses[host] = remote_status(exit_after_end(process))
            except Exception as exc:  # lost, or gave up on after the kill (the give_up timer)
                statuses[host] = _failure(exc, by_label[host], False)


def _failure(error: BaseException, url: str, before_start: bool) -> Tuple[int, str]:
    """(status, words) for a host that could not connect, could not start, or was lost."""
    if isinstance(error, WorkingDirectoryNotFound):
        return start_failure_status(error), "%s: %s (%s)" % (error.what, error.message, error.path)
    if isinstance(error, ProgramNotFound):
        return start_failure_status(error), "command not found: %s" % error.message
    if isinstance(error, RpcError):
        return start_failure_status(error), "cannot start the command: %s" % error.message
    if isinstance(error, ExecServerDisconnected):
        what = disconnected(error, url).what
        return EXIT_DISCONNECTED, what if before_start else "connection lost: %s" % what
    if isinstance(error, (TimeoutError, ProcessOutputGap)):  # a silent server, lost output: one host's words
        return EXIT_DISCONNECTED, str(error)
    return EXIT_DISCONNECTED, "%s: %s" % (type(error).__name__, error)


def _summary(running: GroupProcesses, statuses: Dict[str, Tuple[int, str]]) -> None:
    """One line per host on stderr: HOST, STATUS, TIME, and what went wrong."""
    failed = sum(1 for status, _note in statuses.values() if status != 0)
    rows = [("HOST", "STATUS", "TIME", "")]
    for host in running.hosts:
        status, note = statuses.get(host, (EXIT_DISCONNECTED, "no outcome"))
        seconds = "-" if host in running.errors else "%.2f s" % running.durations.get(host, 0.0)
        rows.append((host, str(status), seconds, note))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = ["exec-server run: %d of %d hosts failed" % (failed, len(running.hosts)) if failed
             else "exec-server run: all %d hosts succeeded" % len(running.hosts)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    say("\n".join(line.rstrip() for line in lines))
