"""Process containment on Linux: what a process ever started dies with it, and with the server.

Two modes, chosen by the operator (``--linux-sandbox-pid-namespace``, as the
reference names it; README "Process containment"):

``isolate`` (the default where a start-up probe shows it works)
    Each child runs as ``setpriv --pdeathsig KILL -- unshare --pid --fork
    --kill-child --mount-proc [--map-current-user] -- dumb-init
    --single-child ... -- program args``: a PID namespace whose init is
    ``dumb-init`` (it reaps, and exits with the program's status, 128+N when a
    signal killed it).  When the namespace's init dies -- the program exited,
    or the group got SIGKILL -- the kernel kills every process in the
    namespace, whatever its session or group.  ``setpriv`` arms
    ``PR_SET_PDEATHSIG`` so a dead server takes ``unshare`` (and with it the
    namespace) along.
``inherit`` (or isolate unavailable)
    The child leads its own process group as before, and the child's
    environment carries :data:`MARKER_ENV` (``<guardian token>.<id>``); a
    kill also SIGKILLs every process that still carries the marker (found
    with psutil; :mod:`~exec_server.server.process.marked`), so ``setsid``
    daemons do not escape a kill, and the
    :mod:`~exec_server.server.process.guardian` sweeps them all when the
    server's process dies.

The parent-death signal is tied to the *thread* that forked the child, so
every child is forked by one :class:`Spawner` thread that lives as long as the
Python process.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple


from exec_server.server.process import guardian, marked

log = logging.getLogger(__name__)

ISOLATE, INHERIT = "isolate", "inherit"
MODES = (ISOLATE, INHERIT)
#: Environment variable marking every process of one tree in ``inherit`` mode.
MARKER_ENV = guardian.MARKER_ENV
#: How long the start-up probe may take, seconds.
PROBE_TIMEOUT = 10.0
#: Signals the kernel sends to a whole foreground group (Ctrl-C, Ctrl-\, Ctrl-Z, background
#: tty access) or that ``process/signal`` sends to the group: the program gets them directly
#: (same group), so ``dumb-init`` must not forward them a second time.
_GROUP_SIGNALS = (2, 3, 20, 21, 22)  # SIGINT, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU


class Spawner:
    """Runs callables (``Popen``) on one thread that outlives every child it forks.

    ``PR_SET_PDEATHSIG`` fires when the forking *thread* ends, so children
    cannot be forked by request workers that exit when idle.  Thread-safe.
    """

    def __init__(self) -> None:
        self._jobs: "queue.SimpleQueue[Tuple[Callable[[], Any], concurrent.futures.Future]]" = queue.SimpleQueue()
        # A daemon on purpose: it must live as long as the interpreter (every server of the
        # process shares it) and holds no state; it only waits for the next job.
        self._thread = threading.Thread(target=self._run, name="exec-server-spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(marked.start_ours(job))  # a Popen's child is registered as ours
            except BaseException as exc:  # handed to the caller, raised there
                future.set_exception(exc)
                del exc
            job = future = None  # not held while waiting for the next job: a failed one's request would be

    def call(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` on the spawner thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return job()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((job, future))
        try:
            return future.result()
        finally:  # a failed job's exception holds this frame, which held the future holding the exception:
            future = job = None  # a cycle that kept the request (its argv, env) until a full collection


_spawner: Optional[Spawner] = None
_spawner_lock = threading.Lock()


def spawner() -> Spawner:
    """The process-wide :class:`Spawner`, started on first use."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = Spawner()
        return _spawner


def find_dumb_init() -> Optional[str]:
    """The ``dumb-init`` binary of the installed PyPI package (this interpreter's scripts), else PATH."""
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        found = shutil.which("dumb-init", path=folder)
        if found:
            return found
    return shutil.which("dumb-init")


def isolate_prefix(init: str, setpriv: str, unshare: str, map_user: bool) -> List[str]:
    """The command that runs a program alone in a new PID namespace (see the module docstring)."""
    prefix = [setpriv, "--pdeathsig", "KILL", "--", unshare]
    if map_user:
        prefix.append("--map-current-user")
    prefix += ["--pid", "--fork", "--kill-child", "--mount-proc", "--", init, "--single-child"]
    for number in _GROUP_SIGNALS:
        prefix += ["--rewrite", "%d:0" % number]
    return prefix + ["--"]


