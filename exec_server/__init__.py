"""exec-server: a JSON-RPC remote-execution server and blocking client.

Wire-compatible with the Codex ``codex exec-server`` protocol.  The client API
is :class:`Client`; :func:`make_server` starts a server.
"""

__version__ = "0.1.0"

from .client import Client, ReconnectPolicy, RequestOutcomeUnknown  # noqa: E402
from .remote_process import (ClosedEvent, ExitedEvent, OutputEvent, ProcessOutputGap, RemoteProcess,  # noqa: E402
                             StdinClosedError)
from .errors import ExecServerDisconnected, ExecServerError, RpcError  # noqa: E402
from .server import ExecServer, make_server  # noqa: E402

__all__ = [
    "__version__", "Client", "RemoteProcess", "OutputEvent", "ExitedEvent", "ClosedEvent",
    "StdinClosedError", "ProcessOutputGap", "ReconnectPolicy", "RequestOutcomeUnknown", "ExecServerDisconnected", "ExecServerError", "RpcError", "ExecServer", "make_server",
]
