"""What a handler sees of its request: :class:`RequestContext` (no socket, no transport)."""

import time
from typing import Any, Callable, List, Optional

from exec_server.protocol.errors import InvalidRequest, ServerOverloaded
from exec_server.protocol.handshake import TAKEN_OVER
from exec_server.server.config import ServerConfig
from exec_server.server.process import ReadAborted, WouldWait
from exec_server.server.session import Session
from exec_server.server.sessions import SessionRegistry


class RequestContext:
    """What a handler may use: the registry, the config, the server's fs helpers, the connection's session, hooks.

    ``connection`` is the :class:`~exec_server.server.connection.RpcConnection`
    and ``dispatcher`` its :class:`~exec_server.server.dispatcher.Dispatcher`.
    ``after_response(fn)`` runs ``fn`` once the response has been written
    (``process/start`` starts its output threads there, so no notification
    can precede the response).
    """

    def __init__(self, connection: Any, dispatcher: Any, received: Optional[float] = None, inline: bool = False):
        """``inline``: run on the connection's reader thread, which must not wait (:meth:`reserve_result`)."""
        self.connection = connection
        self.inline = inline
        #: When the request arrived (``time.monotonic()``): a long poll's ``waitMs`` counts from here.
        self.received = time.monotonic() if received is None else received
        self.dispatcher = dispatcher
        self.registry: SessionRegistry = dispatcher.registry
        self.config: ServerConfig = dispatcher.config
        self.after_response_callbacks: List[Callable[[], None]] = []
        self._reserved = 0  # result budget this request holds

    @property
    def fs_helpers(self) -> Any:
        """The server's :class:`~exec_server.server.fs.helper.FsHelpers` (made on first use)."""
        return self.dispatcher.fs_helpers

    @property
    def session(self) -> Session:
        return self.connection.session

    def after_response(self, callback: Callable[[], None]) -> None:
        self.after_response_callbacks.append(callback)

    def reserve_result(self, decoded_bytes: int, chunks: int = 0) -> None:
        """Hold the server's result budget for a result of up to ``decoded_bytes`` in ``chunks`` output chunks
        until it has been sent.

        Counts :data:`~exec_server.server.budget.RESULT_COST_PER_BYTE` per
        byte and :data:`~exec_server.server.budget.RESULT_COST_PER_CHUNK` per
        chunk against ``max_result_bytes_in_flight`` (all connections),
        waiting up to ``send_timeout`` seconds for it (not at all ``inline``);
        one request's reservations together take at most the whole budget.

        Raises:
            ServerOverloaded: -32001, the budget stayed taken by other results.
            WouldWait: ``inline``, and the budget is not free now (the request goes to a request thread).
        """
        from exec_server.server.budget import RESULT_COST_PER_BYTE, RESULT_COST_PER_CHUNK

        budget = self.dispatcher.result_budget
        cost = RESULT_COST_PER_BYTE * decoded_bytes + RESULT_COST_PER_CHUNK * chunks
        # a request reserving again (a file longer than its stat said) holds at most the whole budget: it must
        # never wait for its own reservation
        wait = 0.0 if self.inline else self.config.send_timeout
        reserved = budget.reserve(min(cost, budget.limit - self._reserved), wait)
        if reserved is None:
            raise WouldWait() if self.inline else ServerOverloaded()
        self._reserved += reserved
        self.after_response(lambda: budget.release(reserved))

    def aborted(self) -> Optional[Exception]:
        """An error to end a long poll with, or None to go on waiting."""
        if self.connection.closed:
            return ReadAborted("connection closed")
        if not self.session.is_owned_by(self.connection):
            return InvalidRequest(TAKEN_OVER)
        return None
