"""Run one file system operation in the fs helper process (PROTOCOL.md 10).

Used when a request carries a sandbox that restricts the file system.  The
helper (``python -m fs_helper``) gets only the allowlisted environment
(``PATH``, ``TMPDIR``, ``TMP``, ``TEMP``), working directory ``/``, a deadline
and a bounded stderr.  On Linux, when ``bwrap`` is on PATH, the helper runs
inside bubblewrap with the policy's read-only and writable binds, so the
kernel enforces the policy even if the helper's own checks had a bug.

The helpers a server starts belong to that server's :class:`FsHelpers`,
whose :meth:`~FsHelpers.stop` (the server's shutdown) kills them and no
other server's.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from exec_server.protocol.errors import InternalError, RpcError
from exec_server.server.fs.mount_points import MOUNT_POINTS
from exec_server.server.fs.sandbox import SandboxPolicy
from exec_server.server.process import marked

log = logging.getLogger(__name__)

#: Variables copied into the helper's environment (``FS_HELPER_ENV_ALLOWLIST``).
FS_HELPER_ENV_ALLOWLIST = ("PATH", "TMPDIR", "TMP", "TEMP")
#: How long one helper run may take, seconds.
FS_HELPER_TIMEOUT = 60.0
#: Bytes of the helper's stderr kept for the error message.
FS_HELPER_STDERR_BYTES = 4096
#: After an unexpected error while a helper ran: how long its reaping waits once it is killed, seconds.
HELPER_REAP_WAIT = 5.0
#: What a ``:minimal`` entry binds read-only inside bubblewrap.
MINIMAL_BINDS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc")
#: What the helper's interpreter needs to start whatever the profile grants: the dynamic loader and the
#: C library (bound read-only like the interpreter; the helper's own policy still refuses any request
#: outside the profile).  Without them a profile that grants neither ``/`` nor ``minimal`` failed with
#: ``bwrap: execvp ...python: No such file or directory``.
LIBRARY_BINDS = ("/lib", "/lib32", "/lib64", "/usr/lib", "/usr/lib32", "/usr/lib64", "/etc/ld.so.cache")


class FsHelpers:
    """The fs helpers running for one server: :meth:`run` starts one, :meth:`stop` kills them.

    Thread-safe; a registry with one lock, no kill under it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: "set[subprocess.Popen]" = set()
        self._stopped = False

    def run(self, operation: str, params: Dict[str, Any], policy: SandboxPolicy,
            timeout: float = FS_HELPER_TIMEOUT, command: Optional[List[str]] = None) -> Dict[str, Any]:
        """:func:`run_fs_helper`, with the helper killed by this owner's :meth:`stop`."""
        return run_fs_helper(operation, params, policy, timeout, command, helpers=self)

    def running(self) -> "List[subprocess.Popen]":
        """The helpers running now (a snapshot)."""
        with self._lock:
            return list(self._running)

    def add(self, child: "subprocess.Popen") -> None:
        """Track a started helper; one started after :meth:`stop` is killed at once."""
        with self._lock:
            self._running.add(child)
            stopped = self._stopped
        if stopped:
            _kill(child)

    def discard(self, child: "subprocess.Popen") -> None:
        """Stop tracking a helper that has ended."""
        with self._lock:
            self._running.discard(child)

    def stop(self) -> None:
        """Kill every helper of this owner still running, and any started later (server shutdown)."""
        with self._lock:
            self._stopped = True
            helpers = list(self._running)
        for child in helpers:
            _kill(child)


def _kill(child: "subprocess.Popen") -> None:
    try:
        child.kill()
    except OSError:
        pass


def helper_environment(environ=None) -> Dict[str, str]:
    environ = os.environ if environ is None else environ
    allowed = {name.upper() for name in FS_HELPER_ENV_ALLOWLIST}
    windows = sys.platform.startswith("win")
    return {k: v for k, v in environ.items() if (k.upper() if windows else k) in allowed}


def _python_roots() -> List[str]:
    """Folders the helper's interpreter and packages live in (bound read-only)."""
    import fs_helper

    roots = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
             os.path.realpath(os.path.dirname(os.path.dirname(fs_helper.__file__))),
             os.path.realpath(os.path.dirname(sys.executable))}
    return sorted(roots)


