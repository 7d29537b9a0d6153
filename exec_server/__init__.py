"""exec-server: a JSON-RPC remote-execution server and blocking client.

Wire-compatible with the Codex ``codex exec-server`` protocol.  The public
client API is :class:`Client`; :func:`make_server` starts a server.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
