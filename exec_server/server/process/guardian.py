"""The guardian: a small process that kills every marked process once the server's process is gone.

In ``inherit`` mode (README "Process containment") a tree is found by the
marker its processes inherit (:data:`~exec_server.server.process.contain.MARKER_ENV`),
which the server sweeps on every kill.  Nothing in the server can sweep after
the server itself died of SIGKILL, an OOM kill or a crash, so the first spawn
of a Python process starts one guardian::

    python -m exec_server.server.process.guardian TOKEN

in a session of its own, holding the read end of a pipe whose write end only
the server holds.  When the server's process ends, however it ends, the kernel
closes that end; the guardian reads end of file, SIGKILLs every process whose
marker starts with ``TOKEN.``, with its process group (passes until two in a row
find nothing, for processes forked meanwhile)
and exits.  A server that shuts down in order has killed its trees already,
so the guardian then finds nothing.  One guardian serves every server of the
Python process (they die together).  It imports only psutil.
"""

import atexit
import os
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

#: Environment variable every process of a tree inherits (inherit mode).
MARKER_ENV = "EXEC_SERVER_PROCESS_ID"
#: After the server's end the guardian sweeps until QUIET_SWEEPS sweeps in a row find nothing (a scan
#: can miss a process that forks and exits while it runs), for at most SWEEP_SECONDS, pausing
#: SWEEP_PAUSE seconds between sweeps.
QUIET_SWEEPS = 2
SWEEP_SECONDS = 2.0
SWEEP_PAUSE = 0.05
#: How long an orderly interpreter exit waits for the guardian's sweep, seconds.
EXIT_WAIT = 2.0

_lock = threading.Lock()
_token: Optional[str] = None
_process: "Optional[subprocess.Popen[bytes]]" = None


def marker_prefix() -> str:
    """``TOKEN.``: the start of every marker of this Python process; starts the guardian on first use.

    A guardian that died while this process lives (a program of the same
    user killed it, or the OOM killer) is reaped and replaced with the same
    token, with a warning: it covers the trees started before it too.
    Where the guardian cannot start (no ``fork``/``exec``, e.g. a frozen
    interpreter), the markers still work for the server's own sweeps.
    """
    global _token
    with _lock:
        if _token is None:
            _token = os.urandom(16).hex()
            _start(_token)
            atexit.register(_release)
        elif _process is not None and _process.poll() is not None:
            import logging

            logging.getLogger(__name__).warning(
                "the guardian (pid %d) ended with status %s while the server runs; starting another (until "
                "now a SIGKILL of the server would have left its trees running)", _process.pid, _process.returncode)
            _process.stdin.close()  # the dead one's pipe
            _start(_token)
        return _token + "."


def _start(token: str) -> None:
    """Start the guardian of ``token`` (``_process``; None where it cannot start).  Call it holding ``_lock``."""
    global _process
    try:
        _process = subprocess.Popen(
            [sys.executable, "-m", __name__, token], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != MARKER_ENV})
    except OSError:
        _process = None


def _release() -> None:
    """At an orderly interpreter exit: end the guardian now (it sweeps) and reap it, bounded."""
    process = _process
    if process is None:
        return
    try:
        process.stdin.close()
        process.wait(EXIT_WAIT)
    except (OSError, subprocess.TimeoutExpired):
        pass


def running_pid() -> Optional[int]:
    """The PID of this process's guardian, or None (tests leave it out of their leftover checks)."""
    with _lock:
        return _process.pid if _process is not None else None


def sweep(prefix: str) -> int:
    """SIGKILL every process whose marker starts with ``prefix``, with its process group; how many were found."""
    import psutil

    found = 0
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER_ENV, "").startswith(prefix):
                found += 1
                kill_with_group(process)
        except (psutil.Error, OSError):
            continue
    return found


def kill_with_group(process) -> None:
    """SIGKILL a marked ``psutil.Process`` and its process group, unless that group is ours.

    A daemon that forks a successor and exits, again and again, changes its
    PID faster than a scan of the process table reads them, but keeps its
    process group: the group's kill reaches whichever PID it has now.  Every
    member of such a group descends from the marked tree (a group lives in
    one session, and a session's processes all descend from its leader).

    Raises:
        psutil.Error: the process is gone (or not ours to kill).
    """
    import signal

    if not hasattr(os, "killpg"):  # Windows: no POSIX process groups; the process alone
        process.kill()
        return
    try:
        group = os.getpgid(process.pid)
        foreign = group > 1 and group != os.getpgrp() and os.getsid(process.pid) != os.getsid(0)
    except OSError:
        foreign = False
    process.kill()
    if foreign:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass


def until_quiet(scan: Callable[[], int], quiet_scans: int, seconds: float, pause: float = 0.0) -> None:
    """Call ``scan`` (it returns how many processes it found) until ``quiet_scans`` calls in a row find
    none, for at most ``seconds``, sleeping ``pause`` seconds after each (the server's kills and the
    guardian's sweeps)."""
    deadline, quiet = time.monotonic() + seconds, 0
    while quiet < quiet_scans and time.monotonic() < deadline:
        quiet = 0 if scan() else quiet + 1
        if pause:
            time.sleep(pause)


def main(argv: list) -> int:
    """Wait for end of file on stdin (the server's process is gone), then sweep."""
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m exec_server.server.process.guardian TOKEN", file=sys.stderr)
        return 2
    prefix = argv[0] + "."
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    until_quiet(lambda: sweep(prefix), QUIET_SWEEPS, SWEEP_SECONDS, SWEEP_PAUSE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
