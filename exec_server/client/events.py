"""What a process handle publishes and raises: the events of ``process/*`` notifications and the errors.

:class:`OutputEvent`, :class:`ExitedEvent` and :class:`ClosedEvent` are
frozen values in seq order (PROTOCOL.md 5.3); :func:`event_from_notification`
builds one from a notification's params, :func:`output_event_from_text` one
from the text of a ``process/output`` without the JSON parser.  They are
re-exported by :mod:`~exec_server.client.process` and :mod:`exec_server`.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from exec_server.protocol import b64
from exec_server.protocol.wire import match_output_notification
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

    Raised by the waits of the one process concerned, after a reconnect or
    a refill (README.rst "the client's limits"); the process was
    terminated.  ``missing`` is the list of lost seqs (a ``range`` spanning
    them when there are more than a million); ``when`` says when they were
    lost (``while disconnected``, or :data:`~exec_server.client.buffer.DROPPED`:
    past ``max_buffered_output``, before the consumer read them).
    """

    def __init__(self, process_id: str, missing: Sequence[int], when: str = "while disconnected"):
        super().__init__("process %s lost output seqs %s..%s %s" % (process_id, missing[0], missing[-1], when))
        self.process_id = process_id
        self.missing = missing
        self.when = when


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
        exit_code = params.get("exitCode")  # None: unknown (never sent by the reference; a wait must still end)
        return ExitedEvent(seq, -1 if exit_code is None else _integer(exit_code, "exitCode"),
                           bool(params.get("sandboxDenied")))
    if method == "process/closed":
        return ClosedEvent(seq)
    return None


def output_event_from_text(text: Union[str, bytes, bytearray]) -> Optional[Tuple[str, OutputEvent]]:
    """``(processId, event)`` of a ``process/output`` in the servers' own form, else None.

    The client's hot path, for a WebSocket text frame (``str``) or a stdio
    line (UTF-8 ``bytes``): for a 64 KiB chunk, ~3 us instead of ~75 us of
    JSON parsing (:func:`~exec_server.protocol.wire.match_output_notification`).
    None for any other text, and for a chunk that is not base64 (only a
    chunk that decodes proves the text is that JSON object): the caller
    parses those in full, which words what is wrong.  Thread-safe.
    """
    output = match_output_notification(text)
    if output is None:
        return None
    try:
        data = b64.decode(output[3])
    except ValueError:
        return None
    return output[0], OutputEvent(output[1], output[2], data)


#: A gap of more lost seqs than this is reported as the ``range`` spanning them, not a list.
MAX_LISTED_GAP = 1_000_000


def _integer(value: Any, name: str) -> int:
    """``value`` if it is an integer (not a bool), else ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("%s is not an integer: %r" % (name, value))
    return value


def catch_up_events(result: Dict[str, Any], after: int, exit_seen: bool,
                    exit_seq: Optional[int] = None) -> Tuple[List[ProcessEvent], Optional[Sequence[int]]]:
    """``(events, gap)`` of a ``process/read`` result read from ``afterSeq`` ``after``.

    ``events`` are to be published in order (output, then ``exited`` if not
    ``exit_seen``, then ``closed``); ``gap`` is None, or the seqs the server
    no longer retains (a ``range`` spanning them if more than
    :data:`MAX_LISTED_GAP`), and then nothing may be published.  A read
    does not say the exit's seq (PROTOCOL.md 5.4), so one seq missing
    from the result may be it: unless ``exit_seq``, the seq of an
    ``exited`` notification that did arrive, says which one it is (then
    any other missing seq is lost output).

    Raises:
        ValueError: a missing field, a seq or exit code that is not an
            integer, a chunk that is not base64.
    """
    try:
        chunks = [OutputEvent(_integer(chunk["seq"], "seq"), chunk["stream"], b64.decode(chunk["chunk"]))
                  for chunk in result.get("chunks") or []]
        next_seq = _integer(result["nextSeq"], "nextSeq")
        expect_exit = bool(result.get("exited")) and not exit_seen
        exit_code = result.get("exitCode")
        if expect_exit:
            exit_code = -1 if exit_code is None else _integer(exit_code, "exitCode")  # None: unknown, as above
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError("malformed process/read result: %s: %s" % (type(exc).__name__, exc)) from None
    # closed's seq is nextSeq - 1 unless a budget cut the read: then nextSeq follows its last chunk
    # (PROTOCOL.md 5.4), and closed is for a later read to publish
    last_chunk = max((event.seq for event in chunks), default=after)
    closed_seq = next_seq - 1 if result.get("closed") and next_seq - 1 > last_chunk else None
    # The seqs in (after, next_seq) that no chunk covers, as runs: no list as long as a (possibly
    # absurd) nextSeq.  The closed notification's own seq is not output.
    runs: List[range] = []
    first = after + 1
    for seq in sorted({event.seq for event in chunks if after < event.seq < next_seq}):
        if seq > first:
            runs.append(range(first, seq))
        first = seq + 1
    if next_seq > first:
        runs.append(range(first, next_seq))
    if closed_seq is not None and runs and runs[-1][-1] == closed_seq:
        runs[-1] = runs[-1][:-1]
    if exit_seq is not None:  # the exit's seq is known: it is not missing output
        runs = [part for run in runs for part in ((run[:exit_seq - run.start], run[exit_seq - run.start + 1:])
                                                  if exit_seq in run else (run,))]
    runs = [run for run in runs if run]
    lost = sum(len(run) for run in runs)
    if lost > (1 if expect_exit and exit_seq is None else 0):  # evicted output (one may be the exit's seq)
        if lost > MAX_LISTED_GAP:
            return [], range(runs[0][0], runs[-1][-1] + 1)
        return [], [seq for run in runs for seq in run]
    events: List[ProcessEvent] = list(chunks)
    exit_at = exit_seq if exit_seq is not None and exit_seq > after else runs[0][0] if runs else None
    if expect_exit and exit_at is not None:
        events.append(ExitedEvent(exit_at, exit_code, bool(result.get("sandboxDenied"))))
    if closed_seq is not None and closed_seq > after:
        events.append(ClosedEvent(closed_seq))
    return events, None