def unmark_step(env: str = "env") -> List[str]:
    """``env -u MARKER_ENV --``: runs what follows without the guardian's marker (a program whose name has
    a ``=`` must not follow it: ``env`` would take it for an assignment)."""
    return [env, "-u", MARKER_ENV, "--"]


def _is_unmark_step(command: List[str]) -> bool:
    return len(command) >= 4 and os.path.basename(command[0]) == "env" and command[1:4] == unmark_step()[1:]


def ends_unmarked(prefix: List[str]) -> bool:
    """Whether ``prefix`` ends with :func:`unmark_step` (then a program name holding ``=`` needs the arg0 step)."""
    return _is_unmark_step(prefix[-4:])


def terminal_prefix(prefix: List[str]) -> List[str]:
    """The prefix of a program on a PTY: ``prefix`` with ``dumb-init`` in its default (setsid) mode.

    There ``dumb-init`` makes the program a session leader whose
    controlling terminal is the PTY, inside the PID namespace, so the
    terminal's foreground process group is one the program can see (a job
    control shell reads and restores it; outside, ``dash`` fails with
    ``Cannot set tty process group``).  The terminal's own signals (Ctrl-C,
    SIGWINCH, SIGHUP) then reach the program's group only, and ``dumb-init``
    forwards what ``process/signal`` sends to the outer group: no rewrite.
    """
    if "--single-child" not in prefix:
        return prefix
    at = prefix.index("--single-child")
    end = prefix.index("--", at)
    return prefix[:at] + prefix[end:]


class Containment:
    """The mode in force and the command prefix of each child; decided once by :func:`probe`."""

    def __init__(self, mode: str, prefix: List[str], reason: str = "", unmark: Optional[List[str]] = None):
        """``unmark``: :func:`unmark_step` with the path of ``env`` (isolate)."""
        self.mode = mode
        self.prefix = prefix
        self.reason = reason
        self.unmark = unmark or []

    @property
    def isolated(self) -> bool:
        return self.mode == ISOLATE

    def environment(self, env: Dict[str, str], marker: str) -> Dict[str, str]:
        """The child's environment, with the marker (isolated: the prefix's processes alone carry it, the
        program's environment is as given)."""
        return dict(env, **{MARKER_ENV: marker})

    def guarded_prefix(self) -> List[str]:
        """An isolated child's prefix when the guardian covers its start (``ServerConfig.guard_isolated_starts``)."""
        return self.prefix + self.unmark


_decided: Dict[str, Containment] = {}
_decided_lock = threading.Lock()


def _probe_isolate() -> Tuple[Optional["Containment"], str]:
    if not sys.platform.startswith("linux"):
        return None, "PID namespaces are Linux-only"
    init, setpriv, unshare = find_dumb_init(), shutil.which("setpriv"), shutil.which("unshare")
    env = shutil.which("env")
    missing = [name for name, path in (("dumb-init", init), ("setpriv", setpriv), ("unshare", unshare),
                                       ("env", env)) if not path]
    if missing:
        return None, "%s not found" % ", ".join(missing)
    assert init and setpriv and unshare and env
    attempts = [False, True] if os.geteuid() == 0 else [True]
    reason = ""
    for map_user in attempts:
        prefix = isolate_prefix(init, setpriv, unshare, map_user)
        try:
            done = spawner().call(lambda: subprocess.run(
                prefix + ["/bin/sh", "-c", 'test "$$" = 2 && exit 42'], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=PROBE_TIMEOUT))
        except (OSError, subprocess.SubprocessError) as exc:
            reason = str(exc)
            continue
        if done.returncode == 42:
            return Containment(ISOLATE, prefix, unmark=unmark_step(env)), ""
        reason = done.stderr.decode("utf-8", "replace").strip() or "probe exited %d" % done.returncode
    return None, reason


