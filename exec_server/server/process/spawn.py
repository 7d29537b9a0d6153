"""Starting a child: executable lookup, pipes or a PTY, its own session and process group.

:func:`spawn_child` starts one ``process/start`` child as the reference does
(PROTOCOL.md 5.1) and returns the ``Popen`` and, for a PTY, the master
descriptor; watching and output live in :mod:`~exec_server.server.process.
watch` and :mod:`~exec_server.server.process.output`.
"""

import errno
import os
import shutil
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from exec_server.common import tree
from exec_server.server.process import contain, exec_check
from exec_server.protocol.errors import InternalError, os_error_message

IS_WINDOWS = sys.platform.startswith("win")
#: Window size of a new PTY (PROTOCOL.md 5.1): rows, columns.
PTY_ROWS, PTY_COLUMNS = 24, 80


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


def exit_code_from_returncode(returncode: int, tty: bool, isolated: bool = False) -> int:
    """The protocol's exit code: 128 + signal for a pipe child killed by a signal; 1 for a tty child.

    ``isolated``: the child ran under the PID-namespace init (``dumb-init``),
    which reports a program killed by signal N as exit 128+N; for a tty child
    that is mapped to 1 as well (an explicit ``exit 129..192`` of a tty
    program then also reads 1).
    """
    if returncode >= 0:
        if isolated and tty and 128 < returncode <= 128 + 64:
            return 1
        return returncode
    return 1 if tty else 128 - returncode


def login_shell() -> str:
    """The server user's login shell from the password database (``/bin/sh`` without an entry).

    The reference's PTY (portable-pty) gives a PTY child whose environment
    has no ``SHELL`` this one, not the server's own ``$SHELL``.
    """
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        return "/bin/sh"


#: The null device, read-only, shared as every child's stdin.  Module-level on
#: purpose: opened on the first spawn and kept for the life of the Python
#: process (one descriptor, never closed, whichever server spawns).
_null_input_fd: Optional[int] = None
_null_input_lock = threading.Lock()


def _null_input() -> int:
    """A descriptor of the null device for children's stdin, opened once per process."""
    global _null_input_fd
    if _null_input_fd is None:
        with _null_input_lock:
            if _null_input_fd is None:
                _null_input_fd = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    return _null_input_fd


#: Signals a child on a PTY starts with at their default action even where the server ignores them (under
#: ``nohup``: SIGHUP; as a shell's background job: SIGQUIT), as the reference's PTY (portable-pty) resets them.
#: A child on pipes inherits what the server ignores, as the reference's does.
PTY_DEFAULT_SIGNALS = ("SIGCHLD", "SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGALRM")


def _pty_child_setup(take_terminal: bool) -> Optional[Callable[[], None]]:
    """What runs in a PTY child between fork and exec: the terminal made its controlling one (when it is to
    take it), the :data:`PTY_DEFAULT_SIGNALS` the server ignores set back to their default, and the signal
    mask emptied where the server's blocks some; None: nothing to do."""
    import fcntl  # imported here, not in the child (whose import would take the import lock after a fork)
    import signal
    import termios

    ignored = [number for number in (getattr(signal, name, None) for name in PTY_DEFAULT_SIGNALS)
               if number is not None and signal.getsignal(number) is signal.SIG_IGN]
    blocked = bool(signal.pthread_sigmask(signal.SIG_BLOCK, []))  # this thread's; the forking one's may differ
    if not (take_terminal or ignored or blocked):
        return None

    def setup() -> None:
        for number in ignored:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # as portable-pty: the child starts with none blocked
        if take_terminal:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    return setup


