"""The small interfaces the client's parts meet at, and its deadline helpers.

The parts of the client depend on these shapes, not on each other's classes:

- :class:`Caller` is what a process handle and the file system API call the
  server through (the :class:`~exec_server.client.api.Client` is one);
- :class:`ProcessHandle` is what the endpoint and the recovery need of a
  process handle (:class:`~exec_server.client.process.RemoteProcess` is one);
- :class:`Pending` (a call waiting for its answer) and :data:`LostHandler`
  are what the endpoint hands its recovery when a transport ends.

Timeouts are float seconds (None blocks, 0 polls, negatives rejected), turned
into one ``time.monotonic()`` deadline that is passed down; every wait or call
past its deadline raises :class:`CallTimeout`.
"""

import os
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Union

from exec_server.protocol.errors import ExecServerError, InternalError
from exec_server.protocol.jsonrpc import utf8_size

if TYPE_CHECKING:
    from exec_server.client.events import ProcessEvent

#: A path on the server's host: str, ``pathlib.Path`` or a ``file://`` URI.
PathLike = Union[str, "os.PathLike[str]"]


class RequestOutcomeUnknown(ExecServerError):
    """A mutating request was sent but its connection dropped before the answer.

    The server may or may not have applied it; the client never re-sends it.
    Check the state (e.g. ``process/read``) before deciding to retry.
    """


class FreshId(str):
    """A ``processId`` this client made up (random): no other start can have used it.

    ``terminate_on_failure``: whether a ``Client.start`` of it that times out
    or is interrupted terminates what it may have started
    (:func:`~exec_server.client.control.terminate_unknown_start`); ``Client.run``
    sets it False and kills within its own grace.
    """

    terminate_on_failure = True


class Caller(Protocol):
    """Sends requests to the server on behalf of a process handle or ``client.fs``."""

    def call(self, method: str, params: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request, wait for its ``result``; raises as :meth:`Client.call`."""

    def to_uri(self, path: PathLike) -> str:
        """A ``file://`` URI on the server's host for ``path``."""

    def supports(self, extension: str) -> bool:
        """True if the server advertised ``extension`` (``closeStdin``, ``ptySize``) in ``initialize``."""

    @property
    def max_request_bytes(self) -> Optional[int]:
        """The server's advertised ``maxMessageBytes`` (None: not advertised)."""

    @property
    def connection_number(self) -> int:
        """1 on the first connection, more after each reconnect (one per connection opened)."""


class ProcessHandle(Protocol):
    """What the client's endpoint and recovery call on a process handle (client-internal)."""

    process_id: str
    #: False until the ``process/start`` was answered: a catch-up skips a handle the server does not know yet.
    started: bool

    @property
    def last_seq(self) -> int:
        """Highest seq published."""

    @property
    def done(self) -> bool:
        """True once ``closed`` was published or the handle failed."""

    def deliver(self, method: str, params: Dict[str, Any]) -> None:
        """Accept one ``process/*`` notification (any order, duplicates allowed)."""

    def deliver_event(self, event: "ProcessEvent") -> None:
        """Accept one event already made from a notification (as :meth:`deliver` makes them)."""

    def catch_up(self, result: Dict[str, Any]) -> Optional[List[int]]:
        """Accept a ``process/read`` from :attr:`last_seq`; the lost seqs, or None."""

    def fail(self, error: BaseException) -> None:
        """Make every wait of the handle raise ``error`` (unless already closed)."""


class CallTimeout(subprocess.TimeoutExpired, TimeoutError):
    """A client wait or call passed its deadline: both ``subprocess.TimeoutExpired`` and ``TimeoutError``.

    ``cmd`` is the argv of the process waited for, or the method of the call;
    ``timeout`` the seconds that were given.  What was done stays done: a
    call may still be applied by the server after its timeout.
    """

    def __init__(self, cmd: Any, timeout: Optional[float], output: Optional[bytes] = None,
                 stderr: Optional[bytes] = None):
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)
        self.args = (cmd, timeout)

    def __str__(self) -> str:
        if isinstance(self.cmd, str):
            return "%s: no response within %.3f s" % (self.cmd, self.timeout or 0.0)
        return subprocess.TimeoutExpired.__str__(self)