def decide(requested: str) -> Containment:
    """The containment for ``requested`` (``isolate`` or ``inherit``), probed once per process.

    ``isolate`` falls back to ``inherit`` when the probe fails, with one
    warning in the log.
    """
    if requested not in MODES:
        raise ValueError("pid namespace mode must be one of %s" % ", ".join(MODES))
    with _decided_lock:
        if requested in _decided:
            return _decided[requested]
        # No prefix: the guardian covers the server's death, and a spawn stays one exec.
        inherit = Containment(INHERIT, [])
        if requested == INHERIT:
            decided = inherit
        else:
            isolated, reason = _probe_isolate()
            if isolated is None:
                log.warning("PID namespace isolation unavailable (%s): process trees use process groups "
                            "and a marker instead (--linux-sandbox-pid-namespace inherit)", reason)
                decided = Containment(INHERIT, inherit.prefix, reason)
            else:
                log.info("process trees are isolated in PID namespaces")
                decided = isolated
        _decided[requested] = decided
        return decided


#: Sets argv[0] for a program run under an init that cannot (``arg0`` with a PID namespace): an exec of
#: ``sys.argv[2]`` with ``sys.argv[3:]``, through libc when argv[0] is empty (``os.execv`` refuses that;
#: Linux and the reference's ``Command::arg0("")`` allow it).  ``sys.argv[1]`` restores ``LC_CTYPE`` as the
#: client gave it ("" unset, else "=" and its value): in a C locale the interpreter sets it (PEP 538).
ARG0_SHIM = ("import os, sys\n"
             "ctype, path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
             "if ctype:\n"
             "    os.environ['LC_CTYPE'] = ctype[1:]\n"
             "else:\n"
             "    os.environ.pop('LC_CTYPE', None)\n"
             "if argv[0]:\n"
             "    os.execv(path, argv)\n"
             "import ctypes\n"
             "array = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)\n"
             "ctypes.CDLL(None, use_errno=True).execv(os.fsencode(path), array)\n"
             "error = ctypes.get_errno()\n"
             "raise OSError(error, os.strerror(error), path)\n")


def arg0_shim(executable: str, arg0: str, ctype: Optional[str]) -> List[str]:
    """The command that execs ``executable`` with ``arg0`` as its argv[0] (arguments follow) and the
    client's ``LC_CTYPE`` (``ctype``; None: unset)."""
    return [sys.executable, "-I", "-S", "-c", ARG0_SHIM, "" if ctype is None else "=" + ctype, executable, arg0]


def _is_arg0_shim(command: List[str]) -> bool:
    return len(command) > 4 and command[3] == "-c" and command[4] == ARG0_SHIM


#: How long an interrupt waits for an isolated program to exist, seconds (a loaded machine can take
#: seconds to run ``setpriv``, ``unshare`` and ``dumb-init``; a signal sent earlier would be lost).
PROGRAM_START_WAIT = 10.0


def wait_program_started(pid: int, timeout: float = PROGRAM_START_WAIT,
                         ended: Callable[[], bool] = lambda: False) -> Any:
    """Wait until the program under the namespace init of ``pid`` (``unshare``) has started.

    A SIGINT that reaches the group while ``unshare`` or ``dumb-init`` is
    still starting is blocked or ignored there and would never reach the
    program.  Nor may it come between dumb-init's fork and the program's
    exec: that child already unblocks signals but still has dumb-init's
    do-nothing handlers, so the signal would be swallowed.  So this waits
    for the init's child to run another command line than the init's (and
    than the :data:`ARG0_SHIM` interpreter's, which would die of the signal).
    Returns the program's ``psutil.Process``; None if it did not appear within
    ``timeout`` seconds (logged) or ``ended()`` became true (it exited meanwhile).
    """
    return _started_program(pid, timeout, ended)


#: What a sandbox's ``dumb-init`` forwards: nothing.  It runs as PID 2 there, where the program can signal it
#: (``kill -TERM -1`` spares only the caller and PID 1), and its forwarding would hand the program a signal
#: it had not been sent; the server signals the program's group itself (:func:`interrupt_sandboxed`), and
#: the terminal's signals reach the program's session directly.  SIGKILL, SIGSTOP and SIGCHLD cannot be.
_SANDBOX_INIT_OPTIONS = [option for number in range(1, 32) if number not in (9, 17, 19)
                         for option in ("--rewrite", "%d:0" % number)] + ["--"]


