"""inherit mode's tools: find and kill the processes of a marked tree, and reap the orphans they leave.

In ``inherit`` mode (:mod:`~exec_server.server.process.contain`) every process of
a tree carries :data:`MARKER_ENV` in its environment; a kill SIGKILLs every
process that still carries its tree's marker (found with psutil), and the
``exec-server`` command becomes the child subreaper, so orphans reparent to
it and are reaped here (:class:`Reaper`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Collection, List, Tuple, TypeVar

from exec_server.server.process import guardian

log = logging.getLogger(__name__)

#: Environment variable marking every process of one tree in ``inherit`` mode.
MARKER_ENV = guardian.MARKER_ENV
#: A kill of marked processes scans the process table until MARKED_QUIET_SCANS scans in a row find
#: nothing, for at most MARKED_SCAN_SECONDS.
MARKED_QUIET_SCANS = 2
MARKED_SCAN_SECONDS = 2.0


def marked_processes(markers: Collection[str]) -> List[Tuple[Any, str]]:
    """``(psutil.Process, marker)`` of each process whose environment has ``MARKER_ENV`` in ``markers``.

    One scan of the process table; processes of other users and zombies
    (their environment cannot be read) are skipped.
    """
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            marker = process.environ().get(MARKER_ENV)
        except (psutil.Error, OSError):
            continue
        if marker in markers:
            found.append((process, marker))
    return found


def kill_marked(*markers: str) -> int:
    """SIGKILL every process whose environment carries ``MARKER_ENV`` set to one of ``markers``, with its
    process group (:func:`~exec_server.server.process.guardian.kill_with_group`); how many.

    Scans the process table until :data:`MARKED_QUIET_SCANS` scans in a row
    find nothing (for at most :data:`MARKED_SCAN_SECONDS`): a scan lists the
    PIDs first, so a job that forks and exits while it runs leaves a child
    that scan never sees, and a killed process may have forked just before.
    psutil checks each process's identity before the kill.
    """
    import psutil

    me = os.getpid()
    with _leaders_lock:
        leaders = set(_leaders)
    killed = set()

    def scan() -> int:
        found = [process for process, _marker in marked_processes(set(markers))]
        for process in found:
            try:
                if process.ppid() == me and process.pid not in leaders:
                    _adopted.add(process.pid)  # an orphan of ours: the Reaper reaps it by its PID
                guardian.kill_with_group(process)
                killed.add(process.pid)
            except psutil.Error:
                pass
        return len(found)

    guardian.until_quiet(scan, MARKED_QUIET_SCANS, MARKED_SCAN_SECONDS)
    return len(killed)


# ------------------------------------------------------------- inherit mode: child subreaper
_PR_SET_CHILD_SUBREAPER = 36
_leaders: "set[int]" = set()  # inherit-mode children forked by Popen: never reaped here
_adopted: "set[int]" = set()  # orphans seen alive with a marker, reaped once zombies (set ops are atomic)
_leaders_lock = threading.Lock()
_ours: "set[int]" = set()  # children this process forked and waits for itself (Popen): never reaped here
#: Held around a fork of ours and its registration, and by a sweep: no child the sweep sees unregistered is
#: one of ours, so a zombie it does not know is an adopted orphan, whether or not it was ever seen alive.
forking = threading.RLock()
_Child = TypeVar("_Child")


def start_ours(start: Callable[[], _Child]) -> _Child:
    """Run ``start`` (a ``Popen``) and register the child it forked as ours: the :class:`Reaper` leaves its
    status to its Popen.  Call :func:`forget_ours` once that Popen has reaped it."""
    with forking:
        child = start()
        pid = getattr(child, "pid", None)
        if isinstance(pid, int):
            _ours.add(pid)
    return child


def forget_ours(pid: int) -> None:
    """The Popen of ``pid`` (registered by :func:`start_ours`) has reaped it."""
    _ours.discard(pid)


def register_leader(pid: int) -> None:
    """``pid`` is a Popen child of ours: the :class:`Reaper` leaves it to its Popen."""
    with _leaders_lock:
        _leaders.add(pid)


def forget_leader(pid: int) -> None:
    """The Popen of ``pid`` has reaped it."""
    with _leaders_lock:
        _leaders.discard(pid)


class Reaper:
    """Makes this process the child subreaper and reaps the orphans it adopts (inherit mode).

    Orphans of a tree then reparent to the server instead of PID 1, so they
    stay visible (``psutil.Process().children()``) and die with the server's
    sweeps.  It never calls ``waitpid(-1)``, which would steal a Popen's
    status: only a process seen alive carrying :data:`MARKER_ENV`, not forked
    by a Popen, is reaped by its own PID once it is a zombie.  For the
    ``exec-server`` command only: a library user's process is not changed.
    """

    def __init__(self, interval: float = 1.0):
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exec-server-reaper")

    def start(self) -> bool:
        """Become the subreaper and start sweeping; False where the kernel has no subreapers."""
        import ctypes  # here: ~2 ms that no server's start-up needs (#17)

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                return False
        except (OSError, AttributeError):
            return False
        self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sweeping; a started reaper (the server is ending) then kills what :meth:`kill_adopted` finds."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.ident is not None:
            self.kill_adopted()

    def kill_adopted(self) -> int:
        """SIGKILL, with its process group, every orphan this process adopted and that still runs; how many.

        At the server's orderly end every tree is killed already, by its
        group and its marker; what may run on is a daemon that both left the
        tree's group and dropped its marker (``setsid env -i ...``), or made
        itself non-dumpable (``ssh-agent``), so that no marker sweep finds it.
        Left by its parent, it is the subreaper's child, and every child that
        this process did not fork (:func:`start_ours`, a Popen leader, the
        guardian) is such an orphan of one of the server's trees: each is
        killed, whatever its environment holds.
        """
        import psutil

        killed = 0
        with forking:
            for child in _adopted_children():
                try:
                    guardian.kill_with_group(child)
                    killed += 1
                except psutil.Error:  # gone, or a zombie the sweeps reap
                    pass
        return killed

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception:  # a sweep must not end the thread
                log.exception("reaping adopted processes failed")

    def sweep(self) -> int:
        """Reap adopted zombies and note new adopted processes; how many were reaped.

        A zombie child that this process did not fork (:func:`start_ours`, a
        Popen leader, the guardian) is an orphan it adopted: reaped by its PID,
        also one that lived and died between two sweeps (never seen alive, it
        would stay a zombie, a PID and a task, as long as the server).
        """
        import psutil

        reaped = 0
        with forking:  # no fork of ours is between its fork and its registration now
            for child in _adopted_children():
                try:
                    zombie = child.status() == psutil.STATUS_ZOMBIE
                    if not zombie and child.pid not in _adopted and MARKER_ENV in child.environ():
                        _adopted.add(child.pid)
                except (psutil.Error, OSError):
                    zombie = True  # gone (waitpid tells) or a zombie
                if zombie:
                    try:
                        if os.waitpid(child.pid, os.WNOHANG)[0]:
                            reaped += 1
                            _adopted.discard(child.pid)
                    except ChildProcessError:
                        _adopted.discard(child.pid)
        return reaped


def _adopted_children() -> List[Any]:
    """This process's children that it did not fork (:func:`start_ours`, a Popen leader, the guardian): the
    orphans it adopted as the subreaper.  Call it holding :data:`forking`."""
    import psutil

    with _leaders_lock:
        known = set(_leaders) | _ours | {guardian.running_pid()}
    return [child for child in psutil.Process().children() if child.pid not in known]