def bubblewrap_command(policy: SandboxPolicy, inner: Sequence[str], bwrap: str = "bwrap",
                       python: bool = True, new_session: bool = True, die_with_parent: bool = True,
                       mount_points: Optional[List[str]] = None, drop_capabilities: bool = False,
                       terminal_init: Optional[List[str]] = None) -> List[str]:
    """The ``bwrap`` command line that confines ``inner`` to ``policy``.

    Binds are ordered from the shortest path to the longest, so a more
    specific entry overrides its parent; ``none`` entries are hidden under an
    empty read-only tmpfs (directories) or /dev/null (files); ``/proc`` and
    ``/dev`` are mounted fresh on top.  Given ``mount_points`` (a process's
    sandbox), a ``none`` or ``read`` entry that does not exist inside a
    writable folder gets /dev/null on its first missing component, which is
    appended to ``mount_points`` (:mod:`~exec_server.server.fs.mount_points`:
    the caller counts and removes them); without it such an entry is skipped
    (the fs helper checks every path against the policy itself); build it
    under ``MOUNT_POINTS.lock`` then (see that module).  ``drop_capabilities``
    (a process's sandbox) runs it without any capability: a server running
    as root would otherwise hand its child CAP_SYS_ADMIN, enough to unmount
    the binds and remount ``/`` writable.  ``python`` also binds this interpreter, the
    fs_helper package and :data:`LIBRARY_BINDS` read-only (for the helper).  ``new_session`` detaches
    from the controlling terminal (off for PTY processes);
    ``die_with_parent`` ties the sandbox to the spawning thread (the helper's
    request thread waits for it; processes are forked by the long-lived
    spawner thread of :mod:`~exec_server.server.process.contain`).
    ``terminal_init`` (a PTY process's ``dumb-init`` command,
    :func:`~exec_server.server.process.contain.sandbox_init_command`) runs the program in a new session
    whose controlling terminal is the PTY, so the terminal's signals (a typed ^C) reach the program's
    group, never bubblewrap's; its binary is bound read-only at its path.  Only where it can start there
    (:func:`_init_runs`), else the command is as without it
    (:func:`~exec_server.server.process.contain.init_takes_terminal` tells which).
    """
    command = [bwrap, "--unshare-pid"]
    if drop_capabilities:
        command += ["--cap-drop", "ALL"]
    if new_session:
        command.append("--new-session")
    if die_with_parent:
        command.append("--die-with-parent")
    if policy.restrict_network:
        command.append("--unshare-net")
    binds: List[Tuple[str, str]] = []
    if python:
        binds += [(root, "read") for root in _python_roots()]
        binds += [(root, "read") for root in LIBRARY_BINDS if os.path.exists(root)]
    for path, access in policy.entries:
        if path == ":minimal":
            binds.extend((root, "read") for root in MINIMAL_BINDS if os.path.exists(root))
        else:
            from exec_server.protocol.uris import uri_to_path

            binds.append((os.path.realpath(uri_to_path(path)), access))
    ordered = sorted(binds, key=lambda item: (len(item[0]), item[1] != "none"))  # bubblewrap applies them in turn
    applied = [(path, access) for path, access in ordered if os.path.exists(path)]

    def writable(folder: str) -> bool:
        return access_in(folder, applied) == "write"

    masks = []  # the none folders' tmpfs, made read-only once every bind below them is in place
    kept: List[str] = []  # files above protected paths, bound onto themselves
    for path, access in ordered:
        if not os.path.exists(path) or (mount_points is not None and not MOUNT_POINTS.exists(path)):
            # missing, or one of our mount point files: this sandbox binds it too, and is counted
            found = (MOUNT_POINTS.first_missing(path, writable)
                     if mount_points is not None and access != "write" else None)
            if found is not None and found[0] not in mount_points and found[0] not in kept:
                if found[1]:
                    command += ["--ro-bind", "/dev/null", found[0]]  # nothing can be created there or below
                    mount_points.append(found[0])
                else:  # a file above it: kept a file (read-only, not removable), so no folder replaces it
                    command += ["--ro-bind", found[0], found[0]]
                    kept.append(found[0])
            continue
        if access == "write":
            command += ["--bind", path, path]
        elif access == "read":
            command += ["--ro-bind", path, path]
        elif os.path.isdir(path):
            command += ["--tmpfs", path]
            masks += ["--remount-ro", path]  # empty, and writes fail rather than vanish
        else:
            command += ["--ro-bind", "/dev/null", path]
    for records in MOUNT_POINTS.records_folders():  # no sandbox may forge the mount point records (mount_records)
        if writable(records):
            command += ["--tmpfs", records]
    if terminal_init and _init_runs(terminal_init[0], applied):
        command += ["--ro-bind", terminal_init[0], terminal_init[0]]  # before the masks: its mount point may be in one
        inner = list(terminal_init) + list(inner)
    command += masks
    return command + ["--proc", "/proc", "--dev", "/dev", "--"] + list(inner)


def _init_runs(init: str, applied: List[Tuple[str, str]]) -> bool:
    """Whether ``init`` (dynamically linked: ``dumb-init``) can start in a sandbox whose binds are ``applied``: its
    path not denied, and each existing :data:`LIBRARY_BINDS` path readable, at its path and its real one (/lib ->
    usr/lib), with nothing denied below (a profile hiding the C library's folder, where a static program ran)."""
    if access_in(init, applied) == "none":
        return False
    shown = {path for library in LIBRARY_BINDS if os.path.exists(library)
             for path in (library, os.path.realpath(library))}
    if any(access_in(path, applied) not in ("read", "write") for path in shown):
        return False
    return not any(access == "none" and bound.startswith(path.rstrip("/") + "/")
                   for bound, access in applied for path in shown)


