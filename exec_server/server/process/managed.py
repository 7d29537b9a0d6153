"""Child processes: spawn (pipes or PTY), output retention with seq, waits, kills.

One :class:`ManagedProcess` per ``process/start``.  Output, exited and closed
events share one sequence starting at 1 (PROTOCOL.md 5.3).  Output is retained
within the limits of PROTOCOL.md section 6 and every event is handed to a
``notify(*texts)`` callable in seq order; the session decides whether a
connection receives it.  Output is drained whether or not anybody reads it,
and an exit is reported the moment it happens.

Threads per process: on Linux one, which polls the child's pipes (or PTY)
and a pidfd (``pidfd_open``, Linux 5.3+) together; it is reused for the next
process (:mod:`exec_server.server.threads`).  Elsewhere (Windows, where
pipes cannot be polled, and systems without pidfds) one reader per stream
and one waiter blocked in ``waitpid``.

This module never imports a transport.
"""

import base64
import collections
import errno
import logging
import os
import queue
import select
import shutil

import subprocess
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from exec_server.common import tree
from exec_server.common import telemetry
from exec_server.server.config import ServerConfig
from exec_server.protocol.errors import InternalError, os_error_message
from exec_server.protocol.jsonrpc import dumps, encode_output_notification
from exec_server.server.threads import ReusableThreads

log = logging.getLogger(__name__)

IS_WINDOWS = sys.platform.startswith("win")
#: Window size of a new PTY (PROTOCOL.md 5.1): rows, columns.
PTY_ROWS, PTY_COLUMNS = 24, 80
#: ``writeId``s remembered per process for idempotent writes (PROTOCOL.md 5.5).
REMEMBERED_WRITE_IDS = 4096
#: Output texts that mark a failure as a likely sandbox denial (PROTOCOL.md 9).
SANDBOX_DENIAL_MARKERS = (
    "operation not permitted", "permission denied", "read-only file system",
    "seccomp", "sandbox", "landlock", "failed to write file",
)

#: Takes notification texts and sends them in order, in one write.
Notify = Callable[..., None]

#: Most notifications a pidfd watcher gathers from events that are ready
#: together before it writes them (e.g. a short process's output, exited
#: and closed go out in one write).
BATCH_MESSAGES = 4

#: Threads that run pidfd watchers, reused across processes.
WATCHERS = ReusableThreads("process-watch")

#: Whether a process's events are watched by one thread polling its pipes
#: and a pidfd (Linux) rather than a thread per stream plus a waiter.
POLL_WITH_PIDFD = hasattr(os, "pidfd_open") and hasattr(select, "poll") and not IS_WINDOWS


class ReadAborted(Exception):
    """A long poll was abandoned (connection gone or session taken over)."""


def resolve_executable(program: str, env: Dict[str, str]) -> str:
    """Find ``program`` as the reference does (PROTOCOL.md 5.1).

    A name without a path separator is looked up in the child's ``PATH`` if
    ``env`` has one, else in the server's own ``PATH``.

    Raises:
        FileNotFoundError: not found (ENOENT, as ``execvp`` would say).
    """
    if os.sep in program or (os.altsep and os.altsep in program):
        return program
    search = env.get("PATH") if "PATH" in env else os.environ.get("PATH", os.defpath)
    found = shutil.which(program, path=search)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


def _exit_code_from_returncode(returncode: int, tty: bool) -> int:
    """128 + signal for a pipe child killed by a signal; 1 for a tty child."""
    if returncode >= 0:
        return returncode
    return 1 if tty else 128 - returncode


_null_input_fd: Optional[int] = None
_null_input_lock = threading.Lock()


def _null_input() -> int:
    """A descriptor of the null device for children's stdin, opened once per server."""
    global _null_input_fd
    if _null_input_fd is None:
        with _null_input_lock:
            if _null_input_fd is None:
                _null_input_fd = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    return _null_input_fd