def spawn_child(argv: List[str], cwd: str, env: Dict[str, str], tty: bool, pipe_stdin: bool, arg0: Optional[str],
                wrapper: Optional[List[str]] = None,
                prefix: Optional[List[str]] = None,
                pty_size: Optional[Tuple[int, int]] = None
                ) -> "Tuple[subprocess.Popen[bytes], Optional[int], Optional[str]]":
    """Start a child in its own session and process group.

    Args:
        argv: program and arguments; ``argv[0]`` is resolved with
            :func:`resolve_executable`.
        cwd: native working directory.
        env: the child's whole environment.
        tty: run under a new PTY (stdout and stderr merged).
        pipe_stdin: keep stdin writable without a PTY.
        arg0: ``argv[0]`` as the child sees it, or None.
        wrapper: a confining command (bubblewrap) that runs the resolved program.
        prefix: the containment command (:mod:`~exec_server.server.process.
            contain`) that runs the program when there is no ``wrapper``.
        pty_size: ``(rows, cols)`` of the PTY (our ``ptySize`` extension); default 24x80.
    Returns:
        the ``Popen`` (with ``stdout``/``stderr`` pipes unless ``tty``), the
        PTY master descriptor and the path of its terminal (``/dev/pts/N``),
        or None and None without a PTY.
    Raises:
        InternalError: the spawn failed; the message is the OS text, e.g.
            ``No such file or directory (os error 2)`` (PROTOCOL.md 5.1).
    """
    prefix = None if wrapper else prefix
    try:
        if IS_WINDOWS or wrapper or prefix or "PATH" not in env:
            # Windows: CreateProcess looks an application name up in the current folder alone
            executable = resolve_executable(argv[0], env)
        else:  # Popen's own search in the child's PATH, as execvp does (saves a lookup)
            executable = argv[0]
        args = [arg0 if arg0 is not None else argv[0]] + list(argv[1:])
        if wrapper:
            args = list(wrapper) + [executable] + list(argv[1:])
            executable = wrapper[0]
        elif prefix:
            exec_check.check_executable(executable, cwd)  # the chain's execvp would run it with sh, or exit 127
            if arg0 is not None or ("=" in argv[0] and contain.ends_unmarked(prefix)):  # env would set a=b
                program = contain.arg0_shim(executable, argv[0] if arg0 is None else arg0, env.get("LC_CTYPE"))
            else:  # the init's execvp finds the same file in the child's PATH; argv[0] stays as given
                program = [argv[0] if "PATH" in env else executable]
            args = list(prefix) + program + list(argv[1:])
            executable = prefix[0]
        if tty:
            if IS_WINDOWS:
                raise InternalError("tty processes need a PTY backend on Windows")
            if prefix:  # the namespace's init makes the program the terminal's session leader
                args = contain.terminal_prefix(list(prefix)) + args[len(prefix):]
            if "SHELL" not in env:  # as the reference's PTY (portable-pty) sets it
                env = dict(env, SHELL=login_shell())
            # the namespace's init, or a sandbox's, makes the program the terminal's session leader
            take_terminal = not prefix and not (wrapper and contain.init_takes_terminal(list(wrapper)))
            return _spawn_pty(executable, args, cwd, env, pty_size or (PTY_ROWS, PTY_COLUMNS), take_terminal)
        stdin = subprocess.PIPE if pipe_stdin else _null_input()
        popen = contain.spawner().call(lambda: subprocess.Popen(
            args, executable=executable, cwd=cwd, env=env, stdin=stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            bufsize=0, close_fds=True, **_group_options(),
        ))
        return popen, None, None
    except OSError as exc:
        message = os_error_message(exc)
    except (ValueError, TypeError) as exc:  # e.g. an embedded NUL byte
        message = str(exc)
    # raised outside the handler: the error keeps no context, whose traceback would hold this request's
    # frames (its argv and env) until a full garbage collection
    raise InternalError(message)


def _group_options() -> Dict[str, Any]:
    if IS_WINDOWS:
        return {"creationflags": tree.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size (TIOCSWINSZ); the kernel sends SIGWINCH to its foreground group."""
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def send_eof(fd: int, count: int) -> None:
    """Write a terminal's EOF character (VEOF, normally ^D) ``count`` times; errors are ignored.

    In canonical mode the first ends a pending unfinished line and one at the
    start of a line is end of file for the reader; in raw mode it is a byte.
    """
    import termios

    try:
        eof = termios.tcgetattr(fd)[6][termios.VEOF]
        os.write(fd, (eof if isinstance(eof, bytes) else bytes([eof])) * count)
    except (OSError, termios.error):
        pass


def _spawn_pty(executable: str, args: List[str], cwd: str, env: Dict[str, str],
               size: Tuple[int, int], take_terminal: bool = True
               ) -> "Tuple[subprocess.Popen[bytes], Optional[int], Optional[str]]":
    master, slave = os.openpty()
    try:
        try:
            terminal: Optional[str] = os.ttyname(slave)
        except OSError:  # a /dev/pts of another devpts instance (some containers): the PTY works without it
            terminal = None
        set_window_size(slave, size[0], size[1])
        os.set_inheritable(master, False)
        popen = contain.spawner().call(lambda: subprocess.Popen(
            args, executable=executable, cwd=cwd, env=env,
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            start_new_session=True, preexec_fn=_pty_child_setup(take_terminal),
        ))
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return popen, master, terminal
