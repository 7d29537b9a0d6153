"""Why ``process/start`` failed, where the server's words cannot tell.

The Codex reference (and this server, for compatibility) answers a start
whose program or working directory is missing with the same -32603 error
object, the OS error alone: ``No such file or directory (os error 2)``
(``os error 20``, not a directory, for a file in the way).  A user of
``subprocess`` expects to learn which of the two it was.  :func:`start_failure`
asks the server about the working directory (``fs/getMetadata``, one more
request, only after such a failure) and names the culprit with an
:class:`~exec_server.protocol.errors.InternalError` subclass; likewise
``Permission denied (os error 13)``, which may be the program (not
executable) or a working directory the server may not enter.  Code that
catches ``InternalError`` or ``RpcError`` goes on working, and ``message``
stays the server's text.
"""

from typing import TYPE_CHECKING, Any, Optional

from exec_server.protocol.errors import ExecServerError, InternalError, RpcError

if TYPE_CHECKING:
    from exec_server.client.interfaces import PathLike

#: The OS errors in a start failure's message that may mean either the program or the working directory.
_MISSING = ("(os error 2)", "(os error 20)")
#: The OS error of a start that may not enter the working directory, or may not execute the program.
_DENIED = "(os error 13)"
#: The OS errors of a start whose program exists but cannot be executed (when the working directory is not why).
_NOT_EXECUTABLE = (_DENIED, "(os error 8)")  # EACCES, ENOEXEC
#: Seconds to wait for the answer about the working directory; past it the server's error is raised as it came.
PROBE_TIMEOUT = 10.0


class ProgramNotFound(InternalError):
    """``process/start`` found no such program (``program``: its ``argv[0]``); ``message`` is the server's text."""

    def __init__(self, error: RpcError, program: str):
        super().__init__(error.message, error.data)
        self.program = program

    def __str__(self) -> str:
        return "program not found: %s (%s)" % (self.program, self.message)


class WorkingDirectoryNotFound(InternalError):
    """The working directory of ``process/start`` (``path``, as given) is missing or not a directory."""

    def __init__(self, error: RpcError, path: str, exists: bool):
        super().__init__(error.message, error.data)
        self.path = path
        self.exists = exists

    @property
    def what(self) -> str:
        """``working directory not found`` or ``working directory is not a directory``."""
        return "working directory %s" % ("is not a directory" if self.exists else "not found")

    def __str__(self) -> str:
        return "%s: %s (%s)" % (self.what, self.path, self.message)


class WorkingDirectoryNotAccessible(WorkingDirectoryNotFound):
    """The working directory of ``process/start`` (``path``) exists but the server may not enter it (EACCES):
    a :class:`WorkingDirectoryNotFound`, so one ``except`` catches every unusable working directory."""

    def __init__(self, error: RpcError, path: str):
        super().__init__(error, path, exists=True)

    @property
    def what(self) -> str:
        return "working directory cannot be entered"


def start_failure(client: Any, error: RpcError, program: str, cwd: Optional["PathLike"]) -> RpcError:
    """The error to raise for a start the server refused with ``error``.

    Args:
        client: the :class:`~exec_server.client.api.Client` that sent the start.
        program: ``argv[0]`` of the start.
        cwd: the working directory the caller gave (str, Path or file URI; None: the server's own, not
            checked).
    Returns:
        :class:`ProgramNotFound` for an empty ``program``;
        :class:`WorkingDirectoryNotFound` if ``error`` is a missing file and
        ``cwd`` is not a directory on the server, else :class:`ProgramNotFound`
        for a missing file; :class:`WorkingDirectoryNotAccessible` if ``error``
        is ``Permission denied`` and a name in ``cwd`` cannot be looked up
        either; else ``error`` itself (so too when the check
        itself fails: the connection dropped, or no answer within
        :data:`PROBE_TIMEOUT`).
    """
    if not isinstance(error, InternalError):
        return error
    if not program:  # an empty argv[0] ("missing program for pipe spawn"): no such program, as a shell says
        return ProgramNotFound(error, program)
    if _DENIED in error.message:  # the program, or the working directory: a name in it tells which
        return _denied(client, error, cwd) if cwd is not None else error
    if not any(text in error.message for text in _MISSING):
        return error
    if cwd is not None:
        try:
            metadata = client.call("fs/getMetadata", {"path": client.to_uri(cwd), "followSymlinks": True},
                                   timeout=PROBE_TIMEOUT)
        except RpcError as probe:  # missing (or a file on the way), else it cannot tell
            missing = any(text in probe.message for text in _MISSING)
            return WorkingDirectoryNotFound(error, str(cwd), exists=False) if missing else error
        except (ExecServerError, ValueError, OSError):
            return error
        if not metadata.get("isDirectory"):
            return WorkingDirectoryNotFound(error, str(cwd), exists=True)
    return ProgramNotFound(error, program)


def not_executable(error: BaseException) -> bool:
    """True if ``error``, as :func:`start_failure` returned it, says the program exists but cannot be executed
    (EACCES, ENOEXEC): not a :class:`ProgramNotFound` nor a :class:`WorkingDirectoryNotFound`."""
    if isinstance(error, (ProgramNotFound, WorkingDirectoryNotFound)):
        return False
    message = getattr(error, "message", "")
    return any(text in message for text in _NOT_EXECUTABLE)


def _denied(client: Any, error: RpcError, cwd: "PathLike") -> RpcError:
    """``Permission denied`` starting in ``cwd``: :class:`WorkingDirectoryNotAccessible` when a name looked up
    in it is denied too (the search permission chdir needs; its metadata alone is readable either way), else
    ``error`` (the program: not executable)."""
    import os

    probe = client.to_uri(cwd).rstrip("/") + "/.exec-server-probe-" + os.urandom(8).hex()  # never there
    try:
        client.call("fs/getMetadata", {"path": probe, "followSymlinks": False}, timeout=PROBE_TIMEOUT)
    except RpcError as answer:
        return WorkingDirectoryNotAccessible(error, str(cwd)) if _DENIED in answer.message else error
    except (ExecServerError, ValueError, OSError):
        pass
    return error
