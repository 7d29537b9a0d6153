"""JSON-RPC error classes (one per code) and the client's transport errors.

Every error the server sends is an instance of :class:`RpcError` or one of its
subclasses; ``to_dict()`` gives the wire error object.  The codes and their
uses follow the Codex exec-server protocol (``PROTOCOL.md`` section 3).

This module imports nothing of ours and does no I/O.
"""

from typing import Any, Dict, Optional

#: Code for envelope parse errors and request-level refusals (JSON-RPC 2.0
#: "Invalid Request"); the Codex protocol also uses it for unknown ids.
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Codex exec-server: a file system path or file handle was not found.
NOT_FOUND = -32004
#: Codex exec-server: ``initialize`` tried to resume a session that another
#: connection holds.
SESSION_ALREADY_ATTACHED = -32010
#: JSON-RPC 2.0 implementation-defined server error, with the Codex
#: app-server's meaning (``OVERLOADED_ERROR_CODE``): the request was not run
#: because the connection's request queue is full; retry later.
SERVER_OVERLOADED = -32001
#: JSON-RPC 2.0 "Parse error".  The Codex protocol never sends it (parse
#: errors are -32600); it is listed so clients can recognise it from others.
PARSE_ERROR = -32700


class RpcError(Exception):
    """A JSON-RPC error object: ``{"code": int, "message": str, "data"?: any}``.

    Raised by handlers and by the client for an error response.  ``message``
    stands on its own; ``data`` is optional extra detail (never a traceback).
    """

    code = INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None, code: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code

    def to_dict(self) -> Dict[str, Any]:
        """The wire error object, members in the reference's order."""
        error: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def __repr__(self) -> str:
        return "%s(code=%d, message=%r)" % (type(self).__name__, self.code, self.message)


class InvalidRequest(RpcError):
    code = INVALID_REQUEST


class MethodNotFound(RpcError):
    code = METHOD_NOT_FOUND


class InvalidParams(RpcError):
    code = INVALID_PARAMS


class InternalError(RpcError):
    code = INTERNAL_ERROR


class NotFound(RpcError):
    code = NOT_FOUND


class SessionAlreadyAttached(RpcError):
    code = SESSION_ALREADY_ATTACHED


class ParseError(RpcError):
    code = PARSE_ERROR


class ServerOverloaded(RpcError):
    """The request was refused before it ran; sending it again later is safe."""

    code = SERVER_OVERLOADED

    def __init__(self, message: str = "Server overloaded; retry later.", data: Any = None,
                 code: Optional[int] = None):
        super().__init__(message, data, code)


#: code -> class, used to turn a received error object back into a typed error.
ERROR_CLASSES = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        NotFound,
        SessionAlreadyAttached,
        ParseError,
        ServerOverloaded,
    )
}


def error_from_dict(error: Any) -> RpcError:
    """Build the typed error for a received error object.

    Unknown codes give a plain :class:`RpcError` carrying that code; a
    malformed object gives an :class:`InternalError` describing it.
    """
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return InternalError("malformed error object: %r" % (error,))
    code = error["code"]
    message = error.get("message")
    if not isinstance(message, str):
        message = str(message)
    cls = ERROR_CLASSES.get(code, RpcError)
    return cls(message, data=error.get("data"), code=code)


def os_error_message(exc: OSError) -> str:
    """``<strerror> (os error <errno>)``, the Rust ``io::Error`` wording.

    PROTOCOL.md section 8.2; used for spawn and file system failures.
    """
    import os

    if exc.errno is None:
        return str(exc)
    return "%s (os error %d)" % (os.strerror(exc.errno), exc.errno)


class ExecServerError(Exception):
    """Base of the client's own errors (not JSON-RPC error objects)."""


class ExecServerDisconnected(ExecServerError, ConnectionError):
    """The connection to the server is gone; pending and later calls fail.

    Raised by every blocking client call once the transport has closed.  The
    caller should create a new client (session resume is a later feature).
    """


class ExecServerTLSError(ExecServerDisconnected):
    """The TLS handshake with a ``wss://`` server failed (untrusted or wrong
    certificate, a client certificate refused, no common protocol version).

    The message says why.  Retrying does not help until the trust settings
    (``ssl_context``, ``--cafile``) or the server's certificate change.
    """


class ProtocolViolation(ExecServerError):
    """The peer broke the protocol; the connection must be closed.

    On the server: a client notification other than ``initialized``, a client
    response, or ``initialized`` before ``initialize`` (PROTOCOL.md 1.6).
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