def _set_controlling_tty() -> None:  # runs in the child between fork and exec
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ManagedProcess:
    """A child process, its retained output and its event sequence.

    Thread-safe.  Create with :meth:`spawn`, then call :meth:`start_monitoring`
    once the ``process/start`` response has been sent, so that no
    notification can precede it (PROTOCOL.md 5.3).
    """

    def __init__(self, process_id: str, popen: "subprocess.Popen[bytes]", tty: bool,
                 stdin_writable: bool, pty_master: Optional[int], config: ServerConfig,
                 notify: Notify, on_closed: Callable[["ManagedProcess"], None]):
        self.process_id = process_id
        self.pid = popen.pid
        self.tty = tty
        self.stdin_writable = stdin_writable
        self.started_at = time.monotonic()
        self.closed_at: Optional[float] = None
        self._popen = popen
        self._pty_master = pty_master
        self._config = config
        self._notify = notify
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._publish_lock = threading.Lock()
        self._next_seq = 1
        self._chunks: Deque[Tuple[int, str, str, int]] = collections.deque()  # seq, stream, b64, bytes
        self._retained_bytes = 0
        self._exit_code: Optional[int] = None
        self._exited_sent = False
        self._closed = False
        self._open_streams = 0
        self._killed = False
        self._sandboxed = False
        self._write_ids: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._stdin_queue: "Optional[queue.Queue[Optional[bytes]]]" = None
        self._stdin_queued = 0  # bytes accepted for stdin and not yet written or dropped
        self._threads: List[threading.Thread] = []
        self._watch_done: Optional[threading.Event] = None  # set when the pidfd watcher ends
        self._batch: Optional[List[str]] = None  # texts the pidfd watcher publishes in one write
        telemetry.processes_active.add(1)

    # ------------------------------------------------------------------ spawn
    @classmethod
    def spawn(cls, process_id: str, argv: List[str], cwd: str, env: Dict[str, str], tty: bool,
              pipe_stdin: bool, arg0: Optional[str], config: ServerConfig, notify: Notify,
              on_closed: Callable[["ManagedProcess"], None],
              wrapper: Optional[List[str]] = None) -> "ManagedProcess":
        """Start a child in its own session and process group.

        Args:
            argv: program and arguments; ``argv[0]`` is resolved with
                :func:`resolve_executable`.
            cwd: native working directory.
            env: the child's whole environment.
            tty: run under a new 24x80 PTY (stdout and stderr merged, stream
                ``pty``).
            pipe_stdin: keep stdin writable without a PTY.
            arg0: ``argv[0]`` as the child sees it, or None.
            wrapper: a confining command (bubblewrap) that runs the resolved
                program; the process is then marked sandboxed.
        Raises:
            InternalError: the spawn failed; the message is the OS text, e.g.
                ``No such file or directory (os error 2)`` (PROTOCOL.md 5.1).
        """
        try:
            if wrapper or "PATH" not in env:
                executable = resolve_executable(argv[0], env)
            else:  # Popen's own search in the child's PATH, as execvp does (saves a lookup)
                executable = argv[0]
            args = [arg0 if arg0 is not None else argv[0]] + list(argv[1:])
            if wrapper:
                args = list(wrapper) + [executable] + list(argv[1:])
                executable = wrapper[0]
            if tty:
                if IS_WINDOWS:
                    raise InternalError("tty processes need a PTY backend on Windows")
                popen, master = cls._spawn_pty(executable, args, cwd, env)
            else:
                master = None
                popen = subprocess.Popen(
                    args, executable=executable, cwd=cwd, env=env,
                    stdin=subprocess.PIPE if pipe_stdin else _null_input(),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    bufsize=0, close_fds=True, **cls._group_options(),
                )
        except OSError as exc:
            raise InternalError(os_error_message(exc)) from None
        except (ValueError, TypeError) as exc:  # e.g. an embedded NUL byte
            raise InternalError(str(exc)) from None
        process = cls(process_id, popen, tty, tty or pipe_stdin, master, config, notify, on_closed)
        process._sandboxed = bool(wrapper)
        return process

    @staticmethod
    def _group_options() -> Dict[str, Any]:
        if IS_WINDOWS:
            return {"creationflags": tree.CREATE_NEW_PROCESS_GROUP}
        return {"start_new_session": True}

    @staticmethod
    def _spawn_pty(executable: str, args: List[str], cwd: str, env: Dict[str, str]):
        import fcntl
        import struct
        import termios

        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", PTY_ROWS, PTY_COLUMNS, 0, 0))
            os.set_inheritable(master, False)
            popen = subprocess.Popen(
                args, executable=executable, cwd=cwd, env=env,
                stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                start_new_session=True, preexec_fn=_set_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return popen, master

    def start_monitoring(self) -> None:
        """Start watching the child (once, after the start response)."""
        streams: Dict[int, str] = {}
        if self._pty_master is not None:
            streams[self._pty_master] = "pty"
        else:
            streams[self._popen.stdout.fileno()] = "stdout"  # type: ignore[union-attr]
            streams[self._popen.stderr.fileno()] = "stderr"  # type: ignore[union-attr]
        self._open_streams = len(streams)
        name = "process-%s" % self.pid
        pidfd = self._open_pidfd() if POLL_WITH_PIDFD else None
        if pidfd is not None:
            self._watch_done = threading.Event()
            WATCHERS.run(self._monitor, streams, pidfd)
        else:
            for fd, stream in streams.items():
                self._threads.append(threading.Thread(target=self._pump, args=(fd, stream),
                                                      name="%s-%s" % (name, stream), daemon=True))
            self._threads.append(threading.Thread(target=self._wait, name=name + "-wait", daemon=True))
        for thread in self._threads:
            thread.start()

    def _open_pidfd(self) -> Optional[int]:
        try:
            return os.pidfd_open(self.pid)
        except OSError as exc:  # ENOSYS on kernels before 5.3
            log.debug("pidfd_open(%d) failed, using a waiter thread: %s", self.pid, exc)
            return None

    # ----------------------------------------------------------------- events
    def _monitor(self, streams: Dict[int, str], pidfd: int) -> None:
        """Poll the streams and the pidfd until exited and closed are published."""
        size = self._config.read_chunk_bytes
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        exit_code: Optional[int] = None
        grace_ends = 0.0
        try:
            while streams or exit_code is None:
                timeout_ms = None
                if exit_code is not None and not self._exited_sent:  # output pending: wait for EOF briefly
                    timeout_ms = max(0, int((grace_ends - time.monotonic()) * 1000) + 1)
                ready = poller.poll(timeout_ms)
                self._batch = []
                try:
                    while True:
                        for fd, _mask in ready:
                            if fd == pidfd:
                                poller.unregister(pidfd)
                                exit_code = self._reap()
                                grace_ends = time.monotonic() + self._config.exit_output_grace
                                continue
                            data = self._read_stream(fd, streams[fd], size)
                            if data:
                                self._publish_output(streams[fd], data)
                                continue
                            poller.unregister(fd)
                            self._finish_stream(streams.pop(fd))
                        if exit_code is not None and not self._exited_sent and (
                                not streams or time.monotonic() >= grace_ends):
                            self._publish_exited(exit_code)
                        if not ready or len(self._batch) >= BATCH_MESSAGES or not (streams or exit_code is None):
                            break
                        ready = poller.poll(0)  # what is ready by now goes out in the same write
                finally:
                    batch, self._batch = self._batch, None
                    if batch:
                        self._deliver(*batch)
        finally:
            os.close(pidfd)
            for stream in streams.values():
                self._finish_stream(stream)
            self._watch_done.set()  # type: ignore[union-attr]

    def _pump(self, fd: int, stream: str) -> None:
        """Read one stream until EOF (the thread-per-stream way)."""
        size = self._config.read_chunk_bytes
        try:
            while True:
                data = self._read_stream(fd, stream, size)
                if not data:
                    break
                self._publish_output(stream, data)
        finally:
            self._finish_stream(stream)

    def _read_stream(self, fd: int, stream: str, size: int) -> bytes:
        """Up to ``size`` bytes, or b"" at EOF (EIO: the PTY's last slave closed)."""
        while True:
            try:
                return os.read(fd, size)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    log.debug("read from %s of %s failed: %s", stream, self.pid, exc)
                return b""

    def _finish_stream(self, stream: str) -> None:
        if stream == "stdout":
            self._popen.stdout.close()  # type: ignore[union-attr]
        elif stream == "stderr":
            self._popen.stderr.close()  # type: ignore[union-attr]
        self._stream_finished()

    def _publish_output(self, stream: str, data: bytes) -> None:
        chunk = base64.b64encode(data).decode("ascii")
        with self._publish_lock:
            with self._changed:
                seq = self._next_seq
                self._next_seq += 1
                self._retain(seq, stream, chunk, len(data))
                self._changed.notify_all()
            self._send(encode_output_notification(self.process_id, seq, stream, chunk))

    def _retain(self, seq: int, stream: str, chunk: str, size: int) -> None:
        chunks = self._chunks
        chunks.append((seq, stream, chunk, size))
        self._retained_bytes += size
        limit_bytes = self._config.retained_output_bytes
        limit_chunks = self._config.retained_output_chunks
        while chunks and (self._retained_bytes > limit_bytes or len(chunks) > limit_chunks):
            self._retained_bytes -= chunks.popleft()[3]

    def _send(self, *texts: str) -> None:
        if self._batch is not None:  # the pidfd watcher sends them at the end of its poll round
            self._batch.extend(texts)
            return
        self._deliver(*texts)

    def _deliver(self, *texts: str) -> None:
        try:
            self._notify(*texts)
        except Exception:  # a sink must not kill a reader thread
            log.exception("notification of process %r failed", self.process_id)

    def _stream_finished(self) -> None:
        with self._publish_lock:
            with self._changed:
                self._open_streams -= 1
                self._changed.notify_all()
                close_now = self._open_streams == 0 and self._exited_sent
            if close_now:
                self._publish_closed()

    def _reap(self) -> int:
        """Wait for the child (it has exited, or will); the protocol's exit code."""
        try:
            return _exit_code_from_returncode(self._popen.wait(), self.tty)
        except Exception:
            log.exception("waiting for process %r failed", self.process_id)
            return -1

    def _wait(self) -> None:
        """Waiter thread: reap, give the pipes a moment to reach EOF, publish exited."""
        exit_code = self._reap()
        with self._changed:
            # The pipes normally reach EOF right after the exit: wait briefly so
            # the last output precedes ``exited``, as the reference's does.
            self._changed.wait_for(lambda: self._open_streams == 0, timeout=self._config.exit_output_grace)
        self._publish_exited(exit_code)

    def _publish_exited(self, exit_code: int) -> None:
        """Publish ``exited`` (and ``closed`` if the streams are done); stop stdin."""
        with self._publish_lock:
            with self._changed:
                seq = self._next_seq
                self._next_seq += 1
                self._exit_code = exit_code
                self._exited_sent = True
                denied = self._sandbox_denied_locked()
                close_now = self._open_streams == 0
                self._changed.notify_all()
            self._send(dumps({"method": "process/exited", "params": {
                "processId": self.process_id, "seq": seq, "exitCode": exit_code, "sandboxDenied": denied}}))
            if close_now:
                self._publish_closed()
        self._stop_stdin()

    def _publish_closed(self) -> None:
        """Publish ``closed`` (caller holds the publish lock)."""
        with self._changed:
            seq = self._next_seq
            self._next_seq += 1
            self._closed = True
            self.closed_at = time.monotonic()
            self._changed.notify_all()
        self._send(dumps({"method": "process/closed", "params": {"processId": self.process_id, "seq": seq}}))
        result = self.result_label()
        telemetry.processes_active.add(-1)
        telemetry.processes_finished.add(1, {"result": result})
        telemetry.process_duration.record(self.closed_at - self.started_at, {"result": result})
        if log.isEnabledFor(logging.INFO):
            log.info("process closed", extra=telemetry.log_fields(pid=self.pid, exit_code=self._exit_code,
                                                                  result=result))
        if self._pty_master is not None:
            try:
                os.close(self._pty_master)
            except OSError:
                pass
        try:
            self._on_closed(self)
        except Exception:
            log.exception("closed hook of process %r failed", self.process_id)

    def _sandbox_denied_locked(self) -> bool:
        if not self._sandboxed or not self._exit_code:
            return False
        text = b"".join(base64.b64decode(c[2]) for c in self._chunks).decode("utf-8", "replace").lower()
        if any(marker in text for marker in SANDBOX_DENIAL_MARKERS):
            return True
        return not IS_WINDOWS and self._exit_code == 128 + 31  # SIGSYS

    # ------------------------------------------------------------------ state
    @property
    def exit_code(self) -> Optional[int]:
        with self._lock:
            return self._exit_code

    @property
    def exited(self) -> bool:
        with self._lock:
            return self._exited_sent

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    @property
    def killed(self) -> bool:
        """True if a terminate, expiry or shutdown killed this process."""
        return self._killed

    def wake(self) -> None:
        """Wake every long poll on this process so it re-checks its abort test."""
        with self._changed:
            self._changed.notify_all()

    def read(self, after_seq: int = 0, max_bytes: Optional[int] = None, wait: float = 0.0,
             aborted: Callable[[], Optional[Exception]] = lambda: None) -> Dict[str, Any]:
        """The ``process/read`` result (PROTOCOL.md 5.4), waiting up to ``wait`` seconds.

        Args:
            after_seq: return output events with a greater seq.
            max_bytes: decoded-byte budget, or None for no limit.
            wait: long-poll limit in seconds.
            aborted: called after each wake-up; a returned exception is raised.
        Raises:
            whatever ``aborted`` returns, e.g. the session-taken-over error.
        """
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                error = aborted()
                if error is not None:
                    raise error
                result = self._read_locked(after_seq, max_bytes)
                exited, closed = result["exited"], result["closed"]
                if result["chunks"] or closed or (exited and after_seq < self._next_seq - 1):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result
                self._changed.wait(min(remaining, 3600.0))  # any u64 waitMs: no timeout overflow

    def _read_locked(self, after_seq: int, max_bytes: Optional[int]) -> Dict[str, Any]:
        chunks = []
        total = 0
        last_seq = None
        for seq, stream, chunk, size in self._chunks:
            if seq <= after_seq:
                continue
            if max_bytes is not None and chunks and (total + size > max_bytes or total >= max_bytes):
                break
            chunks.append({"seq": seq, "stream": stream, "chunk": chunk})
            total += size
            last_seq = seq
        if max_bytes is not None and last_seq is not None:
            next_seq = last_seq + 1
        else:
            next_seq = self._next_seq
        return {
            "chunks": chunks,
            "nextSeq": next_seq,
            "exited": self._exited_sent,
            "exitCode": self._exit_code,
            "closed": self._closed,
            "failure": None,
            "sandboxDenied": self._sandbox_denied_locked() if self._exited_sent else False,
        }

    # ------------------------------------------------------------------ input
    def write(self, data: bytes, write_id: str) -> str:
        """Queue bytes for the child's stdin or PTY (PROTOCOL.md 5.5).

        Returns:
            ``"stdinClosed"`` for a child without writable stdin, else
            ``"accepted"`` (also when ``write_id`` was already accepted, in
            which case nothing is written again).
        Raises:
            InternalError: ``failed to write to process stdin``; the child has
                exited.  Or ``stdin queue is full ...`` (``data.reason``
                ``stdinQueueFull``): more than ``max_stdin_queue_bytes`` would
                wait for a child that does not read; retry once it has read.
        """
        if not self.stdin_writable:
            return "stdinClosed"
        with self._lock:
            if write_id in self._write_ids:
                return "accepted"
            if self._exited_sent or self._closed:
                raise InternalError("failed to write to process stdin")
            limit = self._config.max_stdin_queue_bytes
            if self._stdin_queued and self._stdin_queued + len(data) > limit:
                raise InternalError("stdin queue is full: %d bytes wait for the process to read them (limit %d)"
                                    % (self._stdin_queued, limit),
                                    data={"reason": "stdinQueueFull", "queuedBytes": self._stdin_queued,
                                          "limitBytes": limit})
            self._stdin_queued += len(data)
            self._write_ids[write_id] = None
            if len(self._write_ids) > REMEMBERED_WRITE_IDS:
                self._write_ids.popitem(last=False)
            if self._stdin_queue is None:
                self._stdin_queue = queue.Queue()
                thread = threading.Thread(target=self._feed_stdin, args=(self._stdin_queue,),
                                          name="process-%s-stdin" % self.pid, daemon=True)
                thread.start()
            self._stdin_queue.put(data)
        return "accepted"

    def _feed_stdin(self, pending: "queue.Queue[Optional[bytes]]") -> None:
        if self._pty_master is not None:
            fd = self._pty_master
        else:
            fd = self._popen.stdin.fileno()  # type: ignore[union-attr]
        broken = False
        while True:
            data = pending.get()
            if data is None:
                break
            view = memoryview(data)
            while view and not broken:
                try:
                    view = view[os.write(fd, view):]
                except InterruptedError:
                    continue
                except OSError as exc:
                    log.debug("stdin of process %r: %s", self.process_id, exc)
                    broken = True
            with self._lock:
                self._stdin_queued -= len(data)
        if self._pty_master is None and self._popen.stdin is not None:
            try:
                self._popen.stdin.close()
            except OSError:
                pass

    def _stop_stdin(self) -> None:
        with self._lock:
            pending = self._stdin_queue
            if pending is None and self._pty_master is None and self._popen.stdin is not None:
                try:
                    self._popen.stdin.close()
                except OSError:
                    pass
        if pending is not None:
            pending.put(None)

    # ---------------------------------------------------------------- signals
    def interrupt(self) -> None:
        """SIGINT the process group (CTRL_BREAK_EVENT on Windows); no-op once exited.

        Raises:
            InternalError: ``failed to signal process: <text>``.
        """
        with self._lock:
            if self._exit_code is not None or self._popen.returncode is not None:
                return
            try:
                tree.interrupt_group(self.pid)
            except OSError as exc:
                raise InternalError("failed to signal process: %s" % os_error_message(exc)) from None

    def terminate(self) -> bool:
        """Kill the whole tree at once (SIGKILL, no grace; PROTOCOL.md 5.7).

        Returns:
            True if the process was running and a kill was issued.
        """
        with self._lock:
            if self._exited_sent or self._popen.returncode is not None:
                return False
            self._killed = True
        tree.kill_tree(self.pid)
        return True

    def kill_tree(self) -> None:
        """Kill the group and descendants even if the leader has exited (expiry, shutdown)."""
        with self._lock:
            if not self._exited_sent:
                self._killed = True
        tree.kill_tree(self.pid)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the process is no longer watched; True if that happened in time."""
        if self._watch_done is not None:
            return self._watch_done.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                return False
        return True

    def result_label(self) -> str:
        """``terminated``, ``success`` or ``error`` (PROTOCOL.md 12.3)."""
        if self._killed:
            return "terminated"
        return "success" if self._exit_code == 0 else "error"


