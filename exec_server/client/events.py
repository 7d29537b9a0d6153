"""What a process handle publishes and raises: the events of ``process/*`` notifications and the errors.

:class:`OutputEvent`, :class:`ExitedEvent` and :class:`ClosedEvent` are
frozen values in seq order (PROTOCOL.md 5.3); :func:`event_from_notification`
builds one from a notification's params.  They are re-exported by
:mod:`~exec_server.client.process` and :mod:`exec_server`.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from exec_server.protocol import b64
from exec_server.protocol.errors import InternalError


@dataclass(frozen=True)
class OutputEvent:
    """``process/output``: ``data`` bytes from ``stream`` (stdout, stderr or pty)."""

    seq: int
    stream: str
    data: bytes


@dataclass(frozen=True)
class ExitedEvent:
    """``process/exited``: the exit code (128 + N for a pipe child killed by signal N)."""

    seq: int
    exit_code: int
    sandbox_denied: bool = False


@dataclass(frozen=True)
class ClosedEvent:
    """``process/closed``: exited and all output delivered; nothing follows."""

    seq: int


ProcessEvent = Union[OutputEvent, ExitedEvent, ClosedEvent]


class StdinClosedError(BrokenPipeError):
    """``process/write`` answered ``stdinClosed``: start with ``stdin=True`` or ``tty=True``."""


class StdinQueueFullError(InternalError):
    """``process/write`` refused: the server already holds ``--max-stdin-queue-bytes`` of stdin
    the child has not read.  Nothing was queued; write again once the child reads.

    ``queued_bytes`` and ``limit_bytes`` are the server's figures.
    """

    def __init__(self, message: str, data: Any = None):
        super().__init__(message, data)
        self.queued_bytes = data.get("queuedBytes") if isinstance(data, dict) else None
        self.limit_bytes = data.get("limitBytes") if isinstance(data, dict) else None


class ProcessOutputGap(Exception):
    """The server no longer retains output this client had not received.

    Raised by the waits of the one process concerned after a reconnect; the
    process was terminated.  ``missing`` is the list of lost seqs.
    """

    def __init__(self, process_id: str, missing: List[int]):
        super().__init__("process %s lost output seqs %s..%s while disconnected"
                         % (process_id, missing[0], missing[-1]))
        self.process_id = process_id
        self.missing = missing


def event_from_notification(method: str, params: Dict[str, Any]) -> Optional[ProcessEvent]:
    seq = params.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if method == "process/output":
        chunk = params.get("chunk", "")
        if not isinstance(chunk, str):
            raise ValueError("chunk is not a string")
        return OutputEvent(seq, params.get("stream", "stdout"), b64.decode(chunk))
    if method == "process/exited":
        return ExitedEvent(seq, params.get("exitCode", -1), bool(params.get("sandboxDenied")))
    if method == "process/closed":
        return ClosedEvent(seq)
    return None