def sandbox_init_command() -> Optional[List[str]]:
    """The command (``dumb-init`` by its real path, its options, ``--``) that runs a sandboxed PTY program as the
    leader of a new session whose controlling terminal is the PTY; None without ``dumb-init``."""
    init = find_dumb_init()
    return [os.path.realpath(init)] + _SANDBOX_INIT_OPTIONS if init else None


def init_takes_terminal(wrapper: List[str]) -> bool:
    """Whether a sandbox's command (:func:`~exec_server.server.fs.helper.bubblewrap_command`) ends with
    :func:`sandbox_init_command`, whose ``dumb-init`` makes the PTY the program's controlling terminal (so
    bubblewrap must not take it)."""
    end = len(_SANDBOX_INIT_OPTIONS) + 1
    return len(wrapper) > end and _is_terminal_init(wrapper[-end:])


def _is_terminal_init(command: List[str]) -> bool:
    """Whether ``command`` starts with a :func:`sandbox_init_command` (whatever runs after it)."""
    end = len(_SANDBOX_INIT_OPTIONS) + 1
    return (len(command) >= end and os.path.basename(command[0]) == "dumb-init"
            and command[1:end] == _SANDBOX_INIT_OPTIONS)


def _started_program(pid: int, timeout: float, ended: Callable[[], bool]) -> Any:
    """The ``psutil.Process`` of the program below the init of ``pid`` once exec'd (not the init's copy before its
    exec, nor the :data:`ARG0_SHIM`), polled every 2 ms; None if gone, ``ended()``, or not within ``timeout`` s.
    Below a sandbox's ``dumb-init`` (:func:`init_takes_terminal`), the program is that init's child."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            for init in psutil.Process(pid).children():
                for child in init.children():
                    started = child.cmdline()
                    command = init.cmdline()  # read after its child's: read before, it could predate the init's exec
                    if _is_terminal_init(started):
                        for program in child.children():  # its copy before the exec has the same command line
                            if program.cmdline() not in ([], started):
                                return program
                    elif (started and started != command and not _is_arg0_shim(started)  # [] mid-exec
                          and not _is_unmark_step(started)):
                        return child  # exec'd: the program's own signal dispositions
        except psutil.Error:
            return None  # gone: nothing left to interrupt
        if ended():
            return None
        if time.monotonic() >= deadline:
            log.warning("process %d: its program did not start within %.1f s; the interrupt may be lost",
                        pid, timeout)
            return None
        time.sleep(0.002)


def interrupt_sandboxed(pid: int, timeout: float = PROGRAM_START_WAIT,
                        ended: Callable[[], bool] = lambda: False) -> bool:
    """SIGINT to the program of the bubblewrap sandbox ``pid`` and its process group, never to bubblewrap.

    bubblewrap's outer process has no SIGINT handler: a SIGINT to its group
    kills it, and ``--die-with-parent`` takes the sandbox with it, handled
    signal or not.  The program is the child of bubblewrap's init (PID 1 of
    the sandbox).  Without a PTY it leads a session (``--new-session``): its
    group gets the signal.  On a PTY it is the child of the sandbox's
    ``dumb-init`` (:func:`init_takes_terminal`) and leads the terminal's
    session: its group gets it; where that init could not run, it shares
    bubblewrap's group, and each of that group's processes below the init
    gets it.  Waits, as
    :func:`wait_program_started`, until the program has been exec'd.
    Returns False if it did not appear within ``timeout`` seconds or
    ``ended()`` became true.
    """
    import signal

    import psutil

    program = _started_program(pid, timeout, ended)
    if program is None or ended():  # reaped meanwhile: its pid, and those below, may be another's by now
        return False
    try:
        group = os.getpgid(program.pid)
        if group != os.getpgid(pid):
            os.killpg(group, signal.SIGINT)
            return True
        for member in [program] + program.children(recursive=True):
            try:
                if os.getpgid(member.pid) == group:
                    os.kill(member.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    except (psutil.Error, ProcessLookupError):
        return False  # gone: nothing left to interrupt
    return True
