"""Watching a child: its output streams and its exit.

On Linux one thread polls the child's pipes (or PTY) and a pidfd
(``pidfd_open``, Linux 5.3+) together; the thread is reused for the next
process (:data:`WATCHERS`).  Events that are ready together go out in one
write (a short process's output, exited and closed: one write).  Elsewhere
(Windows, where pipes cannot be polled, and systems without pidfds) one
reader thread per stream and one waiter blocked in ``waitpid``.

What the watcher finds goes to a :class:`Watched` (the managed process);
this module knows no seq, retention or JSON.
"""

import errno
import logging
import os
import select
import sys
import threading
import time
from typing import Dict, List, Optional, Protocol

from exec_server.server.threads import ReusableThreads

log = logging.getLogger(__name__)

#: Most notifications a pidfd watcher gathers from events that are ready
#: together before it writes them (e.g. a short process's output, exited
#: and closed go out in one write).
BATCH_MESSAGES = 4

#: Threads that run pidfd watchers, reused across processes and servers.
#: Module-level on purpose: a thread only ever runs one process's watch loop,
#: which ends when that child's streams close and its exit is reaped (a
#: server's shutdown kills its trees, which ends its watches); an idle thread
#: exits after :data:`~exec_server.server.threads.IDLE_SECONDS`.  No server
#: state lives here.
WATCHERS = ReusableThreads("process-watch")

#: Whether a process's events are watched by one thread polling its pipes
#: and a pidfd (Linux) rather than a thread per stream plus a waiter.
POLL_WITH_PIDFD = hasattr(os, "pidfd_open") and hasattr(select, "poll") and not sys.platform.startswith("win")


class Watched(Protocol):
    """What a watcher reports to (implemented by the managed process)."""

    pid: int

    def stream_output(self, stream: str, data: bytes) -> None:
        """Bytes read from ``stream``."""

    def stream_ended(self, stream: str) -> None:
        """``stream`` reached EOF (or failed); called once per stream."""

    def reap(self) -> int:
        """Wait for the child (it has exited, or will); the protocol's exit code."""

    def report_exit(self, exit_code: int) -> None:
        """Publish the exit (after the output that preceded it)."""

    def wait_streams_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every stream's EOF."""

    def hold_events(self) -> None:
        """Gather the events published from now on instead of sending each."""

    def held_events(self) -> int:
        """How many events are gathered."""

    def release_events(self) -> None:
        """Send the gathered events in one write; stop gathering."""

    def kill_tree(self) -> None:
        """Kill the child's whole tree (when no thread can watch it)."""


class Watch:
    """A running watch of one child; :meth:`join` waits for its end."""

    def __init__(self, done: Optional[threading.Event] = None, threads: Optional[List[threading.Thread]] = None):
        self._done = done
        self._threads = threads or []

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the child is no longer watched; True if that happened in time."""
        if self._done is not None:
            return self._done.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                return False
        return True


def start(target: Watched, streams: Dict[int, str], chunk_bytes: int, exit_output_grace: float) -> Watch:
    """Start watching ``target``'s child: ``streams`` maps each descriptor to its stream name.

    Args:
        chunk_bytes: most bytes read at once (one output event each).
        exit_output_grace: how long after the exit, in seconds, output may
            still arrive before ``exited`` is published (the pipes normally
            reach EOF right after the exit, so the last output precedes it).

    Where no thread can start (a task limit, no memory for a stack) the
    child is killed and, on the calling thread, what its pipes hold is read
    before its exit is reported: unwatched, it would never report either.
    """
    pidfd = _open_pidfd(target.pid) if POLL_WITH_PIDFD else None
    unwatched = dict(streams)
    started: List[threading.Thread] = []
    try:
        if pidfd is not None:
            done = threading.Event()
            WATCHERS.run(_poll, target, dict(streams), pidfd, chunk_bytes, exit_output_grace, done)
            return Watch(done=done)
        name = "process-%s" % target.pid
        for fd, stream in streams.items():
            pump = threading.Thread(target=_pump, args=(target, fd, stream, chunk_bytes),
                                    name="%s-%s" % (name, stream), daemon=True)
            pump.start()
            started.append(pump)
            del unwatched[fd]
        waiter = threading.Thread(target=_wait, args=(target, exit_output_grace), name=name + "-wait", daemon=True)
        waiter.start()
        return Watch(threads=started + [waiter])
    except RuntimeError as exc:
        log.error("no thread to watch process %d (%s): killed", target.pid, exc)
        if pidfd is not None:
            os.close(pidfd)
        target.kill_tree()
        _finish_unwatched(target, unwatched, chunk_bytes, exit_output_grace)
        return Watch(threads=started)


def _finish_unwatched(target: Watched, streams: Dict[int, str], size: int, grace: float) -> None:
    """The killed child's end, without a thread: reap it, read what ``streams`` hold, report its exit."""
    exit_code = target.reap()
    for fd, stream in streams.items():
        try:
            os.set_blocking(fd, False)  # the tree is dead, but an escaped process might hold the pipe
        except (OSError, AttributeError):  # a pipe that cannot be made non-blocking (Windows) is not read
            target.stream_ended(stream)
        else:
            _pump(target, fd, stream, size)  # to EOF, or to "no more now" (EAGAIN reads as the end)
    _report_exit(target, exit_code, grace)


