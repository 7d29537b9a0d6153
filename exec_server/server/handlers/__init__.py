"""One handler per method, ``handler(context, params) -> result``, in three families loaded on first use.

- :mod:`~exec_server.server.handlers.session`: ``initialize`` and ``environment/*``,
  loaded with the server;
- :mod:`~exec_server.server.handlers.process`: ``process/*``, loaded (with the
  spawning, containment and output code) by a server's first ``process/*``
  request;
- :mod:`~exec_server.server.handlers.fs`: ``fs/*``, loaded (with the fs
  helper's operations) by its first ``fs/*`` request.

So a server that only answers ``initialize`` or ``/readyz`` imports neither
(#17: cold start).  Params arrive already checked against
``schemas/<method>.params.json``; a handler raises
:class:`~exec_server.protocol.errors.RpcError` subclasses for the protocol's
errors.  Behaviour and texts follow PROTOCOL.md sections 4 to 8.  Handlers
know no socket: they see a :class:`RequestContext`.
"""

import importlib
from typing import Any, Callable, Dict, Tuple

from exec_server.server.allocator import apply_deferred
from exec_server.server.first_use import FirstUse
from exec_server.server.handlers.context import RequestContext
from exec_server.server.handlers.session import EXTENSIONS, environment_info_method, environment_status, initialize

__all__ = ["EXTENSIONS", "FS_PATH_METHODS", "LazyHandler", "METHODS", "RequestContext", "initialize"]

Handler = Callable[[RequestContext, Any], Any]

#: The path methods of PROTOCOL.md 8.3, the keys of ``fs_helper.operations.OPERATIONS``
#: (named here so that the table below needs no import of the fs helper; a test keeps them equal).
FS_PATH_METHODS = ("fs/readFile", "fs/writeFile", "fs/createDirectory", "fs/getMetadata", "fs/canonicalize",
                   "fs/readDirectory", "fs/walk", "fs/remove", "fs/copy")


class LazyHandler:
    """The handler of ``method`` in the family module ``module`` (its ``HANDLERS``), imported on the first call.

    Thread-safe: concurrent first calls import the module once and find the
    same function; a failed import is tried again by the next call.
    """

    __slots__ = ("method", "module", "_function")

    def __init__(self, module: str, method: str):
        self.module = module
        self.method = method
        self._function: FirstUse[Handler] = FirstUse(self._load)

    def _load(self) -> Handler:
        apply_deferred()  # the first request that can answer with large buffers (malloc tuning of the command)
        return importlib.import_module("exec_server.server.handlers." + self.module).HANDLERS[self.method]

    def resolve(self) -> Handler:
        """The handler function, importing its module if this is the first use."""
        return self._function.get()

    def __call__(self, ctx: RequestContext, params: Any, **options: Any) -> Any:
        return self._function.get()(ctx, params, **options)

    def __repr__(self) -> str:
        return "LazyHandler(%r, %r)" % (self.module, self.method)


def _lazy(module: str, family: str, methods) -> Dict[str, Tuple[str, Handler]]:
    return {method: (family, LazyHandler(module, method)) for method in methods}


#: method -> (handshake family for PROTOCOL.md 4.3 errors, handler); ``initialize`` is
#: the connection's own (it advances the handshake) and calls :func:`initialize`.
METHODS: Dict[str, Tuple[str, Handler]] = {
    "environment/info": ("environment info", environment_info_method),
    "environment/status": ("environment status", environment_status),
}
METHODS.update(_lazy("process", "exec", ("process/start", "process/read", "process/write", "process/signal",
                                         "process/terminate", "process/resize")))
METHODS.update(_lazy("fs", "filesystem", ("fs/open", "fs/readBlock", "fs/writeBlock", "fs/close")))
METHODS.update(_lazy("fs", "filesystem", FS_PATH_METHODS))
