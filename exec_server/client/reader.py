"""The reader thread of one client transport (started by ``Endpoint.attach``).

It holds the endpoint weakly, so an unreferenced client can be garbage
collected (and its stdio child ended by the finalizer) while it reads.
"""

import logging
import weakref
from typing import Any

from exec_server.client.transport import Transport
from exec_server.protocol.errors import ExecServerDisconnected
from exec_server.protocol.jsonrpc import EnvelopeError

log = logging.getLogger(__name__)


def read_transport(endpoint_ref: "weakref.ReferenceType[Any]", transport: Transport,
                   generation: int) -> None:
    """Read one transport until it ends; route each message to the endpoint, while it exists.

    A message the endpoint cannot route (``EnvelopeError``) ends the
    transport: the peer is broken.  Whatever ends it, the endpoint is told
    (``_connection_lost``), which recovers or fails.
    """
    reason = "connection to the exec-server closed"
    try:
        while True:
            try:
                text = transport.receive()
            except ExecServerDisconnected as exc:
                reason = str(exc)
                break
            endpoint = endpoint_ref()
            if endpoint is None:
                return
            try:
                endpoint._route(text, generation)
            except EnvelopeError as exc:
                reason = "exec-server sent a malformed message: %s" % exc.description
                # Without a recovery every waiting call raises with this reason: no second report.
                log.log(logging.WARNING if endpoint.on_lost is not None else logging.DEBUG, "%s", reason)
                if hasattr(transport, "kill"):
                    transport.kill(reason)  # a call sending meanwhile raises this cause
                else:
                    transport.close()
                break
            finally:
                del endpoint
    except Exception:
        log.exception("client reader failed")
    endpoint = endpoint_ref()
    if endpoint is not None:
        endpoint._connection_lost(generation, reason)