class RequestTooLarge(ExecServerError):
    """A request over the server's message limit: it was not applied.

    Refused before it is sent when the server advertises its limit
    (``maxMessageBytes`` in the ``initialize`` result's ``extensions``, our
    extension: README.rst, "Protocol extensions"); against a server that
    does not (the Codex reference), raised when the server closes the
    connection with 1009 (message too big) on it, and the client then
    recovers the connection as after any drop.  Sending it again fails the
    same way; the limit is the server's (ours: ``--max-message-bytes``,
    128 MiB by default).
    """


#: method -> what to do instead when its request is too large for the server
TOO_LARGE_HINTS = {"fs/writeFile": " (write a large file in parts: fs.open(path, \"replace\"))",
                   "process/write": " (write stdin in smaller pieces: write_all)"}


def check_request_size(method: str, text: str, limit: Optional[int]) -> None:
    """Raise :class:`RequestTooLarge` if ``text`` (a request of ``method``) is over ``limit`` bytes of UTF-8.

    ``limit``: the server's advertised ``maxMessageBytes``; None (not
    advertised) checks nothing.
    """
    if limit is not None and len(text) > limit // 4 and utf8_size(text) > limit:
        raise RequestTooLarge("%s: this %d-byte request is over the server's message limit (maxMessageBytes %d); "
                              "it was not sent%s" % (method, utf8_size(text), limit, TOO_LARGE_HINTS.get(method, "")))


class ExtensionNotSupported(NotImplementedError):
    """The server lacks an exec-server protocol extension this call needs (e.g. the Codex reference).

    ``extension`` names it (``closeStdin``, ``ptySize``); README.rst,
    "Protocol extensions", says what each does and what the client does
    without it.
    """

    def __init__(self, extension: str, what: str):
        super().__init__("%s needs the %s extension, which this server does not advertise" % (what, extension))
        self.extension = extension


def seconds(timeout: Optional[float]) -> Optional[float]:
    """``timeout`` checked; None for no limit: None, infinity, or more than any wait can take
    (``threading.TIMEOUT_MAX``, ~292 years here).

    Raises:
        ValueError: ``timeout`` is negative, or NaN.
        TypeError: ``timeout`` is not a real number (a str, bytes, a list).
    """
    if timeout is not None and not isinstance(timeout, (int, float)):
        number = None
        if not isinstance(timeout, (str, bytes, bytearray, memoryview)):  # text that float() would read
            try:
                number = float(timeout)  # a Decimal, a Fraction, numpy's floats
            except (TypeError, ValueError):
                pass
        if number is None:
            raise TypeError("timeout must be a number of seconds, not %s" % type(timeout).__name__)
        timeout = number
    if timeout is None or timeout >= threading.TIMEOUT_MAX:
        return None
    if timeout != timeout:
        raise ValueError("timeout must be a number of seconds, not NaN")
    if timeout < 0:
        raise ValueError("timeout must not be negative")
    return timeout


def deadline(timeout: Optional[float]) -> Optional[float]:
    """The monotonic deadline ``timeout`` seconds from now (None: no deadline; see :func:`seconds`).

    Raises:
        ValueError: ``timeout`` is negative, or NaN.
    """
    timeout = seconds(timeout)
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left until ``deadline`` (0.0 once passed; None for no deadline)."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def as_bytes(data: Any, what: str) -> bytes:
    """``data`` (bytes, bytearray, memoryview or any other buffer) as ``bytes``.

    Raises:
        TypeError: ``data`` is not bytes-like: ``bytes(3)`` would be three NUL
            bytes and ``bytes([104, 105])`` a list's items, which
            ``subprocess`` refuses as input too.
    """
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise TypeError("%s must be bytes-like, not %s" % (what, type(data).__name__)) from None


