"""The initialize/initialized handshake of one connection, as a sans-IO state machine.

States (PROTOCOL.md 4): :data:`NEW` until an ``initialize`` request
succeeds, then :data:`INITIALIZING` until the client's ``initialized``
notification, then :data:`READY`.  Only ``initialize`` is allowed before
``READY``; a request of another method gets -32600 with the text of its
method family, and after a takeover (PROTOCOL.md 7) the old connection's
requests get -32600 :data:`TAKEN_OVER`.  As h11 keeps its own state, the
object knows nothing about sessions or sockets: the caller tells it whether
the connection still holds its session.

Not thread-safe: a connection feeds it from its single reader thread.
"""

from typing import Any, Dict, NamedTuple, Optional

from exec_server.protocol.errors import ExecServerDisconnected, InvalidRequest, ProtocolViolation

#: Handshake states of a connection.
NEW, INITIALIZING, READY = "new", "initializing", "ready"

TAKEN_OVER = "session has been resumed by another connection"


class Handshake:
    """One connection's handshake state (``state`` is NEW, INITIALIZING or READY)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = NEW

    def start_initialize(self) -> None:
        """An ``initialize`` request is about to run.

        Raises:
            InvalidRequest: ``initialize may only be sent once per connection``
                (reply with it; the state is unchanged).
        """
        if self.state != NEW:
            raise InvalidRequest("initialize may only be sent once per connection")

    def initialize_succeeded(self) -> None:
        """The ``initialize`` request succeeded (a failed one leaves the state NEW, so it may be retried)."""
        self.state = INITIALIZING

    def receive_initialized(self, holds_session: bool) -> None:
        """The client sent ``initialized``; ``holds_session``: the connection still holds its session.

        Raises:
            ProtocolViolation: ``initialized`` before ``initialize``, or after
                a takeover; the transport closes the connection (PROTOCOL.md 1.6).
        """
        if self.state == NEW or not holds_session:
            raise ProtocolViolation("unexpected notification initialized")
        self.state = READY

    def request_error(self, family: str, holds_session: bool) -> Optional[InvalidRequest]:
        """The error a request of ``family`` (e.g. ``exec``) gets in this state, or None if it may run.

        Args:
            family: the method's family named in the errors of PROTOCOL.md 4.3.
            holds_session: whether the connection still holds its session.
        """
        if self.state == NEW:
            return InvalidRequest("client must call initialize before using %s methods" % family)
        if self.state == INITIALIZING:
            return InvalidRequest("client must send initialized before using %s methods" % family)
        if not holds_session:
            return InvalidRequest(TAKEN_OVER)
        return None


class InitializeResult(NamedTuple):
    """What a client keeps of the ``initialize`` result (PROTOCOL.md 4)."""

    session_id: str
    environment_info: Dict[str, Any]
    extensions: Dict[str, Any]


def parse_initialize_result(result: Any) -> InitializeResult:
    """Check an ``initialize`` result the way a client needs it.

    ``environmentInfo`` and ``extensions`` that are not objects count as
    absent (``{}``).

    Raises:
        ExecServerDisconnected: no ``sessionId`` string: the peer is not an
            exec-server (another JSON-RPC service, e.g. an app-server).
    """
    if not isinstance(result, dict) or not isinstance(result.get("sessionId"), str):
        text = repr(result)
        raise ExecServerDisconnected("not an exec-server: its initialize result has no sessionId string: %s"
                                     % (text if len(text) <= 200 else text[:200] + "..."))
    environment_info, extensions = result.get("environmentInfo"), result.get("extensions")
    return InitializeResult(result["sessionId"], environment_info if isinstance(environment_info, dict) else {},
                            dict(extensions) if isinstance(extensions, dict) else {})
