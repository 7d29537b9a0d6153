"""One child of ``process/start``: its output log, watcher, stdin, signals and kills.

:class:`ManagedProcess` ties the pieces together: :mod:`.spawn` starts the
child, :mod:`.watch` reads its streams and reaps it, :mod:`.output` numbers
and retains the events, and each event goes to the session's listener (as
values, not JSON: the session encodes).  Output is drained whether or not
anybody reads it, and an exit is reported the moment it happens.

This module never imports a transport.
"""

import logging
import os
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from exec_server.common import telemetry, tree
from exec_server.protocol.errors import InternalError, InvalidParams, os_error_message
from exec_server.server.config import ServerConfig
from exec_server.server.process import contain, guardian, marked, watch
from exec_server.server.process.output import Closed, Event, EventListener, OutputLog, ReadResult
from exec_server.server.process.spool import Spool
from exec_server.server.process.stdin import StdinWriter
from exec_server.server.process.spawn import exit_code_from_returncode, send_eof, set_window_size, spawn_child

log = logging.getLogger(__name__)


class ManagedProcess:
    """A child process, its retained output and its event sequence.

    Thread-safe.  Create with :meth:`spawn`, then call :meth:`start_monitoring`
    once the ``process/start`` response has been sent, so that no
    notification can precede it (PROTOCOL.md 5.3).
    """

    def __init__(self, process_id: str, popen: "subprocess.Popen[bytes]", tty: bool,
                 stdin_writable: bool, pty_master: Optional[int], config: ServerConfig,
                 listener: EventListener, on_closed: Callable[["ManagedProcess"], None], sandboxed: bool = False,
                 spool: Optional[Callable[[], Optional[Spool]]] = None):
        self.process_id = process_id
        self.pid = popen.pid
        self.tty = tty
        self.stdin_writable = stdin_writable
        self.started_at = time.monotonic()
        self.closed_at: Optional[float] = None
        #: the span of the request that started it (``telemetry.current_span_context``), for the close's log record
        self.span_context: Any = None
        self._popen = popen
        self._pty_master = pty_master
        self._config = config
        self._listener = listener
        self._on_closed = on_closed
        self._log = OutputLog(1 if pty_master is not None else 2, config.retained_output_bytes,
                              config.retained_output_chunks, self._emit, sandboxed, spool, config.max_read_bytes,
                              config.max_read_chunks)
        self._lock = threading.Lock()  # guards the kill decision against the exit
        self._killed = False
        self._master_lock = threading.Lock()  # guards the PTY master against its close
        self._stdin = (StdinWriter(process_id, "process-%s-stdin" % self.pid, config.max_stdin_queue_bytes,
                                   lambda: self._log.exited or self._log.closed, None if tty else popen.stdin,
                                   self._dup_master, send_eof) if stdin_writable else None)
        self._marker: Optional[str] = None  # MARKER_ENV value of this tree (inherit mode)
        self._terminal: Optional[str] = None  # the PTY's terminal (/dev/pts/N)
        self._isolated = False  # runs under the PID-namespace init
        self._sandboxed = sandboxed  # runs under bubblewrap
        self._watch: Optional[watch.Watch] = None
        self._held: Optional[List[Event]] = None  # events the pidfd watcher delivers in one write
        telemetry.processes_active.add(1)

    # ------------------------------------------------------------------ spawn
    @classmethod
    def spawn(cls, process_id: str, argv: List[str], cwd: str, env: Dict[str, str], tty: bool,
              pipe_stdin: bool, arg0: Optional[str], config: ServerConfig, listener: EventListener,
              on_closed: Callable[["ManagedProcess"], None],
              wrapper: Optional[List[str]] = None,
              spool: Optional[Callable[[], Optional[Spool]]] = None,
              pty_size: Optional[Tuple[int, int]] = None) -> "ManagedProcess":
        """Start a child (:func:`~exec_server.server.process.spawn.spawn_child`) and manage it.

        Args:
            listener: receives the process's events, in seq order.
            on_closed: called once with the process after ``closed``.
            wrapper: a confining command (bubblewrap); the process is then
                marked sandboxed.
            spool: gives the spool its output goes to past the in-memory
                retention (:class:`~exec_server.server.process.output.OutputLog`).
            pty_size: ``(rows, cols)`` of a new PTY (default 24x80).
        Raises:
            InternalError: the spawn failed (the OS text, PROTOCOL.md 5.1).
        """
        containment = contain.decide(config.pid_namespace)
        marker = None if wrapper or containment.isolated else guardian.marker_prefix() + os.urandom(16).hex()
        if marker is not None:
            env = containment.environment(env, marker)
        elif wrapper:
            # A sandbox carries a marker for the guardian alone: bubblewrap's --die-with-parent does not cover a
            # server killed while it sets up (its namespace's init arms the signal after its clone, and escaped
            # with its program).  Only bubblewrap's processes carry it (--unsetenv: the program's environment
            # stays as asked); the server's own kills need no scan for it, the namespace takes the tree.
            env = dict(env, **{contain.MARKER_ENV: guardian.marker_prefix() + os.urandom(16).hex()})
            wrapper = wrapper[:1] + ["--unsetenv", contain.MARKER_ENV] + wrapper[1:]
        prefix = containment.prefix
        if not wrapper and containment.isolated and config.guard_isolated_starts:
            # For the guardian alone, as a sandbox's (ServerConfig.guard_isolated_starts): the prefix's last step
            # keeps it out of the program's environment; the server's own kills need no scan for it (the
            # group's kill ends the namespace).
            env = containment.environment(env, guardian.marker_prefix() + os.urandom(16).hex())
            prefix = containment.guarded_prefix()
        popen, master, terminal = spawn_child(argv, cwd, env, tty, pipe_stdin, arg0, wrapper, prefix,
                                              pty_size=pty_size)
        if marker is not None:
            marked.register_leader(popen.pid)
        process = cls(process_id, popen, tty, tty or pipe_stdin, master, config, listener, on_closed, bool(wrapper),
                      spool)
        process._marker = marker
        process._terminal = terminal
        process._isolated = containment.isolated and not wrapper
        return process

    def start_monitoring(self) -> None:
        """Start watching the child (once, after the start response)."""
        streams: Dict[int, str] = {}
        if self._pty_master is not None:
            streams[self._pty_master] = "pty"
        else:
            streams[self._popen.stdout.fileno()] = "stdout"  # type: ignore[union-attr]
            streams[self._popen.stderr.fileno()] = "stderr"  # type: ignore[union-attr]
        self._watch = watch.start(self, streams, self._config.read_chunk_bytes, self._config.exit_output_grace)

    # ------------------------------------------- what the watcher reports (watch.Watched)
    def stream_output(self, stream: str, data: bytes) -> None:
        """Bytes read from ``stream`` go into the output log (and out as an event)."""
        self._log.output(stream, data)

    def stream_ended(self, stream: str) -> None:
        """``stream`` reached EOF: close its pipe; the log may now publish ``closed``."""
        if stream == "stdout":
            self._popen.stdout.close()  # type: ignore[union-attr]
        elif stream == "stderr":
            self._popen.stderr.close()  # type: ignore[union-attr]
        self._log.stream_ended()

    def reap(self) -> int:
        """Wait for the child (it has exited, or will); the protocol's exit code."""
        try:
            returncode = self._popen.wait()
            marked.forget_ours(self._popen.pid)
            if self._marker is not None:
                marked.forget_leader(self._popen.pid)
            return exit_code_from_returncode(returncode, self.tty, self._isolated)
        except Exception:
            log.exception("waiting for process %r failed", self.process_id)
            return -1

    def report_exit(self, exit_code: int) -> None:
        """Publish ``exited`` (and ``closed`` if the streams are done); stop stdin."""
        self._log.exit(exit_code)
        if self._stdin is not None:
            self._stdin.stop()

    def wait_streams_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every stream's EOF; True if they ended."""
        return self._log.wait_streams_ended(timeout)

    def hold_events(self) -> None:
        """Gather events from now on (the pidfd watcher's thread only, which alone publishes then)."""
        self._held = []

    def held_events(self) -> int:
        """How many events are gathered."""
        return len(self._held) if self._held is not None else 0

    def has_held_events(self) -> bool:
        """Events recorded (a ``process/read`` sees them) but not yet delivered to the listener."""
        return bool(self._held)

    def release_events(self) -> None:
        """Deliver the gathered events to the listener in one call; stop gathering."""
        held, self._held = self._held, None
        if held:
            self._deliver(held)

    # ----------------------------------------------------------------- events
    def _emit(self, event: Event) -> None:
        """The log's emit: deliver now, or gather for the watcher's one write (under the log's publish lock)."""
        held = self._held
        if held is not None:
            held.append(event)
        else:
            self._deliver([event])
        if type(event) is Closed:
            self._after_closed()

    def _deliver(self, events: List[Event]) -> None:
        try:
            self._listener(events)
        except Exception:  # a listener must not kill a reader thread
            log.exception("notification of process %r failed", self.process_id)

    def _after_closed(self) -> None:
        self.closed_at = time.monotonic()
        result = self.result_label()
        telemetry.processes_active.add(-1)
        telemetry.processes_finished.add(1, {"result": result})
        telemetry.process_duration.record(self.closed_at - self.started_at, {"result": result})
        if log.isEnabledFor(logging.INFO):
            log.info("process closed", extra=telemetry.log_fields(self.span_context, pid=self.pid,
                                                                  exit_code=self._log.exit_code, result=result))
        if self._pty_master is not None:
            if self._stdin is not None:
                self._stdin.release(self._terminal)  # before the master closes: its terminal stays the same
            with self._master_lock:
                master, self._pty_master = self._pty_master, None
                try:
                    os.close(master)
                except OSError:
                    pass
        try:
            self._on_closed(self)
        except Exception:
            log.exception("closed hook of process %r failed", self.process_id)

    # ------------------------------------------------------------------ state
    @property
    def exit_code(self) -> Optional[int]:
        return self._log.exit_code

    @property
    def exited(self) -> bool:
        return self._log.exited

    @property
    def closed(self) -> bool:
        return self._log.closed

    @property
    def marker(self) -> Optional[str]:
        """The ``MARKER_ENV`` value every process of this tree carries (``inherit`` mode), else None."""
        return self._marker

    @property
    def killed(self) -> bool:
        """True if a terminate, expiry or shutdown killed this process."""
        return self._killed

    def wake(self) -> None:
        """Wake every long poll on this process so it re-checks its abort test."""
        self._log.wake()

    def read(self, after_seq: int = 0, max_bytes: Optional[int] = None, wait: float = 0.0,
             aborted: Callable[[], Optional[Exception]] = lambda: None,
             reserve: Callable[[int, int], None] = lambda size, chunks: None) -> ReadResult:
        """The ``process/read`` result (PROTOCOL.md 5.4); see :meth:`OutputLog.read`."""
        return self._log.read(after_seq, max_bytes, wait, aborted, reserve)

    def reads_spool(self, after_seq: int) -> bool:
        """Whether a ``process/read`` after ``after_seq`` reads spooled output (see :meth:`OutputLog.reads_spool`)."""
        return self._log.reads_spool(after_seq)

    def discard_output(self) -> None:
        """Delete the output spooled to disk (the process is forgotten or its session ended)."""
        self._log.discard_spool()

    # ------------------------------------------------------------------ input
    def write(self, data: bytes, write_id: str, close: bool = False) -> str:
        """Queue bytes for the child's stdin or PTY (PROTOCOL.md 5.5), then end of file if ``close``.

        ``close`` (our ``closeStdin``): after every byte accepted so far, a
        pipe is closed; a PTY gets its EOF character (:func:`send_eof`).

        Returns:
            ``"stdinClosed"`` without writable stdin or after a close, else ``"accepted"``
            (also for a ``write_id`` already accepted: nothing is written again).
        Raises:
            InternalError: ``failed to write to process stdin``; the child has
                exited.  Or ``stdin queue is full ...`` (``data.reason``
                ``stdinQueueFull``): more than ``max_stdin_queue_bytes`` would
                wait for a child that does not read; retry once it has read.
        """
        if self._stdin is None:
            return "stdinClosed"
        return self._stdin.write(data, write_id, close)

    def _dup_master(self) -> Optional[int]:
        """A duplicate of the PTY master's descriptor for the stdin writer, or None once the PTY is closed."""
        with self._master_lock:  # not once the PTY is closed (its number may be reused)
            return os.dup(self._pty_master) if self._pty_master is not None else None

    def resize(self, rows: int, cols: int) -> None:
        """Set the PTY's window size (the child gets SIGWINCH); InvalidParams without a PTY; no-op once closed."""
        if not self.tty:
            raise InvalidParams("process %s has no terminal to resize" % self.process_id)
        with self._master_lock:
            if self._pty_master is not None:
                set_window_size(self._pty_master, rows, cols)

    # ---------------------------------------------------------------- signals
    def interrupt(self) -> None:
        """SIGINT the process group (CTRL_BREAK_EVENT on Windows), and under ``isolate`` also the group the
        program made its own (``timeout``, ``bash -i``); no-op once exited.

        Raises:
            InternalError: ``failed to signal process: <text>``.
        """
        if self._sandboxed:  # not to bubblewrap's group: bubblewrap would die of it, and the sandbox with it
            if self._log.exit_code is not None or self._popen.returncode is not None:
                return
            try:
                contain.interrupt_sandboxed(self.pid, ended=lambda: self._log.exit_code is not None
                                            or self._popen.returncode is not None)
            except OSError as exc:
                raise InternalError("failed to signal process: %s" % os_error_message(exc)) from None
            return
        own_group = self._programs_own_group() if self._isolated else None
        with self._lock:
            if self._log.exit_code is not None or self._popen.returncode is not None:
                return
            try:
                tree.interrupt_group(self.pid)
                if own_group is not None:
                    tree.interrupt_group(own_group)
            except OSError as exc:
                raise InternalError("failed to signal process: %s" % os_error_message(exc)) from None

    def _programs_own_group(self) -> Optional[int]:
        """Under ``isolate``, the process group the program made its own (``timeout``, ``bash -i``), which its
        init forwards no SIGINT to; None when it has none, or once it (or the process) is gone."""
        if self._log.exit_code is not None:
            return None
        program = contain.wait_program_started(self.pid, ended=lambda: self._log.exit_code is not None)
        if program is None or self._log.exit_code is not None:
            return None
        try:
            group = os.getpgid(program.pid)
            return group if group != os.getpgid(self.pid) else None
        except ProcessLookupError:
            return None

    def terminate(self) -> bool:
        """Kill the whole tree at once (SIGKILL, no grace; PROTOCOL.md 5.7).

        Returns:
            True if the process was running and a kill was issued.
        """
        with self._lock:
            running = not (self._log.exited or self._popen.returncode is not None)
            if running:
                self._killed = True
        if running:
            self._kill_all()
        elif self._marker is not None:
            marked.kill_marked(self._marker)  # the leader is gone; its escaped descendants are not
        return running

    def _kill_all(self, scan_marked: bool = True) -> None:
        """SIGKILL the group (isolate: that ends the namespace, no process scan); inherit: descendants, marked."""
        if self._isolated and self._popen.returncode is None:
            tree.kill_group(self.pid)  # unshare dies, --kill-child takes its init, the kernel the rest
        elif not self._isolated:
            tree.kill_tree(self.pid)
        if self._marker is not None and scan_marked:
            marked.kill_marked(self._marker)

    def kill_tree(self, scan_marked: bool = True) -> None:
        """Kill the group and descendants even if the leader has exited (expiry, shutdown).  ``scan_marked``
        False: the caller kills what carries :attr:`marker` itself, in one scan with other processes' markers
        (:func:`kill_trees`: a scan per process took ~6 s for a session of 1000 finished commands)."""
        with self._lock:
            if not self._log.exited:
                self._killed = True
        self._kill_all(scan_marked)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the process is no longer watched; True if that happened in time."""
        return self._watch.join(timeout) if self._watch is not None else True

    def result_label(self) -> str:
        """``terminated``, ``success`` or ``error`` (PROTOCOL.md 12.3)."""
        if self._killed:
            return "terminated"
        return "success" if self._log.exit_code == 0 else "error"


def kill_trees(processes: Sequence[ManagedProcess], markers: Sequence[str] = ()) -> None:
    """:meth:`ManagedProcess.kill_tree` of each of ``processes``, then one scan of the process table for their
    markers and ``markers`` (inherit mode's marked jobs; none under ``isolate``)."""
    found = list(markers)
    for process in processes:
        process.kill_tree(scan_marked=False)
        if process.marker is not None:
            found.append(process.marker)
    if found:
        marked.kill_marked(*found)
