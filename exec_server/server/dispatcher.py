"""What every connection of one server shares: :class:`Dispatcher`.

The method table, schemas, session registry, fs helpers, the server's result
budget (:mod:`~exec_server.server.budget`) and the set of its open
connections (:class:`~exec_server.server.connection.RpcConnection`).
"""

import threading
from typing import TYPE_CHECKING, Callable, Optional

from exec_server.protocol.schemas import SchemaSet
from exec_server.protocol.wire import Send
from exec_server.server import handlers
from exec_server.server.budget import ByteBudget
from exec_server.server.config import ServerConfig
from exec_server.server.connection import RpcConnection
from exec_server.server.first_use import FirstUse
from exec_server.server.sessions import SessionRegistry

if TYPE_CHECKING:
    from exec_server.server.fs.helper import FsHelpers


def _new_fs_helpers() -> "FsHelpers":
    from exec_server.server.fs.helper import FsHelpers
    return FsHelpers()


class Dispatcher:
    """Shared by every connection of one server.  Thread-safe.

    :attr:`fs_helpers` owns the fs helpers this server's requests start (a new
    owner, made on first use, unless one is given); the server stops it at
    shutdown.
    """

    def __init__(self, registry: SessionRegistry, config: Optional[ServerConfig] = None,
                 schemas: Optional[SchemaSet] = None, fs_helpers: "Optional[FsHelpers]" = None):
        self.registry = registry
        self._fs_helpers: "FirstUse[FsHelpers]" = FirstUse(_new_fs_helpers, lambda helpers: helpers.stop(), fs_helpers)
        self.config = config or registry.config
        self.schemas = schemas or SchemaSet.load()
        self.methods = dict(handlers.METHODS)
        missing = [m for m in list(self.methods) + ["initialize"]
                   if not self.schemas.has(self.schemas.params_schema_name(m))]
        if missing:
            raise RuntimeError("no params schema for %s" % ", ".join(missing))
        self.result_budget = ByteBudget(self.config.max_result_bytes_in_flight)
        self._connections_lock = threading.Lock()
        self._connections: "set[RpcConnection]" = set()

    @property
    def fs_helpers(self) -> "FsHelpers":
        """The :class:`~exec_server.server.fs.helper.FsHelpers` of this server (imported on first use)."""
        return self._fs_helpers.get()

    def stop_fs_helpers(self) -> None:
        """Kill this server's fs helpers, and any started later (shutdown); imports nothing."""
        self._fs_helpers.close()

    def open_connection(self, send: Send, parse_error_prefix: str, transport: str = "websocket",
                        probe: Optional[Callable[[float], bool]] = None) -> "RpcConnection":
        """A new connection's protocol state.

        Args:
            transport: ``websocket`` or ``stdio`` (a metric label).
            probe: ``probe(timeout_seconds) -> alive``, the transport's
                liveness check (a resume of this connection's session uses it).
        """
        connection = RpcConnection(self, send, parse_error_prefix, transport)
        connection.probe = probe
        with self._connections_lock:
            self._connections.add(connection)
        return connection

    def forget(self, connection: "RpcConnection") -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def connections(self):
        with self._connections_lock:
            return list(self._connections)
