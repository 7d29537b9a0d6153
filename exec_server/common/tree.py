"""Kill whole process trees: the process group plus every descendant psutil finds.

POSIX (PROTOCOL.md 11): every child leads its own session and process group,
so SIGKILL to the group kills it and its background jobs at once; descendants
that left the group (``setsid``) are found with psutil before the kill and
killed by PID, psutil checking each one's identity (pid, create time).

Windows: ``taskkill /PID <pid> /T /F`` with all three std streams on the null
device and no console window, so nothing reaches a terminal; if taskkill
fails, psutil kills the tree.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, List

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

IS_WINDOWS = sys.platform.startswith("win")
#: ``subprocess.CREATE_NO_WINDOW`` (defined on Windows only).
CREATE_NO_WINDOW = 0x08000000
#: ``subprocess.CREATE_NEW_PROCESS_GROUP`` (defined on Windows only).
CREATE_NEW_PROCESS_GROUP = 0x00000200
#: How long taskkill may run, seconds.
TASKKILL_TIMEOUT = 10.0


def descendants_of(pid: int) -> List[psutil.Process]:
    """Every living descendant of ``pid`` (empty if it is gone)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_each(processes: List[psutil.Process]) -> None:
    import psutil

    for process in processes:
        try:
            process.kill()  # psutil refuses a PID that was reused meanwhile
        except psutil.Error:
            pass


def kill_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` (POSIX), no error if it is gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree_posix(pid: int) -> None:
    """SIGKILL the process group ``pid`` and every descendant of ``pid``."""
    stragglers = descendants_of(pid)
    kill_group(pid)
    _kill_each(stragglers)


def taskkill_command(pid: int) -> List[str]:
    return ["taskkill", "/PID", str(pid), "/T", "/F"]


def kill_tree_windows(pid: int) -> None:
    """``taskkill /T /F`` the tree silently; psutil kills it if taskkill fails."""
    import psutil

    stragglers = descendants_of(pid)
    try:
        root = [psutil.Process(pid)]
    except psutil.Error:
        root = []
    try:
        completed = subprocess.run(
            taskkill_command(pid),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            creationflags=CREATE_NO_WINDOW,
            timeout=TASKKILL_TIMEOUT,
            check=False,
        )
        ok = completed.returncode == 0
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("taskkill of %d failed: %s", pid, exc)
        ok = False
    if not ok:
        _kill_each(root + stragglers)


def kill_tree(pid: int) -> None:
    """Kill the tree rooted at ``pid`` (a child this server started)."""
    if IS_WINDOWS:
        kill_tree_windows(pid)
    else:
        kill_tree_posix(pid)


def interrupt_group(pid: int) -> None:
    """Send an interrupt to the process group ``pid``.

    POSIX: SIGINT to the group.  Windows: CTRL_BREAK_EVENT to the group
    (a process started with CREATE_NEW_PROCESS_GROUP).

    Raises:
        OSError: the signal could not be sent (other than "no such process").
    """
    if IS_WINDOWS:
        os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        return
    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        pass