def _open_pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined]
    except OSError as exc:  # ENOSYS on kernels before 5.3
        log.debug("pidfd_open(%d) failed, using a waiter thread: %s", pid, exc)
        return None


def read_chunk(fd: int, size: int, pid: int, stream: str) -> bytes:
    """Up to ``size`` bytes, or b"" at EOF (EIO: the PTY's last slave closed)."""
    while True:
        try:
            return os.read(fd, size)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno != errno.EIO:
                log.debug("read from %s of %s failed: %s", stream, pid, exc)
            return b""


def _poll(target: Watched, streams: Dict[int, str], pidfd: int, size: int, grace: float,
          done: threading.Event) -> None:
    """Poll the streams and the pidfd until exited and closed are published."""
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    exit_code: Optional[int] = None
    exit_reported = False
    grace_ends = 0.0
    try:
        while streams or exit_code is None:
            timeout_ms = None
            if exit_code is not None and not exit_reported:  # output pending: wait for EOF briefly
                timeout_ms = max(0, int((grace_ends - time.monotonic()) * 1000) + 1)
            ready = poller.poll(timeout_ms)
            target.hold_events()
            try:
                while True:
                    for fd, _mask in ready:
                        if fd == pidfd:
                            poller.unregister(pidfd)
                            exit_code = target.reap()
                            grace_ends = time.monotonic() + grace
                            continue
                        data = read_chunk(fd, size, target.pid, streams[fd])
                        if data:
                            target.stream_output(streams[fd], data)
                            continue
                        poller.unregister(fd)
                        target.stream_ended(streams.pop(fd))
                    if exit_code is not None and not exit_reported and (
                            not streams or time.monotonic() >= grace_ends):
                        exit_reported = True
                        target.report_exit(exit_code)
                    if not ready or target.held_events() >= BATCH_MESSAGES or not (streams or exit_code is None):
                        break
                    ready = poller.poll(0)  # what is ready by now goes out in the same write
            finally:
                target.release_events()
    finally:
        os.close(pidfd)
        for stream in streams.values():
            target.stream_ended(stream)
        done.set()


def _pump(target: Watched, fd: int, stream: str, size: int) -> None:
    """Read one stream until EOF (the thread-per-stream way)."""
    try:
        while True:
            data = read_chunk(fd, size, target.pid, stream)
            if not data:
                break
            target.stream_output(stream, data)
    finally:
        target.stream_ended(stream)


def _wait(target: Watched, grace: float) -> None:
    """Waiter thread: reap, give the pipes a moment to reach EOF, publish exited."""
    _report_exit(target, target.reap(), grace)


def _report_exit(target: Watched, exit_code: int, grace: float) -> None:
    # The pipes normally reach EOF right after the exit: wait briefly so the
    # last output precedes ``exited``, as the reference's does.
    target.wait_streams_ended(grace)  # with no thread: those a started reader thread reads
    target.report_exit(exit_code)