def command_argv(argv: Any) -> List[str]:
    """``argv`` as the protocol's list of strings, with ``subprocess``'s conventions.

    A single str, bytes or path-like is the program alone (as
    ``subprocess.run("ls")`` on POSIX; not split on spaces); the items of a
    sequence may be str, path-like or UTF-8 bytes.

    Raises:
        ValueError: ``argv`` is empty.
        TypeError: an item of another type, or bytes that are not UTF-8
            (the protocol carries text).
    """
    if isinstance(argv, (str, bytes)) or hasattr(argv, "__fspath__"):
        argv = [argv]
    command = [_text(item, "argv item") for item in argv]
    if not command:
        raise ValueError("argv must not be empty")
    return command


def command_env(env: Any) -> Dict[str, str]:
    """``env`` (a mapping; names and values str, path-like or UTF-8 bytes, as ``os.environ`` or
    ``os.environb``) as the protocol's object; None is empty.

    Raises:
        TypeError: not a mapping (a list of pairs: ``dict(pairs)`` makes one, as ``subprocess`` wants it too);
            a name or value of another type, or not UTF-8 (a raw UnicodeEncodeError at the send).
    """
    if env is not None and not hasattr(env, "items"):
        raise TypeError("env must be a mapping of names to values, not %s" % type(env).__name__)
    return {_text(name, "env name"): _text(value, "env value") for name, value in (env or {}).items()}


def stdin_flag(stdin: Any) -> bool:
    """``start``'s ``stdin`` as ``pipeStdin``: True or ``subprocess.PIPE`` keeps the child's stdin
    writable; False, None or ``subprocess.DEVNULL`` gives it the null device.

    Raises:
        TypeError: anything else (a file, a descriptor, ``subprocess.STDOUT``): the child runs on
            the server, where no local file can reach it; :meth:`RemoteProcess.write` feeds it.
    """
    if stdin is True or stdin is False:
        return stdin
    if stdin is None or (type(stdin) is int and stdin in (subprocess.PIPE, subprocess.DEVNULL)):
        return stdin == subprocess.PIPE
    raise TypeError("stdin must be True, False, subprocess.PIPE or subprocess.DEVNULL, not %r "
                    "(the process runs on the server: write to it with RemoteProcess.write)" % (stdin,))


def _text(item: Any, what: str) -> str:
    """``item`` as protocol text; TypeError naming ``what`` for another type or what is not UTF-8."""
    value = os.fspath(item) if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__") else item
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError("%s %r is not UTF-8" % (what, value)) from None
    if not isinstance(value, str):
        raise TypeError("%ss must be str, bytes or path-like, not %s" % (what, type(item).__name__))
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: os.fsdecode of bytes that are not UTF-8, shown as those
            raise TypeError("%s %r is not UTF-8" % (what, _as_given(value))) from None
    return value


def _as_given(text: str) -> Any:
    """``text`` as the bytes ``os.fsdecode`` made it of (``b'\\xe9'``, not ``'\\udce9'``), else as it is."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoding made
        return text


class Pending:
    """A request sent and not yet answered: its id, text (for a resend) and generation.

    ``recoverable``: a caller's call that waits out a recovery (a read among
    them is sent again on the next connection); False for the calls a
    recovery makes on its own connection, which fail as soon as it drops.
    """

    __slots__ = ("id", "event", "result", "error", "method", "text", "generation", "recoverable")

    def __init__(self, request_id: Any, method: str, text: str, generation: int, recoverable: bool = False) -> None:
        self.id = request_id
        self.event = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.method = method
        self.text = text
        self.generation = generation
        self.recoverable = recoverable


#: ``on_lost(generation, pending)``: called on the reader thread when the
#: current transport ends; ``pending`` are the calls that were waiting on it.
LostHandler = Callable[[int, List[Pending]], None]


def result_member(result: Any, name: str, kind: type, method: str) -> Any:
    """``result[name]`` if ``result`` is an object whose member ``name`` is a ``kind`` (an int not a bool).

    Raises:
        InternalError: ``malformed <method> result: ...`` (a broken server).
    """
    value = result.get(name) if isinstance(result, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InternalError("malformed %s result: %s is not a %s: %.200r" % (method, name, kind.__name__, result))
    return value
