"""exec-server: a JSON-RPC remote-execution server and blocking client.

Wire-compatible with the Codex ``codex exec-server`` protocol.  The client API
is :class:`Client`; :func:`make_server` starts a server.  The names below are
imported on first use, so a server process never loads the client side and a
client never loads the server (start-up time of ``exec-server --listen stdio``
matters to ``Client.spawn``).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "Client": "client.api",
    "CallTimeout": "client.interfaces", "ExtensionNotSupported": "client.interfaces",
    "ReconnectPolicy": "client.recovery", "RequestOutcomeUnknown": "client.recovery",
    "RequestTooLarge": "client.interfaces",
    "RemoteProcess": "client.process", "OutputEvent": "client.process", "ExitedEvent": "client.process",
    "ClosedEvent": "client.process", "ProcessOutputGap": "client.process", "StdinClosedError": "client.process",
    "StdinQueueFullError": "client.process",
    "ProgramNotFound": "client.start_errors", "WorkingDirectoryNotFound": "client.start_errors",
    "WorkingDirectoryNotAccessible": "client.start_errors",
    "ExecServerDisconnected": "protocol.errors", "ExecServerTLSError": "protocol.errors",
    "ExecServerError": "protocol.errors", "RpcError": "protocol.errors", "InvalidRequest": "protocol.errors",
    "InvalidParams": "protocol.errors", "InternalError": "protocol.errors", "NotFound": "protocol.errors",
    "MethodNotFound": "protocol.errors", "ServerOverloaded": "protocol.errors",
    "SessionAlreadyAttached": "protocol.errors", "ServerConfig": "server.config",
    "Group": "client.group", "GroupResult": "client.group", "GroupError": "client.group",
    "GroupProcesses": "client.group_events", "HostEvent": "client.group_events",
    "ExecServer": "server.app", "make_server": "server.app",
}

__all__ = ["__version__"] + sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module("." + module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
