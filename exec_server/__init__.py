"""exec-server: a JSON-RPC remote-execution server and blocking client.

Wire-compatible with the Codex ``codex exec-server`` protocol.  The client API
is :class:`Client`; :func:`make_server` starts a server.
"""

__version__ = "0.1.0"

from .client import ClosedEvent, Client, ExitedEvent, OutputEvent, RemoteProcess, StdinClosedError  # noqa: E402
from .errors import ExecServerDisconnected, ExecServerError, RpcError  # noqa: E402
from .server import ExecServer, make_server  # noqa: E402

__all__ = [
    "__version__", "Client", "RemoteProcess", "OutputEvent", "ExitedEvent", "ClosedEvent",
    "StdinClosedError", "ExecServerDisconnected", "ExecServerError", "RpcError", "ExecServer", "make_server",
]
