"""The handshake and environment methods: ``initialize``, ``environment/info``, ``environment/status``.

Loaded with the server: every connection starts with ``initialize``.
Behaviour and texts follow PROTOCOL.md sections 4 and 7.
"""

import sys
from typing import Any, Dict, Tuple

from exec_server.server.environment_info import environment_info
from exec_server.server.handlers.context import RequestContext
from exec_server.server.session import Session

#: Our protocol extensions, advertised as the ``extensions`` member of the
#: ``initialize`` result (a member the reference's clients ignore; README.rst,
#: "Protocol extensions"): ``closeStdin`` on ``process/write``; ``ptySize`` on
#: ``process/start`` and the ``process/resize`` method (PTYs: not on Windows);
#: ``atomicReplace``: ``atomic`` on ``fs/open``, ``commit`` on ``fs/close``.  With them, not a flag but a
#: number: ``maxMessageBytes``, the server's ``max_message_bytes`` (the most UTF-8 bytes of one message it
#: reads), so a client can refuse a larger request instead of sending it to be closed on (1009).
EXTENSIONS = {"closeStdin": True, "ptySize": not sys.platform.startswith("win"), "atomicReplace": True}


def initialize(ctx: RequestContext, params: Dict[str, Any]) -> Tuple[Session, Dict[str, Any]]:
    """Create a session, or resume one with ``resumeSessionId`` (PROTOCOL.md 4.1, 7).

    Returns:
        the session, attached to the connection, and the result; the
        connection records the session and advances its own handshake.
    Raises:
        InvalidRequest, SessionAlreadyAttached: the resume failed.
    """
    resume_id = params.get("resumeSessionId")
    if resume_id is None:
        session = ctx.registry.create()
        session.attach(ctx.connection, ctx.connection.send)
    else:
        session = ctx.registry.resume(resume_id, ctx.connection, ctx.connection.send, ctx.config.takeover_probe_timeout)
    return session, {"sessionId": session.session_id, "environmentInfo": environment_info(),
                     "extensions": dict(EXTENSIONS, maxMessageBytes=ctx.config.max_message_bytes)}


def environment_info_method(ctx: RequestContext, params: Any) -> Dict[str, Any]:
    """``environment/info`` (PROTOCOL.md 4.4): what ``initialize`` returns as ``environmentInfo``."""
    return environment_info()


def environment_status(ctx: RequestContext, params: Any) -> Dict[str, Any]:
    """``environment/status`` (PROTOCOL.md 4.5): always ready."""
    return {"status": "ready"}