def access_in(path: str, applied: List[Tuple[str, str]]) -> Optional[str]:
    """What a sandbox whose binds (path, access) are ``applied`` in turn makes of ``path``: the access of the last
    bind at or above it, None outside every bind."""
    decided = [access for bound, access in applied if path == bound or path.startswith(bound.rstrip("/") + "/")]
    return decided[-1] if decided else None


def find_bubblewrap() -> Optional[str]:
    """``bwrap`` on PATH on Linux, else None."""
    return shutil.which("bwrap") if sys.platform.startswith("linux") else None


def helper_command(policy: SandboxPolicy) -> List[str]:
    inner = [sys.executable, "-I", "-m", "fs_helper"]
    bwrap = find_bubblewrap()
    if bwrap:
        return bubblewrap_command(policy, inner, bwrap)
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    # the helper dies with the server (its request thread waits for it, so the signal holds)
    return [setpriv, "--pdeathsig", "KILL", "--"] + inner if setpriv else inner


def _status_text(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return "signal: %d (%s)" % (-returncode, name)
    return "exit status: %d" % returncode


def _stderr_file() -> IO[bytes]:
    """A file for the helper's stderr: a temporary file, or /dev/null (no diagnostics) when none can be made.

    The temporary directory can be gone (a cleaner removed $TMPDIR), unwritable
    or out of inodes, or the server out of descriptors: the operation still
    runs, without its stderr, rather than fail with an internal error.
    """
    try:
        return tempfile.TemporaryFile()
    except OSError as exc:
        log.warning("fs helper: no temporary file for its stderr (%s); its diagnostics are dropped", exc)
    try:
        return open(os.devnull, "w+b")
    except OSError as exc:  # out of descriptors: so would the helper's start be
        raise InternalError("fs sandbox helper could not start: %s" % exc) from None


def run_fs_helper(operation: str, params: Dict[str, Any], policy: SandboxPolicy,
                  timeout: float = FS_HELPER_TIMEOUT, command: Optional[List[str]] = None,
                  helpers: Optional[FsHelpers] = None) -> Dict[str, Any]:
    """Run ``operation`` in the helper; returns its wire result.

    Args:
        command: the helper's command line (default :func:`helper_command`).
        helpers: the owner whose :meth:`FsHelpers.stop` kills the helper
            (the server's); None for a helper no server stops.

    Raises:
        RpcError: the helper's error payload, unchanged; or -32603 ``fs
            sandbox helper failed with status ...`` when it fails.
    """
    from fs_helper.uris import uri_to_path

    entries = [[":minimal" if path == ":minimal" else uri_to_path(path), access] for path, access in policy.entries]
    request = {"operation": operation, "params": params, "policy": {"entries": entries}}
    argv = command or helper_command(policy)  # built first: it takes MOUNT_POINTS.lock, not under marked.forking
    with _stderr_file() as stderr:
        try:
            child = marked.start_ours(lambda: subprocess.Popen(  # its status is its Popen's, not the Reaper's
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=helper_environment(),
                cwd="/", start_new_session=not sys.platform.startswith("win")))
        except OSError as exc:
            raise InternalError("fs sandbox helper could not start: %s" % exc) from None
        if helpers is not None:
            helpers.add(child)
        try:
            stdout, _ = child.communicate(json.dumps(request).encode("utf-8"), timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise InternalError("fs sandbox helper timed out after %.0f s" % timeout) from None
        finally:
            if helpers is not None:
                helpers.discard(child)
            if child.returncode is None:  # an unexpected error: the helper is neither left running nor unreaped
                child.kill()
                try:
                    child.wait(HELPER_REAP_WAIT)
                except subprocess.TimeoutExpired:
                    pass
                for pipe in (child.stdin, child.stdout):
                    if pipe is not None:
                        pipe.close()
            marked.forget_ours(child.pid)
        stderr.seek(0)
        diagnostics = stderr.read(FS_HELPER_STDERR_BYTES).decode("utf-8", "replace").strip()
    if diagnostics:
        log.warning("fs helper (%s) wrote to stderr: %s", operation, diagnostics)
    if child.returncode != 0:
        # a short message: a traceback stays in the log, the client gets its last line
        last_line = diagnostics.splitlines()[-1] if diagnostics else ""
        raise InternalError("fs sandbox helper failed with status %s: %s"
                            % (_status_text(child.returncode), last_line))
    try:
        response = json.loads(stdout)
        payload = response["payload"]
        if response["status"] == "error":
            raise RpcError(str(payload["message"]), code=int(payload["code"]))
        if payload["operation"] != operation:
            raise InternalError("unexpected fs sandbox helper response: expected %s, got %s"
                                % (operation, payload["operation"]))
        return payload["response"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InternalError("fs sandbox helper sent an unreadable response: %s" % exc) from None
